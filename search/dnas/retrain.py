"""Train an architecture from scratch (after the search, as the paper does) and report its accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader
from tqdm import tqdm

from search.data.datasets import DataSplits, set_epoch
from search.dnas.layout import batch_for_training, model_for_export, model_for_training
from search.space.export import export_network
from search.space.macro import SearchSpace
from search.space.model import build_model

ACCURACY_CALIBRATION_IMAGES = 64


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
    cpu = torch.device("cpu")
    model = model_for_training(build_model(space, arch), cpu)
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
            loss = loss_fn(model(batch_for_training(x, cpu)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        history.append({"epoch": epoch + 1, "train_loss": total / len(loader)})
    model_for_export(model)
    return model, {"val_accuracy": accuracy(model, data.val, workers=cfg.workers), "history": history}


def onnx_accuracy(model: bytes, dataset, workers: int = 0) -> float:  # type: ignore[no-untyped-def]
    """Held-out accuracy of an exported network run by onnxruntime (CPU EP), one image per call as it was
    exported: what a device running that file would classify."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=1, num_workers=workers):
        logits = sess.run(None, {name: x.numpy()})[0]
        correct += int(logits.argmax(1)[0] == int(y[0]))
        total += 1
    return correct / max(total, 1)


def int8_accuracy(space: SearchSpace, arch: list[str], model: nn.Module, data: DataSplits,
                  images: int = ACCURACY_CALIBRATION_IMAGES, workers: int = 0) -> dict:  # fmt: skip
    """The trained network exported twice, fp32 and int8 by the recipe every table is measured with
    (search/space/quantize.py), here calibrated on the first `images` training images (the weights split: never
    the held-out one), and both run by onnxruntime on the held-out split. The int8 file is the one an int8
    device would run; its accuracy beside the fp32 file's says what quantizing cost."""
    model.eval()
    shape = (1, space.in_channels, space.resolution, space.resolution)
    calibration = []
    for x, _ in DataLoader(data.weights, batch_size=1, num_workers=workers):
        calibration.append(x.numpy())
        if len(calibration) >= images:
            break
    fp32 = export_network(model, shape)
    int8 = export_network(model, shape, dtype="int8", key=space.network_key(arch, "int8"), calibration=calibration)
    return {
        "fp32_onnx_val_accuracy": onnx_accuracy(fp32, data.val, workers),
        "int8_val_accuracy": onnx_accuracy(int8, data.val, workers),
        "int8_calibration": f"the first {len(calibration)} images of the training (weights) split",
    }
