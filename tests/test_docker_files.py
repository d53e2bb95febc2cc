"""No Docker engine runs here, so the compose file and Dockerfiles are checked statically: they refer to real
files and real settings, start in the right order once each dependency is healthy, run as non-root users,
keep every secret out of command lines, and start on a fresh machine with no `.env` and no hand-made token.

The runtime half of the first start (the service registering `compose-host` and writing the token file the
agent reads) runs for real in `test_provisioning.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

from profiler_service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
ONE_SHOT = {"db-secret"}  # init containers: run once, then stay exited
OUR_IMAGES = {"service", "agent", "android-agent", "db-secret"}  # built from our Dockerfiles
_VAR = re.compile(r"\$\{(\w+)(?:(:?[-+?])((?:[^{}]|\$\{[^}]*\})*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:+alternative}` and `${VAR:?error}`, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        current = env.get(name, "")
        if op == ":-":
            return current or interpolate(arg, env)
        if op == ":+":
            return interpolate(arg, env) if current else ""
        if op == ":?" and not current:
            raise LookupError(f"compose would refuse to start: {name} is required ({arg})")
        return current

    return _VAR.sub(one, value)


def compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose model as `docker compose up` sees it with this environment (none: a fresh machine)."""
    return interpolate(yaml.safe_load(COMPOSE_TEXT), env or {})


def env_of(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (volume or host path, read-only)."""
    out = {}
    for item in service.get("volumes", []):
        source, target, *mode = item.split(":")
        out[target] = (source, "ro" in mode)
    return out


def dockerfile(name: str) -> list[str]:
    build = compose()["services"][name]["build"]
    return (ROOT / build["context"] / build["dockerfile"]).read_text().splitlines()


def cpus(cpuset: str) -> set[int]:
    out: set[int] = set()
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def test_compose_services_build_from_real_dockerfiles_and_copy_real_paths():
    services = compose()["services"]
    assert {"db", "service", "agent", "android-agent", "db-secret"} <= set(services)
    for name in OUR_IMAGES:
        build = services[name]["build"]
        path = ROOT / build["context"] / build["dockerfile"]
        assert path.is_file(), path
        for line in path.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{path.name}: COPY {src} does not exist"
            if "pip install" in line and "torch" in line:
                assert "torch==2.13.0" in line  # never an unpinned (CUDA) torch


def test_a_fresh_machine_starts_with_no_env_file_and_no_hand_made_token(tmp_path):
    assert not re.search(r"\$\{\w+:?\?", COMPOSE_TEXT), "a required variable makes a fresh `docker compose up` fail"
    services = compose()["services"]
    service, agent = env_of(services["service"]), env_of(services["agent"])
    # The service registers the agent's device on start and writes its token where the agent reads it.
    (tmp_path / "password").write_text("x")
    settings = ServiceSettings(**{k.removeprefix("DNAS_SERVICE_").lower(): v for k, v in service.items()}
                               | {"database_password_file": tmp_path / "password"})  # fmt: skip
    token_dir = str(settings.provision_token_dir)
    token_file = Path(agent["DNAS_AGENT_TOKEN_FILE"])
    assert str(token_file.parent) == token_dir
    assert (token_file.stem, "linux") in settings.provisioned()
    # ... on the same volume, which the service writes and the agent only reads.
    volume, read_only = mounts(services["service"])[token_dir]
    assert not read_only and mounts(services["agent"])[token_dir] == (volume, True)
    assert volume in compose()["volumes"]
    # The database password is generated into a volume that PostgreSQL and the service both read.
    secret = "/run/dnas/db/password"
    assert secret in " ".join(services["db-secret"]["command"])
    assert env_of(services["db"])["POSTGRES_PASSWORD_FILE"] == service["DNAS_SERVICE_DATABASE_PASSWORD_FILE"] == secret
    shared = mounts(services["db-secret"])["/run/dnas/db"][0]
    assert mounts(services["db"])["/run/dnas/db"] == mounts(services["service"])["/run/dnas/db"] == (shared, True)
    assert service["DNAS_SERVICE_ADMIN_TOKEN_FILE"].startswith("/data/")
    assert mounts(services["service"])["/data"][0] in compose()["volumes"]  # the admin token survives restarts


def test_a_phone_is_provisioned_for_the_android_profile():
    services = compose({"DNAS_PHONE_NAME": "pixel-7", "DNAS_PHONE_ADB": "192.168.1.23:5555"})["services"]
    assert services["android-agent"]["profiles"] == ["android"]  # not started by a plain `up`
    service = env_of(services["service"])
    settings = ServiceSettings(provision_devices=service["DNAS_SERVICE_PROVISION_DEVICES"],
                               provision_token_dir=service["DNAS_SERVICE_PROVISION_TOKEN_DIR"])  # fmt: skip
    assert settings.provisioned() == [("compose-host", "linux"), ("pixel-7", "android")]
    phone = env_of(services["android-agent"])
    assert phone["DNAS_AGENT_TOKEN_FILE"] == f"{settings.provision_token_dir}/pixel-7.token"
    assert phone["DNAS_AGENT_ADB"] == "192.168.1.23:5555"
    # Without a phone the list holds only the local host (a trailing comma is no device).
    fresh = env_of(compose()["services"]["service"])["DNAS_SERVICE_PROVISION_DEVICES"]
    plain = ServiceSettings(provision_devices=fresh, provision_token_dir="/x")
    assert plain.provisioned() == [("compose-host", "linux")]


def _start_order(services: dict[str, Any]) -> list[str]:
    order: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(depends_on(s)) <= set(order)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in sorted(ready):
            order.append(name)
            del pending[name]
    return order


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The long form; compose's short form (a list of names) waits only until each has started."""
    deps = service.get("depends_on") or {}
    return {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps


def test_each_service_starts_once_what_it_needs_is_healthy():
    services = compose()["services"]
    needs = {name: depends_on(s) for name, s in services.items()}
    assert needs["db"] == {"db-secret": {"condition": "service_completed_successfully"}}
    assert needs["service"] == {"db": {"condition": "service_healthy"}}
    assert needs["agent"] == needs["android-agent"] == {"service": {"condition": "service_healthy"}}
    for name, deps in needs.items():  # healthy, not merely started, wherever there is a healthcheck
        for dep, how in deps.items():
            if "healthcheck" in services[dep]:
                assert how["condition"] == "service_healthy", (name, dep)
    order = _start_order(services)
    assert order.index("db-secret") < order.index("db") < order.index("service") < order.index("agent")


def test_healthchecks_probe_what_the_dependants_need():
    services = compose()["services"]
    db_env = env_of(services["db"])
    probe = " ".join(services["db"]["healthcheck"]["test"])
    assert f"pg_isready -U {db_env['POSTGRES_USER']} -d {db_env['POSTGRES_DB']}" in probe
    port = env_of(services["service"])["DNAS_SERVICE_PORT"]
    probe = " ".join(services["service"]["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/v1/health" in probe  # /v1/health runs SELECT 1: test_faults checks the 503
    assert services["service"]["healthcheck"]["start_period"]  # migrations run before the first answer


def test_our_images_run_as_a_non_root_user():
    services = compose()["services"]
    for name in OUR_IMAGES:
        lines = [line.strip() for line in dockerfile(name)]
        users = [i for i, line in enumerate(lines) if line.startswith("USER ")]
        assert users, f"{name}: no USER, so it runs as root"
        user = lines[users[-1]].split()[1].split(":")[0]
        assert user not in ("root", "0"), f"{name}: USER {user}"
        assert not any(line.startswith("RUN ") for line in lines[users[-1] :]), "root work after USER"
        assert str(services[name].get("user", user)).split(":")[0] not in ("root", "0")
    # The service writes token files 0600 that the agent reads: one uid in both images.
    uid = {name: next(line for line in dockerfile(name) if line.startswith("USER ")) for name in ("service", "agent")}
    assert uid["service"] == uid["agent"]
    # PostgreSQL's official image starts as root only to fix its data dir's owner, then runs as postgres.
    assert "user" not in services["db"]


def _command_lines() -> dict[str, str]:
    """Every command line compose or an image would run, whichever defines it."""
    out = {}
    for name, service in compose()["services"].items():
        for key in ("command", "entrypoint"):
            if key in service:
                value = service[key]
                out[f"{name}.{key}"] = " ".join(value) if isinstance(value, list) else value
        if "healthcheck" in service:
            out[f"{name}.healthcheck"] = " ".join(service["healthcheck"]["test"])
        if name in OUR_IMAGES:
            for line in dockerfile(name):
                if line.split(" ", 1)[0] in ("CMD", "ENTRYPOINT", "HEALTHCHECK"):
                    out[f"{name}.Dockerfile.{line.split()[0]}"] = line
    return out


def test_no_token_or_password_appears_in_any_command_line():
    lines = _command_lines()
    assert {"agent.Dockerfile.CMD", "android-agent.command", "service.Dockerfile.CMD"} <= set(lines)
    for where, line in lines.items():
        assert "--token" not in line and "--password" not in line, f"{where}: {line}"
        for name in re.findall(r"\$\{?(\w+)", line):
            secret = re.search(r"TOKEN|PASSWORD|SECRET", name, re.I) and not name.upper().endswith("_FILE")
            assert not secret, f"{where} expands ${name} into argv: {line}"
        assert not re.search(r"dnas_(agent|admin|read)_\w{20,}", line), f"{where} holds a literal token"
    # Nor through the environment, the usual route into `sh -c` command lines and `docker inspect`:
    # a secret is only ever named by a variable holding a path to it.
    for name, service in compose()["services"].items():
        for key, value in env_of(service).items():
            if re.search(r"TOKEN|PASSWORD|SECRET", key) and not key.endswith(("_FILE", "_DIR")):
                pytest.fail(f"{name}: {key} puts a secret in the environment")
            assert "@" not in value or "://" not in value, f"{name}: {key} carries credentials in a URL"


def test_long_running_services_restart_and_one_shots_do_not():
    for name, service in compose()["services"].items():
        expected = {"no"} if name in ONE_SHOT else {"unless-stopped", "always"}
        assert service.get("restart") in expected, f"{name}: restart {service.get('restart')!r}"


def test_the_measuring_agent_has_its_cpus_to_itself():
    services = compose()["services"]
    agent = cpus(services["agent"]["cpuset"])
    for other in ("db", "service"):
        assert agent.isdisjoint(cpus(services[other]["cpuset"])), f"the agent shares CPUs with {other}"
    custom = compose({"DNAS_SERVICE_CPUSET": "0-5", "DNAS_AGENT_CPUSET": "6-7"})["services"]
    assert cpus(custom["agent"]["cpuset"]) == {6, 7} and cpus(custom["service"]["cpuset"]) == set(range(6))


def _agent_envvars(command: str) -> set[str]:
    from dnas.agent_cli import app

    group = typer.main.get_command(app)  # typer ships its own click: read the command, not its class
    return {p.envvar for p in group.commands[command].params if isinstance(p.envvar, str)}  # type: ignore[attr-defined]


def test_environment_variables_are_real_settings_and_documented():
    services = compose()["services"]
    fields = {f"DNAS_SERVICE_{name.upper()}" for name in ServiceSettings.model_fields}
    assert set(env_of(services["service"])) <= fields, set(env_of(services["service"])) - fields
    assert set(env_of(services["agent"])) <= _agent_envvars("local")
    assert set(env_of(services["android-agent"])) <= _agent_envvars("android")
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if "=" in line and not line.startswith("#")}  # fmt: skip
    referenced = {m[0] for m in _VAR.findall(COMPOSE_TEXT)}
    assert referenced <= example, f"not in .env.example: {referenced - example}"


def test_a_database_password_with_url_characters_reaches_the_driver_intact(tmp_path):
    """The password is read from a file and escaped by SQLAlchemy, never pasted into a URL by hand."""
    password = "p@ss:w/rd#50%?&=+ x"
    (tmp_path / "password").write_text(password + "\n")
    settings = ServiceSettings(database_host="db", database_user="dnas", database_name="dnas",
                               database_password_file=tmp_path / "password")  # fmt: skip
    url = make_url(settings.database_url)
    assert (url.password, url.username, url.host, url.port, url.database) == (password, "dnas", "db", 5432, "dnas")
    assert url.drivername == "postgresql+psycopg"
    with pytest.raises(ValueError, match="cannot read the database password file"):
        ServiceSettings(database_host="db", database_password_file=tmp_path / "missing")
