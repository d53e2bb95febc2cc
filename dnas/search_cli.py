"""`dnas search` and `dnas train`: the DNAS client."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dnas.errors import UserError
from search.dnas.cli_options import typer_parameters

Table = Annotated[
    list[Path] | None,
    typer.Option("--table", help="A latency table file (as `dnas table get` writes); repeat for several devices."),
]
Server = Annotated[str | None, typer.Option("--server", envvar="DNAS_SERVER", help="Fetch the table from here.")]
Token = Annotated[str | None, typer.Option("--token", envvar="DNAS_TOKEN", help="Reader or admin token.")]
Data = Annotated[str, typer.Option(help="digits, cifar10:PATH or imagefolder:PATH.")]


def _run_options() -> list[inspect.Parameter]:
    """The options of `dnas search` that are not search settings (those come from SearchConfig)."""
    kw = inspect.Parameter.KEYWORD_ONLY
    opts: list[tuple[str, Any, Any]] = [
        ("out", Annotated[Path | None, typer.Option("--out", help="Output directory (resumes from a checkpoint).")],
         None),
        ("table", Table, None),
        ("server", Server, None),
        ("device", Annotated[list[int] | None, typer.Option(
            help="Device id, with --server; repeat to search for several devices at once (see --device-mode).")],
         None),
        ("version", Annotated[list[str] | None, typer.Option(
            help="Table version or 'latest' (default): one for every device, or one per device.")], None),
        ("precision", Annotated[list[str] | None, typer.Option(
            help="fp32 or int8: the table's precision, one for every device or one per device (default: the "
                 "newest table whatever its precision). A table of another precision is refused.")], None),
        ("token", Token, None),
        ("data", Data, "digits"),
        ("raw", Annotated[bool, typer.Option(
            help="Use the table's own rule, not the newest calibration fitted on it (dnas validate --calibrate).")],
         False),
        ("allow_table_change", Annotated[bool, typer.Option(
            help="Resume a checkpoint although the table (content hash) or calibration changed.")], False),
        ("nproc", Annotated[int, typer.Option(help="Processes (DDP through torchrun; nccl on GPU, gloo on CPU).")],
         1),
        ("print_config", Annotated[bool, typer.Option("--print-config",
                                                      help="Print the resolved settings and exit.")], False),
    ]  # fmt: skip
    return [inspect.Parameter(name, kw, default=default, annotation=ann) for name, ann, default in opts]


def search(**kwargs: Any) -> None:
    """Search the table's space for the architecture that is accurate and fast on that device (several devices:
    repeat --device or --table; see --device-mode).

    Every search setting is an option (with its default shown); `python -m search.run` takes the same ones.
    """
    from search.dnas.cli_options import config_from_kwargs, config_to_argv
    from search.dnas.config import ConfigError

    run = {p.name: kwargs.pop(p.name) for p in _run_options()}
    try:
        cfg = config_from_kwargs(kwargs)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    args = ["--data", run["data"]]
    for flag, value in (("--out", run["out"]), ("--server", run["server"])):
        if value is not None:
            args += [flag, str(value)]
    for flag, values in (
        ("--table", run["table"]),
        ("--device", run["device"]),
        ("--version", run["version"]),
        ("--precision", run["precision"]),
    ):
        for value in values or []:
            args += [flag, str(value)]
    for flag in ("raw", "allow_table_change", "print_config"):
        if run[flag]:
            args.append("--" + flag.replace("_", "-"))
    args += config_to_argv(cfg)
    if run["out"] is None and not run["print_config"]:
        raise UserError("--out is required")
    if run["nproc"] > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={run['nproc']}",
               "-m", "search.run", *args]  # fmt: skip
        # The token goes to the workers in their environment, never on their command line (`ps` shows those),
        # and this process's environment is left as it was.
        env = os.environ | ({"DNAS_TOKEN": run["token"]} if run["token"] else {})
        code = subprocess.call(cmd, env=env)
        if code != 0:
            raise typer.Exit(code)
        return
    from search.dnas.run import main as run_main

    # In this process the token is an argument list handed to the parser, not a command line `ps` shows.
    run_main([*args, "--token", run["token"]] if run["token"] else args)


search.__signature__ = inspect.Signature([*_run_options(), *typer_parameters()])  # type: ignore[attr-defined]


def train(
    arch: Annotated[Path, typer.Option("--arch", help="An architecture JSON written by `dnas search`.")],
    data: Annotated[str | None, typer.Option(
        help="Default: the data the search used, with its split (so the held-out images stay held out).")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed of the training (not of the split: that is recorded).")] = 0,
    workers: Annotated[int, typer.Option(help="DataLoader workers (streamed data sets).")] = 4,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the result JSON here.")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Also report int8 accuracy: the trained network exported "
                    "fp32 and int8 (the tables' recipe, calibrated on training images), both run by onnxruntime "
                    "on the held-out split.")] = False,
) -> None:  # fmt: skip
    """Train an architecture from scratch on the search's training images; report held-out accuracy."""
    from search.data.datasets import DataError, load_data, load_recorded
    from search.dnas.retrain import TrainConfig, train_architecture
    from search.space.macro import SearchSpace

    try:
        doc = json.loads(arch.read_text())
        space = SearchSpace.from_dict(doc["space"])
        record = doc.get("data") or {}
        if record.get("split_seed") is not None:
            # The split the search used: its held-out images were never trained on, by w or by theta.
            splits = load_recorded(record, space.resolution, spec=data)
            if splits.record.get("warning"):
                typer.echo(f"note: {splits.record['warning']}", err=True)
        else:
            if data is None:
                raise UserError(f"{arch} records no data split (an older search): give --data")
            typer.echo("note: the architecture records no data split; the held-out images may include ones "
                       "the search trained on", err=True)  # fmt: skip
            splits = load_data(data, space.resolution, seed=seed)
    except (OSError, ValueError, KeyError, DataError) as exc:
        raise UserError(f"cannot train {arch}: {exc}") from None
    if splits.num_classes != space.num_classes:
        raise UserError(
            f"the architecture has {space.num_classes} outputs but the data has {splits.num_classes} classes"
        )
    cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      workers=workers if splits.streamed else 0)  # fmt: skip
    model, result = train_architecture(space, doc["arch"], splits, cfg)
    summary = {"arch": doc["arch"], "val_accuracy": result["val_accuracy"], "epochs": epochs,
               "predicted_latency_ms": doc.get("predicted_latency_ms"), "flops": doc.get("flops"),
               **({"predicted_latency_ms_by_device": doc["predicted_latency_ms_by_device"]}
                  if "predicted_latency_ms_by_device" in doc else {}),
               "params": doc.get("params"),
               "data": {k: splits.record.get(k) for k in ("spec", "split_seed", "sizes")}}  # fmt: skip
    if int8:
        from search.dnas.retrain import int8_accuracy

        summary |= int8_accuracy(space, doc["arch"], model, splits, workers=cfg.workers)
    if out:
        out.write_text(json.dumps(summary | {"history": result["history"]}, indent=2))
    typer.echo(json.dumps(summary, indent=2))
