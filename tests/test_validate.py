"""dnas validate: whole networks measured end to end through the agent, compared with the table's rule, next
to the noise of measuring them; calibrations fitted and reported held out."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from search.dnas.run import newest_calibration
from search.space.macro import fbnet_space
from search.tables import calibration
from search.tables.fidelity import errors
from search.tables.latency import LatencyLUT, LatencyTable, TableError, apply_calibration
from search.tables.predict import N_ANCHORS
from tests.service_harness import register, running_service, start_agent, start_run, wait_for_run

# Measures networks against the table (drift, noise ceiling, held-out error): run alone, after the parallel
# part of `make test`.
pytestmark = pytest.mark.serial

SPACE = {"resolution": 32, "width": 0.25, "num_classes": 10}


def test_validate_measures_networks_and_stores_a_calibration(tmp_path):
    with running_service(f"sqlite:///{tmp_path / 's.db'}", tmp_path) as svc, svc.client() as admin:
        device = register(admin, "validated")
        run = start_run(admin, device["id"], space=SPACE, config={"warmup": 3, "rounds": 10, "runs_per_round": 2})
        agent = start_agent(svc, device["agent_token"], tmp_path, "--wait", "1")
        try:
            assert wait_for_run(admin, run["id"])["status"] == "published"
            before = admin.get(f"/v1/devices/{device['id']}/latency-tables/1")
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
        for line in (
            "table rule",
            "noise ceiling",
            "drift since profiling",
            "calibration not stored: needs at least 20",
        ):
            assert line in proc.stdout, proc.stdout
        report = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
        assert report["networks"] == 6 and len(report["rows"]) == 6
        assert report["prediction_rule"] == "overhead-v1"
        assert all(r["measured_us"] > 0 and r["predicted_us"] > 0 for r in report["rows"])
        # The noise ceiling compares two halves of the same interleaved measurement of the same six networks.
        assert report["noise_ceiling"]["n"] == 6 and report["noise_ceiling"]["mape_pct"] > 0
        # Drift: the table's anchor networks measured again beside the networks, now over then.
        assert len(report["drift"]["anchors"]) == N_ANCHORS and 0.5 < report["drift"]["ratio"] < 2
        # Six networks cannot support a five-parameter fit: nothing stored, and the reason said.
        assert report["calibration"]["stored"] is False and "calibrated_held_out" not in report
        assert admin.get(f"/v1/devices/{device['id']}/calibrations/latest").status_code == 404
        assert (tmp_path / "fid" / "fidelity.png").read_bytes().startswith(b"\x89PNG")
        # Raw stays raw: checking a table leaves its bytes as they were.
        after = admin.get(f"/v1/devices/{device['id']}/latency-tables/1")
        assert after.content == before.content and after.headers["etag"] == before.headers["etag"]
        model = {"kind": calibration.KIND, "factors": dict.fromkeys(calibration.FAMILIES, 1.0), "intercept_us": 50.0}
        stored = admin.post(f"/v1/devices/{device['id']}/calibrations", json={"table_version": 1, "model": model})
        assert stored.status_code == 201
        # A search from this service applies the newest calibration fitted on this very table version...
        table = LatencyTable(after.json())
        assert newest_calibration(svc.url, svc.admin_token, device["id"], table)["version"] == 1
        # ...and never one fitted on another version.
        other = LatencyTable(after.json() | {"version": 2})
        assert newest_calibration(svc.url, svc.admin_token, device["id"], other) is None


def test_fidelity_metrics():
    measured = np.array([100.0, 200.0, 300.0, 400.0])
    predicted = measured * np.array([1.04, 0.97, 1.08, 1.20])
    m = errors(predicted, measured)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["mape_pct"] == pytest.approx((4 + 3 + 8 + 20) / 4)
    assert (m["within_5_pct"], m["within_10_pct"]) == (0.5, 0.75)
    assert m["worst_error_pct"] == pytest.approx(20) and m["mean_signed_error_pct"] == pytest.approx(7.25)
    swapped = errors(np.array([2.0, 1.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    assert swapped["kendall_tau"] == pytest.approx(1 / 3)  # one discordant pair of three


def test_family_calibration_recovers_known_factors_held_out():
    rng = np.random.default_rng(0)
    x = rng.uniform(50, 500, size=(30, len(calibration.FAMILIES)))
    truth = {"e1": 1.3, "e3": 1.0, "e6": 1.15, "other": 0.2}
    y = x @ np.array([truth[f] for f in calibration.FAMILIES]) + 40.0
    model = calibration.fit(x, y)
    assert model["factors"] == pytest.approx(truth, rel=1e-6) and model["intercept_us"] == pytest.approx(40.0)
    held_out = calibration.kfold_predictions(x, y)
    assert errors(held_out, y)["mape_pct"] < 1e-6
    # Factors stay non-negative even when the data pulls one below zero.
    assert min(calibration.fit(x, x @ np.array([1.0, 1.0, -0.5, 1.0]) + 900)["factors"].values()) >= 0


def test_family_calibration_spreads_over_the_lut():
    space = fbnet_space(32, 0.25, num_classes=10, candidates=("ir_k3_e1", "ir_k3_e6", "skip"))
    lut = LatencyLUT(torch.full((len(space.slots), 3), 10.0), fixed_us=99.0)
    model = {"kind": calibration.KIND, "factors": {"e1": 2.0, "e3": 1.0, "e6": 0.5, "other": 0.0}, "intercept_us": 7.0}
    out = apply_calibration(lut, model, space)
    assert out.fixed_us == 7.0  # the shared layers are the intercept
    assert out.table[0].tolist() == [20.0, 5.0, 0.0]
    with pytest.raises(TableError, match="needs the search space"):
        apply_calibration(lut, model)
    legacy = apply_calibration(lut, {"kind": "linear", "scale": 0.5, "offset_us": 3.0})
    assert legacy.of_arch([1] * len(space.slots)) == pytest.approx(0.5 * (10 * len(space.slots) + 99) + 3)
    with pytest.raises(TableError):
        apply_calibration(lut, {"kind": "spline"})
