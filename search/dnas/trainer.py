"""The DNAS search loop: each epoch trains w on 80% of the training split, then theta on the other 20%, then
evaluates the super net on the held-out split.

Runs alone or under torchrun: one process per GPU (nccl) or per CPU share (gloo). The weights' gradients are
averaged by DDP; theta is left out of DDP and its phase runs the bare super net, computing only theta's
gradient (no weight gradients, nothing all-reduced but theta's 9 x 22 numbers), so theta stays identical on
every rank. A checkpoint holds everything needed to continue exactly: position inside the epoch, optimiser
states, beta, every rank's RNG state and partial metrics.

Several devices (one table each): `per-device` shares the weights and trains a theta per device. The weights'
phase draws each sample's network from one device's theta in turn (sample b from device b mod D, priced on
that device's table), so the shared weights learn what every device's search explores; the theta phase
trains each device's theta on every batch against its own table, with its own beta and target. It costs one
weight phase plus D theta phases, not D searches. `all-devices` has one theta whose loss prices every device
(eq. 2's latency factor becomes a product over devices, a beta each, each steered toward its own budget).

Beside the loop, each with one job: `distributed` (device, ranks, DDP), `checkpoint` (what a checkpoint holds
and when one may be resumed), `steering` (beta per device) and `summary` (metrics.jsonl and TensorBoard).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from search.data.datasets import DataSplits
from search.data.loader import eval_loader, train_loader
from search.dnas.checkpoint import load_checkpoint, save_checkpoint
from search.dnas.config import ConfigError, SearchConfig
from search.dnas.distributed import (
    all_reduce_mean,
    all_reduce_sum,
    bf16_supported,
    init_distributed,
    local_rank,
    pick_device,
    rank_divergence,
    wrap_weights_in_ddp,
)
from search.dnas.layout import batch_for_training, model_for_training
from search.dnas.steering import loss_exponents, sample_rows, steer_betas
from search.dnas.summary import MetricsLog, batch_stats, epoch_row, one_device_row, phase_metrics
from search.dnas.supernet import SuperNet, per_sample_loss
from search.space.macro import SearchSpace
from search.tables.latency import LatencyLUT

log = logging.getLogger("dnas.search")

__all__ = ["Searcher", "bf16_supported", "pick_device"]


class Searcher:
    def __init__(self, space: SearchSpace, luts: Sequence[LatencyLUT], data: DataSplits, config: SearchConfig,
                 out: Path, *, table_sha256: Sequence[str | None] | None = None, allow_table_change: bool = False,
                 labels: Sequence[str] | None = None) -> None:  # fmt: skip
        """`luts`: one LUT per device (one device: a list of one), with `table_sha256` and `labels` in the
        same order."""
        if isinstance(luts, LatencyLUT):
            raise TypeError("Searcher takes a list of LUTs, one per device (one device: [lut])")
        self.luts = list(luts)
        self.n = len(self.luts)
        self.per_device = self.n > 1 and config.device_mode == "per-device"
        self.targets_us = config.targets_us(self.n)
        self.labels = list(labels) if labels else [f"device{i}" for i in range(self.n)]
        self.space, self.data, self.cfg, self.out = space, data, config, out
        # None when a table has no content hash: then only the LUT digest guards a resume.
        self.table_sha256 = list(table_sha256) if table_sha256 and all(table_sha256) else None
        self.allow_table_change = allow_table_change
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = pick_device(config, local_rank())
        if config.bf16 and not bf16_supported(self.device):
            raise ConfigError(f"--bf16: this {self.device.type.upper()} has no bfloat16 support; use --no-bf16")
        self.rank = init_distributed(self.device)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.net = SuperNet(space, self.luts, thetas=self.n if self.per_device else 1)
        model_for_training(self.net, self.device)
        self.model: nn.Module = self.net
        if self.rank.world > 1:
            self.model = wrap_weights_in_ddp(self.net, self.device, ["theta", "lut"])
        torch.manual_seed(config.seed + 1000 * self.rank.rank)  # but independent Gumbel draws per rank
        self.weights = self.net.weight_parameters()
        self.lr_w = config.lr_w * (self.rank.world if config.scale_lr else 1)
        self.opt_w = torch.optim.SGD(self.weights, lr=self.lr_w, momentum=config.momentum, weight_decay=config.wd_w)
        self.opt_theta = torch.optim.Adam([self.net.theta], lr=config.lr_theta, weight_decay=config.wd_theta)
        self.betas = [config.beta] * self.n  # one per device, each steered toward its own target
        self.epoch, self.phase, self.step = 0, "w", 0
        self.partial: dict[str, Any] = {}  # this epoch's finished phases' metrics (per group, see _run_phase)
        self.resume_totals: list[float] | None = None  # a phase's running sums, from a mid-epoch checkpoint
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.workers = config.workers if data.streamed else 0
        self.pin = self.device.type == "cuda"
        self.metrics = MetricsLog(out, self.labels, config, self.rank.main)

    @property
    def compute(self) -> dict[str, Any]:
        """Where and how the search ran, for search.json."""
        return {"device": str(self.device), "processes": self.rank.world, "bf16": self.cfg.bf16,
                "lr_w_effective": self.lr_w, "global_batch": self.cfg.batch_size * self.rank.world}  # fmt: skip

    # ---- checkpoints (search.dnas.checkpoint) ---------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self, totals: list[float] | None = None) -> None:
        """Collective under DDP (every rank's RNG state and partial sums are gathered); rank 0 writes."""
        save_checkpoint(self, totals)

    def resume(self) -> bool:
        return load_checkpoint(self)

    # ---- one phase ----------------------------------------------------------------------------------------
    def _lr_at(self, epoch: float) -> float:
        """Cosine over this run's epochs, evaluated per step: a pure function of the position, so a resume with
        more epochs stretches the schedule instead of keeping the old one's length."""
        return 0.5 * self.lr_w * (1 + math.cos(math.pi * min(epoch, self.cfg.epochs) / self.cfg.epochs))

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _rows(self, batch: int) -> torch.Tensor | None:
        """Which device's theta draws each sample's network: per device in turn (per-device search), else None."""
        return sample_rows(batch, self.n, self.per_device, self.device)

    def _exponents(self, rows: torch.Tensor | None) -> float | torch.Tensor:
        return loss_exponents(self.betas, rows, self.device)

    def _run_phase(self, phase: str, tau: float) -> list[dict[str, Any]]:
        """One pass over the phase's split. Returns its metrics per group of samples: one group, or one per
        device in a per-device search (w: the samples drawn from that device's theta; theta: that device's
        theta phase)."""
        cfg, train_theta = self.cfg, phase == "theta"
        dataset = self.data.arch if train_theta else self.data.weights
        loader, steps = train_loader(dataset, cfg.batch_size, cfg.seed + (7 if train_theta else 0), self.epoch,
                                     self.rank.rank, self.rank.world, self.step, cfg.steps_per_epoch,
                                     self.workers, self.pin)  # fmt: skip
        if steps == 0:
            raise ConfigError(f"the {phase} split has fewer than batch_size x processes samples: lower --batch-size")
        groups, columns = (self.n if self.per_device else 1), 4 + self.n
        resumed, self.resume_totals = self.resume_totals, None
        totals = torch.tensor(resumed if resumed else [0.0] * (groups * columns), dtype=torch.float64,
                              device=self.device).reshape(groups, columns)  # fmt: skip
        model = self.net if train_theta else self.model
        params = [self.net.theta] if train_theta else self.weights
        opt = self.opt_theta if train_theta else self.opt_w
        self.net.train()
        self.net.theta.requires_grad_(train_theta)
        desc = f"epoch {self.epoch + 1}/{cfg.epochs} {phase}"
        bar = tqdm(loader, desc=desc, unit="step", leave=False, disable=not self.rank.main, total=steps,
                   initial=self.step)  # fmt: skip
        for x, y in bar:
            x = batch_for_training(x, self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            if train_theta:
                # Each device's theta against its own table (one pass for one theta): gradients accumulate in
                # theta's own slice, and Adam, elementwise, steps every device's theta as its own search would.
                for g in range(groups):
                    rows = torch.full((len(y),), g, device=self.device) if self.per_device else None
                    with self._autocast():
                        logits, latency = model(x, tau, cfg.mode, rows)
                    ce = nn.functional.cross_entropy(logits, y, reduction="none")
                    losses = per_sample_loss(ce, latency, cfg.alpha, self._exponents(rows))
                    losses.mean().backward(inputs=params)  # theta's gradient only: no weight gradient is computed
                    with torch.no_grad():
                        totals[g] += batch_stats(losses, ce, latency, logits, y).sum(0)
                all_reduce_mean(self.net.theta.grad, self.rank.world)
            else:
                for group in self.opt_w.param_groups:
                    group["lr"] = self._lr_at(self.epoch + self.step / steps)
                rows = self._rows(len(y))
                with self._autocast():
                    logits, latency = model(x, tau, cfg.mode, rows)
                ce = nn.functional.cross_entropy(logits, y, reduction="none")
                losses = per_sample_loss(ce, latency, cfg.alpha, self._exponents(rows))
                loss = losses.mean()
                if cfg.normalize_w_loss:
                    # d loss / d w = alpha * log(LAT)^beta * d CE / d w: the factor only rescales w's learning
                    # rate (by 25x at beta = 3 here). Divide out its batch mean: per-sample weighting stays, lr_w
                    # means what it says whatever beta or the device's latencies.
                    norm = (loss / ce.mean().clamp_min(1e-8)).detach()
                    loss, losses = loss / norm, losses / norm
                loss.backward()  # theta does not require grad in this phase (and DDP does not know it)
                with torch.no_grad():
                    stats = batch_stats(losses, ce, latency, logits, y)
                    if rows is None:
                        totals[0] += stats.sum(0)
                    else:
                        totals.index_add_(0, rows, stats)
            opt.step()
            self.step += 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < steps:
                self.save(totals.reshape(-1).tolist())
        bar.close()
        self.net.theta.requires_grad_(True)
        all_reduce_sum(totals, self.rank.world)
        return phase_metrics(totals.tolist())

    @torch.no_grad()
    def validate(self, tau: float) -> dict[str, float]:
        """The super net on the held-out split, masks drawn as in training (eval-mode BN): how well the
        weights generalise while theta moves. Never used to choose anything."""
        loader = eval_loader(self.data.val, self.cfg.batch_size, self.rank.rank, self.rank.world, self.workers,
                             self.pin)  # fmt: skip
        self.net.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in loader:
            x, y = batch_for_training(x, self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits, _ = self.net(x, tau, self.cfg.mode, self._rows(len(y)))
            ce = nn.functional.cross_entropy(logits, y, reduction="sum")
            totals += torch.stack([ce.double(), (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=self.device)])  # fmt: skip
        all_reduce_sum(totals, self.rank.world)
        ce_sum, correct, n = totals.tolist()
        return {"ce": ce_sum / max(n, 1), "acc": correct / max(n, 1)}

    def _steer_beta(self) -> None:
        """Each device's beta toward its own budget (search.dnas.steering)."""
        expected = [self.net.expected_latency_us(d) for d in range(self.n)]
        self.betas = steer_betas(self.betas, expected, self.targets_us, self.cfg.beta_range, self.cfg.beta_gain)

    def _epoch_row(self, tau: float, val: dict[str, float] | None) -> dict[str, Any]:
        """metrics.jsonl's row (search.dnas.summary); with one device, its per-device values as numbers."""
        world = self.rank.world
        weights_sample = torch.cat([p.detach().reshape(-1)[:64] for p in self.weights]) if world > 1 else None
        row = epoch_row(
            epoch=self.epoch, tau=tau, lr_w=self._lr_at(self.epoch), betas=self.betas, partial=self.partial,
            net=self.net, per_device=self.per_device, val=val,
            theta_divergence=rank_divergence(self.net.theta.detach(), world),
            weight_divergence=rank_divergence(weights_sample, world) if weights_sample is not None else 0.0,
        )  # fmt: skip
        return one_device_row(row) if self.n == 1 else row

    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.resume():
            if self.rank.main:
                log.info("resumed at epoch %d (%s phase, step %d)", self.epoch + 1, self.phase, self.step)
            self.metrics.rewrite(self.history)
        self.metrics.open_tensorboard(len(self.history))
        cfg = self.cfg
        bar = tqdm(total=cfg.epochs, initial=min(self.epoch, cfg.epochs), desc="search", unit="epoch",
                   disable=not self.rank.main)  # fmt: skip
        try:
            while self.epoch < cfg.epochs:
                tau = cfg.tau(self.epoch)
                if self.phase == "w":
                    self.partial["w"] = self._run_phase("w", tau)
                    self.phase, self.step = "theta", 0
                if self.phase == "theta" and self.epoch >= cfg.warmup_epochs:
                    self.partial["theta"] = self._run_phase("theta", tau)
                    self._steer_beta()
                self.phase, self.step = "val", 0
                val = self.validate(tau) if cfg.validate else None
                row = self._epoch_row(tau, val)
                self.history.append(row)
                self.epoch, self.phase, self.step, self.partial = self.epoch + 1, "w", 0, {}
                self.save()  # first the checkpoint, then the row: a kill in between loses nothing (see resume)
                self.metrics.append(row)
                if self.rank.main:
                    bar.update(1)
                    lats = row["expected_latency_ms"] if self.n > 1 else [row["expected_latency_ms"]]
                    lat = "/".join(f"{v:.2f}" for v in lats) + "ms"
                    bar.set_postfix(ce=f"{row['ce_w']:.3f}", lat=lat, tau=f"{tau:.2f}")
        finally:
            bar.close()
            self.metrics.close()
        return self.history
