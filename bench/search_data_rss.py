"""Peak memory of `dnas search --data imagefolder:PATH` at 224 px as the folder grows: the data set is streamed
(paths in memory, images decoded per sample in DataLoader workers), so memory must not grow with the number
of images. Prints JSON: per folder size, the peak RSS and PSS summed over the search process and its workers.

    python -m bench.search_data_rss [--sizes 1000 20000 100000] [--batch 8] [--workers 2] [--steps 15]

The folder holds `--distinct` different 256x256-500x375 JPEGs per run, hard-linked to reach each size (the
search cannot tell a link from a copy; it lists, splits, and decodes them all the same). The table is measured
on this host for the FBNet space at 224 px, width 0.25, 10 classes. On a CPU the super net's activations are
in the same process and scale with --batch (hard mode at 224 px: ~0.75 GB at batch 8, ~2.5 GB at batch 32);
what must stay flat is the growth with the number of images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def _kb(path: str, key: str) -> int:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_memory(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run `cmd`, sampling the summed RSS and PSS of its process tree every 50 ms."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_rss = peak_pss = peak_main = peak_worker = 0
    most = 0
    started = time.perf_counter()
    while proc.poll() is None:
        pids = _tree(proc.pid)
        each = [_kb(f"/proc/{p}/status", "VmRSS:") for p in pids]
        pss = sum(_kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
        peak_rss, peak_pss, most = max(peak_rss, sum(each)), max(peak_pss, pss), max(most, len(pids))
        peak_main = max(peak_main, each[0] if each else 0)
        peak_worker = max([peak_worker, *each[1:]])
        time.sleep(0.05)  # a sampling interval, not synchronisation
    stderr = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"search failed ({proc.returncode}): {stderr[-2000:]}")
    return {"peak_rss_mb": round(peak_rss / 1024, 1), "peak_pss_mb": round(peak_pss / 1024, 1),
            "peak_search_process_rss_mb": round(peak_main / 1024, 1),
            "peak_worker_rss_mb": round(peak_worker / 1024, 1),
            "processes": most, "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def make_folder(root: Path, size: int, distinct: list[Path], classes: int = 10) -> None:
    for i in range(size):
        d = root / f"class_{i % classes:02d}" / f"shard_{(i // classes) % 8}"
        d.mkdir(parents=True, exist_ok=True)
        os.link(distinct[i % len(distinct)], d / f"img_{i:07d}.jpg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000, 100000])
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from search.space.macro import get_space
    from tests.tables import measured_table

    work = Path(tempfile.mkdtemp(prefix="dnas-rss-"))
    rng = np.random.default_rng(0)
    distinct = []
    for i in range(args.distinct):
        w, h = int(rng.integers(256, 501)), int(rng.integers(256, 376))
        base = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)  # smooth, photo-like JPEG sizes
        distinct.append(work / f"src_{i}.jpg")
        img.save(distinct[-1], quality=90)
    space = get_space(resolution=224, width=0.25, num_classes=10)
    table = measured_table(space, work, runs=5)
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    results = []
    for size in args.sizes:
        folder = work / f"images_{size}"
        make_folder(folder, size, distinct)
        cmd = [sys.executable, "-m", "dnas", "search", "--table", str(table), "--data", f"imagefolder:{folder}",
               "--out", str(work / f"out_{size}"), "--epochs", "2", "--warmup-epochs", "1", "--mode", "hard",
               "--batch-size", str(args.batch), "--steps-per-epoch", str(args.steps), "--workers",
               str(args.workers), "--threads", "1", "--samples", "0", "--no-validate"]  # fmt: skip
        mem = peak_memory(cmd, env)
        summary = json.loads((work / f"out_{size}" / "search.json").read_text())
        results.append({"images": size, **mem, "split_sizes": summary["data"]["sizes"]})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "bench": "search_data_rss",
        "resolution": 224, "space": "fbnet width 0.25, 10 classes", "mode": "hard", "batch": args.batch,
        "workers": args.workers, "steps_per_phase": args.steps,
        "runs": results,
        "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "max_peak_pss_mb": max(r["peak_pss_mb"] for r in results),
        "rss_growth_largest_over_smallest_mb": round(results[-1]["peak_rss_mb"] - results[0]["peak_rss_mb"], 1),
        "under_2gb_pss": all(r["peak_pss_mb"] < 2048 for r in results),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
