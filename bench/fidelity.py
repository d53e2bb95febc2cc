"""Table fidelity on this host, the way a user checks a table: profile a space through the service with the
local agent (one batch, interleaved rounds), then measure N sampled networks end to end in their own set
(with the table's anchors), and compare with the table's rule. Prints JSON; writes the scatter PNG.

Every figure comes with its noise from the same run: the networks' even rounds against their odd rounds
(noise ceiling), and the anchors' drift between profiling and validation.

    python -m bench.fidelity [--resolution 224] [--width 1.0] [--classes 1000] [--samples 30] [--cpus 0]
                             [--precision int8]

With `--precision int8` every op, probe, anchor and sampled network is quantized by the one recipe
(search/space/quantize.py) and measured as int8; the table's rule is checked against int8 networks.

`--skip-heavy N` also measures N networks with 70% identity skips (where a search under a tight budget lands;
uniform samples have 1 in 9), in their own set beside the anchors, and reports the rule on them apart
(`skip_heavy`): the int8 rule over-predicted them before the per-op term (docs/concepts/int8.md).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from device_agents.client import AgentClient
from device_agents.local.backend import LocalBackend
from device_agents.loop import Agent
from profiler_service.local_server import running_service
from search.space.macro import get_space
from search.tables.client import ServiceClient
from search.tables.fidelity import errors, halves, measure_with_anchors, validate
from search.tables.predict import skip_heavy_arch
from search.tables.schema import PublishedTable

KEYS = ("within_5_pct", "within_10_pct", "mape_pct", "worst_error_pct", "mean_signed_error_pct", "kendall_tau")


def _short(metrics: dict | None) -> dict | None:
    return None if metrics is None else {k: round(metrics[k], 4) for k in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs-per-round", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpus", default=None, help="pin the measuring agent, e.g. '0'")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--png", type=Path, default=None, help="copy the scatter plot here")
    parser.add_argument("--skip-heavy", type=int, default=0, help="also check N networks with 70%% identity skips")
    args = parser.parse_args()
    space = get_space(resolution=args.resolution, width=args.width, num_classes=args.classes)
    config = {"threads": 1, "warmup": 10, "rounds": args.rounds, "runs_per_round": args.runs_per_round,
              "precision": args.precision}  # fmt: skip
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with running_service(f"sqlite:///{work / 'f.db'}", work) as svc:
            admin = ServiceClient(svc.url, svc.admin_token, timeout=3600)  # int8 at 224 px: minutes of quantizing
            device = admin.register_device("this-host", "linux")
            agent = Agent(AgentClient(svc.url, device["agent_token"]), LocalBackend(cpus=cpus), cache_dir=work / "m",
                          wait_seconds=1)  # fmt: skip
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            try:
                t0 = time.perf_counter()
                space_req = {"resolution": args.resolution, "width": args.width, "num_classes": args.classes}
                run = admin.start_run(device["id"], space_req, config)
                assert admin.wait_for_run(run["id"], timeout_s=1800, poll_s=0.2)["status"] == "published"
                profile_s = time.perf_counter() - t0
                t1 = time.perf_counter()
                report = validate(admin, device["id"], space, args.samples, work / "out", calibrate=True,
                                  seed=args.seed, precision=args.precision)  # fmt: skip
                table = admin.json("GET", f"/v1/devices/{device['id']}/latency-tables/latest",
                                   params={"precision": args.precision})  # fmt: skip
                skip_heavy = skip_heavy_report(admin, device["id"], table, args.skip_heavy, args.seed)
                validate_s = time.perf_counter() - t1
                if args.png:
                    shutil.copy(work / "out" / "fidelity.png", args.png)
            finally:
                agent.stopping.set()
                thread.join(timeout=300)
    rows = report["rows"]
    print(json.dumps({
        "bench": "fidelity",
        "space": {"resolution": args.resolution, "width": args.width, "classes": args.classes,
                  "hash": space.hash[:12]},
        "networks": args.samples,
        "precision": report["precision"],
        "config": config,
        "rule": {k: table["prediction"].get(k) for k in ("rule", "constant_us", "constant_spread_us",
                                                          "call_overhead_us", "per_op_us", "per_op",
                                                          "same_rounds", "measured_as")},
        "cpus": cpus,
        "measured_ms_range": [round(min(r["measured_us"] for r in rows) / 1e3, 3),
                              round(max(r["measured_us"] for r in rows) / 1e3, 3)],
        "table_rule": _short(report["raw"]),
        "drift": round(report["drift"]["ratio"], 4) if "drift" in report else None,
        "drift_adjusted": _short(report.get("drift_adjusted")),
        "calibrated_held_out": _short(report.get("calibrated_held_out")),
        # the calibration's gate compares this with drift_adjusted: both have the drift since profiling divided out
        "calibrated_held_out_drift_adjusted": _short(report.get("calibrated_held_out_drift_adjusted")),
        "noise_ceiling": _short(report.get("noise_ceiling")),
        "calibration": {k: v for k, v in report.get("calibration", {}).items() if k != "version"},
        "skip_heavy": skip_heavy,
        "profile_s": round(profile_s, 1),
        "validate_s": round(validate_s, 1),
    }, indent=2))  # fmt: skip


SKIP_SHARE = 0.7


def skip_heavy_report(client: ServiceClient, device_id: int, payload: dict, n: int, seed: int) -> dict | None:
    """The rule on n skip-heavy networks, measured as their own set beside the table's anchors: raw,
    drift-adjusted and the noise ceiling (even against odd rounds), as for the uniform sample."""
    if n <= 0:
        return None
    table = PublishedTable.parse(payload)
    rng = random.Random(f"skip-heavy:{seed}")
    archs = [skip_heavy_arch(table.space, SKIP_SHARE, rng) for _ in range(n)]
    measured_set = measure_with_anchors(client, device_id, table, archs)
    predicted = [table.predict_us(a) for a in archs]
    measured = measured_set.median_us
    split = [halves(m) for m in measured_set.networks]
    drift = measured_set.drift or 1.0
    return {
        "networks": n,
        "skip_share": SKIP_SHARE,
        "skips": [a.count("skip") for a in archs],
        "measured_ms_range": [round(min(measured) / 1e3, 3), round(max(measured) / 1e3, 3)],
        "table_rule": _short(errors(predicted, measured)),
        "drift": round(drift, 4),
        "drift_adjusted": _short(errors([p * drift for p in predicted], measured)),
        "noise_ceiling": _short(errors([s[0] for s in split], [s[1] for s in split]))
        if all(s is not None for s in split)
        else None,
    }


if __name__ == "__main__":
    main()
