"""The stochastic super net (paper section 3.3): the space's macro-architecture with every candidate at every
searchable layer, mixed by Gumbel-softmax masks drawn per sample from theta.

The same masks weight the outputs (eq. 5) and the latency (eq. 9): one draw per forward pass, so the loss
prices exactly the network that produced the prediction.

Several devices: the net holds one latency table per device and prices every sample's network on each of
them. It has one theta (one architecture distribution, priced on every device) or one theta per device
(shared weights, a distribution per device); `rows` says which theta draws each sample's masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from search.space.blocks import build_op
from search.space.macro import SearchSpace
from search.tables.latency import LatencyLUT

Mode = Literal["soft", "hard"]
_EPS = 1e-6


def gumbel_softmax(logits: torch.Tensor, tau: float, hard: bool = False) -> torch.Tensor:
    """Eq. 8 in a numerically safe form: the uniform noise is clamped away from 0 and 1 (so no inf), and the
    softmax runs on max-subtracted logits. With `hard`, a straight-through one-hot: the forward pass sees
    {0, 1}, the gradient is the soft one's."""
    u = torch.rand_like(logits).clamp_(_EPS, 1.0 - _EPS)
    gumbel = -torch.log(-torch.log(u))
    soft = torch.softmax((logits + gumbel) / max(tau, 1e-4), dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft


class MixedLayer(nn.Module):
    def __init__(self, candidates: list[nn.Module]) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, mode: Mode) -> torch.Tensor:
        """`mask`: [B, K]. Soft: every candidate on the whole batch. Hard: each sample runs only its own
        candidate (samples grouped by choice); the output is scaled by the straight-through mask, which is 1
        in value and carries theta's gradient."""
        if mode == "soft":
            out = 0
            for k, op in enumerate(self.candidates):
                out = out + mask[:, k].view(-1, 1, 1, 1) * op(x)
            return out
        choice = mask.argmax(dim=1)
        # The one-hot mask is exactly 1 where a sample's candidate runs: multiplying by it changes no value and
        # only matters for theta's gradient, so it is skipped when theta is not being trained.
        scale = mask.requires_grad
        pieces, order = [], []
        for k in choice.unique().tolist():
            idx = (choice == k).nonzero(as_tuple=True)[0]
            y = self.candidates[k](x.index_select(0, idx))
            pieces.append(y * mask[idx, k].view(-1, 1, 1, 1) if scale else y)
            order.append(idx)
        if len(pieces) == 1:
            return pieces[0]
        out = torch.cat(pieces)
        return out.index_select(0, torch.argsort(torch.cat(order)))


class SuperNet(nn.Module):
    def __init__(self, space: SearchSpace, lut: LatencyLUT | Sequence[LatencyLUT], thetas: int = 1) -> None:
        """`lut`: one table, or one per device. `thetas`: 1 (one distribution, priced on every table) or one
        per table. With one table, `forward` returns each sample's latency as [B], as it always has; with
        several, [B, D]: the sample's network on every device."""
        super().__init__()
        luts = [lut] if isinstance(lut, LatencyLUT) else list(lut)
        if not luts or thetas not in (1, len(luts)):
            raise ValueError(f"{thetas} thetas for {len(luts)} latency tables: one, or one per table")
        self.space = space
        self.devices = len(luts)
        fixed = space.fixed_ops()
        self.stem = build_op(fixed["stem"])
        self.layers = nn.ModuleList(
            MixedLayer([build_op(slot.op(c, space.batch)) for c in space.candidates]) for slot in space.slots
        )
        self.head = nn.Sequential(build_op(fixed["head"]), build_op(fixed["pool"]), build_op(fixed["fc"]))
        # theta starts uniform: every candidate equally likely. One theta: [L, K]; one per device: [D, L, K].
        shape = (len(space.slots), len(space.candidates))
        self.theta = nn.Parameter(torch.zeros(shape if thetas == 1 else (thetas, *shape)))
        # Not persistent: a checkpoint holds weights and theta, never a table. The table in use is always the
        # one this run was given (a resume checks it is the same one, see the trainer).
        self.register_buffer("lut", torch.stack([t.table for t in luts]), persistent=False)  # [D, L, K]
        self.fixed_us = [float(t.fixed_us) for t in luts]

    @property
    def thetas(self) -> int:
        return 1 if self.theta.dim() == 2 else self.theta.shape[0]

    def theta_of(self, index: int = 0) -> torch.Tensor:
        """The theta that device `index` is searched with (the only one, or its own)."""
        return self.theta if self.theta.dim() == 2 else self.theta[index]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "theta"]

    def sample_masks(self, batch: int, tau: float, mode: Mode, rows: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, K]: an independent Gumbel draw for every sample and layer, from theta (or, with one theta
        per device, from the theta `rows[b]` names for sample b)."""
        if self.theta.dim() == 2:
            logits = self.theta.unsqueeze(0).expand(batch, -1, -1)
        else:
            if rows is None:
                raise ValueError("a super net with a theta per device needs `rows`: which theta draws each sample")
            logits = self.theta.index_select(0, rows.to(self.theta.device))
        return gumbel_softmax(logits, tau, hard=mode == "hard")

    def forward(self, x: torch.Tensor, tau: float, mode: Mode = "soft",
                rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """Logits and each sample's latency in microseconds ([B]; [B, D] with several tables), both from the
        same masks.

        Under autocast the masks and the latency stay in float32 (a bf16 latency sum would lose ~0.4% and the
        log in the loss amplifies that); the logits come back in float32 for the cross-entropy."""
        with torch.autocast(x.device.type, enabled=False):
            masks = self.sample_masks(x.shape[0], tau, mode) if rows is None else \
                self.sample_masks(x.shape[0], tau, mode, rows)  # fmt: skip
            if self.devices == 1:
                latency = (masks * self.lut[0]).sum(dim=(1, 2)) + self.fixed_us[0]
            else:  # per device, the same reduction as one table's: each column is what that search computes
                latency = torch.stack([(masks * lut).sum(dim=(1, 2)) + fixed
                                       for lut, fixed in zip(self.lut, self.fixed_us, strict=True)], dim=1)  # fmt: skip
        x = self.stem(x)
        for i, layer in enumerate(self.layers):
            x = layer(x, masks[:, i].to(x.dtype), mode)  # bf16 activations mix with bf16 masks
        return self.head(x).float(), latency

    @torch.no_grad()
    def probabilities(self, index: int = 0) -> torch.Tensor:
        """P_theta per layer [L, K] of theta `index`."""
        return torch.softmax(self.theta_of(index), dim=-1)

    @torch.no_grad()
    def expected_latency_us(self, device: int = 0) -> float:
        """E[LAT] on `device`'s table under the theta that device is searched with."""
        theta = device if self.thetas > 1 else 0
        return float((self.probabilities(theta) * self.lut[device]).sum()) + self.fixed_us[device]

    @torch.no_grad()
    def entropy(self, index: int = 0) -> float:
        p = self.probabilities(index)
        return float(-(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1).mean())


def fbnet_loss(ce: torch.Tensor, latency_us: torch.Tensor, alpha: float, beta: float | torch.Tensor) -> torch.Tensor:
    """Eq. 2 per sample, then the batch mean: CE * alpha * log(LAT)^beta (LAT in microseconds)."""
    return per_sample_loss(ce, latency_us, alpha, beta).mean()


def per_sample_loss(ce: torch.Tensor, latency_us: torch.Tensor, alpha: float,
                    beta: float | torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Eq. 2 for each sample. With several devices (`latency_us` [B, D], `beta` [B, D] or [D]) the latency
    factor is the product over devices: CE * alpha * prod_d log(LAT_d)^beta_d. A device whose beta is 0 for a
    sample does not price it (a factor of exactly 1); one device reduces to eq. 2 exactly."""
    factor = torch.log(latency_us.clamp_min(1.0 + 1e-3)) ** beta
    if factor.dim() == 2:
        factor = factor.prod(dim=1)
    return ce * alpha * factor
