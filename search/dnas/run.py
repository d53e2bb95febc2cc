"""Run a search: `python -m search.run ...` (what torchrun and `dnas search` start).

Every `SearchConfig` setting is an option here (generated, see `search.dnas.cli_options`); `--print-config`
prints the resolved config and exits. Several `--device` (or `--table`) options search for several devices at
once (`--device-mode per-device` or `all-devices`); their tables must price the same space.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from search.data.datasets import DataError, load_data
from search.dnas.cli_options import add_config_arguments, config_from_namespace
from search.dnas.config import ConfigError, SearchConfig
from search.dnas.outputs import write_outputs
from search.dnas.trainer import Searcher
from search.tables.client import ServiceClient
from search.tables.device_matrix import device_labels
from search.tables.latency import TableError, apply_calibration, build_lut
from search.tables.schema import PublishedTable

log = logging.getLogger("dnas.search")


def _one_each(values: Sequence[str], n: int, what: str) -> list[str | None]:
    if not values:
        return [None] * n
    if len(values) == 1:
        return list(values) * n
    if len(values) != n:
        raise TableError(f"{len(values)} {what} values for {n} tables: one, or one per table")
    return list(values)


def load_tables(tables: Sequence[Path], server: str | None, devices: Sequence[int], versions: Sequence[str],
                token: str | None, cache_dir: Path | None = None,
                precisions: Sequence[str] = ()) -> list[PublishedTable]:  # fmt: skip
    """The tables of one search, in order: files, or several devices' tables fetched one after another from
    the service (each cached on disk as a single fetch is). `versions`: one for all devices, or one each.
    `precisions` (fp32, int8): one for all or one each; a table of another precision is refused, never
    taken instead. One device may appear twice with two precisions: two targets on one chip."""
    if tables and devices:
        raise TableError("give --table files or --device ids, not both")
    if tables:
        wanted = _one_each(precisions, len(tables), "--precision")
        return [PublishedTable.from_file(t).require_precision(p) for t, p in zip(tables, wanted, strict=True)]
    if server is None or not devices:
        raise TableError("give --table FILE, or --server URL and --device ID")
    versions = list(versions) or ["latest"]
    if len(versions) == 1:
        versions = versions * len(devices)
    if len(versions) != len(devices):
        raise TableError(f"{len(versions)} --version values for {len(devices)} devices: one, or one per device")
    wanted = _one_each(precisions, len(devices), "--precision")
    with ServiceClient(server, token, cache_dir=cache_dir) as client:
        return [client.table(device, version, precision=p)
                for device, version, p in zip(devices, versions, wanted, strict=True)]  # fmt: skip


def newest_calibration(server: str | None, token: str | None, device: int | None,
                       table: PublishedTable) -> dict[str, Any] | None:  # fmt: skip
    """The newest calibration fitted on exactly this table version (`dnas validate --calibrate`), or None.
    A calibration of an older version corrects other numbers, so it is not applied to this one."""
    if server is None or device is None:
        return None
    try:
        with ServiceClient(server, token) as client:
            cal = client.latest_calibration(device, table.space.hash, table.precision)
    except TableError:
        log.info("no calibration for device %s; searching with the table's own rule", device)
        return None
    if cal.get("table_version") != table.version:
        log.warning("the newest calibration (v%s) was fitted on table v%s, not v%s: not applied; run "
                    "`dnas validate --calibrate` on this version", cal.get("version"), cal.get("table_version"),
                    table.version)  # fmt: skip
        return None
    return cal


def _same_space(tables: Sequence[PublishedTable]) -> None:
    """A search over several devices prices one super net on every table: they must describe the same space."""
    first = tables[0].space
    for i, table in enumerate(tables[1:], start=1):
        if table.space.hash != first.hash:
            raise TableError(
                f"table {i + 1} ({table.device_info.get('name', '?')}) prices space "
                f"{table.space.hash[:12]}, table 1 prices {first.hash[:12]}: profile every device with the same "
                "space (resolution, width, classes, candidates)"
            )


def run_search(
    table: PublishedTable | Sequence[PublishedTable],
    data_spec: str,
    cfg: SearchConfig,
    out: Path,
    calibration: dict[str, Any] | Sequence[dict[str, Any] | None] | None = None,
    *,
    allow_table_change: bool = False,
) -> dict[str, Any]:
    """Search `table`'s space on `data_spec`; write the outputs (rank 0) and return the summary (rank 0; {}
    elsewhere). The data split comes from `cfg.split_seed` and is recorded in every output.

    Several tables (one per device, with a calibration each or None): one search for all of them, per
    `cfg.device_mode` (see search.dnas.trainer)."""
    tables = [table] if isinstance(table, PublishedTable) else list(table)
    if not tables:
        raise TableError("no latency table to search against")
    calibrations = list(calibration) if isinstance(calibration, list | tuple) else [calibration] * len(tables)
    if len(calibrations) != len(tables):
        raise TableError(f"{len(calibrations)} calibrations for {len(tables)} tables")
    _same_space(tables)
    space = tables[0].space
    n = len(tables)
    if n > 1 and cfg.device_mode == "all-devices" and cfg.target_latency_ms and cfg.target_mode == "band":
        raise ConfigError("--target-mode band aims one device's latency; an all-devices search takes budgets "
                          "(at_most)")  # fmt: skip
    budgets = cfg.targets_us(n)  # refuses a number of targets that is neither 1 nor one per device
    labels = device_labels(tables)
    luts = []
    for i, (one, cal) in enumerate(zip(tables, calibrations, strict=True)):
        lut = build_lut(space, one)
        if cal is not None:
            lut = apply_calibration(lut, cal["model"], space)
            applied = {k: cal.get(k) for k in ("version", "table_version", "created_at")}
            tables[i] = one.with_calibration(applied | {"kind": cal["model"].get("kind")})
            log.info("%s: latencies calibrated by calibration v%s (fitted on table v%s)", labels[i],
                     applied["version"], applied["table_version"])  # fmt: skip
        if budgets[i] is not None:
            fastest_us = lut.of_arch(lut.table.argmin(1).tolist())
            if fastest_us > budgets[i]:
                log.warning("%starget %.4g ms is below the fastest network of this space (%.4g ms): it cannot be "
                            "met; beta will rise to its cap and the fastest network is reported as missing it",
                            f"{labels[i]}: " if n > 1 else "", budgets[i] / 1e3, fastest_us / 1e3)  # fmt: skip
        luts.append(lut)
    data = load_data(data_spec, space.resolution, seed=cfg.split_seed, classes=cfg.classes)
    if data.num_classes != space.num_classes:
        raise TableError(
            f"the table's space has {space.num_classes} classes but the data has {data.num_classes}: "
            f"profile the space with --classes {data.num_classes}"
        )
    searcher = Searcher(space, luts, data, cfg, out,
                        table_sha256=[t.content_hash for t in tables], allow_table_change=allow_table_change,
                        labels=labels)  # fmt: skip
    searcher.run()
    summary: dict[str, Any] = {}
    if searcher.rank.main:
        summary = write_outputs(searcher.net, luts, tables, labels, cfg, out, data.record, searcher.events,
                                searcher.compute)  # fmt: skip
    if searcher.rank.world > 1:
        dist.barrier()
    return summary


def target_notes(summary: dict[str, Any]) -> list[str]:
    """The budgets a search could not meet, one line each (nothing when all were met)."""
    target = summary.get("target")
    if not target:
        return []
    if "met" in target and isinstance(target["met"], bool):  # one device
        return [] if target["met"] else [target["label"]]
    if "all_met" in target:  # all-devices
        return [] if target["all_met"] else [target["label"]]
    return [f"{label}: {t['label']}" for label, t in target.items() if not t["met"]]  # per-device


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="FBNet search against a latency table.")
    parser.add_argument("--table", type=Path, action="append", default=[],
                        help="A latency table file; repeat for several devices.")  # fmt: skip
    parser.add_argument("--server", help="Fetch the tables from this service (with --device).")
    parser.add_argument("--device", type=int, action="append", default=[],
                        help="Device id on the service; repeat for several devices.")  # fmt: skip
    parser.add_argument("--version", action="append", default=[],
                        help="Table version or 'latest' (default): one for all devices, or one each.")  # fmt: skip
    parser.add_argument("--precision", action="append", default=[], choices=("fp32", "int8"),
                        help="The table's precision: one for all devices, or one each (default: the newest "
                             "table, whatever its precision).")  # fmt: skip
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
        tables = load_tables(args.table, args.server, args.device, args.version, args.token,
                             precisions=args.precision)  # fmt: skip
        devices: list[int | None] = list(args.device) or [None] * len(tables)
        calibrations = [None if args.raw else newest_calibration(args.server, args.token, device, table)
                        for device, table in zip(devices, tables, strict=True)]  # fmt: skip
        summary = run_search(tables, args.data, cfg, args.out, calibrations,
                             allow_table_change=args.allow_table_change)  # fmt: skip
    except (TableError, DataError, ConfigError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if summary:
        print(json.dumps(summary["chosen"], indent=2))
        for note in target_notes(summary):
            print(f"note: {note}")


if __name__ == "__main__":
    main()
