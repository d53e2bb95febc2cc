"""`dnas agent ...`: run a device agent."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from platformdirs import user_cache_dir

app = typer.Typer(no_args_is_help=True, help="Device agents: lease jobs and measure on hardware.")

Server = Annotated[str, typer.Option("--server", envvar="DNAS_AGENT_SERVER", help="Service URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="DNAS_AGENT_TOKEN", help="The device's agent token (prefer the environment)."),
]
TokenFile = Annotated[
    Path | None,
    typer.Option("--token-file", envvar="DNAS_AGENT_TOKEN_FILE", help="Read the agent token from this file."),
]
Once = Annotated[bool, typer.Option("--exit-when-idle", help="Exit when no job arrives within --wait.")]
Wait = Annotated[float, typer.Option("--wait", help="Seconds one lease call may wait for a job.")]
Cache = Annotated[Path | None, typer.Option("--cache-dir", help="Where downloaded models are kept.")]
Batch = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        max=1000,
        envvar="DNAS_AGENT_BATCH_SIZE",
        help="Most jobs leased and measured together in interleaved rounds.",
    ),
]
LogHttp = Annotated[
    bool,
    typer.Option(
        "--log-http",
        envvar="DNAS_AGENT_LOG_HTTP",
        help="Log every call to the service with the headers sent (the token as a SHA-256 fingerprint).",
    ),
]
Protocol = Annotated[
    int,
    typer.Option(
        "--protocol",
        min=1,
        max=2,
        envvar="DNAS_AGENT_PROTOCOL",
        help="2: batches in interleaved rounds; 1: one job at a time.",
    ),
]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines would print URLs, never tokens


def _default_cache() -> Path:
    return Path(user_cache_dir("dnas")) / "agent-models"


def resolve_token(token: str | None, token_file: Path | None) -> str:
    """Exactly one source of the agent token. A file keeps it out of argv, `ps` and the environment."""
    from dnas.errors import UserError

    if (token is None) == (token_file is None):
        raise UserError("give the agent token once: DNAS_AGENT_TOKEN, or --token-file / DNAS_AGENT_TOKEN_FILE")
    if token_file is None:
        assert token is not None
        return token
    try:
        value = token_file.read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot read the agent token file {token_file}: {exc.strerror}") from None
    if not value:
        raise UserError(f"the agent token file {token_file} is empty")
    return value


def _serve(server: str, token: str, backend, cache_dir: Path | None, wait: float, exit_when_idle: bool,  # type: ignore[no-untyped-def]
           batch_size: int = 500, protocol: int = 2, log_http: bool = False) -> None:  # fmt: skip
    """The one loop every backend runs, with SIGINT/SIGTERM handling, until stopped or idle."""
    from device_agents.client import AgentClient
    from device_agents.loop import Agent

    client = AgentClient(server, token, log_http=log_http)
    agent = Agent(client, backend, cache_dir=cache_dir or _default_cache(), wait_seconds=wait,
                  exit_when_idle=exit_when_idle, batch_size=batch_size, protocol=protocol)  # fmt: skip
    agent.install_signal_handlers()
    stats = agent.run()
    typer.echo(f"done {stats.done}, failed {stats.failed}")


@app.command()
def local(
    server: Server,
    token: Token = None,
    token_file: TokenFile = None,
    cpus: Annotated[
        str | None, typer.Option(envvar="DNAS_AGENT_CPUS", help="Pin measurement to these CPUs, e.g. '0' or '0,1'.")
    ] = None,
    wait: Wait = 20.0,
    exit_when_idle: Once = False,
    cache_dir: Cache = None,
    batch_size: Batch = 500,
    protocol: Protocol = 2,
    log_http: LogHttp = False,
) -> None:
    """Measure on this host's CPU with onnxruntime."""
    from device_agents.local.backend import LocalBackend

    secret = resolve_token(token, token_file)
    _logging()
    backend = LocalBackend(cpus=[int(c) for c in cpus.split(",")] if cpus else None)
    _serve(server, secret, backend, cache_dir, wait, exit_when_idle, batch_size, protocol, log_http)


@app.command()
def android(
    server: Server,
    token: Token = None,
    token_file: TokenFile = None,
    adb: Annotated[
        str | None, typer.Option("--adb", envvar="DNAS_AGENT_ADB", help="HOST:PORT of a device in adb-over-TCP mode.")
    ] = None,
    serial: Annotated[
        str | None, typer.Option("--serial", envvar="DNAS_AGENT_SERIAL", help="USB serial number of the device.")
    ] = None,
    runner: Annotated[
        str, typer.Option(envvar="DNAS_AGENT_RUNNER", help="'python' (device has Python + onnxruntime) or 'perf-test'.")
    ] = "python",
    perf_test_dir: Annotated[
        Path | None,
        typer.Option(
            envvar="DNAS_AGENT_PERF_TEST_DIR",
            help="Folder with onnxruntime_perf_test and libonnxruntime.so built for Android.",
        ),
    ] = None,
    taskset: Annotated[
        str,
        typer.Option(
            envvar="DNAS_AGENT_TASKSET",
            help="CPU mask to pin runs to (hex, e.g. f0); 'auto': the cores with the highest "
            "cpuinfo_max_freq; 'none': no pinning.",
        ),
    ] = "auto",
    runtime_version: Annotated[
        str | None,
        typer.Option(
            envvar="DNAS_AGENT_RUNTIME_VERSION",
            help="onnxruntime version of the perf-test build (else read from VERSION_NUMBER beside it).",
        ),
    ] = None,
    cooldown: Annotated[
        float, typer.Option(envvar="DNAS_AGENT_COOLDOWN", help="Seconds to rest before each batch.")
    ] = 0.0,
    thermal_wait: Annotated[
        float,
        typer.Option(
            envvar="DNAS_AGENT_THERMAL_WAIT",
            help="Most seconds to wait before a batch while Android reports thermal throttling.",
        ),
    ] = 600.0,
    key: Annotated[
        Path | None, typer.Option(envvar="DNAS_AGENT_ADB_KEY", help="adb RSA private key (generated on first use).")
    ] = None,
    wait: Wait = 20.0,
    exit_when_idle: Once = False,
    cache_dir: Cache = None,
    batch_size: Batch = 500,
    protocol: Protocol = 2,
    log_http: LogHttp = False,
) -> None:
    """Measure on an Android device over adb (TCP or USB), with no host adb server."""
    from device_agents.android.backend import AndroidBackend, DeviceUnfit
    from device_agents.android.connection import AdbConnection
    from dnas.errors import UserError

    secret = resolve_token(token, token_file)
    if bool(adb) == bool(serial):
        raise UserError("give exactly one of --adb HOST:PORT or --serial SERIAL")
    if runner not in ("python", "perf-test"):
        raise UserError(f"--runner must be 'python' or 'perf-test', not {runner!r}")
    _logging()
    try:
        backend = AndroidBackend(
            AdbConnection(tcp=adb, serial=serial, key_path=key),
            runner=runner,  # type: ignore[arg-type]
            taskset=taskset,
            cooldown_s=cooldown,
            perf_test_dir=perf_test_dir,
            runtime_version=runtime_version,
            thermal_wait_s=thermal_wait,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        _serve(server, secret, backend, cache_dir, wait, exit_when_idle, batch_size, protocol, log_http)
    except DeviceUnfit as exc:  # checked at start: say what the phone lacks instead of failing every job
        raise UserError(str(exc)) from None


@app.command()
def fleet(
    config: Annotated[Path, typer.Argument(help="JSON list of workers: backend, server, token, adb/serial, ...")],
    wait: Wait = 20.0,
    exit_when_idle: Once = False,
    cache_dir: Cache = None,
) -> None:
    """Serve several devices from this host: one worker per device, each with its own token."""
    from device_agents.fleet import load_fleet, run_fleet
    from dnas.errors import UserError

    _logging()
    try:
        workers = load_fleet(config)
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    stats = run_fleet(workers, cache_dir or _default_cache(), wait=wait,
                      exit_when_idle=exit_when_idle)  # fmt: skip
    for w, s in zip(workers, stats, strict=True):
        typer.echo(f"{w['backend']:8s} done {s.done}, failed {s.failed}")
