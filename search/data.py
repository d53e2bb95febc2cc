"""Data sets for search and retraining. Nothing is downloaded: a CIFAR-10 python-batch folder, an ImageFolder
folder, or scikit-learn's bundled digits (8x8, upscaled) for offline demos and tests."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

MEAN_STD = {"digits": ((0.5,), (0.5,))}


class DataError(ValueError):
    pass


@dataclass
class DataSplits:
    """`train` is split 80 / 20 into `weights` (w) and `arch` (theta), as the paper does each epoch."""

    weights: Dataset
    arch: Dataset
    val: Dataset
    num_classes: int
    resolution: int


def _tensor_splits(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, val_fraction: float = 0.2
) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    n_w = int(len(train) * 0.8)
    w_idx, a_idx = train[:n_w], train[n_w:]
    ds = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataSplits(ds(w_idx), ds(a_idx), ds(val), num_classes, x.shape[-1])


def digits(resolution: int = 32, seed: int = 0) -> DataSplits:
    """1797 real handwritten digits shipped inside scikit-learn, upscaled to RGB at `resolution`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)
    return _tensor_splits(x, torch.tensor(d.target, dtype=torch.long), 10, seed)


def cifar10(folder: Path, resolution: int = 32, seed: int = 0) -> DataSplits:
    """The python-batch folder (`data_batch_1..5`, `test_batch`); the test batch is the validation set."""
    folder = Path(folder)
    files = sorted(folder.glob("data_batch_*"))
    if not files or not (folder / "test_batch").exists():
        raise DataError(f"{folder} is not a CIFAR-10 python-batch folder (data_batch_1..5, test_batch)")

    def load(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for p in paths:
            with open(p, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"]))
        x = torch.tensor(np.concatenate(xs), dtype=torch.float32) / 255.0
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
        x = (x - mean) / std
        if resolution != 32:
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
        return x, torch.tensor(np.concatenate(ys), dtype=torch.long)

    x, y = load(files)
    vx, vy = load([folder / "test_batch"])
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=g)
    n_w = int(len(x) * 0.8)
    return DataSplits(TensorDataset(x[order[:n_w]], y[order[:n_w]]), TensorDataset(x[order[n_w:]], y[order[n_w:]]),
                      TensorDataset(vx, vy), 10, resolution)  # fmt: skip


def image_folder(folder: Path, resolution: int = 32, seed: int = 0) -> DataSplits:
    """`folder/CLASS/*.jpg|png`; read with Pillow, resized to `resolution`, 20% held out for validation."""
    from PIL import Image

    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not classes:
        raise DataError(f"{folder} has no class sub-folders (expected FOLDER/CLASS/image.png)")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".webp"):
                continue
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB").resize((resolution, resolution)), dtype=np.float32) / 255.0
            xs.append(torch.tensor(arr).permute(2, 0, 1))
            ys.append(label)
    if not xs:
        raise DataError(f"{folder} has no images")
    x = (torch.stack(xs) - 0.5) / 0.5
    return _tensor_splits(x, torch.tensor(ys), len(classes), seed)


def load_data(spec: str, resolution: int, seed: int = 0) -> DataSplits:
    """`digits`, `cifar10:PATH` or `imagefolder:PATH`."""
    kind, _, path = spec.partition(":")
    if kind == "digits":
        return digits(resolution, seed)
    if kind == "cifar10" and path:
        return cifar10(Path(path), resolution, seed)
    if kind == "imagefolder" and path:
        return image_folder(Path(path), resolution, seed)
    raise DataError(f"unknown data {spec!r}: use digits, cifar10:PATH or imagefolder:PATH")
