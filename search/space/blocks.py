"""Torch modules for every operator kind, and `build_op`, the only way a spec becomes a module.

The super net, the zoo, the exporter and the cost counter all go through `build_op`, so the module that is
measured on a device is exactly the module that appears in a searched network.
"""

from __future__ import annotations

import torch
from torch import nn

from search.space.opspec import OpSpec


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _zero_init_last_bn(block: nn.Module) -> None:
    """A residual block starts as the identity: without this, 22 stacked blocks add up their branches'
    variance and a fresh (super) net diverges in its first steps."""
    if block.residual:
        nn.init.zeros_(block.project[1].weight)


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: lets information cross the groups of a grouped 1x1 conv."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class InvertedResidual(nn.Module):
    """FBNet's candidate block (paper Fig. 3).

    The first 1x1 conv is kept even at e = 1, as Fig. 3 draws it and as the paper's FLOP counts imply (the
    authors' later PyTorch code drops it); `ds` is the block without it.
    """

    def __init__(self, cin: int, cout: int, stride: int, kernel: int, expansion: int, groups: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.expand = _conv_bn(cin, mid, 1, groups=groups)
        self.shuffle = ChannelShuffle(groups) if groups > 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride=stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, groups=groups, relu=False)
        self.residual = stride == 1 and cin == cout
        _zero_init_last_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.shuffle(self.expand(x))))
        return x + y if self.residual else y


class DepthwiseSeparable(nn.Module):
    """k x k depthwise then 1x1 projection: MobileNetV2's first block, which has no expand conv."""

    def __init__(self, cin: int, cout: int, stride: int, kernel: int) -> None:
        super().__init__()
        self.depthwise = _conv_bn(cin, cin, kernel, stride=stride, groups=cin)
        self.project = _conv_bn(cin, cout, 1, relu=False)
        self.residual = stride == 1 and cin == cout
        _zero_init_last_bn(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(x))
        return x + y if self.residual else y


class GlobalAvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def build_op(spec: OpSpec) -> nn.Module:
    """Instantiate the module an op spec describes (freshly initialised weights)."""
    if spec.kind == "conv":
        return _conv_bn(spec.cin, spec.cout, spec.kernel, stride=spec.stride)
    if spec.kind == "ir":
        return InvertedResidual(spec.cin, spec.cout, spec.stride, spec.kernel, spec.expansion, spec.groups)
    if spec.kind == "ds":
        return DepthwiseSeparable(spec.cin, spec.cout, spec.stride, spec.kernel)
    if spec.kind == "skip":
        # A skip cannot be an identity where the shape changes; like the authors' code, it then becomes
        # the cheapest block that fits: a strided 1x1 conv + BN + ReLU.
        return nn.Identity() if spec.is_identity else _conv_bn(spec.cin, spec.cout, 1, stride=spec.stride)
    if spec.kind == "pool":
        return GlobalAvgPool()
    if spec.kind == "fc":
        return nn.Linear(spec.cin, spec.cout)
    if spec.kind == "probe":
        return nn.ReLU()
    raise ValueError(f"no module for kind {spec.kind!r}")
