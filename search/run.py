"""Run a search: `python -m search.run ...` (also what `torchrun` and `dnas search` start)."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from search.config import SearchConfig
from search.data import DataError, load_data
from search.latency import LatencyTable, TableClient, TableError, apply_calibration, build_lut, fetch_calibration
from search.outputs import write_outputs
from search.trainer import Searcher


def load_table(table: Path | None, server: str | None, device: int | None, version: str, token: str | None,
               cache_dir: Path | None = None) -> LatencyTable:  # fmt: skip
    if table is not None:
        return LatencyTable.from_file(table)
    if server is None or device is None:
        raise TableError("give --table FILE, or --server URL and --device ID")
    return TableClient(server, token, cache_dir).fetch(device, version)


def run_search(table: LatencyTable, data_spec: str, cfg: SearchConfig, out: Path,
               calibration: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    space = table.space
    lut = build_lut(space, table)
    if calibration is not None:
        lut = apply_calibration(lut, calibration["model"])
    data = load_data(data_spec, space.resolution, seed=cfg.seed)
    if data.num_classes != space.num_classes:
        raise TableError(
            f"the table's space has {space.num_classes} classes but the data has {data.num_classes}: "
            f"profile the space with --classes {data.num_classes}"
        )
    searcher = Searcher(space, lut, data, cfg, out)
    searcher.run()
    summary: dict[str, Any] = {}
    if searcher.rank.main:
        summary = write_outputs(searcher.net, lut, table, cfg, out)
    if searcher.rank.world > 1:
        dist.barrier()
    return summary


def add_search_args(p: argparse.ArgumentParser) -> None:
    d = SearchConfig()
    for name, value in d.to_dict().items():
        if name == "beta_range":
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, action="store_true")
        elif value is None:
            p.add_argument(flag, type=float if "ms" in name else int, default=None)
        else:
            p.add_argument(flag, type=type(value), default=value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FBNet search against a latency table.")
    parser.add_argument("--table", type=Path)
    parser.add_argument("--server")
    parser.add_argument("--device", type=int)
    parser.add_argument("--version", default="latest")
    parser.add_argument("--token", default=os.environ.get("DNAS_TOKEN"))
    parser.add_argument("--data", default="digits")
    parser.add_argument("--calibrated", action="store_true", help="Apply the device's latest calibration.")
    parser.add_argument("--out", type=Path, required=True)
    add_search_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = SearchConfig(**{k: getattr(args, k) for k in SearchConfig().to_dict() if k != "beta_range"})
    try:
        table = load_table(args.table, args.server, args.device, args.version, args.token)
        calibration = None
        if args.calibrated:
            if not (args.server and args.device is not None):
                raise TableError("--calibrated needs --server and --device")
            calibration = fetch_calibration(args.server, args.token, args.device, table.space.hash)
        summary = run_search(table, args.data, cfg, args.out, calibration)
    except (TableError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if summary:
        print(json.dumps(summary["chosen"], indent=2))


if __name__ == "__main__":
    main()
