"""The int8 recipe: how an fp32 ONNX graph (one op, a probe, an anchor or a whole network) becomes the int8
graph a device measures. One recipe, here, so an op alone and a network are quantized exactly alike.

A table priced in fp32 is the wrong table for an int8 deployment (issue 24: on this project's CPU the grouped
1x1 blocks cost 1.4-3.8x more in int8 and the e6 blocks less), so precision is part of the measurement config,
and every model measured under `int8` goes through `quantize_model`:

1. `quant_pre_process` (onnxruntime's own pre-step: shape inference and its basic graph optimizations).
   Without it a freshly initialised network does not run as int8: folding fresh BatchNorms gives many equal
   all-zero biases, the TorchScript exporter shares them through `Identity` nodes, the quantizer takes those
   for activations, and onnxruntime leaves the convs float between DequantizeLinear/QuantizeLinear. Measured
   on a 224 px FBNet network: 18 of 68 convs float, 23 Q and 59 DQ nodes without it; 0 float, 2 Q, 2 DQ with it.
2. `quantize_static`, QDQ format (what NNAPI, XNNPACK and the CPU EP take; QOperator is CPU-only), unsigned
   8-bit activations, signed 8-bit per-channel weights, MinMax calibration, no reduce_range (a workaround for
   CPUs without VNNI-style int8 dot products; it would price a phone's kernels with a desktop's limitation).

Calibration data: `CALIBRATION_SAMPLES` standard-normal inputs of the model's input shape, seeded from the op or
network key. Deterministic on purpose: an int8 kernel's time does not depend on the scales calibration picks
(the same kernels run over the same bytes), an op is shared by many networks and measured once (activations
"from a network" would make its file depend on which network asked first), and the same key must give the same
bytes on every machine so the export cache stays content-addressed. Accuracy is a different question: a
trained network reporting int8 accuracy is calibrated on training images (`calibrate_on`), same recipe.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PRECISIONS: tuple[str, ...] = ("fp32", "int8")
DTYPE_OF: dict[str, str] = {"fp32": "float32", "int8": "int8"}  # a config's precision -> the op specs' dtype
PRECISION_OF: dict[str, str] = {v: k for k, v in DTYPE_OF.items()}
RECIPE_NAME = "ort-qdq-static-v1"
CALIBRATION_SAMPLES = 8


class QuantizeError(ValueError):
    """The model cannot be quantized with the recipe; the message says why."""


def dtype_of(precision: str) -> str:
    """The op spec dtype a precision measures ('fp32' -> 'float32'); an unknown precision is refused."""
    try:
        return DTYPE_OF[precision]
    except KeyError:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}") from None


def precision_of(dtype: str) -> str:
    try:
        return PRECISION_OF[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(PRECISION_OF)}") from None


def recipe() -> dict[str, Any]:
    """The recipe as recorded in an int8 measurement config (and so in its hash and every table's `config`).
    The quantizer's version is part of it: another version may write another graph."""
    import onnxruntime

    return {
        "name": RECIPE_NAME,
        "quantizer": "onnxruntime.quantization.quantize_static",
        "quantizer_version": onnxruntime.__version__,
        "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process(skip_symbolic_shape=True)",
        "format": "QDQ",
        "activations": "QUInt8",
        "weights": "QInt8 per-channel",
        "reduce_range": False,
        "calibrate_method": "MinMax",
        "calibration": {
            "inputs": "standard normal of the model's input shape, seeded from the op or network key",
            "samples": CALIBRATION_SAMPLES,
        },
    }


def _seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(("calibration:" + text).encode()).digest()[:8], "little")


def random_calibration(shape: Sequence[int], seed_text: str, n: int = CALIBRATION_SAMPLES) -> list[np.ndarray]:
    """The recipe's calibration inputs for a model keyed `seed_text` (an op or network key)."""
    gen = np.random.default_rng(_seed(seed_text))
    return [gen.standard_normal(tuple(shape)).astype(np.float32) for _ in range(n)]


def quantize_model(fp32: bytes, seed_text: str, calibration: Iterable[np.ndarray] | None = None) -> bytes:
    """The int8 (QDQ) form of an fp32 ONNX model with one float input, by the recipe. Byte-for-byte
    deterministic for the same input bytes and calibration (checked in the tests)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_from_string(fp32)
    if len(model.graph.input) != 1:
        raise QuantizeError(f"the recipe quantizes models with one input, this one has {len(model.graph.input)}")
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    if not shape or any(d < 1 for d in shape):
        raise QuantizeError(f"input {inp.name!r} needs a fixed shape to be calibrated, got {shape}")
    samples = list(calibration) if calibration is not None else random_calibration(shape, seed_text)
    if not samples:
        raise QuantizeError("no calibration inputs")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{inp.name: s} for s in samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="dnas-q-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=False,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return dst.read_bytes()


def is_quantized(model: bytes) -> bool:
    """Whether an ONNX model holds QDQ or QLinear nodes: what a runner checks before it stores an int8 time."""
    import onnx

    graph = onnx.load_from_string(model).graph
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") or n.op_type.startswith("QLinear")
               for n in graph.node)  # fmt: skip
