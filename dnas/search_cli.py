"""`dnas search` and `dnas train`: the DNAS client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from dnas.errors import UserError

Table = Annotated[Path | None, typer.Option("--table", help="A latency table file (as `dnas table get` writes).")]
Server = Annotated[str | None, typer.Option("--server", envvar="DNAS_SERVER", help="Fetch the table from here.")]
Token = Annotated[str | None, typer.Option("--token", envvar="DNAS_TOKEN", help="Reader or admin token.")]
Data = Annotated[str, typer.Option(help="digits, cifar10:PATH or imagefolder:PATH.")]


def search(
    out: Annotated[Path, typer.Option("--out", help="Output directory (resumes if it holds a checkpoint).")],
    table: Table = None,
    server: Server = None,
    device: Annotated[int | None, typer.Option(help="Device id, with --server.")] = None,
    version: Annotated[str, typer.Option(help="Table version or 'latest'.")] = "latest",
    token: Token = None,
    data: Data = "digits",
    epochs: Annotated[int, typer.Option(help="Search epochs.")] = 90,
    warmup_epochs: Annotated[int, typer.Option(help="Epochs that train only the weights.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Per-process batch size.")] = 64,
    mode: Annotated[
        str, typer.Option(help="soft (every candidate, the paper) or hard (one sampled per layer).")
    ] = "soft",
    alpha: Annotated[float, typer.Option(help="Loss = CE * alpha * log(LAT)^beta.")] = 0.2,
    beta: Annotated[float, typer.Option(help="Latency exponent: larger -> cheaper blocks.")] = 0.6,
    target_latency_ms: Annotated[float | None, typer.Option(help="Steer toward this predicted latency.")] = None,
    tau0: Annotated[float, typer.Option(help="Initial Gumbel-softmax temperature.")] = 5.0,
    tau_decay: Annotated[float, typer.Option(help="tau = tau0 * exp(-decay * epoch).")] = 0.045,
    lr_w: Annotated[float, typer.Option(help="SGD learning rate of the weights.")] = 0.1,
    lr_theta: Annotated[float, typer.Option(help="Adam learning rate of theta.")] = 0.01,
    samples: Annotated[int, typer.Option(help="Architectures to sample from P_theta.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch threads per process.")] = None,
    nproc: Annotated[int, typer.Option(help="Processes (DDP through torchrun; gloo on CPU).")] = 1,
    calibrated: Annotated[bool, typer.Option(help="Apply the device's latest calibration (dnas validate).")] = False,
) -> None:
    """Search the table's space for the architecture that is accurate and fast on that device."""
    if mode not in ("soft", "hard"):
        raise UserError(f"--mode must be soft or hard, not {mode!r}")
    args = ["--out", str(out), "--data", data, "--version", version, "--epochs", str(epochs),
            "--warmup-epochs", str(warmup_epochs), "--batch-size", str(batch_size), "--mode", mode,
            "--alpha", str(alpha), "--beta", str(beta), "--tau0", str(tau0), "--tau-decay", str(tau_decay),
            "--lr-w", str(lr_w), "--lr-theta", str(lr_theta), "--samples", str(samples),
            "--seed", str(seed)]  # fmt: skip
    for flag, value in (("--table", table), ("--server", server), ("--device", device),
                        ("--target-latency-ms", target_latency_ms), ("--threads", threads)):  # fmt: skip
        if value is not None:
            args += [flag, str(value)]
    if calibrated:
        args.append("--calibrated")
    env = os.environ | ({"DNAS_TOKEN": token} if token else {})  # never on the command line: `ps` shows it
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "search.run", *args]  # fmt: skip
    else:
        cmd = [sys.executable, "-m", "search.run", *args]
    code = subprocess.call(cmd, env=env)
    if code != 0:
        raise typer.Exit(code)


def train(
    arch: Annotated[Path, typer.Option("--arch", help="An architecture JSON written by `dnas search`.")],
    data: Data = "digits",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 30,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 0.1,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Write the result JSON here.")] = None,
) -> None:
    """Train an architecture from scratch and report its held-out accuracy."""
    from search.data import DataError, load_data
    from search.retrain import TrainConfig, train_architecture
    from search.space import SearchSpace

    try:
        doc = json.loads(arch.read_text())
        space = SearchSpace.from_dict(doc["space"])
        splits = load_data(data, space.resolution, seed=seed)
    except (OSError, ValueError, KeyError, DataError) as exc:
        raise UserError(f"cannot train {arch}: {exc}") from None
    if splits.num_classes != space.num_classes:
        raise UserError(
            f"the architecture has {space.num_classes} outputs but the data has {splits.num_classes} classes"
        )
    _, result = train_architecture(space, doc["arch"], splits, TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size,
                                                                          seed=seed))  # fmt: skip
    summary = {"arch": doc["arch"], "val_accuracy": result["val_accuracy"], "epochs": epochs,
               "predicted_latency_ms": doc.get("predicted_latency_ms"), "flops": doc.get("flops"),
               "params": doc.get("params")}  # fmt: skip
    if out:
        out.write_text(json.dumps(summary | {"history": result["history"]}, indent=2))
    typer.echo(json.dumps(summary, indent=2))
