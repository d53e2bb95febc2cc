"""No Docker engine runs here, so check what can be checked: the compose file and Dockerfiles refer to real
files, real settings and each other consistently."""

import re
from pathlib import Path

import yaml

from profiler_service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_build_from_real_dockerfiles_and_copy_real_paths():
    services = _compose()["services"]
    assert {"db", "service", "agent"} <= set(services)
    for name in ("service", "agent"):
        build = services[name]["build"]
        dockerfile = ROOT / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        for line in dockerfile.read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
            if "pip install" in line and "torch" in line:
                assert "torch==2.13.0" in line  # never an unpinned (CUDA) torch


def test_service_waits_for_a_healthy_database():
    services = _compose()["services"]
    assert services["service"]["depends_on"]["db"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])


def test_environment_variables_are_real_settings_and_documented():
    fields = {f"DNAS_SERVICE_{name.upper()}" for name in ServiceSettings.model_fields}
    service_env = _compose()["services"]["service"]["environment"]
    assert set(service_env) <= fields, set(service_env) - fields
    assert service_env["DNAS_SERVICE_DATABASE_URL"].startswith("postgresql://")
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    assert required <= example, required - example


def test_agent_env_matches_the_cli_options():
    from dnas.agent_cli import Server, Token

    envvars = {a.envvar for t in (Server, Token) for a in t.__metadata__}
    assert envvars <= set(_compose()["services"]["agent"]["environment"])
