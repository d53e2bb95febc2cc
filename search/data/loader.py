"""Deterministic, resumable, sharded batches for the search loop.

The order of an epoch is a function of (seed, epoch) alone, identical on every rank; rank r takes every
world-th sample of it, and every rank gets the same number of full batches (DDP would hang otherwise). A
mid-epoch checkpoint stores only the step, and the sampler restarts there without reading the skipped images.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from search.data.datasets import set_epoch


class ShardedOrder(Sampler[int]):
    def __init__(self, size: int, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 start_step: int = 0, max_steps: int | None = None, shuffle: bool = True) -> None:  # fmt: skip
        self.size, self.batch, self.seed, self.epoch = size, batch, seed, epoch
        self.rank, self.world, self.start_step, self.shuffle = rank, world, start_step, shuffle
        steps = (size // world) // batch
        self.steps = min(steps, max_steps) if max_steps is not None else steps

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(self.size)
        mine = order[self.rank :: self.world][: self.steps * self.batch]
        return iter(mine[self.start_step * self.batch :].tolist())


def train_loader(dataset: Dataset, batch: int, seed: int, epoch: int, rank: int, world: int, start_step: int,
                 max_steps: int | None, workers: int, pin: bool) -> tuple[DataLoader, int]:  # fmt: skip
    """Batches of one phase from `start_step`, and the phase's total number of steps."""
    set_epoch(dataset, epoch)
    order = ShardedOrder(len(dataset), batch, seed, epoch, rank, world, start_step, max_steps)  # type: ignore[arg-type]
    return _loader(dataset, order, batch, workers, pin, drop_last=True), order.steps


def eval_loader(dataset: Dataset, batch: int, rank: int, world: int, workers: int, pin: bool) -> DataLoader:
    """Every held-out sample once over all ranks (rank r: samples r, r + world, ...); no shuffling."""
    n = len(dataset)  # type: ignore[arg-type]
    indices = list(range(rank, n, world))
    return _loader(dataset, indices, batch, workers, pin, drop_last=False)


def _loader(dataset: Dataset, sampler, batch: int, workers: int, pin: bool,  # type: ignore[no-untyped-def]
            drop_last: bool) -> DataLoader:  # fmt: skip
    extra = {"prefetch_factor": 2} if workers else {}
    # Its own generator: a DataLoader without one draws its workers' base seed from the global RNG, which would
    # shift the Gumbel draws after a resume (our augmentation is seeded per sample anyway).
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin,
                      drop_last=drop_last, generator=torch.Generator().manual_seed(0), **extra)  # fmt: skip
