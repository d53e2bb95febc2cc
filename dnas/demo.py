"""`dnas demo`: a half-minute smoke test of the toolchain on this host.

Expands a space into operators, exports each to ONNX, runs each once in onnxruntime and prints the zoo. The
main job is `dnas quickstart`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from search.space.cost import op_cost
from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import get_space
from search.space.zoo import get_model, list_models


def run_demo(resolution: int = 224, width: float = 1.0, out: Path | None = None) -> dict:
    space = get_space("fbnet", resolution=resolution, width=width)
    en = enumerate_ops(space)
    out = out or Path(tempfile.mkdtemp(prefix="dnas-demo-"))
    cache = ExportCache(out / "ops")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    rows = []
    t0 = time.perf_counter()
    for spec in tqdm(list(en.ops.values()), desc="export + run", unit="op"):
        sess = ort.InferenceSession(str(cache.get(spec)), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(spec.input_shape, dtype=np.float32)
        sess.run(None, {sess.get_inputs()[0].name: x})
        start = time.perf_counter()
        sess.run(None, {sess.get_inputs()[0].name: x})
        rows.append((spec.key, (time.perf_counter() - start) * 1e6, op_cost(spec).macs))
    summary = {
        "space": {"name": space.name, "resolution": resolution, "width": width, "hash": space.hash},
        "layers": len(space.slots),
        "unique_ops": len(en),
        "export_and_run_s": round(time.perf_counter() - t0, 2),
        "onnx_dir": str(cache.root),
        "slowest_ops_single_run_us": sorted(rows, key=lambda r: -r[1])[:5],
        "zoo": {n: {k: get_model(n).describe()[k] for k in ("params", "flops")} for n in list_models()},
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    return summary
