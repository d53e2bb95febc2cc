"""Two devices on one service, each with its own agent and measurement settings: `dnas search --device A
--device B` fetches both tables over REST and searches once; `dnas validate --arch OUT` measures every device's
architecture on every device through the agents."""

import json
import os
import subprocess
import sys

from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run
from tests.tables import MINI

MEASURE = {"warmup": 2, "rounds": 4, "runs_per_round": 2}


def test_two_devices_searched_over_rest_and_measured_through_their_agents(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        one = register(admin, "one-thread")
        two = register(admin, "two-threads")
        runs = [start_run(admin, one["id"], space=MINI.to_dict(), config={"threads": 1, **MEASURE}),
                start_run(admin, two["id"], space=MINI.to_dict(), config={"threads": 2, **MEASURE})]  # fmt: skip
        (tmp_path / "a1").mkdir()
        (tmp_path / "a2").mkdir()
        agents = [start_agent(svc, one["agent_token"], tmp_path / "a1", "--wait", "1"),
                  start_agent(svc, two["agent_token"], tmp_path / "a2", "--wait", "1")]  # fmt: skip
        try:
            assert [wait_for_run(admin, r["id"])["status"] for r in runs] == ["published", "published"]
            env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token,
                                "XDG_CACHE_HOME": str(tmp_path / "cache")}  # fmt: skip
            search = subprocess.run(
                [sys.executable, "-m", "dnas", "search", "--device", str(one["id"]), "--device", str(two["id"]),
                 "--out", str(tmp_path / "s"), "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "32",
                 "--steps-per-epoch", "3", "--threads", "1", "--samples", "1", "--workers", "0", "--no-validate",
                 "--no-tensorboard", "--target-latency-ms", "50", "--target-latency-ms", "60"],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert search.returncode == 0, search.stderr[-3000:]
            validate = subprocess.run(
                [sys.executable, "-m", "dnas", "validate", "--arch", str(tmp_path / "s"), "--out",
                 str(tmp_path / "v")],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=60)
    assert validate.returncode == 0, validate.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "search.json").read_text())
    assert [t["device"]["id"] for t in summary["latency_tables"]] == [one["id"], two["id"]]
    assert [t["config"]["threads"] for t in summary["latency_tables"]] == [1, 2]
    assert set(summary["chosen"]) == {"one-thread", "two-threads"}
    assert summary["target"]["one-thread"]["latency_ms"] == 50 and summary["target"]["two-threads"]["latency_ms"] == 60
    report = json.loads((tmp_path / "v" / "cross_device.json").read_text())
    m = report["matrix"]
    assert m["devices"] == ["one-thread", "two-threads"]
    assert m["architectures"] == ["for one-thread", "for two-threads"]
    # Every architecture measured end to end on every device, by that device's agent, with its own settings.
    assert all(v > 0 for row in m["measured_ms"] for v in row) and len(m["measured_ms"]) == 2
    assert [d["config"]["threads"] for d in report["devices"]] == [1, 2]
    assert all(d["drift"] is not None for d in report["devices"])  # each table's anchors measured again
    assert [r["device"] for r in report["own_fastest"]] == ["one-thread", "two-threads"]
    assert {r["architecture"]: r["device"] for r in report["budgets"]} == {
        "for one-thread": "one-thread",
        "for two-threads": "two-threads",
    }  # each budget binds its own network
    assert "fastest on one-thread?" in validate.stdout and "(each cell: predicted" in validate.stdout
    assert (tmp_path / "v" / "cross_device.png").read_bytes().startswith(b"\x89PNG")
    # Measured against the very table versions the search used.
    sets = {(d["device_id"], d["table_version"]) for d in report["devices"]}
    assert sets == {(one["id"], 1), (two["id"], 1)}
