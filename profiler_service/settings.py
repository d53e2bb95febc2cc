"""Service settings, from `DNAS_SERVICE_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.engine import default_url

MIN_ADMIN_TOKEN = 32  # characters; `dnas serve` generates 43 (32 random bytes, url-safe base64)
PLACEHOLDERS = ("change-me", "changeme", "replace-me", "replaceme")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DNAS_SERVICE_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=default_url, description="SQLAlchemy URL; SQLite file by default.")
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (PostgreSQL for > 1).")
    admin_token: str | None = Field(
        default=None,
        description=f"Admin token, at least {MIN_ADMIN_TOKEN} characters and not a placeholder; if unset one is "
        "generated on first start and printed once.",
    )
    artifact_dir: Path = Field(default_factory=lambda: Path(user_data_dir("dnas")) / "artifacts")
    lease_seconds: float = Field(default=60.0, gt=0, le=86_400, description="How long a leased job stays leased.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Leases per job before it is failed.")
    long_poll_seconds: float = Field(default=20.0, ge=0, le=120, description="Longest wait of one lease call.")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="Largest request body accepted (413).")
    sweep_seconds: float = Field(
        default=5.0, gt=0, le=3600,
        description="How often each worker publishes complete runs, stores failed ones and ends dead leases.",
    )  # fmt: skip

    @field_validator("admin_token")
    @classmethod
    def _strong(cls, value: str | None) -> str | None:
        """A guessable admin token is worse than none: refuse short ones and the example file's placeholder."""
        if value is None or value == "":
            return None
        if len(value) < MIN_ADMIN_TOKEN:
            raise ValueError(
                f"DNAS_SERVICE_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters (it has {len(value)}); "
                "unset it to have one generated, or use: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if any(word in value.lower() for word in PLACEHOLDERS):
            raise ValueError("DNAS_SERVICE_ADMIN_TOKEN is a placeholder (from .env.example?); set a random value")
        return value
