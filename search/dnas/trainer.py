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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from search.data.datasets import DataSplits
from search.data.loader import eval_loader, train_loader
from search.dnas.config import ConfigError, SearchConfig
from search.dnas.supernet import SuperNet, per_sample_loss
from search.space.macro import SearchSpace
from search.tables.latency import LatencyLUT, TableError

log = logging.getLogger("dnas.search")
CHECKPOINT_FORMAT = 2
# A phase's running sums, per group of samples (one group; per device in a per-device search): loss, ce, the
# latency on each device (one column per table), correct, n. With one table, the layout checkpoints have had.


@dataclass
class Rank:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(cfg: SearchConfig, local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU: LOCAL_RANK) when asked or, with `auto`, when present; else the CPU."""
    if cfg.compute_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--compute-device cuda, but torch sees no CUDA device")
    if cfg.compute_device != "cpu" and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def init_distributed(device: torch.device) -> Rank:
    """Under torchrun (WORLD_SIZE set): join the process group, nccl on GPU and gloo on CPU."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank(local=local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), local)


def lut_sha256(lut: LatencyLUT | Sequence[LatencyLUT]) -> str:
    """The latencies the search actually optimises (after any calibration): what a resume must not change."""
    luts = [lut] if isinstance(lut, LatencyLUT) else list(lut)
    digests = []
    for one in luts:
        h = hashlib.sha256(one.table.detach().cpu().to(torch.float64).numpy().tobytes())
        h.update(repr(float(one.fixed_us)).encode())
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Searcher:
    def __init__(self, space: SearchSpace, lut: LatencyLUT | Sequence[LatencyLUT], data: DataSplits,
                 config: SearchConfig, out: Path, *, table_sha256: str | Sequence[str] | None = None,
                 allow_table_change: bool = False, labels: Sequence[str] | None = None) -> None:  # fmt: skip
        """`lut`: one table's LUT, or one per device (with `table_sha256` and `labels` in the same order)."""
        self.luts = [lut] if isinstance(lut, LatencyLUT) else list(lut)
        self.n = len(self.luts)
        self.per_device = self.n > 1 and config.device_mode == "per-device"
        self.targets_us = config.targets_us(self.n)
        self.labels = list(labels) if labels else [f"device{i}" for i in range(self.n)]
        self.space, self.lut, self.data, self.cfg, self.out = space, self.luts[0], data, config, out
        if isinstance(table_sha256, str) or table_sha256 is None:
            self.table_sha256: str | list[str] | None = table_sha256
        else:
            self.table_sha256 = list(table_sha256) if self.n > 1 else table_sha256[0]
        self.allow_table_change = allow_table_change
        if config.threads:
            torch.set_num_threads(config.threads)
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = pick_device(config, local)
        if config.bf16 and not bf16_supported(self.device):
            raise ConfigError(f"--bf16: this {self.device.type.upper()} has no bfloat16 support; use --no-bf16")
        self.rank = init_distributed(self.device)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.net = SuperNet(space, self.luts, thetas=self.n if self.per_device else 1).to(self.device)
        self.model: nn.Module = self.net
        if self.rank.world > 1:
            # theta is not DDP's: its phase bypasses DDP, and in the weights' phase it gets no gradient at all.
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.net, ["theta", "lut"])
            self.model = DistributedDataParallel(
                self.net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,  # hard mode: a candidate no sample chose has no gradient
            )
        torch.manual_seed(config.seed + 1000 * self.rank.rank)  # but independent Gumbel draws per rank
        self.weights = self.net.weight_parameters()
        self.lr_w = config.lr_w * (self.rank.world if config.scale_lr else 1)
        self.opt_w = torch.optim.SGD(self.weights, lr=self.lr_w, momentum=config.momentum, weight_decay=config.wd_w)
        self.opt_theta = torch.optim.Adam([self.net.theta], lr=config.lr_theta, weight_decay=config.wd_theta)
        self.betas = [config.beta] * self.n  # one per device, each steered toward its own target
        self.epoch, self.phase, self.step = 0, "w", 0
        self.partial: dict[str, Any] = {}  # this epoch's finished phases' metrics (per group, see _run_phase)
        self._resume_totals: list[float] | None = None  # a phase's running sums, from a mid-epoch checkpoint
        self.history: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.workers = config.workers if data.streamed else 0
        self.pin = self.device.type == "cuda"
        self.writer: Any = None

    @property
    def compute(self) -> dict[str, Any]:
        """Where and how the search ran, for search.json."""
        return {"device": str(self.device), "processes": self.rank.world, "bf16": self.cfg.bf16,
                "lr_w_effective": self.lr_w, "global_batch": self.cfg.batch_size * self.rank.world}  # fmt: skip

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _rank_state(self, totals: list[float] | None) -> dict[str, Any]:
        state: dict[str, Any] = {"rng_cpu": torch.get_rng_state(), "totals": totals}
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, totals: list[float] | None = None) -> None:
        """Collective under DDP (every rank's RNG state and partial sums are gathered); rank 0 writes."""
        mine = self._rank_state(totals)
        if self.rank.world > 1:
            ranks: list[Any] = [None] * self.rank.world
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        if not self.rank.main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "position": {"epoch": self.epoch, "phase": self.phase, "step": self.step},
            "net": self.net.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "opt_theta": self.opt_theta.state_dict(),
            "beta": self.betas[0] if self.n == 1 else list(self.betas),
            "devices": self.n,
            "partial": self.partial,
            "history": self.history,
            "events": self.events,
            "config": self.cfg.to_dict(),
            "space_hash": self.space.hash,
            "table_sha256": self.table_sha256,
            "lut_sha256": lut_sha256(self.luts),
            "data": self.data.record,
            "world": self.rank.world,
            "ranks": ranks,
        }
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def _check_resumable(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{self.ckpt_path} was written by an older dnas; use a fresh --out directory")
        if state["space_hash"] != self.space.hash:
            raise ConfigError(f"{self.ckpt_path} belongs to another space; use a fresh --out directory")
        old_mode = state["config"].get("device_mode", "per-device")
        if state.get("devices", 1) != self.n or (self.n > 1 and old_mode != self.cfg.device_mode):
            raise ConfigError(
                f"{self.ckpt_path} searched {state.get('devices', 1)} device(s) ({old_mode}), this run "
                f"{self.n} ({self.cfg.device_mode}): theta has another shape; use a fresh --out directory"
            )
        old_table, old_lut = state.get("table_sha256"), state.get("lut_sha256")
        changed = []
        if self.table_sha256 and old_table and old_table != self.table_sha256:
            changed.append(f"table {old_table[:12]} -> {self.table_sha256[:12]}")
        if old_lut != lut_sha256(self.luts):
            changed.append("latencies (table or calibration)")
        if changed:
            if not self.allow_table_change:
                raise TableError(
                    f"{self.ckpt_path} searched against other latencies ({'; '.join(changed)}): resume with the "
                    "same table, or pass --allow-table-change to continue on this one"
                )
            log.warning("resuming on a different table: %s", "; ".join(changed))
            self.events.append({"epoch": state["position"]["epoch"], "event": "table changed", "what": changed})
        old_data, new_data = state.get("data") or {}, self.data.record
        for key in ("kind", "split_seed", "classes", "rule"):
            if old_data.get(key) != new_data.get(key):
                raise ConfigError(
                    f"the checkpoint searched on other data ({key}: {old_data.get(key)!r} -> {new_data.get(key)!r});"
                    " theta would train on images held out so far: use the same data, or a fresh --out"
                )

    def resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        self.events = list(state.get("events", []))
        self._check_resumable(state)
        self.net.load_state_dict(state["net"])
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_theta.load_state_dict(state["opt_theta"])
        for group in self.opt_w.param_groups:  # the lr follows this run's schedule, not the saved one
            group["lr"] = self.lr_w
        pos = state["position"]
        self.epoch, self.phase, self.step = pos["epoch"], pos["phase"], pos["step"]
        self.history, self.partial = state["history"], state["partial"]
        old_cfg = state["config"]
        # beta: the saved one is the steering's current value; a --beta that differs from the one the search
        # started with is the user's new choice and wins.
        if old_cfg.get("beta") != self.cfg.beta:
            log.warning("--beta %s replaces the checkpoint's beta %s", self.cfg.beta, state["beta"])
        else:
            saved = state["beta"]
            self.betas = [float(b) for b in saved] if isinstance(saved, list) else [float(saved)]
        if isinstance(old_cfg.get("target_latency_ms"), int | float):  # before budgets per device
            old_cfg = old_cfg | {"target_latency_ms": (float(old_cfg["target_latency_ms"]),)}
        old_cfg.setdefault("device_mode", self.cfg.device_mode)
        changed = {k: [old_cfg.get(k), v] for k, v in self.cfg.to_dict().items() if old_cfg.get(k) != v}
        if changed:
            log.warning("resumed with changed settings: %s", changed)
            self.events.append({"epoch": self.epoch, "event": "settings changed", "what": changed})
        ranks = state["ranks"]
        if state["world"] == self.rank.world:
            mine = ranks[self.rank.rank]
            torch.set_rng_state(mine["rng_cpu"])
            if self.device.type == "cuda" and "rng_cuda" in mine:
                torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
            self._resume_totals = mine["totals"]
        else:
            # Another number of processes shards the data differently: restart the interrupted phase.
            log.warning("checkpoint from %d processes, now %d: the current phase restarts", state["world"],
                        self.rank.world)  # fmt: skip
            self.step = 0
            self._resume_totals = None
        return True

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
        if not self.per_device:
            return None
        return torch.arange(batch, device=self.device) % self.n

    def _exponents(self, rows: torch.Tensor | None) -> float | torch.Tensor:
        """beta of eq. 2, per sample and device: one table, its beta; a per-device search, the beta of the
        device sample b is priced for (`rows[b]`) and 0 elsewhere (that device's factor is exactly 1);
        all-devices, every device's beta."""
        if self.n == 1:
            return self.betas[0]
        betas = torch.tensor(self.betas, dtype=torch.float32, device=self.device)
        if rows is None:
            return betas
        return torch.nn.functional.one_hot(rows, self.n).float() * betas[rows].unsqueeze(1)

    def _stats(self, loss: torch.Tensor, ce: torch.Tensor, latency: torch.Tensor, logits: torch.Tensor,
               y: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """[B, 4 + D] per-sample values for the phase's running sums: loss, ce, latency on each device, correct, 1."""
        b = len(y)
        one = torch.ones(b, 1, dtype=torch.float64, device=self.device)
        return torch.cat([loss.detach().double().reshape(b, 1), ce.detach().double().reshape(b, 1),
                          latency.detach().double().reshape(b, -1),
                          (logits.argmax(1) == y).double().reshape(b, 1), one], dim=1)  # fmt: skip

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
        resumed, self._resume_totals = self._resume_totals, None
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
            x = x.to(self.device, non_blocking=True)
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
                        totals[g] += self._stats(losses, ce, latency, logits, y).sum(0)
                if self.rank.world > 1:
                    dist.all_reduce(self.net.theta.grad)
                    self.net.theta.grad /= self.rank.world
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
                    stats = self._stats(losses, ce, latency, logits, y)
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
        if self.rank.world > 1:
            dist.all_reduce(totals)
        out = []
        for row in totals.tolist():
            n = max(row[-1], 1.0)
            out.append({"loss": row[0] / n, "ce": row[1] / n, "latency_us": [v / n for v in row[2:-2]],
                        "acc": row[-2] / n, "n": row[-1]})  # fmt: skip
        return out

    @torch.no_grad()
    def validate(self, tau: float) -> dict[str, float]:
        """The super net on the held-out split, masks drawn as in training (eval-mode BN): how well the
        weights generalise while theta moves. Never used to choose anything."""
        loader = eval_loader(self.data.val, self.cfg.batch_size, self.rank.rank, self.rank.world, self.workers,
                             self.pin)  # fmt: skip
        self.net.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self._autocast():
                logits, _ = self.net(x, tau, self.cfg.mode, self._rows(len(y)))
            ce = nn.functional.cross_entropy(logits, y, reduction="sum")
            totals += torch.stack([ce.double(), (logits.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=self.device)])  # fmt: skip
        if self.rank.world > 1:
            dist.all_reduce(totals)
        ce_sum, correct, n = totals.tolist()
        return {"ce": ce_sum / max(n, 1), "acc": correct / max(n, 1)}

    def _steer_beta(self) -> None:
        """Toward --target-latency-ms: raise beta while the expected latency is above the target, lower it
        while below, by (E[LAT] / target) ** gain per epoch, within beta_range. Each device's beta follows its
        own expected latency and target."""
        lo, hi = self.cfg.beta_range
        for d, target in enumerate(self.targets_us):
            if target is None:
                continue
            ratio = self.net.expected_latency_us(d) / target
            self.betas[d] = min(hi, max(lo, max(self.betas[d], 0.05) * ratio**self.cfg.beta_gain))

    def _theta_divergence(self) -> float:
        """Largest |theta - theta on rank 0| over all ranks: 0 when the ranks stay in step."""
        if self.rank.world == 1:
            return 0.0
        return self._divergence(self.net.theta.detach())

    def _weight_divergence(self) -> float:
        """The same for the weights (a sample of them, all ranks): 0 when DDP averages their gradients."""
        if self.rank.world == 1:
            return 0.0
        flat = torch.cat([p.detach().reshape(-1)[:64] for p in self.weights])
        return self._divergence(flat)

    def _divergence(self, mine: torch.Tensor) -> float:
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        gap = (mine - reference).abs().max()
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        return float(gap)

    # ---- the loop -----------------------------------------------------------------------------------------
    def _phase_groups(self, phase: str) -> list[dict[str, Any]] | None:
        """This epoch's metrics of a finished phase, per group (a checkpoint from before several devices held
        one dict with a scalar latency: read as one group)."""
        found = self.partial.get(phase)
        if found is None:
            return None
        if isinstance(found, dict):
            lat = found.get("latency_us", 0.0)
            return [found | {"latency_us": lat if isinstance(lat, list) else [lat], "n": 1.0}]
        return found

    def _epoch_row(self, tau: float, val: dict[str, float] | None) -> dict[str, Any]:
        """metrics.jsonl's row. With several devices, per-device values are lists in the tables' order: beta,
        expected and sampled latency always; theta's CE, accuracy and entropy in a per-device search."""
        w, th = self._phase_groups("w"), self._phase_groups("theta")
        n_w = sum(g["n"] for g in w) if w else 0.0

        def pooled(groups: list[dict[str, Any]] | None, key: str) -> float | None:
            if not groups:
                return None
            if len(groups) == 1:
                return groups[0][key]
            total = sum(g["n"] for g in groups)
            return sum(g[key] * g["n"] for g in groups) / total if total else 0.0

        if self.n == 1:
            sampled: Any = w[0]["latency_us"][0] / 1e3 if w else 0.0
            expected: Any = self.net.expected_latency_us() / 1e3
            beta: Any = self.betas[0]
        else:
            beta = list(self.betas)
            expected = [self.net.expected_latency_us(d) / 1e3 for d in range(self.n)]
            if not w or not n_w:
                sampled = [0.0] * self.n
            elif self.per_device:  # each device's latency over the samples drawn from its own theta
                sampled = [w[d]["latency_us"][d] / 1e3 for d in range(self.n)]
            else:
                sampled = [v / 1e3 for v in w[0]["latency_us"]]
        if self.per_device:
            ce_theta: Any = [g["ce"] for g in th] if th else None
            acc_theta: Any = [g["acc"] for g in th] if th else None
            entropy: Any = [self.net.entropy(d) for d in range(self.n)]
        else:
            ce_theta, acc_theta, entropy = pooled(th, "ce"), pooled(th, "acc"), self.net.entropy()
        return {
            "epoch": self.epoch + 1,
            "tau": tau,
            "beta": beta,
            "lr_w": self._lr_at(self.epoch),  # at the start of this epoch's weight phase
            "ce_w": pooled(w, "ce"),
            "acc_w": pooled(w, "acc"),
            "ce_theta": ce_theta,
            "acc_theta": acc_theta,
            "val_ce": val["ce"] if val else None,
            "val_acc": val["acc"] if val else None,
            "sampled_latency_ms": sampled,
            "expected_latency_ms": expected,
            "theta_entropy": entropy,
            "theta_rank_divergence": self._theta_divergence(),
            "weight_rank_divergence": self._weight_divergence(),
        }

    def _write_metrics(self, row: dict[str, Any] | None) -> None:
        if not self.rank.main:
            return
        path = self.out / "metrics.jsonl"
        if row is None:  # after a resume: the checkpoint's history is the truth (no row twice, none lost)
            _atomic_text(path, "".join(json.dumps(r) + "\n" for r in self.history))
        else:
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        if self.writer is not None and row is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    self.writer.add_scalar(key, value, row["epoch"])
                elif isinstance(value, list):  # one per device
                    for label, v in zip(self.labels, value, strict=False):
                        self.writer.add_scalar(f"{key}/{label}", v, row["epoch"])
            self.writer.flush()

    def _open_tensorboard(self) -> None:
        if not (self.cfg.tensorboard and self.rank.main):
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events a killed run wrote after its last checkpoint, so curves have no doubles.
        self.writer = SummaryWriter(str(self.out / "tensorboard"), purge_step=len(self.history) + 1)
        if not self.history:
            self.writer.add_text("config", "```\n" + json.dumps(self.cfg.to_dict(), indent=2) + "\n```", 0)

    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.resume():
            if self.rank.main:
                log.info("resumed at epoch %d (%s phase, step %d)", self.epoch + 1, self.phase, self.step)
            self._write_metrics(None)
        self._open_tensorboard()
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
                self._write_metrics(row)
                if self.rank.main:
                    bar.update(1)
                    lats = row["expected_latency_ms"] if self.n > 1 else [row["expected_latency_ms"]]
                    lat = "/".join(f"{v:.2f}" for v in lats) + "ms"
                    bar.set_postfix(ce=f"{row['ce_w']:.3f}", lat=lat, tau=f"{tau:.2f}")
        finally:
            bar.close()
            if self.writer is not None:
                self.writer.close()
        return self.history


def theta_png(net: SuperNet, path: Path, title: str = "", index: int = 0) -> None:
    """P_theta per layer as a heatmap: the picture of what the search chose (theta `index` of several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = net.probabilities(index).cpu().numpy()
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * probs.shape[1], 1.2 + 0.32 * probs.shape[0]))
    # Scaled to the largest probability: early in a search theta is near uniform and a 0..1 scale hides it.
    im = ax.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=float(probs.max()))
    ax.set_xticks(range(probs.shape[1]), net.space.candidates, rotation=45, ha="right")
    ax.set_yticks(range(probs.shape[0]), [f"layer {i}" for i in range(probs.shape[0])])
    for (i, j), p in __import__("numpy").ndenumerate(probs):
        if p >= 1.5 / probs.shape[1]:
            ax.text(
                j,
                i,
                f"{p:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if p > 0.6 * probs.max() else "white",
            )
    ax.set_title(title or "P(theta) per layer")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
