"""Search spaces: a fixed macro-architecture (paper Table 1) and the candidate blocks of every searchable layer
(Table 2), at a given input resolution and width multiplier.

A space is data. Its JSON form is fully resolved (channels already rounded, strides already adjusted), so the
content hash changes exactly when the operators it expands into change, never because our code changed a rule.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from search.space.choices import BlockChoice, parse_choice
from search.space.opspec import OpSpec, OpSpecError

FBNET_CANDIDATES: tuple[str, ...] = (
    "ir_k3_e1",
    "ir_k3_e1_g2",
    "ir_k3_e3",
    "ir_k3_e6",
    "ir_k5_e1",
    "ir_k5_e1_g2",
    "ir_k5_e3",
    "ir_k5_e6",
    "skip",
)
# Table 1: (filters, layers, stride of the first layer) of each searchable stage.
FBNET_STAGES: tuple[tuple[int, int, int], ...] = (
    (16, 1, 1),
    (24, 4, 2),
    (32, 4, 2),
    (64, 4, 2),
    (112, 4, 1),
    (184, 4, 2),
    (352, 1, 1),
)
FBNET_STEM = (16, 2)
# Table 1 lists 1984 filters for the head conv but 1504 inputs to the pool; FBNet implementations use 1984.
FBNET_HEAD = 1984
# The paper's Table 4 (resolution, width) variants.
TABLE4_VARIANTS: tuple[tuple[int, float], ...] = ((96, 0.35), (128, 0.5), (128, 1.0), (192, 0.5), (224, 0.35))

SPACES = ("fbnet",)
MIN_FINAL_MAP = 3


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: nearest multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class Stage:
    c: int
    n: int
    s: int


@dataclass(frozen=True)
class Slot:
    """Where a searchable layer sits: what any of its candidates receives and must produce."""

    index: int
    cin: int
    cout: int
    stride: int
    h: int
    w: int

    def op(self, choice: BlockChoice | str, batch: int = 1, dtype: str = "float32") -> OpSpec:
        if isinstance(choice, str):
            choice = parse_choice(choice)
        spec = choice.at(cin=self.cin, cout=self.cout, stride=self.stride, h=self.h, w=self.w, batch=batch)
        return spec.with_dtype(dtype)


def _out(size: int, stride: int) -> int:
    return (size + stride - 1) // stride


@dataclass(frozen=True)
class SearchSpace:
    """A macro-architecture with its per-layer candidates. Zoo models use the same class with their own
    skeleton, so a model and a search space price their layers the same way."""

    name: str
    resolution: int
    stem_c: int
    stem_stride: int
    stages: tuple[Stage, ...]
    head_c: int
    num_classes: int = 1000
    candidates: tuple[str, ...] = FBNET_CANDIDATES
    in_channels: int = 3
    batch: int = 1
    width: float = 1.0
    _slots: tuple[Slot, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 16 <= self.resolution <= 1024:
            raise OpSpecError(f"resolution {self.resolution} is outside 16..1024")
        if not 1 <= self.num_classes <= 100_000:
            raise OpSpecError(f"num_classes {self.num_classes} is outside 1..100000")
        if not self.stages or sum(s.n for s in self.stages) > 64:
            raise OpSpecError("a space needs between 1 and 64 searchable layers")
        if not self.candidates:
            raise OpSpecError("a space needs at least one candidate block")
        if len(set(self.candidates)) != len(self.candidates):
            raise OpSpecError("candidate blocks must be distinct")
        for c in self.candidates:
            parse_choice(c)
        object.__setattr__(self, "_slots", tuple(self._walk()))
        # Building every fixed op and one op per candidate validates channel and group arithmetic up front.
        self.fixed_ops()
        for slot in self._slots:
            for c in self.candidates:
                slot.op(c, self.batch)

    def _walk(self) -> list[Slot]:
        h = _out(self.resolution, self.stem_stride)
        cin, slots = self.stem_c, []
        for stage in self.stages:
            if stage.n < 1 or stage.s not in (1, 2):
                raise OpSpecError(f"stage {stage} needs n >= 1 and stride 1 or 2")
            for i in range(stage.n):
                stride = stage.s if i == 0 else 1
                slots.append(Slot(len(slots), cin, stage.c, stride, h, h))
                h, cin = _out(h, stride), stage.c
        return slots

    # ---- structure ----------------------------------------------------------------------------------------
    @property
    def slots(self) -> tuple[Slot, ...]:
        return self._slots

    @property
    def final_map(self) -> int:
        last = self._slots[-1]
        return _out(last.h, last.stride)

    @property
    def last_c(self) -> int:
        return self._slots[-1].cout

    def fixed_ops(self, dtype: str = "float32") -> dict[str, OpSpec]:
        """The layers every architecture shares: they price the network, they are not searched. `dtype` is the
        measurement's (a config's precision), not the space's: one space has fp32 and int8 tables."""
        r, f, b, d, s = self.resolution, self.final_map, self.batch, dtype, self.stem_stride
        return {
            "stem": OpSpec("conv", self.in_channels, self.stem_c, r, r, stride=s, kernel=3, batch=b, dtype=d),
            "head": OpSpec("conv", self.last_c, self.head_c, f, f, kernel=1, batch=b, dtype=d),
            "pool": OpSpec("pool", self.head_c, self.head_c, f, f, batch=b, dtype=d),
            "fc": OpSpec("fc", self.head_c, self.num_classes, 1, 1, batch=b, dtype=d),
        }

    def network_ops(self, arch: list[str] | tuple[str, ...], dtype: str = "float32") -> list[OpSpec]:
        """Every operator of one architecture, in execution order: stem, searchable layers, head, pool, fc."""
        arch = self.check_arch(arch)
        fixed = self.fixed_ops(dtype)
        layers = [slot.op(choice, self.batch, dtype) for slot, choice in zip(self._slots, arch, strict=True)]
        return [fixed["stem"], *layers, fixed["head"], fixed["pool"], fixed["fc"]]

    def check_arch(self, arch: list[str] | tuple[str, ...]) -> tuple[str, ...]:
        """Normalise block strings and refuse any that the space does not offer, naming the layer."""
        if len(arch) != len(self._slots):
            raise OpSpecError(f"architecture has {len(arch)} layers, the space has {len(self._slots)}")
        names = tuple(parse_choice(a).name for a in arch)
        offered = {parse_choice(c).name for c in self.candidates}
        for i, name in enumerate(names):
            if name not in offered:
                raise OpSpecError(f"layer {i}: {name!r} is not a candidate of this space")
        return names

    # ---- serialisation ------------------------------------------------------------------------------------
    def content(self) -> dict[str, Any]:
        """The structural part: what determines the operators. Name and width are labels, not content."""
        return {
            "resolution": self.resolution,
            "in_channels": self.in_channels,
            "batch": self.batch,
            "stem": {"c": self.stem_c, "s": self.stem_stride},
            "stages": [{"c": s.c, "n": s.n, "s": s.s} for s in self.stages],
            "head_c": self.head_c,
            "num_classes": self.num_classes,
            "candidates": list(self.candidates),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "width": self.width, **self.content(), "hash": self.hash}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @property
    def hash(self) -> str:
        blob = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def network_key(self, arch: list[str] | tuple[str, ...], dtype: str = "float32") -> str:
        """The key of one whole architecture of this space, as the service registers it (`net-<24 hex>`). An int8
        network is another model (quantized), so another key; fp32 keys are what they always were."""
        body: dict[str, Any] = {"space": self.content(), "arch": list(self.check_arch(arch))}
        if dtype != "float32":
            body["dtype"] = dtype
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return "net-" + hashlib.sha256(blob.encode()).hexdigest()[:24]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpace:
        """Read a fully resolved space (as `to_dict` writes it); a stale `hash` field is refused."""
        try:
            space = cls(
                name=str(data.get("name", "custom")),
                resolution=int(data["resolution"]),
                stem_c=int(data["stem"]["c"]),
                stem_stride=int(data["stem"]["s"]),
                stages=tuple(Stage(int(s["c"]), int(s["n"]), int(s["s"])) for s in data["stages"]),
                head_c=int(data["head_c"]),
                num_classes=int(data.get("num_classes", 1000)),
                candidates=tuple(str(c) for c in data.get("candidates", FBNET_CANDIDATES)),
                in_channels=int(data.get("in_channels", 3)),
                batch=int(data.get("batch", 1)),
                width=float(data.get("width", 1.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OpSpecError):
                raise
            raise OpSpecError(f"not a valid search space: {exc!r}") from exc
        if "hash" in data and data["hash"] != space.hash:
            raise OpSpecError("the space's 'hash' does not match its content")
        return space


def fbnet_space(
    resolution: int = 224,
    width: float = 1.0,
    *,
    num_classes: int = 1000,
    head_c: int = FBNET_HEAD,
    candidates: tuple[str, ...] | list[str] = FBNET_CANDIDATES,
    batch: int = 1,
) -> SearchSpace:
    """The FBNet space at any resolution and width (Table 4's variants are `fbnet_space(96, 0.35)` etc.).

    Channels are scaled and rounded to multiples of 8; the head is never narrowed below its base width (as
    MobileNetV2 does). Below 96 px the ImageNet strides would shrink the last feature map under 3x3 (32 px
    would end at 1x1), so the earliest stride-2 layers (stem first) become stride 1 until it is at least 3x3.
    """
    if not 0 < width <= 4:
        raise OpSpecError(f"width {width} is outside (0, 4]")
    stem_c, stem_s = make_divisible(FBNET_STEM[0] * width), FBNET_STEM[1]
    stages = [Stage(make_divisible(c * width), n, s) for c, n, s in FBNET_STAGES]
    total = stem_s
    for st in stages:
        total *= st.s
    while resolution / total < MIN_FINAL_MAP and total > 1:
        if stem_s == 2:
            stem_s, total = 1, total // 2
            continue
        i = next(i for i, st in enumerate(stages) if st.s == 2)
        stages[i] = Stage(stages[i].c, stages[i].n, 1)
        total //= 2
    return SearchSpace(
        name="fbnet",
        resolution=resolution,
        stem_c=stem_c,
        stem_stride=stem_s,
        stages=tuple(stages),
        head_c=make_divisible(head_c * max(1.0, width)),
        num_classes=num_classes,
        candidates=tuple(candidates),
        batch=batch,
        width=width,
    )


def get_space(name: str = "fbnet", **kwargs: Any) -> SearchSpace:
    """Look a space up by name; the error lists the known ones."""
    if name != "fbnet":
        raise OpSpecError(f"unknown search space {name!r}; known: {', '.join(SPACES)}")
    return fbnet_space(**kwargs)
