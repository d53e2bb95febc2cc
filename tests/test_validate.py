"""dnas validate: whole networks measured end to end through the agent, compared with the table's sum."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dnas.fidelity import errors, fit_linear, leave_one_out
from search.latency import LatencyLUT, TableError, apply_calibration
from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10}


def test_validate_measures_networks_and_stores_a_calibration(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "validated")
        run = start_run(admin, device["id"], space=SPACE, config={"warmup": 3, "runs": 15})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "1")
        try:
            assert wait_for_run(admin, run["id"])["status"] == "published"
            env = os.environ | {"DNAS_SERVER": svc.url, "DNAS_TOKEN": svc.admin_token}
            proc = subprocess.run(
                [sys.executable, "-m", "dnas", "validate", "--device", str(device["id"]), "--samples", "6",
                 "--resolution", "32", "--width", "0.25", "--classes", "10", "--calibrate", "--out",
                 str(tmp_path / "fid")],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        finally:
            agent.terminate()
            agent.wait(timeout=60)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "Kendall tau" in proc.stdout and "calibrated" in proc.stdout
        report = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
        assert report["networks"] == 6 and len(report["rows"]) == 6
        assert all(r["measured_us"] > 0 and r["predicted_us"] > 0 for r in report["rows"])
        assert -1 <= report["raw"]["kendall_tau"] <= 1
        assert (tmp_path / "fid" / "fidelity.png").read_bytes().startswith(b"\x89PNG")
        cal = admin.get(f"/v1/devices/{device['id']}/calibrations/latest").json()
        assert cal["version"] == 1 and cal["table_version"] == 1 and cal["model"]["kind"] == "linear"
        # Raw stays raw: the table is unchanged by calibrating.
        table = admin.get(f"/v1/devices/{device['id']}/latency-tables/1")
        assert table.status_code == 200 and table.json()["version"] == 1


def test_fidelity_metrics_and_calibration_math():
    measured = np.array([100.0, 200.0, 300.0, 400.0])
    predicted = measured * 1.5 + 20  # a table that over-predicts, consistently
    raw = errors(predicted, measured)
    assert raw["kendall_tau"] == pytest.approx(1.0)
    assert raw["mape_pct"] == pytest.approx(np.mean(np.abs((predicted - measured) / measured)) * 100)
    a, b = fit_linear(predicted, measured)
    assert (a, b) == pytest.approx((1 / 1.5, -20 / 1.5))
    assert errors(leave_one_out(predicted, measured), measured)["mape_pct"] == pytest.approx(0, abs=1e-6)
    lut = apply_calibration(LatencyLUT(torch.tensor([[10.0, 20.0]]), 5.0), {"kind": "linear", "scale": 0.5,
                                                                            "offset_us": 3.0})  # fmt: skip
    assert lut.of_arch([1]) == pytest.approx(0.5 * (20 + 5) + 3)
    with pytest.raises(TableError):
        apply_calibration(lut, {"kind": "spline"})
