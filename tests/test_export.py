import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from search.space.enumerate import enumerate_ops
from search.space.export import ExportCache, example_input, export_network, export_op, op_module
from search.space.macro import get_space
from search.space.model import build_model
from search.space.opspec import OpSpec
from search.space.zoo import get_model

DEFAULT_OPS = list(enumerate_ops(get_space()).ops.values())


def _run(data_or_path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        data_or_path if isinstance(data_or_path, bytes) else str(data_or_path), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> ExportCache:
    return ExportCache(tmp_path_factory.mktemp("onnx"))


@pytest.mark.parametrize("spec", DEFAULT_OPS, ids=[s.key for s in DEFAULT_OPS])
def test_every_default_space_op_exports_and_matches_torch(spec: OpSpec, cache: ExportCache):
    path = cache.get(spec)
    onnx.checker.check_model(str(path))
    x = example_input(spec)
    with torch.no_grad():
        expected = op_module(spec)(x).numpy()
    got = _run(path, x.numpy())
    assert got.shape == spec.output_shape
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)


def test_export_is_deterministic_and_cached(tmp_path):
    spec = OpSpec("ir", 24, 32, 56, 56, stride=2, kernel=5, expansion=3)
    assert export_op(spec) == export_op(spec)
    cache = ExportCache(tmp_path)
    path = cache.get(spec)
    stamp = path.stat().st_mtime_ns
    assert cache.get(spec) == path and path.stat().st_mtime_ns == stamp
    assert path.name == f"{spec.key}.onnx"
    assert not list(tmp_path.glob("*.tmp"))


def test_whole_network_export_matches_torch():
    zoo = get_model("fbnet_96_035_1")
    torch.manual_seed(0)
    model = build_model(zoo.skeleton, zoo.arch).eval()
    data = export_network(model, (1, 3, 96, 96))
    x = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(_run(data, x.numpy()), expected, rtol=1e-3, atol=1e-4)
