"""Search hyper-parameters. Defaults are what public FBNet implementations use (the paper's supplementary is
not public); every one can be set."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class SearchConfig:
    epochs: int = 90
    warmup_epochs: int = 10  # weights only, before theta starts to move
    batch_size: int = 64
    mode: Literal["soft", "hard"] = "soft"
    # weights w: SGD with momentum, cosine schedule, on 80% of the training split
    lr_w: float = 0.1
    momentum: float = 0.9
    wd_w: float = 1e-4
    # theta: Adam on the other 20%
    lr_theta: float = 0.01
    wd_theta: float = 5e-4
    # Gumbel-softmax temperature, decayed exponentially per epoch
    tau0: float = 5.0
    tau_decay: float = 0.045
    # loss = CE * alpha * log(LAT)^beta
    alpha: float = 0.2
    beta: float = 0.6
    # The weights' step divides out the loss's global latency factor (see trainer); False = the raw paper loss
    normalize_w_loss: bool = True
    # Steering toward a latency (see docs): beta is adapted each epoch, the result is decoded within tolerance
    target_latency_ms: float | None = None
    target_tolerance: float = 0.10
    beta_gain: float = 3.0
    beta_range: tuple[float, float] = (0.0, 20.0)
    samples: int = 5
    seed: int = 0
    threads: int | None = None

    def tau(self, epoch: int) -> float:
        import math

        return self.tau0 * math.exp(-self.tau_decay * epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
