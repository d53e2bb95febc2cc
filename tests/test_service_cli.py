"""The service's CLI as a user drives it: register, profile --wait, table get, table compare."""

import json
import os
import subprocess
import sys

from search.space.enumerate import enumerate_ops
from search.space.macro import get_space
from tests.service_harness import register, running_service, start_agent
from tests.waiting import wait_until


def dnas(svc, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
    return subprocess.run([sys.executable, "-m", "dnas", *args], env=env, capture_output=True, text=True,
                          check=check, timeout=300)  # fmt: skip


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
        assert len(table["entries"]) == n_ops < run["total"] and table["prediction"]["rule"] == "overhead-v1"
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
