"""The memory layout training runs in. On a CPU, channels-last (NHWC) activations and conv weights make a
step of the FBNet super net ~1.9x faster than PyTorch's default NCHW (oneDNN's depthwise and 1x1 kernels,
and batch norm, are NHWC-native; `python -m bench.search_step`), and the values are the same up to float
rounding. On CUDA it is left as it was: the gain there depends on the GPU and was never measured here.

Only training sees the layout: a retrained model goes back to the default one before it is exported or
quantized, so nothing downstream changes (a super net's checkpoint keeps it; loading copies values, whatever
the layout)."""

from __future__ import annotations

import torch
from torch import nn


def training_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def model_for_training(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` on `device`, its 4-D weights in the training layout (in place, like `Module.to`)."""
    return model.to(device, memory_format=training_format(device))


def batch_for_training(x: torch.Tensor, device: torch.device, non_blocking: bool = False) -> torch.Tensor:
    """An image batch on `device` in the training layout; any other tensor only moved."""
    if x.dim() != 4:
        return x.to(device, non_blocking=non_blocking)
    return x.to(device, non_blocking=non_blocking, memory_format=training_format(device))


def model_for_export(model: nn.Module) -> nn.Module:
    """Back to PyTorch's default layout (in place): what ONNX export and quantization were written against."""
    return model.to(memory_format=torch.contiguous_format)
