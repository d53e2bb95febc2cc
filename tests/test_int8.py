"""int8 as a measured precision, through the real service, a real local agent and real onnxruntime: a device
holds an fp32 and an int8 table of one space, each selected by precision; an int8 search or check never takes
an fp32 table; a backend that cannot run int8 fails the jobs with its reason and nothing is stored; a result
claimed under another precision than its job's is refused."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from search.dnas.run import load_tables
from search.space.macro import get_space
from search.space.quantize import is_quantized
from search.tables.client import ServiceClient
from search.tables.fidelity import validate
from search.tables.latency import PublishedTable, TableError, build_lut
from tests.service_harness import register, running_service, start_agent, wait_for_run

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10, "candidates": ["ir_k3_e1_g2", "skip"]}
CONFIG = {"threads": 1, "warmup": 1, "rounds": 3, "runs_per_round": 1}


def _profile(admin, device_id: int, precision: str) -> dict:  # type: ignore[no-untyped-def]
    body = {"device_id": device_id, "space": SPACE, "config": CONFIG | {"precision": precision}, "anchors": 2}
    resp = admin.post("/v1/profiling-runs", json=body, timeout=600)
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_a_device_holds_fp32_and_int8_tables_and_each_is_selected_by_precision(tmp_path):
    space = get_space(**{k: (tuple(v) if k == "candidates" else v) for k, v in SPACE.items()})
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "host")
        dev = device["id"]
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "1")
        try:
            fp32_run = _profile(admin, dev, "fp32")
            assert wait_for_run(admin, fp32_run["id"], timeout_s=600)["status"] == "published"

            # An fp32-only device: asked for int8, nothing takes its fp32 table instead.
            missing = admin.get(f"/v1/devices/{dev}/latency-tables/latest", params={"precision": "int8"})
            assert missing.status_code == 404 and "at precision int8" in missing.text
            client = ServiceClient(svc.url, svc.admin_token, cache_dir=tmp_path / "tables")
            with pytest.raises(TableError, match="at precision int8"):
                client.table(dev, precision="int8")
            with pytest.raises(TableError, match="at precision int8"):
                load_tables([], svc.url, [dev], [], svc.admin_token, tmp_path / "tables", precisions=["int8"])
            with pytest.raises(Exception, match="at precision int8"):
                validate(ServiceClient(svc.url, svc.admin_token), dev, space, 2, tmp_path / "v", calibrate=False,
                         precision="int8")  # fmt: skip
            fp32_file = tmp_path / "fp32.json"
            fp32_file.write_text(client.table(dev, precision="fp32").to_json())
            with pytest.raises(TableError, match=r"this is a fp32 table.*needs a int8 table"):
                load_tables([fp32_file], None, [], [], None, precisions=["int8"])
            env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
            proc = subprocess.run(
                [sys.executable, "-m", "dnas", "search", "--device", str(dev), "--precision", "int8",
                 "--out", str(tmp_path / "s"), "--epochs", "2", "--warmup-epochs", "1"],
                env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert proc.returncode != 0 and "at precision int8" in (proc.stdout + proc.stderr), proc.stderr[-2000:]

            int8_run = _profile(admin, dev, "int8")
            assert int8_run["config"]["quantization"]["name"] == "ort-qdq-static-v1"
            assert int8_run["config_hash"] != fp32_run["config_hash"]
            assert wait_for_run(admin, int8_run["id"], timeout_s=600)["status"] == "published"
        finally:
            agent.terminate()
            agent.wait(timeout=60)

        int8 = admin.get(f"/v1/devices/{dev}/latency-tables/latest", params={"precision": "int8"}).json()
        fp32 = admin.get(f"/v1/devices/{dev}/latency-tables/latest", params={"precision": "fp32"}).json()
        assert (fp32["version"], int8["version"]) == (1, 2)
        assert int8["config"]["precision"] == "int8" and fp32["config"]["precision"] == "fp32"
        assert "quantization" not in fp32["config"]  # an fp32 config is what it always was
        assert int8["config"]["quantization"]["format"] == "QDQ"
        assert all(e["key"].endswith("-int8") for e in int8["entries"])
        assert all(e["key"].endswith("-float32") for e in fp32["entries"])
        assert all(e["context"]["precision"] == "int8" for e in int8["entries"])
        assert {e["key"].removesuffix("-int8") for e in int8["entries"]} == {
            e["key"].removesuffix("-float32") for e in fp32["entries"]
        }
        # Probes and anchors were quantized too (their own keys), and the rule was fitted on them.
        pred = int8["prediction"]
        assert pred["rule"] == "overhead-v2" and all(k.endswith("-int8") for k in pred["overhead_us"])
        assert len(pred["anchors"]) == 2 and not set(a["key"] for a in pred["anchors"]) & {
            a["key"] for a in fp32["prediction"]["anchors"]
        }
        # What the agent measured for an int8 op is the quantized model (the global pool stays float in int8, as
        # it does inside an int8 network, and an identity skip has nothing to quantize).
        served = tmp_path / "artifacts" / "onnx"
        q_ops = [e["key"] for e in int8["entries"] if not e["key"].startswith(("skip", "pool"))]
        assert q_ops and all(is_quantized((served / f"{k}.onnx").read_bytes()) for k in q_ops)
        # The table drives a search's LUT and predicts its networks by its int8 keys.
        table = PublishedTable.parse(int8)
        lut = build_lut(space, table)
        assert lut.table.shape == (len(space.slots), 2) and lut.fixed_us != 0
        arch = ["skip"] * len(space.slots)
        assert table.predict_us(arch) > 0 and PublishedTable.parse(fp32).predict_us(arch) > 0

        # Lists, the newest of any precision, and the fp32-against-int8 comparison (matched op by op).
        listed = admin.get(f"/v1/devices/{dev}/latency-tables", params={"precision": "int8"}).json()
        assert [(t["version"], t["precision"]) for t in listed] == [(2, "int8")]
        everything = admin.get(f"/v1/devices/{dev}/latency-tables").json()
        assert [t["precision"] for t in everything] == ["fp32", "int8"]
        assert admin.get(f"/v1/devices/{dev}/latency-tables/latest").json()["version"] == 2
        numbered = admin.get(f"/v1/devices/{dev}/latency-tables/1", params={"precision": "int8"})
        assert numbered.status_code == 404
        cmp = admin.get("/v1/latency-tables/compare", params={"a": f"{dev}:latest:fp32", "b": f"{dev}:latest:int8"})
        body = cmp.json()
        assert cmp.status_code == 200 and body["shared_ops"] == len(int8["entries"]) and not body["only_in_a"]
        assert (body["a"]["precision"], body["b"]["precision"]) == ("fp32", "int8")


class _NoQDQ(LocalBackend):
    """A runtime whose execution provider cannot take QDQ models (as CoreML's cannot)."""

    name = "no-qdq"
    precisions = ("fp32",)
    precision_note = "its execution provider (CoreML) cannot take QDQ models"


def test_a_backend_that_cannot_run_int8_fails_the_jobs_with_its_reason_and_stores_nothing(tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    with running_service(db, tmp_path, DNAS_SERVICE_MAX_ATTEMPTS="1") as svc, svc.client() as admin:
        device = register(admin, "coreml-phone", platform="ios")
        run = _profile(admin, device["id"], "int8")
        agent = Agent(AgentClient(svc.url, device["agent_token"]), _NoQDQ(), cache_dir=tmp_path / "m",
                      wait_seconds=0.2)  # fmt: skip
        thread = threading.Thread(target=agent.run, daemon=True)
        thread.start()
        try:
            final = wait_for_run(admin, run["id"], timeout_s=120)
        finally:
            agent.stopping.set()
            thread.join(timeout=60)
        assert final["status"] == "failed" and final["done"] == 0, final
        assert all("cannot measure precision int8: its execution provider (CoreML) cannot take QDQ" in e
                   for e in final["errors"]), final["errors"]  # fmt: skip
        assert admin.get(f"/v1/devices/{device['id']}/latency-tables").json() == []


def _result(job_id: int, precision: str) -> dict:
    rounds = [100.0, 101.0, 102.0]
    return {"job_id": job_id, "median_us": statistics.median(rounds), "mean_us": statistics.fmean(rounds),
            "p10_us": 100.0, "p90_us": 102.0, "std_us": statistics.stdev(rounds), "n": 3, "rounds": 3,
            "round_medians_us": rounds, "estimator": "median of per-round medians",
            "context": {"method": "test", "precision": precision}}  # fmt: skip


def test_a_result_claimed_under_another_precision_is_not_stored(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "claims")
        run = _profile(admin, device["id"], "int8")
        with svc.client(device["agent_token"]) as agent:
            batch = agent.post("/v1/agent/lease", json={"wait_seconds": 0, "max_jobs": 500, "protocol": 2}).json()
            assert batch["config"]["precision"] == "int8" and len(batch["jobs"]) == run["total"]
            ids = [j["job_id"] for j in batch["jobs"]]
            body = {"lease_token": batch["lease_token"], "results": [_result(ids[0], "fp32")]}
            acks = agent.post("/v1/agent/results", json=body).json()["acks"]
            assert acks[0]["status"] == "invalid" and "measured as 'fp32'" in acks[0]["detail"]
            assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["done"] == 0
            body = {"lease_token": batch["lease_token"], "results": [_result(i, "int8") for i in ids]}
            assert {a["status"] for a in agent.post("/v1/agent/results", json=body).json()["acks"]} == {"done"}
        assert admin.get(f"/v1/profiling-runs/{run['id']}").json()["status"] == "published"


def test_a_network_is_measured_only_at_its_own_precision(tmp_path):
    """The network-measurement API exports the network at the config's precision under its own key."""
    space = get_space(**{k: (tuple(v) if k == "candidates" else v) for k, v in SPACE.items()})
    arch = ["ir_k3_e1_g2"] * len(space.slots)
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "nets")
        keys = {}
        for precision in ("fp32", "int8"):
            body = {"space": space.to_dict(), "arch": arch, "config": CONFIG | {"precision": precision}}
            resp = admin.post(f"/v1/devices/{device['id']}/network-measurements", json=body, timeout=600)
            assert resp.status_code == 201, resp.text
            keys[precision] = resp.json()["key"]
        assert keys["fp32"] == space.network_key(arch) and keys["int8"] == space.network_key(arch, "int8")
        nets = Path(tmp_path / "artifacts" / "networks")
        assert not is_quantized((nets / f"{keys['fp32']}.onnx").read_bytes())
        assert is_quantized((nets / f"{keys['int8']}.onnx").read_bytes())


def test_a_table_of_another_precision_than_asked_is_refused_wherever_it_comes_from():
    """A service older than precision support ignores `?precision=` and sends its fp32 table; a file on disk is
    whatever it is. Either way the client checks what it got (the service's own refusal is tested above)."""
    fp32 = PublishedTable.parse({"config": {"precision": "fp32"}, "version": 1, "space": {}, "entries": []})
    assert fp32.require_precision("fp32") is fp32 and fp32.require_precision(None) is fp32
    with pytest.raises(TableError, match=r"this is a fp32 table .*needs a int8 table"):
        fp32.require_precision("int8")


def test_one_device_searched_at_two_precisions_is_two_targets():
    """`--device 1 --precision fp32 --device 1 --precision int8`: one chip, two labelled targets."""
    from search.tables.device_matrix import device_labels

    def table(precision: str) -> PublishedTable:
        return PublishedTable.parse({"device": {"id": 1, "name": "host"}, "config": {"precision": precision},
                                     "space": {}, "entries": []})  # fmt: skip

    tables = [table("fp32"), table("int8")]
    assert device_labels(tables) == ["host", "host-int8"]
    assert [t.dtype for t in tables] == ["float32", "int8"]
    with pytest.raises(TableError, match="precision 'fp16'"):
        _ = table("fp16").dtype
