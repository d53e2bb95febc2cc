"""Block choices as timm-style strings (`ir_k5_e6`, `ir_k3_e1_g2`, `ds_k3`, `skip`).

A choice is what a searchable layer picks; placed at a layer (channels, stride, input size) it becomes an
`OpSpec`. Architectures are therefore plain lists of strings: easy to read, diff and store as JSON.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.space.opspec import OpSpec, OpSpecError

_CHOICE_RE = re.compile(r"(?P<kind>ir|ds)_k(?P<k>\d+)(?:_e(?P<e>\d+))?(?:_g(?P<g>\d+))?")


@dataclass(frozen=True)
class BlockChoice:
    kind: str
    kernel: int = 1
    expansion: int = 1
    groups: int = 1

    @property
    def name(self) -> str:
        if self.kind == "skip":
            return "skip"
        if self.kind == "ds":
            return f"ds_k{self.kernel}"
        suffix = f"_g{self.groups}" if self.groups > 1 else ""
        return f"ir_k{self.kernel}_e{self.expansion}{suffix}"

    def at(self, *, cin: int, cout: int, stride: int, h: int, w: int, batch: int = 1) -> OpSpec:
        """The operator this choice becomes at one layer of a network."""
        if self.kind == "skip":
            return OpSpec("skip", cin, cout, h, w, stride=stride, batch=batch)
        return OpSpec(
            self.kind,
            cin,
            cout,
            h,
            w,
            stride=stride,
            kernel=self.kernel,
            expansion=self.expansion,
            groups=self.groups,
            batch=batch,
        )


def parse_choice(text: str) -> BlockChoice:
    """Parse one block string; the error lists the accepted forms, since users type these by hand."""
    text = text.strip()
    if text == "skip":
        return BlockChoice("skip")
    m = _CHOICE_RE.fullmatch(text)
    if not m:
        raise OpSpecError(f"{text!r} is not a block: use ir_k<K>_e<E>[_g<G>], ds_k<K> or skip")
    kind, k = m["kind"], int(m["k"])
    if kind == "ds":
        if m["e"] or m["g"]:
            raise OpSpecError(f"{text!r}: ds blocks take only a kernel (ds_k<K>)")
        return BlockChoice("ds", kernel=k)
    if not m["e"]:
        raise OpSpecError(f"{text!r}: ir blocks need an expansion (ir_k<K>_e<E>)")
    return BlockChoice("ir", kernel=k, expansion=int(m["e"]), groups=int(m["g"] or 1))
