"""Training runs channels-last on a CPU for speed (search/dnas/layout.py): it must change no value, and what
it hands on (a retrained model to export or quantize) must be back in the default layout."""

import copy

import torch
from torch.utils.data import TensorDataset

from search.data.datasets import DataSplits
from search.dnas.layout import batch_for_training, model_for_training
from search.dnas.retrain import TrainConfig, train_architecture
from search.dnas.supernet import SuperNet
from search.space.macro import get_space
from search.tables.latency import LatencyLUT

SPACE = get_space("fbnet", resolution=32, width=0.25, num_classes=10)
CPU = torch.device("cpu")


def _step(net: SuperNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(1)  # the same Gumbel draws for both layouts
    logits, latency = net(x, 5.0, "soft")
    (logits.square().mean() + latency.mean() * 1e-3).backward()
    return logits.detach(), {n: p.grad.contiguous() for n, p in net.named_parameters() if p.grad is not None}


def test_the_training_layout_computes_the_same_logits_and_gradients():
    torch.manual_seed(0)
    shape = (len(SPACE.slots), len(SPACE.candidates))
    nchw = SuperNet(SPACE, LatencyLUT(torch.rand(shape) * 100, 50.0))
    nhwc = model_for_training(copy.deepcopy(nchw), CPU)
    x = torch.randn(4, 3, 32, 32)
    fast = batch_for_training(x, CPU)
    assert fast.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(
        memory_format=torch.channels_last
    )
    assert nhwc.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    logits_a, grads_a = _step(nchw, x)
    logits_b, grads_b = _step(nhwc, fast)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-4, atol=1e-4)
    assert grads_a.keys() == grads_b.keys() and "theta" in grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-4, msg=name)


def test_a_retrained_model_is_handed_back_in_the_default_layout():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(48, 3, 32, 32, generator=g), torch.randint(0, 10, (48,), generator=g)
    split = TensorDataset(images[:16], labels[:16])
    data = DataSplits(weights=split, arch=TensorDataset(images[16:32], labels[16:32]),
                      val=TensorDataset(images[32:], labels[32:]), num_classes=10, resolution=32)  # fmt: skip
    model, result = train_architecture(SPACE, ["ir_k3_e6"] * 22, data, TrainConfig(epochs=1, batch_size=16),
                                       progress=False)  # fmt: skip
    convs = [p for p in model.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous() for p in convs), "export and quantization expect NCHW weights"
    # 1x1 and depthwise weights are both layouts at once; the stem's 3x3x3 is not, so it tells them apart.
    stem = model[0][0].weight
    assert stem.shape[1:] == (3, 3, 3) and not stem.is_contiguous(memory_format=torch.channels_last)
    assert len(result["history"]) == 1 and 0.0 <= result["val_accuracy"] <= 1.0
