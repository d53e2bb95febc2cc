"""Expansion of a space into the unique operators a device must measure."""

from __future__ import annotations

from dataclasses import dataclass

from search.space.macro import SearchSpace
from search.space.opspec import OpSpec


@dataclass(frozen=True)
class OpEnumeration:
    """The unique ops of a space and where each (layer, candidate) and fixed layer lands among them."""

    ops: dict[str, OpSpec]  # key -> spec, in first-seen order
    layer_keys: list[list[str]]  # [layer][candidate] -> key
    fixed_keys: dict[str, str]  # stem/head/pool/fc -> key

    def __len__(self) -> int:
        return len(self.ops)


def enumerate_ops(space: SearchSpace, dtype: str = "float32") -> OpEnumeration:
    """Layers that share a shape share their operators, which is why 22 layers x 9 candidates at 224 px
    need only 108 searchable measurements. `dtype`: the precision measured ('int8' keys end in -int8)."""
    ops: dict[str, OpSpec] = {}

    def add(spec: OpSpec) -> str:
        ops.setdefault(spec.key, spec)
        return spec.key

    fixed = {name: add(spec) for name, spec in space.fixed_ops(dtype).items()}
    layer_keys = [[add(slot.op(c, space.batch, dtype)) for c in space.candidates] for slot in space.slots]
    return OpEnumeration(ops=ops, layer_keys=layer_keys, fixed_keys=fixed)
