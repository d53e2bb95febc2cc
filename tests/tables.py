"""Latency tables for search tests, measured for real on this host with the shipped onnxruntime runner."""

from __future__ import annotations

import json
from pathlib import Path

from device_agents.runners.ort_runner import measure
from device_agents.stats import summarise
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import SearchSpace, Stage
from tests import artifact_cache

MINI = SearchSpace(
    name="mini",
    resolution=32,
    stem_c=8,
    stem_stride=1,
    stages=(Stage(8, 1, 1), Stage(16, 2, 2), Stage(24, 2, 2)),
    head_c=64,
    num_classes=10,
    candidates=("ir_k3_e1", "ir_k3_e6", "ir_k5_e6", "skip"),
)


def measured_table(space: SearchSpace, workdir: Path, runs: int = 30) -> Path:
    """A table file in the service's format, from real measurements (1 thread)."""
    cache = ExportCache(artifact_cache.onnx_dir(workdir / "onnx"))
    entries = []
    for key, spec in enumerate_ops(space).ops.items():
        stats = summarise(measure(str(cache.get(spec)), threads=1, warmup=3, runs=runs)["samples_us"])
        entries.append({"key": key, "spec": spec.to_dict(), **stats, "context": {}})
    path = workdir / f"table-{space.hash[:12]}.json"
    payload = {
        "device": {"id": 0, "name": "this-host"},
        "version": 1,
        "space": space.to_dict(),
        "space_hash": space.hash,
        "content_sha256": "local-" + space.hash[:16],
        "config": {"threads": 1, "runs": runs},
        "entries": entries,
    }
    path.write_text(json.dumps(payload))
    return path
