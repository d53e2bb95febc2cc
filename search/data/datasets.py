"""Data sets for search and retraining. Nothing is downloaded: an ImageFolder tree streamed from disk, a
CIFAR-10 python-batch folder, or scikit-learn's bundled digits (8x8, upscaled) for offline demos and tests.

Images are decoded per sample in DataLoader workers (never the whole set into RAM): memory does not grow with
the number of images. Every split is recorded (`DataSplits.record`: spec, split seed, classes, rule, sizes and
fingerprints) in the search's outputs, so `dnas train` rebuilds the same held-out split and never evaluates
on an image the search trained on.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from search.data.transforms import (
    CIFAR_MEAN_STD,
    IMAGENET_MEAN_STD,
    decode_eval,
    decode_train,
    random_pad_crop_flip,
    resize_to,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VAL_FRACTION = 0.2  # held out when the data set has no validation split of its own
ARCH_FRACTION = 0.2  # of the training split: theta's share, the paper's 80 / 20


class DataError(ValueError):
    pass


@dataclass
class DataSplits:
    """`weights` (w) and `arch` (theta) split the training data 80 / 20, as the paper does each epoch; `val`
    is held out from both. `streamed`: samples are decoded or augmented per item, so loader workers help."""

    weights: Dataset
    arch: Dataset
    val: Dataset
    num_classes: int
    resolution: int
    record: dict[str, Any] = field(default_factory=dict)
    streamed: bool = False


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Tell augmenting data sets (also inside Concat/Subset wrappers) which epoch's random crops to draw."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            set_epoch(part, epoch)
    elif isinstance(dataset, Subset):
        set_epoch(dataset.dataset, epoch)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample augmentation seed: the crops depend on (seed, epoch, image), not on worker count or order."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) % (2**63 - 1)


def _fingerprint(names: list[str] | np.ndarray) -> str:
    h = hashlib.sha256()
    for name in sorted(n.decode() if isinstance(n, bytes) else str(n) for n in names):
        h.update(name.encode() + b"\n")
    return h.hexdigest()


def _unit(seed: int, salt: str, name: str) -> float:
    """A stable uniform number in [0, 1) per (seed, salt, file): a file's split never depends on which other
    files exist, so adding images to a folder cannot move a search-training image into the held-out set."""
    digest = hashlib.blake2b(f"{seed}:{salt}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ---- ImageFolder, streamed -----------------------------------------------------------------------------------
class ImageFiles(Dataset):
    """Images named by relative path under `root`, decoded on access. Paths are one numpy bytes array (not a
    list of str): forked workers then share it instead of copying it page by page as reference counts change."""

    def __init__(self, root: Path, paths: np.ndarray, labels: np.ndarray, resolution: int, train: bool,
                 seed: int) -> None:  # fmt: skip
        self.root, self.paths, self.labels = str(root), paths, labels
        self.resolution, self.train, self.seed, self.epoch = resolution, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = os.path.join(self.root, self.paths[index].decode())
        with Image.open(path) as img:
            if self.train:
                g = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
                x = decode_train(img, self.resolution, g, *IMAGENET_MEAN_STD)
            else:
                x = decode_eval(img, self.resolution, *IMAGENET_MEAN_STD)
        return x, int(self.labels[index])


def _scan(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Class = top-level sub-folder; its images may sit in nested folders. Sorted, so runs agree."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    files: dict[str, list[str]] = {}
    for name in classes:
        found = []
        for dirpath, dirnames, filenames in os.walk(folder / name):
            dirnames.sort()
            rel = os.path.relpath(dirpath, folder)
            found += [os.path.join(rel, f) for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
        files[name] = found
    return classes, files


def _pick_classes(classes: list[str], n: int | None, seed: int) -> list[str]:
    if n is None:
        return classes
    if n > len(classes):
        raise DataError(f"asked for {n} classes but the data has {len(classes)}")
    return sorted(random.Random(seed).sample(classes, n))


def image_folder(folder: Path, resolution: int = 32, seed: int = 0, classes: int | None = None) -> DataSplits:
    """`folder/CLASS/**/*.jpg|png`, or `folder/train/CLASS/...` with `folder/val/CLASS/...` (ImageNet's layout:
    `val` is then the held-out split). Otherwise 20% of each class's images are held out by a hash of their
    path; the rest is split 80 / 20 between w and theta the same way."""
    folder = Path(folder)
    has_val = (folder / "train").is_dir() and (folder / "val").is_dir()
    train_root = folder / "train" if has_val else folder
    names, files = _scan(train_root)
    if not names:
        raise DataError(f"{train_root} has no class sub-folders (expected FOLDER/CLASS/image.jpg)")
    chosen = _pick_classes(names, classes, seed)
    label_of = {name: i for i, name in enumerate(chosen)}
    parts: dict[str, tuple[list[str], list[int]]] = {"weights": ([], []), "arch": ([], []), "val": ([], [])}
    for name in chosen:
        for rel in files[name]:
            if not has_val and _unit(seed, "val", rel) < VAL_FRACTION:
                part = "val"
            else:
                part = "arch" if _unit(seed, "arch", rel) < ARCH_FRACTION else "weights"
            parts[part][0].append(rel)
            parts[part][1].append(label_of[name])
    val_root = train_root
    if has_val:
        _, val_files = _scan(folder / "val")
        for name in chosen:
            for rel in val_files.get(name, []):
                parts["val"][0].append(rel)
                parts["val"][1].append(label_of[name])
        val_root = folder / "val"
    if not parts["weights"][0]:
        raise DataError(f"{folder} has no images")

    def dataset(part: str, root: Path, train: bool) -> ImageFiles:
        paths, labels = parts[part]
        return ImageFiles(root, np.array(paths, dtype=np.bytes_), np.array(labels, dtype=np.int64), resolution,
                          train, seed)  # fmt: skip

    record = {
        "kind": "imagefolder",
        "split_seed": seed,
        "classes": chosen,
        "class_subset": classes,
        "rule": "val = FOLDER/val" if has_val else f"val: blake2b(seed:val:path) < {VAL_FRACTION}",
        "arch_rule": f"arch: blake2b(seed:arch:path) < {ARCH_FRACTION}, else weights",
        "sizes": {k: len(v[0]) for k, v in parts.items()},
        "val_sha256": _fingerprint(parts["val"][0]),
        "train_sha256": _fingerprint(parts["weights"][0] + parts["arch"][0]),
        "transforms": "train: random-resized-crop (0.08-1, 3/4-4/3) + flip; eval: centre crop 87.5% + resize; "
        "ImageNet mean/std",
    }
    return DataSplits(dataset("weights", train_root, True), dataset("arch", train_root, True),
                      dataset("val", val_root, False), len(chosen), resolution, record, streamed=True)  # fmt: skip


# ---- CIFAR-10 (in memory as uint8: 150 MB; resized and augmented per sample) ----------------------------------
class TensorImages(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, resolution: int, train: bool, seed: int) -> None:
        self.x, self.y, self.resolution, self.train, self.seed, self.epoch = x, y, resolution, train, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.x[index]
        if self.train:
            g = torch.Generator().manual_seed(_sample_seed(self.seed, self.epoch, index))
            img = random_pad_crop_flip(img, 4, g)
        mean, std = CIFAR_MEAN_STD
        x = (img.float() / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        return resize_to(x, self.resolution), int(self.y[index])


def cifar10(folder: Path, resolution: int = 32, seed: int = 0, classes: int | None = None) -> DataSplits:
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
        return torch.from_numpy(np.concatenate(xs)), torch.tensor(np.concatenate(ys), dtype=torch.long)

    x, y = load(files)
    vx, vy = load([folder / "test_batch"])
    chosen = [int(c) for c in _pick_classes([str(c) for c in range(10)], classes, seed)]
    if classes is not None:
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(chosen)] = torch.arange(len(chosen))
        keep, vkeep = remap[y] >= 0, remap[vy] >= 0
        x, y, vx, vy = x[keep], remap[y[keep]], vx[vkeep], remap[vy[vkeep]]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_w = int(len(x) * (1 - ARCH_FRACTION))
    w_idx, a_idx = order[:n_w], order[n_w:]
    record = {
        "kind": "cifar10",
        "split_seed": seed,
        "classes": chosen,
        "class_subset": classes,
        "rule": "val = test_batch; weights / arch: randperm(seed) 80 / 20 of data_batch_*",
        "sizes": {"weights": len(w_idx), "arch": len(a_idx), "val": len(vy)},
        "val_sha256": _fingerprint([str(i) for i in range(len(vy))]),
        "train_sha256": _fingerprint([str(int(i)) for i in order]),
        "transforms": "train: pad-4 random crop + flip; both: resize to resolution; CIFAR mean/std",
    }
    return DataSplits(TensorImages(x[w_idx], y[w_idx], resolution, True, seed),
                      TensorImages(x[a_idx], y[a_idx], resolution, True, seed),
                      TensorImages(vx, vy, resolution, False, seed), len(chosen), resolution, record,
                      streamed=True)  # fmt: skip


# ---- digits (tiny, in memory, no augmentation) ----------------------------------------------------------------
def digits(resolution: int = 32, seed: int = 0, classes: int | None = None) -> DataSplits:
    """1797 real handwritten digits shipped inside scikit-learn, upscaled to RGB at `resolution`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).repeat(1, 3, 1, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    chosen = [int(c) for c in _pick_classes([str(c) for c in range(10)], classes, seed)]
    if classes is not None:
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(chosen)] = torch.arange(len(chosen))
        keep = remap[y] >= 0
        x, y = x[keep], remap[y[keep]]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * VAL_FRACTION)
    val, train = order[:n_val], order[n_val:]
    n_w = int(len(train) * (1 - ARCH_FRACTION))
    w_idx, a_idx = train[:n_w], train[n_w:]
    record = {
        "kind": "digits",
        "split_seed": seed,
        "classes": chosen,
        "class_subset": classes,
        "rule": "randperm(seed): first 20% val, then weights / arch 80 / 20",
        "sizes": {"weights": len(w_idx), "arch": len(a_idx), "val": len(val)},
        "val_sha256": _fingerprint([str(int(i)) for i in val]),
        "train_sha256": _fingerprint([str(int(i)) for i in train]),
    }
    ds = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataSplits(ds(w_idx), ds(a_idx), ds(val), len(chosen), resolution, record)


def load_data(spec: str, resolution: int, seed: int = 0, classes: int | None = None) -> DataSplits:
    """`digits`, `cifar10:PATH` or `imagefolder:PATH`. `seed` decides the split and the class subset."""
    kind, _, path = spec.partition(":")
    if kind == "digits":
        splits = digits(resolution, seed, classes)
    elif kind == "cifar10" and path:
        splits = cifar10(Path(path), resolution, seed, classes)
    elif kind == "imagefolder" and path:
        splits = image_folder(Path(path), resolution, seed, classes)
    else:
        raise DataError(f"unknown data {spec!r}: use digits, cifar10:PATH or imagefolder:PATH")
    splits.record = {"spec": spec, **splits.record}
    return splits


def load_recorded(record: dict[str, Any], resolution: int, spec: str | None = None) -> DataSplits:
    """Rebuild the splits a search recorded, and check they are the same images (so retraining never evaluates
    on what the search trained on). A different `spec` (e.g. the same folder moved) is allowed; its split is
    then checked by fingerprint."""
    splits = load_data(spec or record["spec"], resolution, seed=int(record["split_seed"]),
                       classes=record.get("class_subset"))  # fmt: skip
    if splits.record.get("classes") != record.get("classes"):
        raise DataError("the data's classes differ from those the search used")
    if splits.record.get("train_sha256") != record.get("train_sha256"):
        # The hash rule keeps old images in their split even when the folder gained images; say so plainly.
        splits.record["warning"] = (
            "the training images differ from the search's (the folder changed); the split rule still keeps "
            "every image the search trained on out of the held-out set"
            if splits.record.get("kind") == "imagefolder"
            else None
        )
        if splits.record["warning"] is None:
            raise DataError("the data differ from what the search used: its held-out split cannot be rebuilt")
    return splits
