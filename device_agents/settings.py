"""What a device agent can be told, defined once: `dnas agent local|android` and a fleet file's workers both
validate into these models, so an option cannot exist on the command line and be missing from a fleet (as
thermal wait, batch size, protocol, header logging and the token file once were), or default differently.

`dnas agent ...` turns the fields into typer options (dnas.options): `--field-name`, settable by
`DNAS_AGENT_FIELD_NAME` (a field may name another variable), the description as help, the default shown. A
fleet file is a JSON list of these models, told apart by `backend`; an unknown or invalid key is an error
that names the worker and the key.

The models hold what was asked; `make_backend` and `make_agent` build the objects that do it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from device_agents.loop import Agent


class SettingsError(ValueError):
    """Settings that cannot start an agent; the message names the option (and the worker, in a fleet)."""


def _env(name: str) -> dict[str, Any]:
    """A field whose environment variable is not DNAS_AGENT_<FIELD> (kept for existing deployments)."""
    return {"envvar": name}


class AgentSettings(BaseModel):
    """What every agent takes, whatever its hardware: where the service is, who the agent is, and how it
    leases and reports."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(min_length=1, description="Service URL.")
    token: str | None = Field(
        default=None, repr=False, description="The device's agent token (prefer the environment, or a file)."
    )
    token_file: Path | None = Field(default=None, description="Read the agent token from this file.")
    wait: float = Field(default=20.0, ge=0, le=120, description="Seconds one lease call may wait for a job.")
    exit_when_idle: bool = Field(default=False, description="Exit when no job arrives within --wait.")
    cache_dir: Path | None = Field(default=None, description="Where downloaded models are kept.")
    batch_size: int = Field(
        default=500, ge=1, le=1000, description="Most jobs leased and measured together in interleaved rounds."
    )
    protocol: int = Field(default=2, ge=1, le=2, description="2: batches in interleaved rounds; 1: one job at a time.")
    log_http: bool = Field(
        default=False,
        description="Log every call to the service with the headers sent (the token as a SHA-256 fingerprint).",
    )
    retry_for: float = Field(
        default=600.0, gt=0, description="Seconds a failing call to the service is retried before the job is given up."
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> AgentSettings:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give the agent token once: DNAS_AGENT_TOKEN, or --token-file / DNAS_AGENT_TOKEN_FILE")
        return self

    def resolve_token(self) -> str:
        """The token, from the file when one is given: a file keeps it out of argv, `ps` and the environment."""
        if self.token_file is None:
            assert self.token is not None
            return self.token
        try:
            value = self.token_file.read_text().strip()
        except OSError as exc:
            raise SettingsError(f"cannot read the agent token file {self.token_file}: {exc.strerror}") from None
        if not value:
            raise SettingsError(f"the agent token file {self.token_file} is empty")
        return value

    def make_backend(self) -> Any:
        raise NotImplementedError

    def make_agent(self, backend: Any, default_cache_dir: Path) -> Agent:
        """The lease-measure-report loop for `backend`, with this agent's client and loop settings."""
        from device_agents.client import AgentClient
        from device_agents.loop import Agent

        client = AgentClient(self.server, self.resolve_token(), retry_for_s=self.retry_for, log_http=self.log_http)
        return Agent(client, backend, cache_dir=self.cache_dir or default_cache_dir, wait_seconds=self.wait,
                     exit_when_idle=self.exit_when_idle, batch_size=self.batch_size,
                     protocol=self.protocol)  # fmt: skip


class LocalAgentSettings(AgentSettings):
    """Measure on this host's CPU with onnxruntime."""

    backend: Literal["local"] = Field(default="local", description="Which hardware: this host's CPU.")
    cpus: list[int] | None = Field(
        default=None, description="Pin measurement to these CPUs, e.g. '0' or '0,1' (a list in a fleet file)."
    )

    @field_validator("cpus", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """The command line's '0,1' and a fleet file's [0, 1] are the same setting."""
        if isinstance(value, str):
            try:
                return [int(c) for c in value.split(",") if c.strip()] or None
            except ValueError:
                raise ValueError(f"CPUs must be comma-separated numbers, not {value!r}") from None
        return value

    def make_backend(self) -> Any:
        from device_agents.local.backend import LocalBackend

        return LocalBackend(cpus=self.cpus)


class AndroidAgentSettings(AgentSettings):
    """Measure on an Android device over adb (TCP or USB), with no host adb server."""

    backend: Literal["android"] = Field(default="android", description="Which hardware: an Android device.")
    adb: str | None = Field(default=None, description="HOST:PORT of a device in adb-over-TCP mode.")
    serial: str | None = Field(default=None, description="USB serial number of the device.")
    runner: Literal["python", "perf-test"] = Field(
        default="python", description="'python' (device has Python + onnxruntime) or 'perf-test'."
    )
    perf_test_dir: Path | None = Field(
        default=None, description="Folder with onnxruntime_perf_test and libonnxruntime.so built for Android."
    )
    taskset: str = Field(
        default="auto",
        description="CPU mask to pin runs to (hex, e.g. f0); 'auto': the cores with the highest cpuinfo_max_freq; "
        "'none': no pinning.",
    )
    runtime_version: str | None = Field(
        default=None,
        description="onnxruntime version of the perf-test build (else read from VERSION_NUMBER beside it).",
    )
    cooldown: float = Field(default=0.0, ge=0, description="Seconds to rest before each batch.")
    thermal_wait: float = Field(
        default=600.0, ge=0, description="Most seconds to wait before a batch while Android reports thermal throttling."
    )
    key: Path | None = Field(
        default=None,
        description="adb RSA private key (generated on first use).",
        json_schema_extra=_env("DNAS_AGENT_ADB_KEY"),
    )

    @model_validator(mode="after")
    def _one_connection(self) -> AndroidAgentSettings:
        if bool(self.adb) == bool(self.serial):
            raise ValueError("give exactly one of --adb HOST:PORT or --serial SERIAL")
        return self

    def make_backend(self) -> Any:
        """Raises SettingsError for a combination the backend refuses (e.g. perf-test without its folder)."""
        from device_agents.android.backend import AndroidBackend
        from device_agents.android.connection import AdbConnection

        try:
            return AndroidBackend(
                AdbConnection(tcp=self.adb, serial=self.serial, key_path=self.key),
                runner=self.runner,
                taskset=self.taskset,
                cooldown_s=self.cooldown,
                perf_test_dir=self.perf_test_dir,
                runtime_version=self.runtime_version,
                thermal_wait_s=self.thermal_wait,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None


WorkerSettings = Annotated[LocalAgentSettings | AndroidAgentSettings, Field(discriminator="backend")]
BACKENDS: dict[str, type[AgentSettings]] = {"local": LocalAgentSettings, "android": AndroidAgentSettings}


def describe_error(exc: ValidationError, *, as_flags: bool = False) -> str:
    """One line per problem, naming the key (as `--key` for the command line); never the value given (it may
    be a token)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in BACKENDS)  # the union's branch is noise
        if as_flags and loc:
            loc = "--" + loc.replace("_", "-")
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing {loc}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def validate_settings(model: type[AgentSettings], values: dict[str, Any]) -> AgentSettings:
    """The command line's values as settings, or SettingsError with the problems in one line."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc, as_flags=True)) from None


def load_fleet(path: Path, defaults: dict[str, Any] | None = None) -> list[AgentSettings]:
    """A fleet file's workers, each validated as its backend's settings. `defaults` (the fleet command's own
    options) fill in what a worker does not set."""
    try:
        workers = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not JSON: {exc}") from None
    if not isinstance(workers, list) or not workers:
        raise SettingsError(f"{path}: expected a non-empty JSON list of workers")
    out: list[AgentSettings] = []
    adapter: TypeAdapter[AgentSettings] = TypeAdapter(WorkerSettings)
    for i, worker in enumerate(workers):
        if not isinstance(worker, dict):
            raise SettingsError(f"{path}: worker {i} is not a JSON object")
        missing = [k for k in ("backend", "server") if not worker.get(k)]
        if not worker.get("token") and not worker.get("token_file"):
            missing.append("token")
        if missing:
            raise SettingsError(f"{path}: worker {i} is missing {', '.join(missing)}")
        if worker["backend"] not in BACKENDS:
            raise SettingsError(f"{path}: worker {i}: backend must be 'local' or 'android', not {worker['backend']!r}")
        try:
            out.append(adapter.validate_python((defaults or {}) | worker))
        except ValidationError as exc:
            raise SettingsError(f"{path}: worker {i} ({worker['backend']}): {describe_error(exc)}") from None
    return out
