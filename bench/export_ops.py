"""How long exporting every unique operator of a space to ONNX takes (cold cache). Prints JSON.

python bench/export_ops.py [--resolution 224] [--width 1.0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import onnxruntime
import torch
from tqdm import tqdm

from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache
from search.space.macro import get_space


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    space = get_space("fbnet", resolution=args.resolution, width=args.width)
    specs = list(enumerate_ops(space).ops.values())
    walls, per_op = [], []
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            cache = ExportCache(tmp)
            t0 = time.perf_counter()
            for spec in tqdm(specs, desc=f"export {rep + 1}/{args.repeats}", unit="op", leave=False):
                s = time.perf_counter()
                cache.get(spec)
                per_op.append(time.perf_counter() - s)
            walls.append(time.perf_counter() - t0)
    print(
        json.dumps(
            {
                "bench": "export_ops",
                "space": {"resolution": args.resolution, "width": args.width, "hash": space.hash[:12]},
                "ops": len(specs),
                "repeats": args.repeats,
                "wall_s_median": round(statistics.median(walls), 2),
                "wall_s_all": [round(w, 2) for w in walls],
                "per_op_ms_median": round(statistics.median(per_op) * 1e3, 1),
                "per_op_ms_max": round(max(per_op) * 1e3, 1),
                "machine": {
                    "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
