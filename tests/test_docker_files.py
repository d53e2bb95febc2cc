"""No Docker engine runs here, so the compose file and Dockerfiles are checked statically: they refer to real
files and real settings, start in the right order once each dependency is healthy, run as non-root users,
keep every secret out of command lines, and start on a fresh machine with no `.env` and no hand-made token.

Then what an engine would run, run without one: the images' files installed as their Dockerfiles install
them (`COPY` then `pip install .`), and every `CMD` and compose `command` started from that install alone,
with compose's environment and each volume a folder, against a real PostgreSQL that wants the generated
password. `test_provisioning.py` covers provisioning's restarts and lost token files.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import typer
import yaml
from sqlalchemy.engine import make_url

from dnas.agent_cli import _default_cache as agent_default_cache
from profiler_service.local_server import free_port, start_run, stop_process, wait_for_run, wait_until_healthy
from profiler_service.settings import ServiceSettings
from tests.postgres import PostgresCluster
from tests.waiting import wait_until

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
    # PostgreSQL's official image runs as its postgres user (999) from the start: its root start only chowns the
    # data directory and drops privileges, which needs the capabilities every container here drops.
    assert services["db"]["user"] == "999:999"


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


# --- Hardening: what compose publishes, who shares a network, what each container may do and write --------
# Docker is not available here: these read the compose model as `docker compose up` would build it.

# Releases each image's version names in full: PostgreSQL's are MAJOR.MINOR (since 10), Python's MAJOR.MINOR.PATCH.
FULL_VERSION_PARTS = {"postgres": 2, "python": 3}
_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def published(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each `ports` entry, short syntax."""
    out = []
    for entry in service.get("ports", []):
        parts = str(entry).split(":")
        assert len(parts) == 3, f"{entry}: a port without a host address is published on every interface"
        out.append((parts[0], parts[1], parts[2]))
    return out


def test_the_service_is_published_on_this_host_only_unless_told_otherwise():
    services = compose()["services"]
    ports = {name: published(s) for name, s in services.items() if "ports" in s}
    assert ports == {"service": [("127.0.0.1", "8321", "8321")]}  # plain HTTP: nothing else publishes
    assert all("network_mode" not in s or s["network_mode"] == "none" for s in services.values())  # no host net
    # Behind a TLS proxy: another address and port, and the public URL the dashboard prints follows.
    assert env_of(services["service"])["DNAS_SERVICE_PUBLIC_URL"] == "http://127.0.0.1:8321"
    moved = compose({"DNAS_SERVICE_PUBLISH_ADDRESS": "0.0.0.0", "DNAS_SERVICE_PUBLISH_PORT": "9000"})["services"]
    assert published(moved["service"]) == [("0.0.0.0", "9000", "8321")]
    assert env_of(moved["service"])["DNAS_SERVICE_PUBLIC_URL"] == "http://127.0.0.1:9000"
    proxied = compose({"DNAS_SERVICE_PUBLIC_URL": "https://dnas.example.org",
                       "DNAS_SERVICE_FORWARDED_ALLOW_IPS": "172.30.0.1"})["services"]  # fmt: skip
    settings = ServiceSettings(
        public_url=env_of(proxied["service"])["DNAS_SERVICE_PUBLIC_URL"],
        forwarded_allow_ips=env_of(proxied["service"])["DNAS_SERVICE_FORWARDED_ALLOW_IPS"],
    )
    assert (settings.public_url, settings.forwarded_allow_ips) == ("https://dnas.example.org", "172.30.0.1")


def networks_of(service: dict[str, Any]) -> set[str]:
    if service.get("network_mode") == "none":
        return set()
    nets = service.get("networks", ["default"])
    return set(nets if isinstance(nets, list) else nets.keys())


def test_the_database_is_on_an_internal_network_that_no_agent_joins():
    model = compose()
    services, networks = model["services"], model.get("networks", {})
    db = networks_of(services["db"])
    assert db and all((networks.get(n) or {}).get("internal") is True for n in db), "no route out for PostgreSQL"
    on_db = {name for name, s in services.items() if networks_of(s) & db}
    assert on_db == {"db", "service"}, f"only the service may reach PostgreSQL, not {on_db - {'db', 'service'}}"
    for agent in ("agent", "android-agent"):  # ... while the agents still reach the service, and the phone the LAN
        shared = networks_of(services[agent]) & networks_of(services["service"])
        assert shared and not any((networks.get(n) or {}).get("internal") for n in networks_of(services[agent]))
    # The published port needs a network that is not internal.
    assert any(not (networks.get(n) or {}).get("internal") for n in networks_of(services["service"]))
    assert networks_of(services["db-secret"]) == set()  # it only writes a file


def pinned_images() -> dict[str, str]:
    """Every image a `docker compose build && up` pulls: compose's `image` where nothing is built, and each of
    our Dockerfiles' FROM."""
    out = {}
    for name, service in compose()["services"].items():
        if "build" in service:
            for base in instructions(name, "FROM"):
                out[f"{service['build']['dockerfile']} FROM"] = base.split()[0]
        else:
            out[name] = service["image"]
    return out


def test_every_image_is_pinned_to_an_exact_release_or_a_digest():
    images = pinned_images()
    assert set(images) == {"db", "docker/service.Dockerfile FROM", "docker/agent.Dockerfile FROM"}
    for where, ref in images.items():
        if _DIGEST.search(ref):
            continue
        name, _, tag = ref.rpartition(":")
        assert name and "/" not in tag, f"{where}: {ref} has no tag, so it is :latest"
        version = re.match(r"[0-9]+(?:\.[0-9]+)*", tag)
        parts = len(version[0].split(".")) if version else 0
        need = FULL_VERSION_PARTS.get(name.rsplit("/", 1)[-1], 3)
        assert parts >= need, f"{where}: {ref} floats (a tag naming a full release has {need} version numbers)"


def test_every_container_drops_all_capabilities_gains_no_privileges_and_has_a_read_only_root():
    services = compose({"DNAS_PHONE_NAME": "pixel-7"})["services"]
    for name, service in services.items():
        assert service.get("cap_drop") == ["ALL"], f"{name}: cap_drop {service.get('cap_drop')}"
        assert not service.get("cap_add") and not service.get("privileged"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("read_only") is True, f"{name}: a writable root file system"


def writable(service: dict[str, Any]) -> list[str]:
    """What a container may write: its tmpfs mounts and its volumes mounted read-write."""
    tmpfs = service.get("tmpfs", [])
    return [*(tmpfs if isinstance(tmpfs, list) else [tmpfs]),
            *(target for target, (_, read_only) in mounts(service).items() if not read_only)]  # fmt: skip


def test_what_each_container_writes_is_on_a_volume_or_a_tmpfs(monkeypatch):
    """With a read-only root, a path a program writes that is on neither is an error at its first write."""
    services = compose({"DNAS_PHONE_NAME": "pixel-7"})["services"]
    service, agent, phone = (env_of(services[n]) for n in ("service", "agent", "android-agent"))
    # The agents' model cache, where `dnas agent` puts it in our images (HOME /home/dnas, no XDG variables).
    assert "DNAS_AGENT_CACHE_DIR" not in agent and "DNAS_AGENT_CACHE_DIR" not in phone
    monkeypatch.setenv("HOME", "/home/dnas")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    cache = str(agent_default_cache())
    writes = {
        "db-secret": ["/run/dnas/db/password"],
        # PGDATA, the socket and lock file (/var/run is /run in Debian), the entrypoint's here-documents.
        "db": ["/var/lib/postgresql/data", "/run/postgresql", "/tmp"],
        # Artifacts, the admin token, provisioned agent tokens; the workers' metrics files and int8's temporary
        # files (tempfile); matplotlib's cache under HOME.
        "service": [service["DNAS_SERVICE_ARTIFACT_DIR"], service["DNAS_SERVICE_ADMIN_TOKEN_FILE"],
                    service["DNAS_SERVICE_PROVISION_TOKEN_DIR"], "/tmp", "/home/dnas/.cache/matplotlib"],
        "agent": [cache, "/tmp"],
        "android-agent": [cache, "/tmp", phone["DNAS_AGENT_ADB_KEY"]],
    }  # fmt: skip
    assert set(writes) == set(services)
    for name, paths in writes.items():
        where = writable(services[name])
        for path in paths:
            assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in where), f"{name} writes {path}"


def test_a_fresh_volume_on_our_images_is_owned_by_their_user():
    """A new named volume takes the owner of the image's directory it is mounted on; one that the image lacks
    would be root's, and the unprivileged user could not write it."""
    services = compose({"DNAS_PHONE_NAME": "pixel-7"})["services"]
    for name in OUR_IMAGES:
        runs = " ".join(instructions(name, "RUN"))
        made = set(re.findall(r"mkdir -p ((?:/\S+ ?)+)", runs)[0].split())
        owned = re.findall(r"chown -R dnas:dnas ((?:/\S+ ?)+)", runs)[0].split()
        for target, (volume, read_only) in mounts(services[name]).items():
            if read_only or volume not in compose()["volumes"]:
                continue
            assert target in made, f"{name}: the image has no {target}, so a fresh volume there is root's"
            assert any(target == o or target.startswith(o + "/") for o in owned), f"{name}: {target} is not dnas's"


def test_every_long_running_container_has_a_healthcheck():
    for name, service in compose({"DNAS_PHONE_NAME": "pixel-7"})["services"].items():
        if name not in ONE_SHOT:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    # The agents' is run for real against a service in the stack test below.


# --- What an engine would run, run without one ------------------------------------------------------------


def instructions(name: str, keyword: str) -> list[str]:
    """The arguments of each `keyword` instruction in the image's Dockerfile, continuation lines joined."""
    text = "\n".join(dockerfile(name)).replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines() if line.split(None, 1)[:1] == [keyword]]


def exec_form(argument: str) -> list[str]:
    """`CMD ["a", "b"]` as the argv an engine runs (JSON array form)."""
    import json

    argv = json.loads(argument)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), argument
    return argv


@dataclass
class Image:
    """One image's Python install: what `pip install .` put in site-packages, and nothing of this checkout."""

    site: Path

    def argv(self, command: list[str]) -> list[str]:
        """An image command as a process here. `python -S` skips the .pth files that would let this
        checkout's editable install fill in for a module the image lacks; the dependencies come from the venv."""
        program, *args = command
        if program == "dnas":
            return [sys.executable, "-S", str(self.site / "bin" / "dnas"), *args]
        assert program == "python", command
        return [sys.executable, "-S", *args]

    def env(self, **env: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("DNAS_")}
        return base | {"PYTHONPATH": os.pathsep.join([str(self.site), sysconfig.get_paths()["purelib"]])} | env


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Image]:
    """Each of our Dockerfiles' COPY sources copied into a build context and installed from there (no
    dependencies, no network: the venv has them), as `pip install .` does in the image."""
    built: dict[tuple[str, ...], Image] = {}
    out = {}
    for name in ("service", "agent"):
        copies = tuple(instructions(name, "COPY"))
        if copies not in built:
            context = tmp_path_factory.mktemp(f"context-{name}")
            for copy in copies:
                *sources, dest = copy.split()
                for src in sources:
                    target = context / dest / Path(src).name if dest.endswith("/") else context / dest
                    if (ROOT / src).is_dir():
                        shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ROOT / src, target)
            assert any("pip install" in run and run.rstrip().endswith(" .") for run in instructions(name, "RUN"))
            site = tmp_path_factory.mktemp(f"site-{name}")
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                 "--no-cache-dir", "--target", str(site), str(context)],
                check=True, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            built[copies] = Image(site)
        out[name] = built[copies]
    out["android-agent"] = out["agent"]
    out["db-secret"] = out["service"]
    return out


def image_commands() -> dict[str, list[str]]:
    """What each container of ours runs: compose's `command` where it sets one, else the image's CMD."""
    out = {}
    for name, service in compose({"DNAS_PHONE_NAME": "pixel-7"})["services"].items():
        if name in OUR_IMAGES:
            (cmd,) = instructions(name, "CMD")
            out[name] = service.get("command") or exec_form(cmd)
    return out


def test_every_image_command_starts_from_what_the_image_installs(images):
    commands = image_commands()
    assert commands["service"] == ["dnas", "serve"] and commands["agent"] == ["dnas", "agent", "local"]
    assert commands["android-agent"] == ["dnas", "agent", "android"]
    for name, command in commands.items():
        if command[0] != "dnas":
            continue  # db-secret's script runs for real in the test below
        image = images[name]
        # --help: the command is found and its module imports, from the image's install alone.
        proc = subprocess.run(image.argv([*command, "--help"]), env=image.env(), cwd=image.site, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert f"Usage: dnas {' '.join(command[1:])}" in proc.stdout, (name, proc.stdout)
    # And nothing of this checkout took part: the same console script with the package gone fails.
    broken = images["service"].env(PYTHONPATH=sysconfig.get_paths()["purelib"])
    proc = subprocess.run(images["service"].argv(["dnas", "--help"]), env=broken, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0 and "ModuleNotFoundError: No module named 'dnas'" in proc.stderr


@dataclass
class Volumes:
    """Compose's named volumes as folders; a container path resolves through that container's mounts."""

    root: Path

    def host(self, service: dict[str, Any], container_path: str) -> Path:
        for target, (source, _) in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
            if container_path == target or container_path.startswith(target + "/"):
                assert source in compose()["volumes"], f"{source} is not a named volume"
                return self.root / source / container_path[len(target) :].lstrip("/")
        raise AssertionError(f"{container_path} is on no volume of this container: lost when it is recreated")


@pytest.fixture
def stack(tmp_path) -> Iterator[list[subprocess.Popen]]:
    """The processes a test starts, stopped however it ends."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        stop_process(proc, timeout_s=20)


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.postgres
def test_the_stack_starts_from_its_image_commands_on_postgresql(images, pg_cluster: PostgresCluster, tmp_path, stack):
    """A first `docker compose --profile android up`, container by container, in compose's start order."""
    phone_port = free_port()  # nothing listens there: the phone is away
    services = compose({"DNAS_PHONE_NAME": "pixel-7", "DNAS_PHONE_ADB": f"127.0.0.1:{phone_port}"})["services"]
    commands, volumes = image_commands(), Volumes(tmp_path / "volumes")

    # db-secret: its script, run twice (a restart), generates the password once, into its volume.
    script = commands["db-secret"]
    assert script[:2] == ["python", "-c"]
    secret = volumes.host(services["db-secret"], "/run/dnas/db/password")
    secret.parent.mkdir(parents=True)
    code = script[2].replace('"/run/dnas/db/password"', repr(str(secret)))
    assert code != script[2]
    passwords = []
    for _ in range(2):
        subprocess.run(images["db-secret"].argv(["python", "-c", code]), check=True, timeout=120)
        passwords.append(secret.read_text())
    password = passwords[0]
    assert passwords == [password, password] and len(password) >= 40
    assert stat.S_IMODE(secret.stat().st_mode) == 0o444

    # db: the postgres image's first start, from its environment and the secret it mounts.
    db = env_of(services["db"])
    assert volumes.host(services["db"], db["POSTGRES_PASSWORD_FILE"]) == secret
    pg_cluster.create_login(db["POSTGRES_USER"], secret.read_text(), db["POSTGRES_DB"])

    def refused(password: str) -> bool:
        try:
            psycopg.connect(host="127.0.0.1", port=pg_cluster.port, user=db["POSTGRES_USER"],
                            dbname=db["POSTGRES_DB"], password=password).close()  # fmt: skip
        except psycopg.OperationalError as exc:
            return "password authentication failed" in str(exc)
        return False

    wait_until(lambda: refused("not-the-password"), what="PostgreSQL to want the password", timeout_s=30)
    probe = " ".join(services["db"]["healthcheck"]["test"][1:])
    ready = subprocess.run([str(pg_cluster.bindir / probe.split()[0]), *probe.split()[1:], "-h", "127.0.0.1",
                            "-p", str(pg_cluster.port)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ready.returncode == 0, ready.stdout

    # service: the image's CMD with compose's environment; "db" is this host and each volume a folder.
    svc_env = env_of(services["service"])
    port = free_port()
    remapped = {k: str(volumes.host(services["service"], v)) if v.startswith("/") else v for k, v in svc_env.items()}
    remapped |= {"DNAS_SERVICE_DATABASE_HOST": "127.0.0.1", "DNAS_SERVICE_DATABASE_PORT": str(pg_cluster.port),
                 "DNAS_SERVICE_HOST": "127.0.0.1", "DNAS_SERVICE_PORT": str(port)}  # fmt: skip
    assert remapped["DNAS_SERVICE_WORKERS"] == "2" and "DNAS_SERVICE_DATABASE_URL" not in remapped
    log = tmp_path / "service.log"
    with open(log, "w") as fh:
        service = subprocess.Popen(images["service"].argv(commands["service"]), env=images["service"].env(**remapped),
                                   cwd=tmp_path, stdout=fh, stderr=subprocess.STDOUT)  # fmt: skip
    stack.append(service)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, service, log, timeout_s=240)
    # Both healthchecks (the image's and compose's) pass against it.
    (image_check,) = instructions("service", "HEALTHCHECK")
    for check in (exec_form(image_check.split(" CMD ", 1)[1]), services["service"]["healthcheck"]["test"][1:]):
        code = check[2].replace("8321", str(port))  # the container port, published here on a free one
        proc = subprocess.run(images["service"].argv(["python", "-c", code]), timeout=60,
                              env=images["service"].env(DNAS_SERVICE_PORT=str(port)))  # fmt: skip
        assert proc.returncode == 0, check

    # First-start provisioning: the admin token and one agent token per device, 0600, on the volumes the
    # agents mount, at the paths their environment names.
    admin_file = Path(remapped["DNAS_SERVICE_ADMIN_TOKEN_FILE"])
    admin = admin_file.read_text().strip()
    assert admin.startswith("dnas_admin_") and _private(admin_file)
    agent_env, phone_env = env_of(services["agent"]), env_of(services["android-agent"])
    host_token = volumes.host(services["agent"], agent_env["DNAS_AGENT_TOKEN_FILE"])
    phone_token = volumes.host(services["android-agent"], phone_env["DNAS_AGENT_TOKEN_FILE"])
    assert host_token.parent == phone_token.parent == Path(remapped["DNAS_SERVICE_PROVISION_TOKEN_DIR"])
    assert sorted(p.name for p in host_token.parent.iterdir()) == ["compose-host.token", "pixel-7.token"]
    assert _private(host_token) and _private(phone_token)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as client:
        devices = {d["name"]: d for d in client.get("/v1/devices").raise_for_status().json()}
        assert {n: d["platform"] for n, d in devices.items()} == {"compose-host": "linux", "pixel-7": "android"}
        run = start_run(client, devices["compose-host"]["id"],
                        {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]},
                        {"warmup": 1, "runs": 5})  # fmt: skip

        # agent: the image's CMD with compose's environment, told to stop once idle, measures the run.
        agent_remapped = agent_env | {"DNAS_AGENT_SERVER": url, "DNAS_AGENT_TOKEN_FILE": str(host_token)}
        assert agent_env["DNAS_AGENT_SERVER"] == f"http://service:{svc_env['DNAS_SERVICE_PORT']}"
        agent = subprocess.run(
            images["agent"].argv([*commands["agent"], "--exit-when-idle", "--wait", "2",
                                  "--cache-dir", str(tmp_path / "agent-cache")]),
            env=images["agent"].env(**agent_remapped), cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert agent.returncode == 0, agent.stdout[-3000:] + agent.stderr[-3000:]
        assert wait_for_run(client, run["id"], timeout_s=120)["status"] == "published"

        # The agents' healthcheck: healthy with its token file and the service answering; not without either.
        check = services["agent"]["healthcheck"]["test"]
        assert check[0] == "CMD" and services["android-agent"]["healthcheck"]["test"] == check

        def healthy(**env: str) -> bool:
            argv, environ = images["agent"].argv(check[1:]), images["agent"].env(**(agent_remapped | env))
            return subprocess.run(argv, env=environ, capture_output=True, timeout=60).returncode == 0

        assert healthy()
        assert not healthy(DNAS_AGENT_TOKEN_FILE=str(tmp_path / "no-such.token"))
        assert not healthy(DNAS_AGENT_SERVER=f"http://127.0.0.1:{free_port()}")

        # android-agent: reads its token file, keeps its adb key on its volume, and says why it stops.
        phone_remapped = phone_env | {
            "DNAS_AGENT_SERVER": url,
            "DNAS_AGENT_TOKEN_FILE": str(phone_token),
            "DNAS_AGENT_ADB_KEY": str(volumes.host(services["android-agent"], phone_env["DNAS_AGENT_ADB_KEY"])),
        }
        phone = subprocess.run(images["android-agent"].argv(commands["android-agent"]),
                               env=images["android-agent"].env(**phone_remapped), cwd=tmp_path,
                               capture_output=True, text=True, timeout=300)  # fmt: skip
        assert phone.returncode == 1
        assert phone.stderr.strip().splitlines()[-1].startswith(f"error: cannot connect to 127.0.0.1:{phone_port}")
        assert Path(phone_remapped["DNAS_AGENT_ADB_KEY"]).is_file()

    # No secret in any log.
    logs = log.read_text() + agent.stdout + agent.stderr + phone.stdout + phone.stderr
    for value in (admin, host_token.read_text().strip(), phone_token.read_text().strip(), password):
        assert value not in logs
