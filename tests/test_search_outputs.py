"""search.json has one schema: a one-device search is a list of one device, written by the same writer as a
search over several, and keeps the keys its readers use (quickstart, `dnas validate --arch`, scripts)."""

import json

import torch

from search.dnas.config import SearchConfig
from search.dnas.outputs import write_outputs
from search.dnas.supernet import SuperNet
from search.tables.latency import LatencyLUT
from search.tables.schema import PublishedTable
from tests.tables import MINI

EVERY_SEARCH = {"device_mode", "devices", "chosen", "target", "cost_matrix", "architectures", "latency_tables",
                "data", "config", "events", "compute"}  # fmt: skip
ONE_DEVICE_KEPT = {"chosen_file", "expected_latency_ms", "theta_max_prob_mean", "latency_table"}


def _write(out, devices: int, mode: str) -> dict:
    """Outputs of an untrained super net over random tables: the writer's shape, not a search's quality."""
    torch.manual_seed(0)
    shape = (len(MINI.slots), len(MINI.candidates))
    luts = [LatencyLUT(torch.rand(shape) * 50 + 5, 100.0) for _ in range(devices)]
    tables = [PublishedTable.parse({"device": {"id": i, "name": f"dev{i}"}, "version": 1, "content_sha256": f"t{i}",
                                    "space": MINI.to_dict(), "entries": []})
              for i in range(devices)]  # fmt: skip
    per_device = devices > 1 and mode == "per-device"
    net = SuperNet(MINI, luts, thetas=devices if per_device else 1)
    cfg = SearchConfig(epochs=2, warmup_epochs=1, samples=1, device_mode=mode, target_latency_ms=(0.3,))
    summary = write_outputs(net, luts, tables, [f"dev{i}" for i in range(devices)], cfg, out)
    assert json.loads((out / "search.json").read_text()) == json.loads(json.dumps(summary))
    return summary


def test_one_device_and_several_share_one_search_json_schema(tmp_path):
    one = _write(tmp_path / "one", 1, "per-device")
    per = _write(tmp_path / "per", 2, "per-device")
    joint = _write(tmp_path / "joint", 2, "all-devices")
    assert set(per) == set(joint) == EVERY_SEARCH
    assert set(one) == EVERY_SEARCH | ONE_DEVICE_KEPT
    # One device: one architecture at the top, as before, under the keys (and shapes) it has always had.
    assert one["chosen_file"] == one["chosen"]["file"] == "target.json"
    assert (tmp_path / "one" / "target.onnx").exists() and (tmp_path / "one" / "theta.png").exists()
    assert isinstance(one["chosen"]["predicted_latency_ms"], float)
    assert isinstance(one["target"]["met"], bool) and one["target"]["latency_ms"] == 0.3
    assert one["expected_latency_ms"] == one["devices"][0]["expected_latency_ms"] > 0
    assert one["latency_table"]["content_sha256"] == "t0"
    assert {"predicted_latency_ms", "flops", "params"} <= set(one["architectures"]["most_likely"])
    # Several: per device (a folder and an entry each) or one architecture priced on all.
    assert set(per["chosen"]) == set(per["target"]) == {"dev0", "dev1"}
    assert [d["folder"] for d in per["devices"]] == ["dev0", "dev1"]
    assert (tmp_path / "per" / per["chosen"]["dev1"]["file"]).exists()
    assert "arch" in joint["chosen"] and set(joint["target"]["met"]) == {"dev0", "dev1"}
    assert joint["cost_matrix"]["devices"] == per["cost_matrix"]["devices"] == ["dev0", "dev1"]
