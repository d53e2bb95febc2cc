"""Fast checks of the search's pieces: the target decode as a budget, refused settings, and the hard super net
computing exactly each sample's own network."""

import pytest
import torch

from search.dnas.config import ConfigError, SearchConfig
from search.dnas.decode import decode_target, most_likely
from search.dnas.supernet import SuperNet
from search.dnas.trainer import bf16_supported
from search.tables.latency import LatencyLUT
from tests.tables import MINI

# 3 layers x 3 candidates; candidate 0 is the dearest everywhere, 2 the cheapest.
LUT = LatencyLUT(torch.tensor([[50.0, 30.0, 10.0], [40.0, 25.0, 5.0], [60.0, 20.0, 10.0]]), 100.0)
THETA = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [2.0, 1.0, 0.0]])  # most likely: all candidate 0 = 250 us


def test_a_target_the_most_likely_network_meets_is_kept_as_it_is():
    found = decode_target(THETA, LUT, target_us=400.0)
    assert found.arch == most_likely(THETA) and found.met  # no slower blocks swapped in to reach the target
    assert found.label.startswith("at most")


def test_a_budget_is_met_at_the_least_cost_in_probability():
    found = decode_target(THETA, LUT, target_us=200.0)
    assert LUT.of_arch(found.arch) <= 200.0 and found.met
    # 250 -> <= 200 needs 50 us: one swap of layer 2 to candidate 1 (-40) is not enough; the decode must not
    # cut more than needed: every single layer moved back toward candidate 0 would break the budget.
    for layer, k in enumerate(found.arch):
        if k != 0:
            back = list(found.arch)
            back[layer] = k - 1
            assert LUT.of_arch(back) > 200.0


def test_an_unreachable_budget_is_reported_with_the_fastest_network():
    found = decode_target(THETA, LUT, target_us=100.0)  # the fastest network costs 125 us
    assert not found.met
    assert found.arch == [2, 2, 2] and found.fastest_us == pytest.approx(125.0)
    assert "cannot be met" in found.label


def test_band_mode_aims_for_the_band_from_either_side():
    found = decode_target(THETA, LUT, target_us=180.0, mode="band", tolerance=0.05)
    assert 171.0 <= LUT.of_arch(found.arch) <= 189.0 and found.met
    missed = decode_target(THETA, LUT, target_us=1000.0, mode="band", tolerance=0.05)
    assert not missed.met and "misses the band" in missed.label


def test_settings_that_would_search_nothing_are_refused():
    with pytest.raises(ConfigError, match="warmup_epochs"):
        SearchConfig(epochs=10, warmup_epochs=10)
    with pytest.raises(ConfigError, match="beta_range"):
        SearchConfig(beta_range=(5.0, 1.0))
    with pytest.raises(ConfigError, match="target_mode"):
        SearchConfig(target_mode="near")  # type: ignore[arg-type]
    assert SearchConfig(epochs=2, warmup_epochs=1).split_seed == 0
    assert SearchConfig(seed=3).split_seed == 3 and SearchConfig(seed=3, data_seed=5).split_seed == 5


def _net() -> SuperNet:
    torch.manual_seed(0)
    shape = (len(MINI.slots), len(MINI.candidates))
    return SuperNet(MINI, LatencyLUT(torch.rand(shape) * 50 + 5, 100.0))


def test_hard_mode_computes_each_samples_own_network_and_its_gradients():
    """Grouping samples by their chosen candidate must give what running every sample through its own sampled
    network gives: outputs, and the gradients of the weights and of theta (eval-mode BN, so that batch
    statistics do not depend on the grouping)."""
    net = _net().eval()
    net.theta.data = torch.randn_like(net.theta)
    x = torch.randn(12, 3, 32, 32)
    torch.manual_seed(1)
    logits, latency = net(x, 1.0, "hard")
    logits.square().sum().backward()
    grouped = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    net.zero_grad()
    torch.manual_seed(1)  # the same per-sample Gumbel draws
    masks = net.sample_masks(12, tau=1.0, mode="hard")
    outs = []
    for b in range(12):  # the reference: sample by sample, candidate by candidate, scaled by the ST mask
        h = net.stem(x[b : b + 1])
        for i, layer in enumerate(net.layers):
            k = int(masks[b, i].argmax())
            h = layer.candidates[k](h) * masks[b, i, k]
        outs.append(net.head(h))
    reference = torch.cat(outs)
    reference.square().sum().backward()
    assert torch.allclose(logits, reference, atol=1e-5)
    for name, p in net.named_parameters():
        if p.grad is not None or name in grouped:
            assert torch.allclose(grouped[name], p.grad, atol=1e-4), name
    assert latency.shape == (12,)


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bfloat16 support")
def test_bf16_autocast_keeps_masks_latency_and_logits_in_float32():
    net, x = _net(), torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, latency = net(x, 1.0, "hard")
    torch.manual_seed(1)  # the same draw without autocast: the same masks, so the same networks
    ref_logits, reference = net(x, 1.0, "hard")
    assert logits.dtype == torch.float32 and latency.dtype == torch.float32
    # The latency is the float32 sum to the last bit (a bf16 sum of ~500 us is off by about 1 us); the logits
    # went through bf16 layers, so they are close, not equal.
    assert torch.equal(latency, reference), (latency - reference).abs().max()
    assert torch.allclose(logits, ref_logits, rtol=0.1, atol=0.1)
