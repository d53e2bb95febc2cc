"""The int8 recipe (search/space/quantize.py) on real models run by real onnxruntime: int8 op keys and export
cache entries apart from fp32 ones, an op and a whole network quantized alike, and whole networks that run
as int8 (no convolution left in float) however their weights were initialised."""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache, example_input, export_network, export_op, op_module
from search.space.macro import get_space
from search.space.model import build_model
from search.space.opspec import OpSpec, OpSpecError
from search.space.quantize import dtype_of, is_quantized, precision_of, quantize_model, recipe

SPACE = get_space(resolution=32, width=0.25, num_classes=10)
ARCH = ["ir_k3_e1_g2", "ir_k5_e6", "skip", "ir_k3_e3", *["ir_k3_e1", "ir_k5_e1_g2"] * 9]


def _optimized_ops(model: bytes) -> collections.Counter[str]:
    """What onnxruntime really runs: its optimized graph, as it writes it out."""
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def test_precisions_map_to_dtypes_and_refuse_others():
    assert dtype_of("fp32") == "float32" and dtype_of("int8") == "int8"
    assert precision_of("int8") == "int8" and precision_of("float32") == "fp32"
    with pytest.raises(ValueError, match="precision 'fp16'"):
        dtype_of("fp16")
    with pytest.raises(OpSpecError, match="dtype 'int4'"):
        OpSpec("ir", 16, 16, 8, 8, dtype="int4")


def test_int8_op_keys_and_cache_files_are_apart_from_fp32(tmp_path):
    fp32 = enumerate_ops(SPACE)
    int8 = enumerate_ops(SPACE, "int8")
    assert len(fp32) == len(int8)
    assert all(k.endswith("-float32") for k in fp32.ops) and all(k.endswith("-int8") for k in int8.ops)
    assert not set(fp32.ops) & set(int8.ops)
    spec = OpSpec("ir", 16, 16, 8, 8, kernel=3, expansion=1, groups=2)
    q = spec.with_dtype("int8")
    assert OpSpec.from_key(q.key) == q and q.with_dtype("float32") == spec
    cache = ExportCache(tmp_path)
    a, b = cache.get(spec), cache.get(q)
    assert a != b and a.name.endswith("-float32.onnx") and b.name.endswith("-int8.onnx")
    assert not is_quantized(a.read_bytes()) and is_quantized(b.read_bytes())
    assert export_op(q) == b.read_bytes()  # deterministic: the same key exports to the same bytes
    assert SPACE.network_key(ARCH) != SPACE.network_key(ARCH, "int8")


def test_an_int8_op_is_its_fp32_twin_quantized_and_runs_close_to_it():
    spec = OpSpec("ir", 16, 16, 8, 8, kernel=3, expansion=6)
    q = spec.with_dtype("int8")
    x = example_input(q).numpy()
    assert np.array_equal(x, example_input(spec).numpy())
    with torch.no_grad():
        expected = op_module(spec)(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(export_op(q), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert got.shape == expected.shape
    # 8-bit: close, not equal (a few quantization steps of each tensor's range, here and there)
    assert np.sqrt(np.mean((got - expected) ** 2)) < 0.05 * np.sqrt(np.mean(expected**2))
    ops = _optimized_ops(export_op(q))
    assert ops["QLinearConv"] == 3 and ops["QLinearAdd"] == 1 and ops["Conv"] == 0


def test_a_freshly_initialised_network_runs_as_int8():
    """The service exports networks freshly initialised: folded fresh BatchNorms give equal all-zero biases
    that the exporter shares through Identity nodes. Without the recipe's pre-processing onnxruntime left a
    third of the convs in float; with it, none."""
    torch.manual_seed(0)
    model = build_model(SPACE, ARCH)
    shape = (1, 3, 32, 32)
    fp32 = export_network(model, shape)
    assert sum(n.op_type == "Identity" for n in onnx.load_from_string(fp32).graph.node) > 10
    int8 = export_network(model, shape, dtype="int8", key=SPACE.network_key(ARCH, "int8"))
    ops = _optimized_ops(int8)
    assert ops["Conv"] == 0 and ops["FusedConv"] == 0, ops
    assert ops["QLinearConv"] >= 40
    assert ops["QuantizeLinear"] == 2 and ops["DequantizeLinear"] == 2  # input, and around the float pool
    assert export_network(model, shape, dtype="int8", key=SPACE.network_key(ARCH, "int8")) == int8


def test_the_recipe_is_recorded_and_refuses_what_it_cannot_calibrate():
    r = recipe()
    assert r["format"] == "QDQ" and r["activations"] == "QUInt8" and r["weights"] == "QInt8 per-channel"
    assert r["quantizer_version"] == ort.__version__ and r["calibration"]["samples"] == 8
    two_inputs = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Add", ["a", "b"], ["c"])],
            "g",
            [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in "ab"],
            [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 4])],
        )
    )
    with pytest.raises(ValueError, match="one input"):
        quantize_model(two_inputs.SerializeToString(), "x")


def test_int8_accuracy_runs_both_files_on_the_held_out_split():
    """dnas train --int8 and the int8 quickstart: the trained network exported fp32 and int8 (calibrated on
    training images), both run by onnxruntime on the held-out split."""
    from search.data.datasets import load_data
    from search.dnas.retrain import int8_accuracy

    data = load_data("digits", 32, seed=0)
    arch = ["ir_k3_e6"] * len(SPACE.slots)
    torch.manual_seed(0)
    model = build_model(SPACE, arch).eval()
    out = int8_accuracy(SPACE, arch, model, data, images=8)
    assert 0 <= out["int8_val_accuracy"] <= 1 and 0 <= out["fp32_onnx_val_accuracy"] <= 1
    assert out["int8_calibration"] == "the first 8 images of the training (weights) split"
