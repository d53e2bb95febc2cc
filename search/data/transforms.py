"""Image transforms in torch (PyPI's torchvision does not import beside the pinned torch): the ImageNet
training crop (random-resized-crop + flip), the evaluation crop (centre 87.5% + resize), and CIFAR's
pad-and-crop. Pillow only decodes; for JPEG it is asked to decode at a reduced scale (`draft`) whenever the
crop keeps at least the output resolution, which makes large photos several times cheaper to read.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
EVAL_CROP = 0.875  # 224 of 256, as ImageNet evaluation does


def random_resized_crop_box(width: int, height: int, g: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:  # fmt: skip
    """(left, top, w, h) of a crop covering `scale` of the area with aspect in `ratio` (log-uniform), as
    torchvision draws it: 10 tries, then the largest centred crop within the ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(u[2] * (width - w + 1)), int(u[3] * (height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def centre_crop_box(width: int, height: int, fraction: float = EVAL_CROP) -> tuple[int, int, int, int]:
    side = max(1, round(min(width, height) * fraction))
    return (width - side) // 2, (height - side) // 2, side, side


def _decode_box(img, box: tuple[int, int, int, int], resolution: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Decode only as much of `img` as the crop needs (JPEG draft), return the crop as uint8 [3, h, w]."""
    width, height = img.size
    left, top, w, h = box
    if img.format == "JPEG":
        # Ask for the smallest decode in which the crop still has >= `resolution` pixels each way.
        want = (math.ceil(width * resolution / w), math.ceil(height * resolution / h))
        img.draft("RGB", want)
    sx, sy = img.size[0] / width, img.size[1] / height
    left, top = int(left * sx), int(top * sy)
    w, h = max(1, round(w * sx)), max(1, round(h * sy))
    arr = np.asarray(img.convert("RGB"))
    crop = arr[top : top + h, left : left + w]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [3, H, W] -> float32, scaled to [0, 1] and standardised per channel."""
    return (x.float() / 255.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Float [3, h, w] -> [3, resolution, resolution], bilinear with antialiasing when shrinking."""
    if x.shape[-2:] == (resolution, resolution):
        return x
    shrink = x.shape[-1] > resolution or x.shape[-2] > resolution
    return F.interpolate(x[None], size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=shrink)[0]  # fmt: skip


def decode_train(img, resolution: int, g: torch.Generator, mean: tuple[float, ...],  # type: ignore[no-untyped-def]
                 std: tuple[float, ...]) -> torch.Tensor:  # fmt: skip
    """Random-resized-crop, horizontal flip, normalise: float32 [3, resolution, resolution]."""
    box = random_resized_crop_box(*img.size, g)
    x = resize_to(normalise(_decode_box(img, box, resolution), mean, std), resolution)
    if float(torch.rand(1, generator=g)) < 0.5:
        x = x.flip(-1)
    return x


def decode_eval(img, resolution: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Centre crop (87.5% of the shorter side, i.e. resize-to-256-then-crop-224) and resize."""
    box = centre_crop_box(*img.size)
    return resize_to(normalise(_decode_box(img, box, resolution), mean, std), resolution)


def random_pad_crop_flip(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """CIFAR's augmentation on uint8 [3, H, W]: zero-pad, random crop back to H x W, random flip."""
    _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    flip = float(torch.rand(1, generator=g))
    out = padded[:, i : i + h, j : j + w]
    return out.flip(-1) if flip < 0.5 else out
