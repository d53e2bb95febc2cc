"""Service settings, from `DNAS_SERVICE_*` environment variables (or a `.env` file)."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from db.engine import default_url


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DNAS_SERVICE_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=default_url, description="SQLAlchemy URL; SQLite file by default.")
    host: str = "127.0.0.1"
    port: int = Field(default=8321, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (PostgreSQL for > 1).")
    admin_token: str | None = Field(
        default=None, description="Admin token; if unset one is generated on first start and printed once."
    )
    artifact_dir: Path = Field(default_factory=lambda: Path(user_data_dir("dnas")) / "artifacts")
    lease_seconds: float = Field(default=60.0, gt=0, description="How long a leased job stays with its agent.")
    max_attempts: int = Field(default=3, ge=1, le=100, description="Leases per job before it is failed.")
    long_poll_seconds: float = Field(default=20.0, ge=0, le=120, description="Longest wait of one lease call.")
    max_body_bytes: int = Field(default=8 << 20, ge=1024, description="Largest request body accepted.")
