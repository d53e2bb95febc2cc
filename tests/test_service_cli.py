"""The service's CLI as a user drives it: register, profile --wait, table get, table compare."""

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from search.space.enumerate import enumerate_ops
from search.space.macro import get_space
from tests.service_harness import Service, register, running_service, start_agent
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def svc(tmp_path_factory) -> Iterator[Service]:
    """One service for the module: each test registers devices of its own names."""
    work = tmp_path_factory.mktemp("service-cli")
    with running_service(f"sqlite:///{work / 's.db'}", work) as service:
        yield service


def dnas(svc, *args: str, check: bool = True, umask: int = -1) -> subprocess.CompletedProcess:
    env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
    return subprocess.run([sys.executable, "-m", "dnas", *args], env=env, capture_output=True, text=True,
                          check=check, timeout=300, umask=umask)  # fmt: skip


def test_register_profile_wait_get_compare(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc:
        device = json.loads(dnas(svc, "device", "register", "cli-phone", "--platform", "android",
                                 "--prop", "owner=ml-team").stdout)  # fmt: skip
        assert device["properties"] == {"owner": "ml-team"} and device["agent_token"].startswith("dnas_agent_")
        assert "cli-phone" in dnas(svc, "device", "list").stdout
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "2")
        try:
            out = dnas(svc, "profile", "--device", str(device["id"]), "--resolution", "32", "--width", "0.25",
                       "--classes", "10", "--warmup", "1", "--runs", "5", "--wait")  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(timeout=60)
        run = json.loads(out.stdout)
        assert run["status"] == "published" and run["table_version"] == 1
        assert f"run {run['id']}" in out.stderr  # the progress bar

        target = tmp_path / "table.json"
        dnas(svc, "table", "get", "--device", str(device["id"]), "-o", str(target))
        table = json.loads(target.read_text())
        # Every op priced; the run also measured a probe per input shape and the anchors behind the rule.
        n_ops = len(enumerate_ops(get_space(resolution=32, width=0.25, num_classes=10)))
        assert len(table["entries"]) == n_ops < run["total"] and table["prediction"]["rule"] == "overhead-v2"
        csv = dnas(svc, "table", "get", "--device", str(device["id"]), "--csv").stdout
        assert csv.startswith("key,median_us")

        png = tmp_path / "cmp.png"
        ref = f"{device['id']}:1"
        out = dnas(svc, "table", "compare", ref, ref, "--png", str(png)).stdout
        assert f"{n_ops} shared ops, median ratio b/a = 1.000" in out
        assert png.read_bytes().startswith(b"\x89PNG")

        bad = dnas(svc, "table", "get", "--device", "999", check=False)
        assert bad.returncode == 1 and bad.stderr.strip() == (
            "error: GET /v1/devices/999/latency-tables/latest -> HTTP 404: device 999 does not exist"
        )
        assert agent.returncode == 0  # SIGTERM: finished cleanly


def test_profile_wait_ends_when_the_run_is_cancelled(tmp_path):
    """An admin cancels the run a user is waiting on: `dnas profile --wait` stops at once and exits 1 saying
    so, instead of polling for a day and then exiting 0 as if the table had been published."""
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "no-agent-phone")  # no agent: the run stays running until it is cancelled
        # The same space once through the API first, so the CLI's run finds every op exported (minutes on a
        # loaded machine) and its 120 s request timeout is not what this test measures.
        space = {"name": "fbnet", "resolution": 32, "width": 0.25, "num_classes": 10}
        warm = admin.post("/v1/profiling-runs", json={"device_id": device["id"], "space": space}, timeout=900)
        admin.post(f"/v1/profiling-runs/{warm.raise_for_status().json()['id']}/cancel").raise_for_status()
        env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
        profile = subprocess.Popen(
            [sys.executable, "-m", "dnas", "profile", "--device", str(device["id"]), "--resolution", "32",
             "--width", "0.25", "--classes", "10", "--wait"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            runs = wait_until(lambda: admin.get("/v1/profiling-runs", params={"status": "running"}).json(),
                              what="the run to be created", timeout_s=300, alive=[profile])  # fmt: skip
            admin.post(f"/v1/profiling-runs/{runs[0]['id']}/cancel").raise_for_status()
            out, err = profile.communicate(timeout=30)
        finally:
            if profile.poll() is None:
                profile.kill()
                profile.communicate()
    assert profile.returncode == 1
    assert json.loads(out)["status"] == "cancelled"
    assert f"error: run {runs[0]['id']} was cancelled: cancelled by an admin" in err


def test_register_writes_the_agent_token_to_a_private_file_and_never_over_an_existing_one(svc, tmp_path):
    target = tmp_path / "config" / "file-phone.token"  # its folder is created too
    # umask 0: the 0600 must come from the CLI itself, not from a cautious shell.
    out = dnas(svc, "device", "register", "file-phone", "--agent-token-file", str(target), umask=0)
    device = json.loads(out.stdout)
    token = target.read_text().strip()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert device["agent_token_file"] == str(target) and "agent_token" not in device
    assert token.startswith("dnas_agent_") and token not in out.stdout + out.stderr  # written, not shown
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind
    # The file holds the token the device answers to: an agent call with it is served (204: no work).
    lease = httpx.post(f"{svc.url}/v1/agent/lease", json={"wait_seconds": 0},
                       headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
    assert lease.status_code == 204, lease.text

    # An existing file is refused before anything is registered, and keeps what it held.
    again = dnas(svc, "device", "register", "file-phone-2", "--agent-token-file", str(target), check=False)
    assert again.returncode == 1
    assert again.stderr.strip() == f"error: {target} exists; remove it or pick another --agent-token-file"
    assert target.read_text().strip() == token
    names = {d["name"] for d in svc.client().get("/v1/devices").raise_for_status().json()}
    assert "file-phone" in names and "file-phone-2" not in names


def test_a_secret_written_without_replace_never_overwrites_a_file_that_appeared(tmp_path):
    """The race the CLI's existence check cannot close: the file appears between the check and the write."""
    from profiler_service.provision import write_secret

    target = tmp_path / "agent.token"
    target.write_text("someone else's\n")
    with pytest.raises(FileExistsError):
        write_secret(target, "dnas_agent_new", replace=False)
    assert target.read_text() == "someone else's\n"
    assert [p.name for p in tmp_path.iterdir()] == ["agent.token"]
    write_secret(target, "dnas_agent_new")  # provisioning's default: replace a stale token file
    assert target.read_text() == "dnas_agent_new\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
