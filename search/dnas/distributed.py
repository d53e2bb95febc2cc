"""Where a search runs: this process's compute device, its rank under torchrun, the DDP wrapper, and the
check that every rank still holds the same numbers.

Kept apart from the loop (as timm keeps `distributed` beside its trainer): the loop asks "am I rank 0?" and
"how many processes?", never how the process group was set up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from search.dnas.config import ConfigError, SearchConfig


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


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def init_distributed(device: torch.device) -> Rank:
    """Under torchrun (WORLD_SIZE set): join the process group, nccl on GPU and gloo on CPU."""
    local = local_rank()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Rank(local=local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Rank(dist.get_rank(), dist.get_world_size(), local)


def wrap_weights_in_ddp(net: nn.Module, device: torch.device, ignore: list[str]) -> nn.Module:
    """DDP over the weights only: the parameters and buffers named in `ignore` (theta, the LUT) are not
    all-reduced by DDP, because theta's phase bypasses DDP and in the weights' phase theta has no gradient."""
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(net, ignore)
    return DistributedDataParallel(
        net,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # hard mode: a candidate no sample chose has no gradient
    )


def rank_divergence(mine: torch.Tensor, world: int) -> float:
    """Largest |mine - rank 0's| over all ranks (collective): 0 when the ranks stay in step."""
    if world == 1:
        return 0.0
    reference = mine.clone()
    dist.broadcast(reference, src=0)
    gap = (mine - reference).abs().max()
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap)


def all_reduce_mean(grad: torch.Tensor, world: int) -> None:
    """Average a gradient DDP does not own (theta's) over the ranks, in place."""
    if world > 1:
        dist.all_reduce(grad)
        grad /= world


def all_reduce_sum(totals: torch.Tensor, world: int) -> None:
    """Sum running totals over the ranks, in place (every rank gets the whole data set's sums)."""
    if world > 1:
        dist.all_reduce(totals)
