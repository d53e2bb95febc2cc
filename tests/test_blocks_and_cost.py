import pytest
import torch
from torch import nn

from search.space.blocks import ChannelShuffle, InvertedResidual, build_op
from search.space.cost import Cost, network_cost, op_cost
from search.space.enumerate import enumerate_ops
from search.space.macro import fbnet_space, get_space
from search.space.model import build_model
from search.space.opspec import OpSpec
from search.space.zoo import PUBLISHED, get_model, list_models


def _measured_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Count multiply-adds by observing the real conv and linear calls, independently of the spec."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            total += per_out * out[0].numel()
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        module.eval()(x)
    for h in handles:
        h.remove()
    return total


def test_hand_computed_costs():
    # ir_k3_e6, 16 -> 24, stride 2 at 112x112: mid = 96, output 56x56.
    ir = OpSpec("ir", 16, 24, 112, 112, stride=2, kernel=3, expansion=6)
    assert op_cost(ir).macs == 16 * 96 * 112 * 112 + 9 * 96 * 56 * 56 + 96 * 24 * 56 * 56 == 29_202_432
    assert op_cost(ir).params == (16 * 96 + 2 * 96) + (9 * 96 + 2 * 96) + (96 * 24 + 2 * 24) == 5136
    # Grouped: each 1x1 conv does half the work.
    g2 = OpSpec("ir", 64, 64, 14, 14, kernel=3, expansion=1, groups=2)
    assert op_cost(g2).macs == 32 * 64 * 196 + 9 * 64 * 196 + 32 * 64 * 196 == 915_712
    assert op_cost(OpSpec("skip", 32, 32, 28, 28)) == Cost(0, 0)
    assert op_cost(OpSpec("skip", 32, 64, 28, 28, stride=2)).macs == 32 * 64 * 14 * 14
    assert op_cost(OpSpec("fc", 1984, 1000, 1, 1)) == Cost(1984 * 1000 + 1000, 1984 * 1000)
    assert op_cost(OpSpec("conv", 3, 16, 224, 224, stride=2, kernel=3)).macs == 27 * 16 * 112 * 112


@pytest.mark.parametrize("key", list(enumerate_ops(fbnet_space(64, 0.5, num_classes=10)).ops))
def test_every_op_module_has_the_spec_shapes_params_and_macs(key):
    spec = OpSpec.from_key(key)
    module = build_op(spec)
    x = torch.randn(spec.input_shape)
    assert tuple(module.eval()(x).shape) == spec.output_shape
    assert sum(p.numel() for p in module.parameters()) == op_cost(spec).params
    assert _measured_macs(module, x) == op_cost(spec).macs


def test_residual_exactly_when_shapes_match():
    assert InvertedResidual(32, 32, 1, 3, 6, 1).residual
    assert not InvertedResidual(32, 32, 2, 3, 6, 1).residual
    assert not InvertedResidual(32, 64, 1, 3, 6, 1).residual
    assert isinstance(build_op(OpSpec("skip", 32, 32, 8, 8)), nn.Identity)
    assert not isinstance(build_op(OpSpec("skip", 32, 64, 8, 8)), nn.Identity)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert ChannelShuffle(2)(x).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_network_cost_equals_counted_model():
    space = fbnet_space(96, 0.35, num_classes=10)
    arch = ["ir_k5_e6", "skip", "ir_k3_e1_g2"] * 7 + ["ir_k3_e3"]
    model = build_model(space, arch)
    cost = network_cost(space, arch)
    assert sum(p.numel() for p in model.parameters()) == cost.params
    assert _measured_macs(model, torch.randn(1, 3, 96, 96)) == cost.macs


@pytest.mark.parametrize("name", list_models())
def test_zoo_matches_published_figures(name):
    cost = get_model(name).cost
    params, flops = PUBLISHED[name]
    assert abs(cost.macs / flops - 1) < 0.05
    assert abs(cost.params / params - 1) < 0.10


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_runs_forward_and_backward(name):
    zoo = get_model(name)
    model = build_model(zoo.skeleton, zoo.arch).train()
    res = zoo.skeleton.resolution
    out = model(torch.randn(2, 3, res, res))
    assert out.shape == (2, 1000)
    out.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_default_space_ir_k3_e6_everywhere_is_mobilenetv2_like():
    space = get_space()
    cost = network_cost(space, ["ir_k3_e6"] * 22)
    assert 400e6 < cost.macs < 700e6  # a wider, deeper MobileNetV2: sanity bound, not a published figure
