"""Does a target's own table win on that target? fp32 and int8 on this host, searched and measured.

dnas promises the network that is fast on *your* target. This is the proof, on two targets that really differ
in cost structure: this host's CPU running fp32 and running int8 (QDQ, onnxruntime), registered as two devices
and each profiled into its own table, each served by its own local agent. Then, for every seed:
1. a per-device search over both tables (shared weights, a theta per target, a budget per target at
   `--fraction` of that target's baseline network) returns one network per target;
2. a search of the same space priced by multiply-adds (`search/tables/macs.py`), with the same fraction of
   the baseline's multiply-adds as its budget: the FLOP counter's answer to the int8 budget;
3. all three networks are measured end to end on both targets (one network set per target, with that table's
   anchors, in interleaved rounds). A target's verdict holds when its own network is faster there than the
   other target's network by more than the even/odd-round disagreement of those two measurements, in that
   same run (the noise ceiling); and, as the fair reading where one network is smaller everywhere, the budget
   verdict: its own network lands closer to its budget than the other's (band_verdicts says why).
`--imported` runs the other part instead: a per-device search over HW-NAS-Bench's Pixel 3 and Raspberry Pi 4
tables (imported with `dnas table import`) and its cost matrix, PREDICTED ONLY, as nothing here runs on those
devices (bench/imported_targets.py says why).

Prints JSON and writes targets.png (own vs other network on each target, with the even/odd spread) into --out.

    python -m bench.targets [--out runs/targets] [--seeds 0 1 2] [--fraction 0.6] [--epochs 8]
    python -m bench.targets --imported [--hwnasbench FILE] [--server URL --token T] [--seeds 0 1 2]
                            [--epochs 4] [--steps 10] [--fraction 0.6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cross_device import start_agent  # the same niced, pinned `dnas agent local`

BASELINE = "ir_k3_e6"
SPACE = {"name": "fbnet", "resolution": 32, "width": 0.25, "num_classes": 10}
PRECISIONS = ("fp32", "int8")


MEASURED = ("measured_ms", "measured_even_rounds_ms", "measured_odd_rounds_ms")


def _own_and_other(own: dict[str, str], label: str) -> tuple[str, str]:
    """The network searched on `label`'s table, and the one searched on the other target's."""
    return next(n for n, lab in own.items() if lab == label), next(n for n, lab in own.items() if lab != label)


def _measured(m: dict[str, Any], name: str, d: int) -> dict[str, float]:
    """Network `name` on target `d`: the full measurement and its even and odd halves, in ms."""
    i = m["architectures"].index(name)
    return {k: m[k][i][d] for k in MEASURED}


def _noise(ms: dict[str, float]) -> float:
    """How far two half-length measurements of the same network disagree in this run, relative."""
    return abs(ms["measured_even_rounds_ms"] - ms["measured_odd_rounds_ms"]) / ms["measured_ms"]


def verdicts(report: dict[str, Any], own: dict[str, str]) -> list[dict[str, Any]]:
    """Per target: own network's measured ms against the other target's network, and the noise of that pair.

    noise = the larger of the two networks' |even - odd| / full estimate on that target: how far two
    half-length measurements of the same network disagree in this run. A margin above it is not noise."""
    m = report["matrix"]
    names = m["architectures"]
    rows = []
    for d, label in enumerate(m["devices"]):
        mine, other = _own_and_other(own, label)
        i, j = names.index(mine), names.index(other)
        ms, ms_other = _measured(m, mine, d), _measured(m, other, d)
        noise = max(_noise(ms), _noise(ms_other))
        margin = (ms_other["measured_ms"] - ms["measured_ms"]) / ms["measured_ms"]
        rows.append({
            "target": label, "own_network": mine, "other_network": other,
            "own_ms": ms["measured_ms"], "other_ms": ms_other["measured_ms"],
            "own_predicted_ms": m["predicted_ms"][i][d], "other_predicted_ms": m["predicted_ms"][j][d],
            "margin_pct": round(100 * margin, 2), "noise_pct": round(100 * noise, 2),
            "own_faster_beyond_noise": margin > noise,
            "own_faster_in_even_and_odd_rounds": ms["measured_even_rounds_ms"] < ms_other["measured_even_rounds_ms"]
            and ms["measured_odd_rounds_ms"] < ms_other["measured_odd_rounds_ms"],
        })  # fmt: skip
    return rows


def _side(ms: float, noise: float, lo: float, hi: float) -> str:
    """Where `ms` lies against the band [lo, hi], "within" unless beyond its own even/odd noise."""
    slack = noise * ms
    return "over" if ms - slack > hi else "under" if ms + slack < lo else "within"


def band_verdicts(seed: dict[str, Any], own: dict[str, str]) -> list[dict[str, Any]]:
    """Per target: does its own network land closer to that target's budget than the other's, measured?

    The search asks each network to land within `tolerance` of its target's budget (band mode), so "faster"
    alone can mislead: where one table makes layers cheap to drop (int8 prices identity skips nearly free
    against its blocks), its network is cheaper on *every* target, and the other network loses a pure speed
    race while spending the latency it was given. What a user deploying on A needs of A's table is a network
    that spends A's budget: over it is too slow, under it leaves latency unspent that a larger network would
    use. So: the distance of each network from A's budget, measured on A and divided by A's anchor drift in
    the same run (the budget is in the table's units); the own network wins when its distance plus the
    larger even/odd noise of the pair is still below the other's. Whether the unspent latency would have
    bought accuracy is not measured here (digits saturates)."""
    m = seed["matrix"]
    rows = []
    for d, label in enumerate(m["devices"]):
        target = (seed.get("search_target") or {}).get(label) or {}
        budget, tol = seed["budgets_ms"][label], float(target.get("tolerance", 0.1))
        drift = seed["drift"][label]
        mine, other = _own_and_other(own, label)
        adjusted, noise = {}, {}
        for name in (mine, other):
            ms = _measured(m, name, d)
            adjusted[name], noise[name] = ms["measured_ms"] / drift, _noise(ms)
        lo, hi = budget * (1 - tol), budget * (1 + tol)
        own_side, other_side = (_side(adjusted[n], noise[n], lo, hi) for n in (mine, other))
        miss = {n: abs(adjusted[n] - budget) / budget for n in (mine, other)}
        rows.append({
            "target": label, "budget_ms": budget, "band_ms": [round(lo, 4), round(hi, 4)], "drift": round(drift, 3),
            "own_adjusted_ms": round(adjusted[mine], 4), "other_adjusted_ms": round(adjusted[other], 4),
            "own_noise_pct": round(100 * noise[mine], 2), "other_noise_pct": round(100 * noise[other], 2),
            "own_off_budget_pct": round(100 * (adjusted[mine] / budget - 1), 1),
            "other_off_budget_pct": round(100 * (adjusted[other] / budget - 1), 1),
            "own_side": own_side, "other_side": other_side,
            "own_closer_beyond_noise": miss[mine] + max(noise.values()) < miss[other],
        })  # fmt: skip
    return rows


def targets_png(path: Path, seeds: list[dict[str, Any]]) -> None:
    """One panel per target: for each seed, its own network against the other's, measured, with even/odd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [v["target"] for v in seeds[0]["verdicts"]]
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 3.8), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        xs = range(len(seeds))
        for k, (which, colour) in enumerate((("own", "tab:green"), ("other", "tab:grey"))):
            vals = [next(v for v in s["verdicts"] if v["target"] == label)[f"{which}_ms"] for s in seeds]
            ax.bar([x + 0.38 * k for x in xs], vals, width=0.36, color=colour,
                   label=f"{which} target's network")  # fmt: skip
        for x, s in zip(xs, seeds, strict=True):
            b = next((b for b in s.get("band_verdicts", []) if b["target"] == label), None)
            if b:  # the budget band in this run's measured units (the table's band times the anchor drift)
                lo, hi = (e * b["drift"] for e in b["band_ms"])
                ax.fill_between([x - 0.22, x + 0.6], lo, hi, color="tab:blue", alpha=0.15, linewidth=0,
                                label="budget band (x drift)" if x == 0 else None)  # fmt: skip
            v = next(v for v in s["verdicts"] if v["target"] == label)
            ax.text(x + 0.19, max(v["own_ms"], v["other_ms"]) * 1.02,
                    f"{v['margin_pct']:+.0f}% (noise {v['noise_pct']:.0f}%)", ha="center", fontsize=8)  # fmt: skip
        ax.set_xticks([x + 0.19 for x in xs], [f"seed {s['seed']}" for s in seeds])
        ax.set_ylabel("measured ms (end to end, this host)")
        ax.set_title(f"on {label}")
    fig.suptitle("each target's own network against the other target's, measured on that target, with its budget")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
                epochs=args.epochs or 4,
                steps=args.steps,
                budget_ratio=args.fraction,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/targets"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="search epochs (default 8; 4 with --imported)")
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--mode", choices=("soft", "hard"), default="hard", help="hard: ~5x cheaper per step")
    parser.add_argument("--lr-theta", type=float, default=0.3)
    parser.add_argument("--search-threads", type=int, default=1, help="torch threads of the searches")
    parser.add_argument("--fraction", type=float, default=0.6, help="budget: x the baseline on each target")
    parser.add_argument("--without-skip", action="store_true",
                        help="search the 8 blocks only: every layer must spend latency on a block, so the two "
                             "targets' block costs decide (the identity skip is nearly free on both)")  # fmt: skip
    parser.add_argument("--target-mode", choices=("band", "at_most"), default="band",
                        help="band: each network lands near its budget, so both are equally tight and the "
                             "comparison is of what each spends its latency on")  # fmt: skip
    parser.add_argument("--agent-cpus", default="1", help="pin both agents to these CPUs ('' for none)")
    parser.add_argument("--agent-nice", type=int, default=0)
    parser.add_argument("--imported", action="store_true", help="the predicted-only part over imported tables")
    parser.add_argument("--hwnasbench", type=Path, default=SHARED,
                        help="with --imported: HW-NAS-Bench-v1_0.pickle, or its fbnet part as JSON")  # fmt: skip
    parser.add_argument("--server", help="with --imported: a running service (default: one on loopback)")
    parser.add_argument("--token", default=os.environ.get("DNAS_TOKEN"), help="with --imported: its admin token")
    parser.add_argument("--steps", type=int, default=10, help="steps per phase and epoch (caps each epoch)")
    args = parser.parse_args()
    if args.imported:
        with tempfile.TemporaryDirectory(prefix="bench-targets-") as tmp:
            print(json.dumps(imported(args, Path(tmp)), indent=2))
        return
    logging.basicConfig(level=logging.WARNING)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the agents

    from profiler_service.local_server import running_service
    from search.dnas.config import SearchConfig
    from search.dnas.run import load_tables, run_search
    from search.space.macro import FBNET_CANDIDATES
    from search.tables.client import ServiceClient
    from search.tables.cross_device import measure_on_devices, searched_architectures
    from search.tables.device_matrix import device_labels
    from search.tables.macs import macs_table
    from search.tables.schema import PublishedTable

    space_req = SPACE | ({"candidates": [c for c in FBNET_CANDIDATES if c != "skip"]} if args.without_skip else {})
    started = time.perf_counter()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    out: dict[str, Any] = {"bench": "targets", "space": space_req}
    with running_service(f"sqlite:///{args.out / 'service.db'}", args.out / "service", lease_seconds=60) as svc:
        admin = ServiceClient(svc.url, svc.admin_token)
        devices, agents = [], []
        try:
            for precision in PRECISIONS:
                name = f"host-{precision}"
                device = admin.register_device(name, "linux")
                devices.append(device)
                agents.append(start_agent(svc.url, device["agent_token"], args.out / f"cache-{name}",
                                          args.out / f"agent-{name}.log", args.agent_cpus or None,
                                          args.agent_nice))  # fmt: skip
            profile_s = {}
            for device, precision in zip(devices, PRECISIONS, strict=True):  # one at a time: no contention
                t0 = time.perf_counter()
                started_run = admin.start_run(device["id"], space_req, {"threads": 1, "precision": precision})
                run = admin.wait_for_run(started_run["id"], timeout_s=3600, progress=True)
                if run["status"] != "published":
                    raise RuntimeError(f"profiling {device['name']} did not publish: {run.get('errors', [])[:3]}")
                profile_s[device["name"]] = round(time.perf_counter() - t0, 1)
            reader = admin.reader_token("bench")
            tables = load_tables(
                [],
                svc.url,
                [d["id"] for d in devices],
                ["latest"],
                reader,
                args.out / "tables",
                precisions=list(PRECISIONS),
            )
            for t, precision in zip(tables, PRECISIONS, strict=True):
                got = (t.config or {}).get("precision", "fp32")
                if got != precision:
                    raise RuntimeError(f"{t.device_info.get('name')}'s table is {got}, not {precision}")
            space = tables[0].space
            baseline = [BASELINE] * len(space.slots)
            base_ms = [t.predict_us(baseline) / 1e3 for t in tables]
            macs = PublishedTable.parse(macs_table(space))
            base_mmac = macs.predict_us(baseline) / 1e3
            out["targets"] = [{"name": d["name"], "table_version": t.version,
                               "prediction_rule": t.rule.kind, "config": t.config,
                               "baseline_predicted_ms": round(b, 4)}
                              for d, t, b in zip(devices, tables, base_ms, strict=True)]  # fmt: skip
            out["profile_s"] = profile_s
            out["seeds"] = []
            for seed in args.seeds:
                cfg = dict(epochs=args.epochs or 8, warmup_epochs=args.warmup_epochs, batch_size=32, mode=args.mode,
                           lr_w=0.05, lr_theta=args.lr_theta, samples=1, seed=seed, workers=0,
                           threads=args.search_threads, steps_per_epoch=args.steps, validate=False,
                           target_mode=args.target_mode)  # fmt: skip
                where = args.out / f"seed{seed}"
                budgets = tuple(args.fraction * b for b in base_ms)
                t0 = time.perf_counter()
                per = run_search(tables, "digits", SearchConfig(target_latency_ms=budgets, **cfg), where / "per-target")
                flop = run_search(macs, "digits", SearchConfig(target_latency_ms=args.fraction * base_mmac, **cfg),
                                  where / "macs")  # fmt: skip
                search_s = time.perf_counter() - t0
                found = searched_architectures([where / "per-target"])
                labels = device_labels(tables)
                own = {f"for {label}": label for label in labels}  # the per-target search's names
                found["archs"]["priced by macs"] = list(flop["chosen"]["arch"])
                meas = measure_on_devices(admin, found, where / "measured")
                m = meas["matrix"]
                col = {lab: m["devices"].index(lab) for lab in m["devices"]}
                int8_label = labels[PRECISIONS.index("int8")]
                i_macs, i_int8 = (
                    m["architectures"].index("priced by macs"),
                    m["architectures"].index(f"for {int8_label}"),
                )
                int8_budget = budgets[PRECISIONS.index("int8")]
                out["seeds"].append({
                    "seed": seed,
                    "budgets_ms": {d["name"]: round(b, 4) for d, b in zip(devices, budgets, strict=True)},
                    "archs": meas["archs"],
                    "matrix": m,
                    "verdicts": verdicts(meas, own),
                    "band_verdicts": [],  # filled below, from this entry's matrix, budgets and drift
                    "drift": {d["label"]: d["drift"] for d in meas["devices"]},
                    "priced_by_macs": {
                        "budget_mmac": round(args.fraction * base_mmac, 3),
                        "mmac": round(macs.predict_us(found["archs"]["priced by macs"]) / 1e3, 3),
                        "int8_table_network_mmac": round(macs.predict_us(found["archs"][f"for {int8_label}"]) / 1e3, 3),
                        "int8_budget_ms": round(int8_budget, 4),
                        "int8_measured_ms": m["measured_ms"][i_macs][col[int8_label]],
                        "int8_table_network_measured_ms": m["measured_ms"][i_int8][col[int8_label]],
                        "meets_int8_budget_measured": m["measured_ms"][i_macs][col[int8_label]] <= int8_budget,
                        "int8_table_network_meets_budget_measured":
                            m["measured_ms"][i_int8][col[int8_label]] <= int8_budget,
                    },
                    "search_target": per.get("target"),
                    "search_s": round(search_s, 1),
                })  # fmt: skip
                out["seeds"][-1]["band_verdicts"] = band_verdicts(out["seeds"][-1], own)
        finally:
            for agent in agents:
                agent.terminate()
            for agent in agents:
                agent.wait(timeout=60)
    passed = sum(all(v["own_faster_beyond_noise"] for v in s["verdicts"]) for s in out["seeds"])
    banded = sum(all(v["own_closer_beyond_noise"] for v in s["band_verdicts"]) for s in out["seeds"])
    out["proof"] = {
        "seeds_where_every_target_wins_beyond_noise": f"{passed}/{len(out['seeds'])}",
        "seeds_where_every_own_network_lands_closer_to_its_budget_beyond_noise": f"{banded}/{len(out['seeds'])}",
        "what": "measured end to end on this host; noise = even/odd-round disagreement in the same run",
    }
    targets_png(args.out / "targets.png", out["seeds"])
    out["pictures"] = [str(args.out / "targets.png")] + [str(args.out / f"seed{s}" / "measured" / "cross_device.png")
                                                         for s in args.seeds]  # fmt: skip
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
