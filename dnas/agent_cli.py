"""`dnas agent ...`: run a device agent.

The options of `local` and `android` are the fields of device_agents.settings' models (one definition, shared
with the fleet file): this module only parses, reports errors as one line and prints the result.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from platformdirs import user_cache_dir

from device_agents.settings import (
    AgentSettings,
    AndroidAgentSettings,
    LocalAgentSettings,
    SettingsError,
    validate_settings,
)
from dnas.options import model_parameters

app = typer.Typer(no_args_is_help=True, help="Device agents: lease jobs and measure on hardware.")


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # request lines would print URLs, never tokens


def _default_cache() -> Path:
    return Path(user_cache_dir("dnas")) / "agent-models"


def _serve(model: type[AgentSettings], values: dict[str, Any]) -> None:
    """Validate the options, build the backend, and run the one loop every backend runs (SIGINT/SIGTERM
    handled) until stopped or idle."""
    from device_agents.android.backend import DeviceUnfit
    from dnas.errors import UserError

    try:
        settings = validate_settings(model, values)
        settings.resolve_token()  # an unreadable token file is refused before the device is touched
        _logging()
        agent = settings.make_agent(settings.make_backend(), _default_cache())
        agent.install_signal_handlers()
        stats = agent.run()
    except SettingsError as exc:
        raise UserError(str(exc)) from None
    except DeviceUnfit as exc:  # checked at start: say what the phone lacks instead of failing every job
        raise UserError(str(exc)) from None
    typer.echo(f"done {stats.done}, failed {stats.failed}")


def local(**values: Any) -> None:
    """Measure on this host's CPU with onnxruntime."""
    _serve(LocalAgentSettings, values)


def android(**values: Any) -> None:
    """Measure on an Android device over adb (TCP or USB), with no host adb server."""
    _serve(AndroidAgentSettings, values)


for _command, _model in ((local, LocalAgentSettings), (android, AndroidAgentSettings)):
    _command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        model_parameters(_model, env_prefix="DNAS_AGENT_", skip=("backend",), hide_default=("token",))
    )
app.command()(local)
app.command()(android)


@app.command()
def fleet(
    config: Annotated[
        Path,
        typer.Argument(
            help="JSON list of workers: each takes the options of `dnas agent local` or `android` "
            "as keys (backend, server, token or token_file, adb/serial, ...)."
        ),
    ],
    wait: Annotated[float, typer.Option(help="Default for workers that set no 'wait'.")] = 20.0,
    exit_when_idle: Annotated[bool, typer.Option(help="Default for workers that set no 'exit_when_idle'.")] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Default for workers that set no 'cache_dir'.")] = None,
) -> None:
    """Serve several devices from this host: one worker per device, each with its own token."""
    from device_agents.fleet import run_fleet
    from device_agents.settings import load_fleet
    from dnas.errors import UserError

    _logging()
    defaults = {"wait": wait, "exit_when_idle": exit_when_idle, "cache_dir": cache_dir}
    try:
        workers = load_fleet(config, {k: v for k, v in defaults.items() if v is not None})
        stats = run_fleet(workers, _default_cache())  # builds every worker's agent before any starts
    except (OSError, SettingsError) as exc:
        raise UserError(str(exc)) from None
    for w, s in zip(workers, stats, strict=True):
        typer.echo(f"{w.backend:8s} done {s.done}, failed {s.failed}")  # type: ignore[attr-defined]
