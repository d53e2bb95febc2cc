"""HW-NAS-Bench v1.0's FBNet-space tables as tables of ours: read the published file safely, map its op names
onto our op keys for one exact space, and say where every number came from.

HW-NAS-Bench (Li et al., ICLR 2021) publishes, per device, one number per FBNet-space op:
`HW-NAS-Bench-v1_0.pickle` -> `["fbnet"]["<device>_<metric>"]["<op name>"]`, latency in milliseconds and
energy in millijoules. Its own API defines a network's cost as the plain sum of its stem, 22 layers, header,
pool and FC entries (`fbnet_get_metrics`): no whole network was measured. So an imported table carries the
plain-sum rule and nothing else.

Why a restricted unpickler: loading a pickle runs whatever callables it names. The file is read by
`_Unpickler`, whose `find_class` admits only numpy's scalar reconstruction (`numpy.dtype` and
`multiarray.scalar`, whichever module name the writer's numpy used) and `_codecs.encode` (how protocol-2
pickles spell bytes); plain containers, strings and numbers need no globals at all. Any other global is
refused by name before it is called, and numeric scalars of any other dtype kind are refused too.
"""

from __future__ import annotations

import codecs
import io
import json
import math
import pickle
import pickletools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search.space.enumerate import enumerate_ops
from search.space.macro import SearchSpace, fbnet_space
from search.space.opspec import OpSpec, OpSpecError

SOURCE = "HW-NAS-Bench v1.0 (HW-NAS-Bench-v1_0.pickle, 'fbnet' part)"
CITATION = (
    'C. Li, Z. Yu, Y. Fu, Y. Zhang, Y. Zhao, H. You, Q. Yu, Y. Wang, Y. Lin, "HW-NAS-Bench: Hardware-Aware '
    'Neural Architecture Search Benchmark", ICLR 2021. https://github.com/RICE-EIC/HW-NAS-Bench (MIT License, '
    "Copyright (c) 2021 Efficient and Intelligent Computing Lab)"
)
# The five targets of the FBNet part; how their numbers were obtained, per the benchmark's own description.
HW_DEVICES: dict[str, str] = {
    "edgegpu": "measured on the device",
    "raspi4": "measured on the device",
    "pixel3": "measured on the device",
    "eyeriss": "simulator estimate",
    "fpga": "simulator estimate",
}
METRICS: dict[str, str] = {"latency": "ms", "energy": "mJ"}
MS_TO_US = 1000.0
RULE_DESCRIPTION = (
    "plain sum of the ops' entries: HW-NAS-Bench defines a network's cost as the sum of its stem, 22 layers, "
    "header, pool and FC entries (hw_nas_bench_api.fbnet_get_metrics); no whole network was measured"
)


@dataclass(frozen=True)
class Layout:
    """One of the benchmark's two FBNet layouts, as our `fbnet_space` parameters."""

    resolution: int
    num_classes: int
    head_c: int
    note: str

    def space(self) -> SearchSpace:
        return fbnet_space(self.resolution, 1.0, num_classes=self.num_classes, head_c=self.head_c)


DATASETS: dict[str, Layout] = {
    "cifar100": Layout(32, 100, 1504, "3x32x32, stem stride 1, stage strides 1,1,2,2,1,2,1, header 1504"),
    "imagenet": Layout(224, 1000, 1984, "3x224x224, stem stride 2, stage strides 1,2,2,2,1,2,1, header 1984"),
    # The benchmark's API takes only cifar100 and ImageNet, but the file also prices FC 1504 -> 10: the
    # CIFAR-10 head on the CIFAR layout, so a 10-class space maps exactly too.
    "cifar10": Layout(32, 10, 1504, "the CIFAR layout with a 10-class FC (the file's FC_Cin1504_Cout10)"),
}


class ImportRefused(ValueError):
    """The file or the request cannot become a table; the message says what and, where it can, how to fix it."""


# ---- reading the file ---------------------------------------------------------------------------------------
def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's scalar reconstruction, for numeric dtypes only (an object dtype would hand back whatever the
    pickle nested inside it)."""
    import numpy

    if not isinstance(dtype, numpy.dtype) or dtype.kind not in "biuf":
        raise ImportRefused(f"the pickle holds a numpy scalar of dtype {dtype!r}; only numbers are admitted")
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return scalar(dtype, data)


def _numpy_dtype(*args: Any) -> Any:
    import numpy

    return numpy.dtype(*args)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,  # written by numpy < 2
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,  # written by numpy >= 2
    ("numpy", "dtype"): _numpy_dtype,
    ("_codecs", "encode"): codecs.encode,  # protocol <= 2 writes bytes as encode(str, 'latin1')
}


MEMO_PUTS = ("PUT", "BINPUT", "LONG_BINPUT")
# What pickletools says when the data ends inside an opcode or before STOP.
TRUNCATION_SIGNS = ("remain", "not enough data", "exhausted", "no newline found")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise ImportRefused(
                f"the pickle references the global {module}.{name}, which is not admitted (only plain containers, "
                "strings, numbers and numpy numeric scalars are); it was not loaded or called"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise ImportRefused("the pickle uses persistent ids, which are not admitted")


def _check_opcodes(data: bytes) -> None:
    """Walk the opcodes before the C unpickler runs them. Its memo is an array sized to the largest slot a PUT
    names, and a pickler numbers slots from 0 as it goes, so a slot beyond the opcodes seen so far is damage:
    one flipped byte of a real 40 KB file (LONG_BINPUT 1.3e9) made it allocate and clear ~10 GB for 30 s
    before refusing. A stream that does not parse is refused here too, so the loader only ever runs whole,
    well-formed opcode streams (and so never runs past damage this walk stopped at)."""
    try:
        for seen, (opcode, arg, _) in enumerate(pickletools.genops(data), start=1):
            if opcode.name in MEMO_PUTS and int(arg) > seen:
                raise ImportRefused(f"the pickle stores memo slot {arg} after {seen} opcodes: a damaged file")
    except ImportRefused:
        raise
    except ValueError as exc:
        if any(sign in str(exc) for sign in TRUNCATION_SIGNS):
            raise ImportRefused(f"the pickle is truncated: it ends after {len(data)} bytes, before its STOP") from None
        raise ImportRefused(f"the file is not a readable pickle ({str(exc)[:200]})") from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle with only the globals above. A refused global, a truncated or corrupt file: `ImportRefused`."""
    _check_opcodes(data)
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except ImportRefused:
        raise
    except EOFError:
        raise ImportRefused(f"the pickle is truncated: it ends after {len(data)} bytes, before its STOP") from None
    except RecursionError:
        raise ImportRefused("the pickle nests too deeply to read") from None
    except Exception as exc:
        raise ImportRefused(f"the file is not a readable pickle ({type(exc).__name__}: {str(exc)[:200]})") from None


def read_fbnet_part(data: bytes, fmt: str = "auto") -> dict[str, dict[str, float]]:
    """The file's `fbnet` dict ({"<device>_<metric>": {"<op name>": number}}), from the whole pickle or from
    JSON (either `{"fbnet": {...}}` or the `fbnet` dict itself). `fmt`: auto, pickle or json."""
    if fmt not in ("auto", "pickle", "json"):
        raise ImportRefused(f"format must be auto, pickle or json, not {fmt!r}")
    if not data:
        raise ImportRefused("the file is empty")
    if fmt == "auto":
        fmt = "json" if data.lstrip()[:1] in (b"{", b"[") else "pickle"
    if fmt == "json":
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ImportRefused(f"the file is not valid JSON: {str(exc)[:200]}") from None
    else:
        doc = restricted_loads(data)
    if isinstance(doc, Mapping) and "fbnet" in doc:
        doc = doc["fbnet"]
    elif isinstance(doc, Mapping) and not any(str(k).endswith(tuple(f"_{m}" for m in METRICS)) for k in doc):
        doc = None  # neither the whole file nor its fbnet part (the NAS-Bench-201 part alone, say)
    if not isinstance(doc, Mapping) or not doc:
        raise ImportRefused("the file has no 'fbnet' part (HW-NAS-Bench keeps the FBNet-space tables there)")
    parts: dict[str, dict[str, float]] = {}
    for part, table in doc.items():
        if not isinstance(part, str) or not isinstance(table, Mapping):
            raise ImportRefused(f"the fbnet part's entry {str(part)[:60]!r} is not a table of op names")
        parts[part] = {str(name): _number(part, name, value) for name, value in table.items()}
    return parts


def _number(part: str, name: Any, value: Any) -> float:
    if isinstance(value, bool) or not hasattr(value, "__float__"):
        raise ImportRefused(f"{part}[{str(name)[:80]!r}] is {type(value).__name__}, not a number")
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ImportRefused(f"{part}[{str(name)[:80]!r}] is {number}: a cost must be finite and not negative")
    return number


# ---- mapping onto a space -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportedEntry:
    spec: OpSpec
    name: str  # HW-NAS-Bench's op name
    latency_ms: float
    energy_mj: float | None

    @property
    def latency_us(self) -> float:
        return self.latency_ms * MS_TO_US


@dataclass(frozen=True)
class ImportedTable:
    """One device's table for one space, ready to publish: entries keyed by our op keys."""

    hw_device: str
    dataset: str
    space: SearchSpace
    entries: dict[str, ImportedEntry]
    parts: tuple[str, ...]  # the file's parts it was read from
    zero_priced: tuple[str, ...] = field(default=())

    @property
    def has_energy(self) -> bool:
        return any(e.energy_mj is not None for e in self.entries.values())

    def provenance(self) -> dict[str, Any]:
        layout = DATASETS[self.dataset]
        return {
            "source": SOURCE,
            "citation": CITATION,
            "licence": "MIT",
            "hw_device": self.hw_device,
            "obtained": HW_DEVICES[self.hw_device],
            "dataset": self.dataset,
            "layout": layout.note,
            "parts": list(self.parts),
            "metric": "latency",
            "second_metric": "energy" if self.has_energy else None,
            "units": {
                "latency": "published in ms, stored in us (x 1000); the published value is kept in each entry's "
                "context as value_ms",
                "energy": "mJ, as published, in each entry's context as energy_mj (never used as latency)"
                if self.has_energy
                else f"not published for {self.hw_device}",
            },
            "statistics": "one published number per op: median = mean = p10 = p90, std 0, n 1",
            "zero_priced": {
                "count": len(self.zero_priced),
                "keys": list(self.zero_priced),
                "note": "entries the benchmark prices at exactly 0 (identity skips on some devices, fixed layers "
                "on the FPGA) are kept as 0, not dropped or floored",
            },
            "measured_as": "imported",
        }


def build_import(
    parts: Mapping[str, Mapping[str, float]],
    *,
    hw_device: str,
    dataset: str = "cifar100",
    metric: str = "latency",
    space: SearchSpace | None = None,
) -> ImportedTable:
    """The table of `hw_device` for `space` (default: the benchmark's own layout for `dataset`). Every op of the
    space must be in the file under its HW-NAS-Bench name, or the import is refused naming the first that is
    not. Energy, where the file has it, rides along as a second metric; it is never the latency."""
    if metric not in METRICS:
        raise ImportRefused(f"unknown metric {metric!r}; HW-NAS-Bench's FBNet part has {', '.join(METRICS)}")
    if metric == "energy":
        raise ImportRefused(
            "energy is not latency: a table's numbers are latencies (microseconds) that a search sums and takes "
            "the log of. Import the device's latency; its energy (mJ), where published, comes with it as each "
            "entry's second metric (context.energy_mj)"
        )
    if hw_device not in HW_DEVICES:
        raise ImportRefused(f"unknown device {hw_device!r}; HW-NAS-Bench's FBNet part has {', '.join(HW_DEVICES)}")
    if dataset not in DATASETS:
        raise ImportRefused(f"unknown dataset {dataset!r}; the FBNet layouts are {', '.join(DATASETS)}")
    latency_part, energy_part = f"{hw_device}_latency", f"{hw_device}_energy"
    if latency_part not in parts:
        raise ImportRefused(f"the file has no {latency_part} part; it has {', '.join(sorted(parts)) or 'none'}")
    latency, energy = parts[latency_part], parts.get(energy_part)
    space = space or DATASETS[dataset].space()
    en = enumerate_ops(space)
    where = {key: name for name, key in en.fixed_keys.items()}
    for layer, row in enumerate(en.layer_keys):
        for candidate, key in zip(space.candidates, row, strict=True):
            where.setdefault(key, f"layer {layer} {candidate}")
    entries: dict[str, ImportedEntry] = {}
    for key, spec in en.ops.items():
        try:
            name = spec.hwnasbench_key()
        except OpSpecError as exc:
            raise ImportRefused(f"the space does not map onto HW-NAS-Bench: {where[key]} ({key}): {exc}") from None
        if name not in latency:
            raise ImportRefused(
                f"the space does not map exactly onto HW-NAS-Bench's {dataset} layout ({DATASETS[dataset].note}): "
                f"{latency_part} has no {name} for {where[key]} ({key})"
            )
        if energy is not None and name not in energy:
            raise ImportRefused(f"{energy_part} has no {name} although {latency_part} has it: the file is inconsistent")
        entries[key] = ImportedEntry(spec, name, latency[name], None if energy is None else energy[name])
    zero = tuple(k for k, e in entries.items() if e.latency_ms == 0.0)
    used = (latency_part,) + ((energy_part,) if energy is not None else ())
    return ImportedTable(hw_device, dataset, space, entries, used, zero)


def summary(parts: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per device in the file: its op count, zero-priced ops and whether energy is there (what an import says)."""
    out = {}
    for device in HW_DEVICES:
        latency = parts.get(f"{device}_latency")
        if latency is None:
            continue
        out[device] = {
            "ops": len(latency),
            "zero_priced": sum(1 for v in latency.values() if v == 0.0),
            "energy": f"{device}_energy" in parts,
        }
    return out
