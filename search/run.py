"""Run a search: `python -m search.run ...` (what torchrun and `dnas search` start).

Every `SearchConfig` setting is an option here (generated, see `search.cli_options`); `--print-config`
prints the resolved config and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from search.cli_options import add_config_arguments, config_from_namespace
from search.config import ConfigError, SearchConfig
from search.data import DataError, load_data
from search.latency import LatencyTable, TableClient, TableError, apply_calibration, build_lut, fetch_calibration
from search.outputs import write_outputs
from search.trainer import Searcher

log = logging.getLogger("dnas.search")


def load_table(table: Path | None, server: str | None, device: int | None, version: str, token: str | None,
               cache_dir: Path | None = None) -> LatencyTable:  # fmt: skip
    if table is not None:
        return LatencyTable.from_file(table)
    if server is None or device is None:
        raise TableError("give --table FILE, or --server URL and --device ID")
    return TableClient(server, token, cache_dir).fetch(device, version)


def newest_calibration(server: str | None, token: str | None, device: int | None,
                       table: LatencyTable) -> dict[str, Any] | None:  # fmt: skip
    """The newest calibration fitted on exactly this table version (`dnas validate --calibrate`), or None.
    A calibration of an older version corrects other numbers, so it is not applied to this one."""
    if server is None or device is None:
        return None
    try:
        cal = fetch_calibration(server, token, device, table.space.hash)
    except TableError:
        log.info("no calibration for device %s; searching with the table's own rule", device)
        return None
    if cal.get("table_version") != table.payload.get("version"):
        log.warning("the newest calibration (v%s) was fitted on table v%s, not v%s: not applied; run "
                    "`dnas validate --calibrate` on this version", cal.get("version"), cal.get("table_version"),
                    table.payload.get("version"))  # fmt: skip
        return None
    return cal


def run_search(
    table: LatencyTable,
    data_spec: str,
    cfg: SearchConfig,
    out: Path,
    calibration: dict[str, Any] | None = None,
    *,
    allow_table_change: bool = False,
) -> dict[str, Any]:
    """Search `table`'s space on `data_spec`; write the outputs (rank 0) and return the summary (rank 0; {}
    elsewhere). The data split comes from `cfg.split_seed` and is recorded in every output."""
    space = table.space
    lut = build_lut(space, table)
    if calibration is not None:
        lut = apply_calibration(lut, calibration["model"], space)
        applied = {k: calibration.get(k) for k in ("version", "table_version", "created_at")}
        table = LatencyTable(table.payload | {"calibration": applied | {"kind": calibration["model"].get("kind")}})
        log.info("latencies calibrated by calibration v%s (fitted on table v%s)", applied["version"],
                 applied["table_version"])  # fmt: skip
    if cfg.target_latency_ms is not None:
        fastest_ms = lut.of_arch(lut.table.argmin(1).tolist()) / 1e3
        if fastest_ms > cfg.target_latency_ms:
            log.warning("target %.4g ms is below the fastest network of this space (%.4g ms): it cannot be met; "
                        "beta will rise to its cap and the fastest network is reported as missing it",
                        cfg.target_latency_ms, fastest_ms)  # fmt: skip
    data = load_data(data_spec, space.resolution, seed=cfg.split_seed, classes=cfg.classes)
    if data.num_classes != space.num_classes:
        raise TableError(
            f"the table's space has {space.num_classes} classes but the data has {data.num_classes}: "
            f"profile the space with --classes {data.num_classes}"
        )
    searcher = Searcher(space, lut, data, cfg, out, table_sha256=table.content_hash,
                        allow_table_change=allow_table_change)  # fmt: skip
    searcher.run()
    summary: dict[str, Any] = {}
    if searcher.rank.main:
        summary = write_outputs(searcher.net, lut, table, cfg, out, data.record, searcher.events, searcher.compute)
    if searcher.rank.world > 1:
        dist.barrier()
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="FBNet search against a latency table.")
    parser.add_argument("--table", type=Path, help="A latency table file.")
    parser.add_argument("--server", help="Fetch the table from this service (with --device).")
    parser.add_argument("--device", type=int, help="Device id on the service.")
    parser.add_argument("--version", default="latest", help="Table version or 'latest'.")
    parser.add_argument("--token", default=os.environ.get("DNAS_TOKEN"), help=argparse.SUPPRESS)
    parser.add_argument("--data", default="digits", help="digits, cifar10:PATH or imagefolder:PATH.")
    parser.add_argument("--raw", action=argparse.BooleanOptionalAction, default=False,
                        help="Search with the table's own rule, not the newest calibration fitted on it.")  # fmt: skip
    parser.add_argument("--allow-table-change", action=argparse.BooleanOptionalAction, default=False,
                        help="Resume although the table (content hash) or calibration changed.")  # fmt: skip
    parser.add_argument("--out", type=Path, help="Output directory (resumes if it holds a checkpoint).")
    parser.add_argument("--print-config", action="store_true", help="Print the resolved settings and exit.")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_namespace(args)
        if args.print_config:
            print(json.dumps(cfg.to_dict()))
            return
        if args.out is None:
            raise ConfigError("--out is required")
        table = load_table(args.table, args.server, args.device, args.version, args.token)
        calibration = None if args.raw else newest_calibration(args.server, args.token, args.device, table)
        summary = run_search(table, args.data, cfg, args.out, calibration, allow_table_change=args.allow_table_change)
    except (TableError, DataError, ConfigError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if summary:
        print(json.dumps(summary["chosen"], indent=2))
        if summary.get("target") and not summary["target"]["met"]:
            print(f"note: {summary['target']['label']}")


if __name__ == "__main__":
    main()
