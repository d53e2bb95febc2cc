"""Architecture -> torch model. A network is nothing but its operators in order, each built by `build_op`."""

from __future__ import annotations

from torch import nn

from search.space.blocks import build_op
from search.space.macro import SearchSpace


def build_model(space: SearchSpace, arch: list[str] | tuple[str, ...]) -> nn.Sequential:
    """One module per op spec, so the model's parameters and the table's entries correspond one to one."""
    return nn.Sequential(*(build_op(spec) for spec in space.network_ops(arch)))
