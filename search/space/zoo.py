"""Published models, defined from their published per-layer choices (data in `fbnet_archs.json`, taken
from the FBNet authors' model definitions; MobileNetV2 from its paper's Table 2).

Each model is a skeleton (a `SearchSpace` whose candidates are the blocks it uses) plus its architecture,
so zoo models are priced, exported and built by exactly the code that handles searched ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

from search.space.choices import parse_choice
from search.space.cost import Cost, network_cost
from search.space.macro import SearchSpace, Stage, make_divisible
from search.space.opspec import OpSpecError

# Published ImageNet figures: (params, multiply-adds), paper Tables 3 and 4, MobileNetV2 paper Table 3/4.
PUBLISHED: dict[str, tuple[float, float]] = {
    "fbnet_a": (4.3e6, 249e6),
    "fbnet_b": (4.5e6, 295e6),
    "fbnet_c": (5.5e6, 375e6),
    "fbnet_96_035_1": (1.8e6, 12.9e6),
    "mobilenetv2_100": (3.4e6, 300e6),
    "mobilenetv2_035": (1.7e6, 59e6),
}

# MobileNetV2 (t, c, n, s); the t = 1 bottleneck has no expand conv in the reference implementations: `ds`.
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


@dataclass(frozen=True)
class ZooModel:
    name: str
    skeleton: SearchSpace
    arch: tuple[str, ...]
    source: str

    @property
    def cost(self) -> Cost:
        return network_cost(self.skeleton, self.arch)

    def describe(self) -> dict:
        cost = self.cost
        published = PUBLISHED.get(self.name)
        return {
            "name": self.name,
            "params": cost.params,
            "flops": cost.macs,
            "resolution": self.skeleton.resolution,
            "arch": list(self.arch),
            "published": {"params": published[0], "flops": published[1]} if published else None,
            "source": self.source,
            "space": self.skeleton.to_dict(),
        }


def _skeleton(
    name: str, resolution: int, stem: tuple[int, int], layers: list[tuple[str, int, int]], head_c: int
) -> tuple[SearchSpace, tuple[str, ...]]:
    stages = tuple(Stage(c, 1, s) for _, c, s in layers)
    arch = tuple(parse_choice(b).name for b, _, _ in layers)
    space = SearchSpace(
        name=name,
        resolution=resolution,
        stem_c=stem[0],
        stem_stride=stem[1],
        stages=stages,
        head_c=head_c,
        candidates=tuple(sorted(set(arch))),
    )
    return space, arch


@cache
def _fbnet_data() -> dict:
    text = resources.files("search.space").joinpath("fbnet_archs.json").read_text()
    return json.loads(text)["models"]


def _from_fbnet_data(name: str, key: str) -> ZooModel:
    entry = _fbnet_data()[key]
    layers = []
    for layer in entry["layers"]:
        op = layer["op"]
        if op != "skip":  # "ir_k5_g2" + e -> "ir_k5_e1_g2"
            k, _, g = op.removeprefix("ir_").partition("_")
            op = f"ir_{k}_e{layer['e']}" + (f"_{g}" if g else "")
        layers.append((op, layer["c"], layer["s"]))
    stem = (entry["stem"]["c"], entry["stem"]["s"])
    skeleton, arch = _skeleton(name, entry["input_size"], stem, layers, entry["head"]["c"])
    return ZooModel(name, skeleton, arch, source=f"FBNet authors' model definition ({key})")


def _mobilenetv2(name: str, width: float) -> ZooModel:
    layers = []
    for t, c, n, s in _MBV2:
        for i in range(n):
            block = "ds_k3" if t == 1 else f"ir_k3_e{t}"
            layers.append((block, make_divisible(c * width), s if i == 0 else 1))
    head = make_divisible(1280 * max(1.0, width))
    skeleton, arch = _skeleton(name, 224, (make_divisible(32 * width), 2), layers, head)
    return ZooModel(name, skeleton, arch, source=f"MobileNetV2 paper Table 2, width {width}")


_BUILDERS = {
    "fbnet_a": lambda: _from_fbnet_data("fbnet_a", "fbnet_a"),
    "fbnet_b": lambda: _from_fbnet_data("fbnet_b", "fbnet_b"),
    "fbnet_c": lambda: _from_fbnet_data("fbnet_c", "fbnet_c"),
    "fbnet_96_035_1": lambda: _from_fbnet_data("fbnet_96_035_1", "fbnet_96"),
    "mobilenetv2_100": lambda: _mobilenetv2("mobilenetv2_100", 1.0),
    "mobilenetv2_035": lambda: _mobilenetv2("mobilenetv2_035", 0.35),
}


def list_models() -> list[str]:
    return list(_BUILDERS)


@cache
def get_model(name: str) -> ZooModel:
    if name not in _BUILDERS:
        raise OpSpecError(f"unknown model {name!r}; known: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]()
