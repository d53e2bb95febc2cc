"""What `docker compose up` relies on, run for real without Docker: on first start the service generates its
admin token into a file and registers the declared devices, writing each agent token to a file; an agent
started with only that file's path (no token in argv or environment) measures a run to publication; a
restart keeps the tokens, and a lost token file is replaced by a fresh token that the device then accepts.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import Device
from profiler_service.security import hash_token
from tests.service_harness import free_port, running_service, start_run, wait_for_run

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["skip"]}


def _token_hash(db_url: str, name: str) -> str:
    engine = make_engine(db_url)
    try:
        with make_sessionmaker(engine)() as s:
            return s.scalar(select(Device.token_hash).where(Device.name == name))
    finally:
        engine.dispose()


def test_first_start_provisions_the_local_device_and_its_agent_measures_with_the_token_file(tmp_path):
    db_url, port = f"sqlite:///{tmp_path / 's.db'}", free_port()
    tokens, admin_file = tmp_path / "tokens", tmp_path / "secrets" / "admin.token"
    env = {
        "DNAS_SERVICE_ADMIN_TOKEN_FILE": str(admin_file),
        "DNAS_SERVICE_PROVISION_DEVICES": "compose-host:linux,pixel-7:android,",
        "DNAS_SERVICE_PROVISION_TOKEN_DIR": str(tokens),
    }
    # admin_token="" leaves DNAS_SERVICE_ADMIN_TOKEN empty, as compose does: the file is the admin token.
    with running_service(db_url, tmp_path, port=port, admin_token="", **env) as svc:
        admin = admin_file.read_text().strip()
        assert admin.startswith("dnas_admin_") and admin not in svc.log_text()  # written, never printed
        for path in (admin_file, tokens / "compose-host.token", tokens / "pixel-7.token"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        with svc.client(admin) as client:
            devices = {d["name"]: d["platform"] for d in client.get("/v1/devices").raise_for_status().json()}
            assert devices == {"compose-host": "linux", "pixel-7": "android"}
            host = next(d for d in client.get("/v1/devices").json() if d["name"] == "compose-host")
            run = start_run(client, host["id"], space=SPACE, config={"warmup": 1, "runs": 5})
            agent_env = {k: v for k, v in os.environ.items() if not k.startswith("DNAS_")} | {
                "DNAS_AGENT_SERVER": svc.url,
                "DNAS_AGENT_TOKEN_FILE": str(tokens / "compose-host.token"),
            }
            agent = subprocess.Popen(
                [sys.executable, "-m", "dnas", "agent", "local", "--exit-when-idle", "--wait", "2",
                 "--cache-dir", str(tmp_path / "cache")],
                env=agent_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            token = (tokens / "compose-host.token").read_text().strip()
            cmdline = Path(f"/proc/{agent.pid}/cmdline").read_bytes().decode(errors="replace")
            assert token not in cmdline and token not in " ".join(agent_env.values())
            out, _ = agent.communicate(timeout=300)
            assert agent.returncode == 0, out[-3000:]
            assert token not in out and token not in svc.log_text()
            run = wait_for_run(client, run["id"], timeout_s=120)
            assert run["status"] == "published", run
    kept = {p.name: p.read_text() for p in tokens.iterdir()}
    hashes = {name: _token_hash(db_url, name) for name in ("compose-host", "pixel-7")}

    # A restart changes nothing; a lost token file gets a fresh token, and the device takes only that one.
    (tokens / "pixel-7.token").unlink()
    with running_service(db_url, tmp_path, port=port, admin_token="", **env) as svc:
        assert admin_file.read_text().strip() == admin
        assert (tokens / "compose-host.token").read_text() == kept["compose-host.token"]
        assert _token_hash(db_url, "compose-host") == hashes["compose-host"]
        fresh = (tokens / "pixel-7.token").read_text().strip()
        assert fresh != kept["pixel-7.token"].strip()
        assert _token_hash(db_url, "pixel-7") == hash_token(fresh) != hashes["pixel-7"]
        with svc.client(admin) as client:
            assert len(client.get("/v1/devices").json()) == 2  # reissued, not registered twice


def test_bad_provisioning_settings_stop_the_service_with_one_line(tmp_path):
    env = os.environ | {"DNAS_SERVICE_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}",
                        "DNAS_SERVICE_PROVISION_DEVICES": "my phone"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "dnas", "serve"], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: service settings: DNAS_SERVICE_PROVISION_DEVICES: 'my phone' is not "
        "NAME[:PLATFORM] (letters, digits, '.', '_', '-'; platform in lower case)"
    ]
