"""Train an architecture from scratch (after the search, as the paper does) and report its accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from search.data.datasets import DataSplits, set_epoch
from search.space.macro import SearchSpace
from search.space.model import build_model


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    seed: int = 0
    label_smoothing: float = 0.0
    workers: int = 0  # DataLoader workers; worth it for streamed (decoded per sample) data sets


@torch.no_grad()
def accuracy(model: nn.Module, dataset, batch_size: int = 256, workers: int = 0) -> float:  # type: ignore[no-untyped-def]
    model.eval()
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=batch_size, num_workers=workers):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def train_architecture(space: SearchSpace, arch: list[str], data: DataSplits, cfg: TrainConfig,
                       progress: bool = True) -> tuple[nn.Module, dict]:  # fmt: skip
    """Both search splits (w and theta) are training data now; the held-out split measures accuracy."""
    torch.manual_seed(cfg.seed)
    model = build_model(space, arch)
    train = ConcatDataset([data.weights, data.arch])
    loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=cfg.workers,
                        generator=torch.Generator().manual_seed(cfg.seed))  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=True)  # fmt: skip
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    history = []
    for epoch in tqdm(range(cfg.epochs), desc="train", unit="epoch", disable=not progress):
        model.train()
        set_epoch(train, epoch)  # fresh random crops each epoch (augmenting data sets)
        total = 0.0
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "train_loss": total / len(loader)})
    return model, {"val_accuracy": accuracy(model, data.val, workers=cfg.workers), "history": history}
