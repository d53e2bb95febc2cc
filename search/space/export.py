"""ONNX export of operators and whole architectures.

Uses the TorchScript exporter (`dynamo=False`): 0.2 s per operator against 3.6 s for the dynamo exporter on
this kind of machine, and both produce graphs onnxruntime runs. Weights are seeded from the op key, so the
same op exports to the same bytes on every machine and the cache can be content-addressed.

torch and onnx are imported where an export runs, not with the module: the profiler service imports
`ExportCache` and `sha256_file`, and a service whose ops are all exported already (the test suite's shared
folder, or a restart) never needs them; importing them took about 2 s of every service's start.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.space.opspec import OpSpec
from search.space.quantize import quantize_model

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "output"


def _seed_for(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _randomise_bn(module: nn.Module) -> None:
    """Fresh BN statistics are 0/1; give them plausible values so folding and accuracy checks are not trivial."""
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


def module_to_onnx(module: nn.Module, example: torch.Tensor) -> bytes:
    """Serialise an eval-mode module; BN is folded into the preceding conv, as deployment runtimes see it."""
    import onnx
    import torch

    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
        )
    data = buf.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data))
    return data


def op_module(spec: OpSpec) -> nn.Module:
    """The module for `spec` with weights that depend only on its key (deterministic export). An int8 op has
    its fp32 twin's weights: it is that op, quantized."""
    import torch

    from search.space.blocks import build_op

    fp32 = spec.with_dtype("float32")
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(_seed_for(fp32.key))
        module = build_op(spec)
        with torch.no_grad():
            _randomise_bn(module)
    finally:
        torch.random.set_rng_state(gen_state)
    return module.eval()


def example_input(spec: OpSpec) -> torch.Tensor:
    import torch

    gen = torch.Generator().manual_seed(_seed_for("input:" + spec.with_dtype("float32").key))
    return torch.randn(spec.input_shape, generator=gen)


def export_op(spec: OpSpec) -> bytes:
    """The op's ONNX file; an int8 op is its fp32 graph quantized by the recipe (search/space/quantize.py),
    calibrated on inputs seeded from its own key, exactly as a whole network is."""
    fp32 = module_to_onnx(op_module(spec), example_input(spec))
    return quantize_model(fp32, spec.key) if spec.dtype == "int8" else fp32


def atomic_write(path: Path, data: bytes) -> None:
    """Readers never see a half-written model: write beside it, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ExportCache:
    """Op ONNX files keyed by op key: the same op is exported once, whatever space or run asks for it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, spec: OpSpec) -> Path:
        return self.root / f"{spec.key}.onnx"

    def get(self, spec: OpSpec) -> Path:
        path = self.path(spec)
        if not path.exists():
            atomic_write(path, export_op(spec))
        return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_network(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    dtype: str = "float32",
    key: str = "network",
    calibration: list[Any] | None = None,
) -> bytes:
    """A whole architecture, exported the same way as its operators so the two measure alike: at int8, by the
    same recipe, calibrated on inputs seeded from `key` (its network key) unless `calibration` gives images."""
    import torch

    gen = torch.Generator().manual_seed(0)
    fp32 = module_to_onnx(model, torch.randn(input_shape, generator=gen))
    if dtype == "float32":
        return fp32
    if dtype != "int8":
        raise ValueError(f"cannot export a network at dtype {dtype!r}")
    return quantize_model(fp32, key, calibration)
