"""Targets that differ (issue 24): does a device's own table win on that device?

Today this bench has one part, `--imported`: a per-device search over HW-NAS-Bench's Pixel 3 and Raspberry
Pi 4 tables (imported with `dnas table import`) and its cost matrix, PREDICTED ONLY (bench/imported_targets.py
says why). The measured proof on this host (an fp32 and an int8 table, 3 runs of 3 seeds) is to be added here
beside it as its own function and flag.

    python -m bench.targets --imported [--hwnasbench FILE] [--server URL --token T] [--seeds 0 1 2]
                            [--epochs 4] [--steps 10] [--budget-ratio 0.6]

Without --server a service is started on loopback for the run (SQLite in a temporary folder). Prints one JSON
document, then the matrix as text on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _shared() -> Path:
    """The team's shared copy (`../shared/hwnasbench/` of the checkout or of the worktree's main)."""
    found = [p / "shared" / "hwnasbench" / "fbnet_pixel3_raspi4.json" for p in Path(__file__).resolve().parents]
    return next((f for f in found if f.is_file()), found[1])


SHARED = _shared()


@contextlib.contextmanager
def _service(server: str | None, token: str | None, work: Path) -> Iterator[tuple[str, str]]:
    if server:
        if not token:
            raise SystemExit("error: --server needs --token (the admin token: the bench imports tables)")
        yield server, token
        return
    from profiler_service.local_server import running_service

    with running_service(f"sqlite:///{work / 'targets.db'}", work) as svc:
        yield svc.url, svc.admin_token


def imported(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Import both devices, then one per-device search per seed; every seed's matrix, and in how many runs
    each device's own network leaned to it (cheapest there relative to its cost elsewhere, by the tables)."""
    from bench.imported_targets import format_matrix, import_devices, imported_cost_matrix

    runs = []
    with _service(args.server, args.token, work) as (server, token):
        answers = import_devices(server, token, args.hwnasbench)
        tables = [(a["device"]["id"], a["table"]["version"]) for a in answers.values()]
        for seed in args.seeds:
            result = imported_cost_matrix(
                server,
                token,
                tables,
                work / f"search-seed{seed}",
                seed=seed,
                epochs=args.epochs,
                steps=args.steps,
                budget_ratio=args.budget_ratio,
            )
            print(format_matrix(result) + f"\n(seed {seed})\n", file=sys.stderr)
            runs.append(result)
    imports = {
        hw: {k: a[k] for k in ("ops", "zero_priced", "energy")} | {"version": a["table"]["version"]}
        for hw, a in answers.items()
    }
    devices = runs[0]["devices"]
    return {
        "bench": "targets --imported",
        "predicted_only": True,
        "note": runs[0]["note"],
        "imports": imports,
        "runs": runs,
        # per device: in how many runs its own network leaned to it, and met its budget
        "leans_to_own_device": {d: sum(r["leans_to_own_device"][d] for r in runs) for d in devices},
        "met_budget": {d: sum(bool(r["met"].get(d)) for r in runs) for d in devices},
        "seeds": list(args.seeds),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imported", action="store_true", help="The per-device search over imported tables.")
    parser.add_argument(
        "--hwnasbench",
        type=Path,
        default=SHARED,
        help="HW-NAS-Bench-v1_0.pickle, or its fbnet part as JSON (Pixel 3 and Raspberry Pi 4).",
    )
    parser.add_argument("--server", help="A running service (default: start one on loopback).")
    parser.add_argument("--token", help="Its admin token (or DNAS_TOKEN).", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10, help="Steps per phase and epoch.")
    parser.add_argument("--budget-ratio", type=float, default=0.6, help="Budget: this x each device's baseline.")
    args = parser.parse_args(argv)
    if not args.imported:
        parser.error("choose a part: --imported (the measured fp32/int8 part is not written yet)")
    if args.token is None:
        import os

        args.token = os.environ.get("DNAS_TOKEN")
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
        print(json.dumps(imported(args, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
