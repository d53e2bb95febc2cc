"""The operator spec: the single key that the service enumerates, the agent measures, the table stores and the
search client looks up.

Everything that identifies a measurable operator lives in `OpSpec`; nothing else may invent a key. The
canonical JSON form lists every field in a fixed order with defaults filled in, so two specs that build the
same module always serialise to the same bytes and get the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

OpKind = Literal["conv", "ir", "ds", "skip", "pool", "fc", "probe"]
KINDS: tuple[str, ...] = ("conv", "ir", "ds", "skip", "pool", "fc", "probe")
# float32: the op as exported; int8: the same op quantized by search/space/quantize.py's recipe (the dtype is
# part of the key, so an op's fp32 and int8 files, cache entries and measurements never mix).
DTYPES: tuple[str, ...] = ("float32", "int8")

# Bounds that keep a spec within what a phone can plausibly run; anything outside is a typo or an attack,
# and is refused before any export or database write.
MAX_CHANNELS = 8192
MAX_SPATIAL = 2048
MAX_BATCH = 256
KERNELS = (1, 3, 5, 7)
MAX_EXPANSION = 12
MAX_GROUPS = 64

SPEC_VERSION = 1


class OpSpecError(ValueError):
    """A spec that cannot describe a real operator; the message names the offending field."""


@dataclass(frozen=True, order=True)
class OpSpec:
    """One measurable operator at one input shape.

    Kinds:
      conv  k x k convolution + BatchNorm + ReLU (the stem and the head 1x1 conv)
      ir    FBNet block (Fig. 3): 1x1 (grouped, shuffle) -> k x k depthwise -> 1x1 (grouped), residual if shapes match
      ds    depthwise-separable block (MobileNetV2's first block): k x k depthwise -> 1x1
      skip  identity when shapes match, else 1x1 conv + BN + ReLU with the stride (as the authors' code does)
      pool  global average pooling, NCHW -> NC
      fc    linear classifier over NC (h = w = 1)
      probe a trivial graph (one ReLU) at an input shape: what calling the runtime costs at that shape, so
            a table can tell an op's work from the per-call overhead a network pays only once
    """

    kind: str
    cin: int
    cout: int
    h: int
    w: int
    stride: int = 1
    kernel: int = 1
    expansion: int = 1
    groups: int = 1
    batch: int = 1
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self._validate()

    def _validate(self) -> None:
        if self.kind not in KINDS:
            raise OpSpecError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        for name in ("cin", "cout", "h", "w", "stride", "kernel", "expansion", "groups", "batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OpSpecError(f"{name} must be a positive integer, got {value!r}")
        if max(self.cin, self.cout, self.cin * self.expansion) > MAX_CHANNELS:
            raise OpSpecError(f"channels above {MAX_CHANNELS} are not supported (cin={self.cin}, cout={self.cout})")
        if max(self.h, self.w) > MAX_SPATIAL:
            raise OpSpecError(f"input {self.h}x{self.w} exceeds the largest supported side {MAX_SPATIAL}")
        if self.batch > MAX_BATCH:
            raise OpSpecError(f"batch {self.batch} exceeds {MAX_BATCH}")
        if self.dtype not in DTYPES:
            raise OpSpecError(f"dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.stride not in (1, 2):
            raise OpSpecError(f"stride must be 1 or 2, got {self.stride}")
        if self.kernel not in KERNELS:
            raise OpSpecError(f"kernel must be one of {KERNELS}, got {self.kernel}")
        if self.expansion > MAX_EXPANSION:
            raise OpSpecError(f"expansion {self.expansion} exceeds {MAX_EXPANSION}")
        if self.groups > MAX_GROUPS:
            raise OpSpecError(f"groups {self.groups} exceeds {MAX_GROUPS}")
        if self.kind == "ir":
            mid = self.cin * self.expansion
            for name, channels in (("cin", self.cin), ("cout", self.cout), ("cin * expansion", mid)):
                if channels % self.groups:
                    raise OpSpecError(f"{name}={channels} is not divisible by groups={self.groups}")
        elif self.groups != 1:
            raise OpSpecError(f"groups apply only to 'ir' operators, not {self.kind!r}")
        if self.kind in ("pool", "fc", "skip", "ds", "probe") and self.expansion != 1:
            raise OpSpecError(f"expansion applies only to 'ir' operators, not {self.kind!r}")
        if self.kind in ("pool", "fc", "skip", "probe") and self.kernel != 1:
            raise OpSpecError(f"kernel does not apply to {self.kind!r} operators; leave it at 1")
        if self.kind in ("pool", "fc", "probe") and self.stride != 1:
            raise OpSpecError(f"stride does not apply to {self.kind!r} operators; leave it at 1")
        if self.kind in ("pool", "probe") and self.cin != self.cout:
            raise OpSpecError(f"{self.kind} keeps the channel count: cin must equal cout")
        if self.kind == "fc" and (self.h, self.w) != (1, 1):
            raise OpSpecError("fc takes a flat vector: h and w must be 1")

    # ---- shapes -------------------------------------------------------------------------------------------
    @property
    def out_hw(self) -> tuple[int, int]:
        """Output spatial size; 'same' padding, so a stride-2 layer rounds up like the reference models."""
        if self.kind in ("pool", "fc"):
            return (1, 1)
        return ((self.h + self.stride - 1) // self.stride, (self.w + self.stride - 1) // self.stride)

    @property
    def input_shape(self) -> tuple[int, ...]:
        if self.kind == "fc":
            return (self.batch, self.cin)
        return (self.batch, self.cin, self.h, self.w)

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.kind in ("pool", "fc"):
            return (self.batch, self.cout)
        return (self.batch, self.cout, *self.out_hw)

    @property
    def call_shape(self) -> tuple[int, int, int, int]:
        """The input as a 4-d shape (an fc's flat input as C x 1 x 1): where its call-overhead probe runs."""
        return (self.batch, self.cin, self.h, self.w)

    @classmethod
    def probe_at(cls, shape: tuple[int, ...], dtype: str = "float32") -> OpSpec:
        """The call-overhead probe for an input of this (N, C[, H, W]) shape."""
        n, c, *hw = shape
        h, w = [*hw, 1, 1][:2]
        return cls("probe", c, c, h, w, batch=n, dtype=dtype)

    def with_dtype(self, dtype: str) -> OpSpec:
        """The same op at another dtype (its key changes with it)."""
        return self if dtype == self.dtype else replace(self, dtype=dtype)

    @property
    def is_identity(self) -> bool:
        return self.kind == "skip" and self.cin == self.cout and self.stride == 1

    # ---- canonical forms ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def canonical_json(self) -> str:
        body = {"v": SPEC_VERSION, **self.to_dict()}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        """Readable, filename-safe and unique: every field appears, so no two distinct specs collide."""
        block = {
            "conv": f"conv_k{self.kernel}",
            "ir": f"ir_k{self.kernel}_e{self.expansion}_g{self.groups}",
            "ds": f"ds_k{self.kernel}",
            "skip": "skip",
            "pool": "pool",
            "fc": "fc",
            "probe": "probe",
        }[self.kind]
        return f"{block}-cin{self.cin}-cout{self.cout}-s{self.stride}-h{self.h}-w{self.w}-b{self.batch}-{self.dtype}"

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpSpec:
        """Build from untrusted JSON: unknown fields and a foreign spec version are refused, not ignored."""
        if not isinstance(data, dict):
            raise OpSpecError(f"an op spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("v", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise OpSpecError(f"op spec version {version!r} is not supported (expected {SPEC_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OpSpecError(f"unknown op spec fields: {', '.join(unknown)}")
        missing = sorted(n for n in ("kind", "cin", "cout", "h", "w") if n not in data)
        if missing:
            raise OpSpecError(f"op spec is missing: {', '.join(missing)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> OpSpec:
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_key(cls, key: str) -> OpSpec:
        """Invert `key`, so a table written by another tool can be read back into specs."""
        m = _KEY_RE.fullmatch(key)
        if not m:
            raise OpSpecError(f"{key!r} is not an op key")
        g = m.groupdict()
        block = g["block"]
        args: dict[str, Any] = {
            "cin": int(g["cin"]),
            "cout": int(g["cout"]),
            "stride": int(g["s"]),
            "h": int(g["h"]),
            "w": int(g["w"]),
            "batch": int(g["b"]),
            "dtype": g["dtype"],
        }
        if bm := re.fullmatch(r"ir_k(\d+)_e(\d+)_g(\d+)", block):
            args.update(kind="ir", kernel=int(bm[1]), expansion=int(bm[2]), groups=int(bm[3]))
        elif bm := re.fullmatch(r"(conv|ds)_k(\d+)", block):
            args.update(kind=bm[1], kernel=int(bm[2]))
        elif block in ("skip", "pool", "fc", "probe"):
            args.update(kind=block)
        else:
            raise OpSpecError(f"{key!r} names an unknown block {block!r}")
        return cls(**args)

    # ---- HW-NAS-Bench interchange -------------------------------------------------------------------------
    def hwnasbench_key(self) -> str:
        """HW-NAS-Bench's name for this op in its FBNet-space table (batch 1, fp32 implied). Its `ConvNorm` is our
        `conv` (conv + BN + ReLU: the stem and the head) and its `AvgP` our global `pool`, whose kernel is the
        whole feature map."""
        if self.batch != 1:
            raise OpSpecError(f"HW-NAS-Bench prices batch 1 only, not batch {self.batch}")
        if self.dtype != "float32":
            raise OpSpecError(f"HW-NAS-Bench's FBNet tables name float ops only, not {self.dtype}")
        if self.kind == "conv":
            return (
                f"ConvNorm_H{self.h}_W{self.w}_Cin{self.cin}_Cout{self.cout}_kernel{self.kernel}"
                f"_stride{self.stride}_group1"
            )
        if self.kind == "pool":
            if self.h != self.w:
                raise OpSpecError(f"HW-NAS-Bench's AvgP has one kernel size; a {self.h}x{self.w} pool has none")
            return f"AvgP_H{self.h}_W{self.w}_Cin{self.cin}_Cout{self.cout}_kernel{self.h}_stride1"
        if self.kind == "ir":
            return (
                f"ConvBlock_H{self.h}_W{self.w}_Cin{self.cin}_Cout{self.cout}_exp{self.expansion}"
                f"_kernel{self.kernel}_stride{self.stride}_group{self.groups}"
            )
        if self.kind == "skip":
            return f"Skip_H{self.h}_W{self.w}_Cin{self.cin}_Cout{self.cout}_stride{self.stride}"
        if self.kind == "fc":
            return f"FC_Cin{self.cin}_Cout{self.cout}"
        raise OpSpecError(f"HW-NAS-Bench has no name for {self.kind!r} operators")


_KEY_RE = re.compile(
    r"(?P<block>[a-z0-9_]+)-cin(?P<cin>\d+)-cout(?P<cout>\d+)-s(?P<s>\d+)-h(?P<h>\d+)-w(?P<w>\d+)"
    r"-b(?P<b>\d+)-(?P<dtype>[a-z0-9]+)"
)
_HWNB_BLOCK = re.compile(r"ConvBlock_H(\d+)_W(\d+)_Cin(\d+)_Cout(\d+)_exp(\d+)_kernel(\d+)_stride(\d+)_group(\d+)")
_HWNB_SKIP = re.compile(r"Skip_H(\d+)_W(\d+)_Cin(\d+)_Cout(\d+)_stride(\d+)")
_HWNB_FC = re.compile(r"FC_Cin(\d+)_Cout(\d+)")
_HWNB_CONV = re.compile(r"ConvNorm_H(\d+)_W(\d+)_Cin(\d+)_Cout(\d+)_kernel(\d+)_stride(\d+)_group1")
_HWNB_POOL = re.compile(r"AvgP_H(\d+)_W(\d+)_Cin(\d+)_Cout(\d+)_kernel(\d+)_stride1")


def from_hwnasbench_key(name: str) -> OpSpec:
    """Read one HW-NAS-Bench FBNet-space op name into a spec."""
    if m := _HWNB_BLOCK.fullmatch(name):
        h, w, cin, cout, e, k, s, g = map(int, m.groups())
        return OpSpec("ir", cin, cout, h, w, stride=s, kernel=k, expansion=e, groups=g)
    if m := _HWNB_SKIP.fullmatch(name):
        h, w, cin, cout, s = map(int, m.groups())
        return OpSpec("skip", cin, cout, h, w, stride=s)
    if m := _HWNB_FC.fullmatch(name):
        cin, cout = map(int, m.groups())
        return OpSpec("fc", cin, cout, 1, 1)
    if m := _HWNB_CONV.fullmatch(name):
        h, w, cin, cout, k, s = map(int, m.groups())
        return OpSpec("conv", cin, cout, h, w, stride=s, kernel=k)
    if m := _HWNB_POOL.fullmatch(name):
        h, w, cin, cout, k = map(int, m.groups())
        if not h == w == k:
            raise OpSpecError(f"{name!r} is not a global pool (kernel {k} over {h}x{w}); only global pools map")
        return OpSpec("pool", cin, cout, h, w)
    raise OpSpecError(f"{name!r} is not an HW-NAS-Bench FBNet-space op name")
