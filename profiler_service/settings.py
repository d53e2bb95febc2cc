"""Service settings, from `DNAS_SERVICE_*` environment variables (or a `.env` file)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import get_args
from urllib.parse import urlsplit

from platformdirs import user_data_dir
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL

from db.engine import default_url
from profiler_service.schemas import Platform

# A provisioned device's name becomes its token file's name, so it is held to what is safe in a path.
_PROVISION_ITEM = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?::(?P<platform>[a-z]+))?$")

MIN_ADMIN_TOKEN = 32  # characters; `dnas serve` generates 43 (32 random bytes, url-safe base64)
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "replaceme")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DNAS_SERVICE_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=default_url, description="SQLAlchemy URL; SQLite file by default.")
    # PostgreSQL from parts, so a password never has to be pasted (and URL-escaped) into a URL by hand:
    # when database_host is set these build database_url, and the password is read from a file.
    database_host: str | None = Field(default=None, description="PostgreSQL host; set it to use the parts below.")
    database_port: int = Field(default=5432, ge=1, le=65535)
    database_name: str = "dnas"
    database_user: str = "dnas"
    database_password_file: Path | None = Field(default=None, description="File holding the PostgreSQL password.")
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    public_url: str | None = Field(
        default=None,
        description="The URL users and agents reach the service at (https://dnas.example.org behind a TLS proxy): "
        "every `--server` URL the dashboard prints, and Secure cookies when it is https. Unset: the address the "
        "connection reached, never the Host header.",
    )
    forwarded_allow_ips: str = Field(
        default="127.0.0.1",
        description="Comma-separated IPs or networks of the proxies whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed (uvicorn's proxy headers); from any other address they are ignored. '*' trusts everyone.",
    )
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (PostgreSQL for > 1).")
    admin_token: str | None = Field(
        default=None,
        description=f"Admin token, at least {MIN_ADMIN_TOKEN} characters and not a placeholder; if unset one is "
        "generated on first start and printed once.",
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="Keep the admin token in this file: read if it exists, else generated on first start and "
        "written here (mode 0600) instead of printed. Ignored when admin_token is set.",
    )
    provision_devices: str = Field(
        default="",
        description="Comma-separated NAME[:PLATFORM] devices to register on start when missing, each with its "
        "agent token written to provision_token_dir/NAME.token (for compose: the agent reads it from there).",
    )
    provision_token_dir: Path | None = Field(default=None, description="Where provisioned agent tokens go.")
    artifact_dir: Path = Field(default_factory=lambda: Path(user_data_dir("dnas")) / "artifacts")
    lease_seconds: float = Field(default=60.0, gt=0, le=86_400, description="How long a leased job stays leased.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Leases per job before it is failed.")
    long_poll_seconds: float = Field(default=20.0, ge=0, le=120, description="Longest wait of one lease call.")
    lease_poll_seconds: float = Field(
        default=0.25, gt=0, le=3600,
        description="How often a waiting lease call claims again when nothing can wake it: always on SQLite; "
        "on PostgreSQL only while the worker's listener is down.",
    )  # fmt: skip
    wake_recheck_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="PostgreSQL: how often each worker reads every active device in one query: the agent tokens "
        "it answers without a lookup, work no notification announced (a lease that expired, a job written by "
        "hand), and the last_seen_at to write.",
    )  # fmt: skip
    listener_timeout_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="PostgreSQL: how long each worker's listening connection may take to connect and to answer "
        "its liveness check, and (4 times as long, as it may wait for a pooled connection) to finish each "
        "recheck, before the worker gives it up as dead (lease calls poll and nothing is answered from memory "
        "until it reconnects): a connection a NAT or proxy black-holes fails nothing.",
    )  # fmt: skip
    max_body_bytes: int = Field(
        default=8 << 20, ge=1024,
        description="Largest request body accepted (413) where agents need megabytes: their results.",
    )  # fmt: skip
    max_small_body_bytes: int = Field(
        default=1 << 20, ge=1024,
        description="Largest request body of every other call (413): devices, runs, tokens, networks, fidelity, "
        "the agent's lease, heartbeat, failure and fingerprint.",
    )  # fmt: skip
    log_headers: bool = Field(
        default=False,
        description="Log every request's headers, to debug a proxy or a client; credentials appear as a SHA-256 "
        "fingerprint (the start of the stored token hash), never as the value.",
    )
    sign_in_failures: int = Field(
        default=10, ge=1, le=10_000,
        description="Failed dashboard sign-ins allowed per client address per minute (each worker counts its "
        "own); past it that address's sign-ins get 429 until a minute has passed since the oldest.",
    )  # fmt: skip
    sweep_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="How often each worker publishes complete runs, stores failed ones and ends dead leases.",
    )  # fmt: skip

    @field_validator("admin_token", mode="before")
    @classmethod
    def _strong(cls, value: object) -> object:
        """`DNAS_SERVICE_ADMIN_TOKEN=` (as compose and .env files leave it) means no token, not an empty one. A
        guessable admin token is worse than none: refuse short ones and the example file's placeholder."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value
        if len(value) < MIN_ADMIN_TOKEN:
            raise ValueError(
                f"DNAS_SERVICE_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (it has {len(value)}); "
                "unset it to have one generated, or use: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if any(word in value.lower() for word in PLACEHOLDERS):
            raise ValueError("DNAS_SERVICE_ADMIN_TOKEN is a placeholder (from .env.example?); set a random value")
        return value

    @field_validator("public_url", mode="before")
    @classmethod
    def _public_url(cls, value: object) -> object:
        """Printed to users as the address to give agents and clients: an origin with an optional path prefix,
        nothing a caller could not paste as `--server`. Empty (as compose leaves it) means unset."""
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            return value
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"DNAS_SERVICE_PUBLIC_URL must be http(s)://HOST[:PORT][/PATH], not {value!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError("DNAS_SERVICE_PUBLIC_URL takes no query, fragment or credentials")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            raise ValueError(f"DNAS_SERVICE_PUBLIC_URL has a bad port: {value!r}") from None
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, value: str) -> str:
        """Each item an IP or a network (or '*'): a misspelt proxy address would silently trust no one, or the
        wrong one, and uvicorn would not say so."""
        items = [item.strip() for item in value.split(",") if item.strip()]
        for item in items:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"DNAS_SERVICE_FORWARDED_ALLOW_IPS: {item!r} is not an IP address or network"
                ) from None
        return ",".join(items)

    @model_validator(mode="after")
    def _database_from_parts(self) -> ServiceSettings:
        if self.database_host is None:
            return self
        if self.database_password_file is None:
            raise ValueError("DNAS_SERVICE_DATABASE_HOST needs DNAS_SERVICE_DATABASE_PASSWORD_FILE")
        try:
            password = self.database_password_file.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read the database password file {self.database_password_file}: {exc}") from None
        url = URL.create(
            "postgresql+psycopg",
            username=self.database_user,
            password=password,
            host=self.database_host,
            port=self.database_port,
            database=self.database_name,
        )
        # render_as_string escapes '@', ':', '/', '#' and '%' in the password; the parsed URL gives it back intact.
        self.database_url = url.render_as_string(hide_password=False)
        return self

    @model_validator(mode="after")
    def _provisioning_is_complete(self) -> ServiceSettings:
        devices = self.provisioned()
        if devices and self.provision_token_dir is None:
            raise ValueError("DNAS_SERVICE_PROVISION_DEVICES needs DNAS_SERVICE_PROVISION_TOKEN_DIR")
        return self

    def provisioned(self) -> list[tuple[str, str]]:
        """(name, platform) of each device to provision; platform defaults to linux."""
        out = []
        for item in (part.strip() for part in self.provision_devices.split(",")):
            if not item:
                continue
            m = _PROVISION_ITEM.match(item)
            if m is None:
                raise ValueError(
                    f"DNAS_SERVICE_PROVISION_DEVICES: {item!r} is not NAME[:PLATFORM] "
                    "(letters, digits, '.', '_', '-'; platform in lower case)"
                )
            platform = m["platform"] or "linux"
            if platform not in get_args(Platform):
                raise ValueError(
                    f"DNAS_SERVICE_PROVISION_DEVICES: {item!r}: platform must be one of {get_args(Platform)}"
                )
            out.append((m["name"], platform))
        return out
