"""The DNAS search loop: each epoch trains w on 80% of the training split, then theta on the other 20%.

Runs alone or under torchrun (DDP, gloo on CPU / nccl on GPU): gradients of w and theta are averaged across
ranks, so theta stays identical on every rank.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from search.config import SearchConfig
from search.data import DataSplits
from search.latency import LatencyLUT
from search.space import SearchSpace
from search.supernet import SuperNet, fbnet_loss

log = logging.getLogger("dnas.search")


@dataclass
class Rank:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Rank:
    """Under torchrun (WORLD_SIZE set): join the process group; gloo on CPU, nccl when CUDA is there."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size())


def _loader(dataset, batch: int, rank: Rank, seed: int, epoch: int) -> DataLoader:  # type: ignore[no-untyped-def]
    if rank.world > 1:
        sampler = DistributedSampler(dataset, num_replicas=rank.world, rank=rank.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True)
    g = torch.Generator().manual_seed(seed + epoch)
    return DataLoader(dataset, batch_size=batch, shuffle=True, generator=g, drop_last=True)


class Searcher:
    def __init__(self, space: SearchSpace, lut: LatencyLUT, data: DataSplits, config: SearchConfig, out: Path) -> None:
        self.space, self.lut, self.data, self.cfg, self.out = space, lut, data, config, out
        self.rank = init_distributed()
        if config.threads:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.net = SuperNet(space, lut)
        self.model: nn.Module = (
            DistributedDataParallel(self.net, find_unused_parameters=True) if self.rank.world > 1 else self.net
        )
        torch.manual_seed(config.seed + 1000 * self.rank.rank)  # but independent Gumbel draws per rank
        self.opt_w = torch.optim.SGD(self.net.weight_parameters(), lr=config.lr_w, momentum=config.momentum,
                                     weight_decay=config.wd_w)  # fmt: skip
        self.opt_theta = torch.optim.Adam([self.net.theta], lr=config.lr_theta, weight_decay=config.wd_theta)
        self.sched_w = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt_w, T_max=max(1, config.epochs))
        self.beta = config.beta
        self.epoch = 0
        self.history: list[dict[str, Any]] = []

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self) -> None:
        if not self.rank.main:
            return
        state = {
            "epoch": self.epoch,
            "net": self.net.state_dict(),
            "opt_w": self.opt_w.state_dict(),
            "opt_theta": self.opt_theta.state_dict(),
            "sched_w": self.sched_w.state_dict(),
            "beta": self.beta,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "space_hash": self.space.hash,
        }
        tmp = self.ckpt_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def resume(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        if state["space_hash"] != self.space.hash:
            raise ValueError(f"{self.ckpt_path} belongs to another space; use a fresh --out directory")
        self.net.load_state_dict(state["net"])
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_theta.load_state_dict(state["opt_theta"])
        self.sched_w.load_state_dict(state["sched_w"])
        self.beta, self.epoch, self.history = state["beta"], state["epoch"], state["history"]
        return True

    # ---- one epoch ----------------------------------------------------------------------------------------
    def _phase(self, dataset, train_theta: bool, tau: float) -> dict[str, float]:  # type: ignore[no-untyped-def]
        cfg = self.cfg
        loader = _loader(dataset, cfg.batch_size, self.rank, cfg.seed + (7 if train_theta else 0), self.epoch)
        opt = self.opt_theta if train_theta else self.opt_w
        self.model.train()
        totals = {"loss": 0.0, "ce": 0.0, "latency_us": 0.0, "correct": 0.0, "n": 0.0}
        desc = f"epoch {self.epoch + 1}/{cfg.epochs} {'theta' if train_theta else 'w'}"
        for x, y in tqdm(loader, desc=desc, unit="step", leave=False, disable=not self.rank.main):
            logits, latency = self.model(x, tau, cfg.mode)
            ce = nn.functional.cross_entropy(logits, y, reduction="none")
            loss = fbnet_loss(ce, latency, cfg.alpha, self.beta)
            if not train_theta and cfg.normalize_w_loss:
                # d loss / d w = alpha * log(LAT)^beta * d CE / d w: the factor only rescales w's learning rate
                # (by 25x at beta = 3 here). Divide out its batch mean: per-sample weighting stays, lr_w means
                # what it says whatever beta or the device's latencies.
                loss = loss / (loss / ce.mean().clamp_min(1e-8)).detach()
            self.opt_w.zero_grad(set_to_none=True)
            self.opt_theta.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n = len(y)
            totals["loss"] += float(loss.detach()) * n
            totals["ce"] += float(ce.detach().mean()) * n
            totals["latency_us"] += float(latency.detach().mean()) * n
            totals["correct"] += float((logits.argmax(1) == y).sum())
            totals["n"] += n
        if self.rank.world > 1:
            t = torch.tensor(list(totals.values()), dtype=torch.float64)
            dist.all_reduce(t)
            totals = dict(zip(totals, t.tolist(), strict=True))
        n = max(totals.pop("n"), 1)
        return {k: v / n for k, v in totals.items()}

    def _steer_beta(self) -> None:
        """Toward --target-latency-ms: raise beta while the expected latency is above the target, lower it
        while below, by (E[LAT] / target) ** gain per epoch, within beta_range."""
        cfg = self.cfg
        if cfg.target_latency_ms is None:
            return
        ratio = self.net.expected_latency_us() / (cfg.target_latency_ms * 1e3)
        lo, hi = cfg.beta_range
        self.beta = min(hi, max(lo, max(self.beta, 0.05) * ratio**cfg.beta_gain))

    def _theta_divergence(self) -> float:
        """Largest |theta - theta on rank 0| over all ranks: 0 when DDP keeps the ranks in step."""
        if self.rank.world == 1:
            return 0.0
        reference = self.net.theta.detach().clone()
        dist.broadcast(reference, src=0)
        gap = (self.net.theta.detach() - reference).abs().max()
        dist.all_reduce(gap, op=dist.ReduceOp.MAX)
        return float(gap)

    def run(self, resume: bool = True) -> list[dict[str, Any]]:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.resume() and self.rank.main:
            log.info("resumed at epoch %d", self.epoch)
        metrics_path = self.out / "metrics.jsonl"
        bar = tqdm(total=self.cfg.epochs, initial=self.epoch, desc="search", unit="epoch", disable=not self.rank.main)
        while self.epoch < self.cfg.epochs:
            tau = self.cfg.tau(self.epoch)
            w_stats = self._phase(self.data.weights, train_theta=False, tau=tau)
            self.sched_w.step()
            theta_stats = None
            if self.epoch >= self.cfg.warmup_epochs:
                theta_stats = self._phase(self.data.arch, train_theta=True, tau=tau)
                self._steer_beta()
            row = {
                "epoch": self.epoch + 1,
                "tau": tau,
                "beta": self.beta,
                "ce_w": w_stats["ce"],
                "acc_w": w_stats["correct"],
                "ce_theta": theta_stats["ce"] if theta_stats else None,
                "acc_theta": theta_stats["correct"] if theta_stats else None,
                "sampled_latency_ms": w_stats["latency_us"] / 1e3,
                "expected_latency_ms": self.net.expected_latency_us() / 1e3,
                "theta_entropy": self.net.entropy(),
                "theta_rank_divergence": self._theta_divergence(),
            }
            self.history.append(row)
            self.epoch += 1
            if self.rank.main:
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                bar.update(1)
                bar.set_postfix(ce=f"{w_stats['ce']:.3f}", lat=f"{row['expected_latency_ms']:.2f}ms", tau=f"{tau:.2f}")
            self.save()
        bar.close()
        return self.history


def theta_png(net: SuperNet, path: Path, title: str = "") -> None:
    """P_theta per layer as a heatmap: the picture of what the search chose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = net.probabilities().numpy()
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
