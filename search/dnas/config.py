"""Search hyper-parameters. Defaults are what public FBNet implementations use (the paper's supplementary is
not public); every one can be set, from Python and from both command lines.

This dataclass is the single source of the options: `search.dnas.cli_options` turns its fields (type, default,
help) into the argparse options of `python -m search.run` and the typer options of `dnas search`, so a
setting cannot exist in one place and be missing, or default differently, in another.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal


class ConfigError(ValueError):
    """A setting, or a combination of settings, that cannot give a meaningful search."""


def _opt(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class SearchConfig:
    epochs: int = _opt(90, "Search epochs.")
    warmup_epochs: int = _opt(10, "Epochs that train only the weights, before theta starts to move.")
    batch_size: int = _opt(64, "Batch size per process.")
    mode: Literal["soft", "hard"] = _opt(
        "soft", "soft: every candidate, mixed by the masks (the paper); hard: one sampled candidate per sample."
    )
    # weights w: SGD with momentum, cosine schedule, on 80% of the training split
    lr_w: float = _opt(0.1, "SGD learning rate of the weights (per process batch; see --scale-lr).")
    momentum: float = _opt(0.9, "SGD momentum of the weights.")
    wd_w: float = _opt(1e-4, "Weight decay of the weights.")
    scale_lr: bool = _opt(True, "Multiply lr_w by the number of processes (linear scaling: the global batch grows).")
    # theta: Adam on the other 20%
    lr_theta: float = _opt(0.01, "Adam learning rate of theta.")
    wd_theta: float = _opt(5e-4, "Weight decay of theta.")
    # Gumbel-softmax temperature, decayed exponentially per epoch
    tau0: float = _opt(5.0, "Initial Gumbel-softmax temperature.")
    tau_decay: float = _opt(0.045, "tau = tau0 * exp(-tau_decay * epoch).")
    # loss = CE * alpha * log(LAT)^beta
    alpha: float = _opt(0.2, "Loss = CE * alpha * log(LAT_us)^beta.")
    beta: float = _opt(0.6, "Latency exponent: larger -> cheaper blocks.")
    normalize_w_loss: bool = _opt(
        True, "Divide the loss's latency factor out of the weights' step (off: the raw paper loss)."
    )
    # A latency target is a budget: the reported network is the most likely one predicted at most T.
    target_latency_ms: tuple[float, ...] | None = _opt(
        None,
        "Latency budget T: steer beta toward it, report a network <= T. Several tables: one T per device (in "
        "their order; repeat the option), or one T for every device.",
    )
    target_mode: Literal["at_most", "band"] = _opt(
        "at_most", "at_most: predicted latency <= T; band: within T +- tolerance."
    )
    target_tolerance: float = _opt(0.10, "Half-width of the band, as a fraction of T (--target-mode band).")
    beta_gain: float = _opt(3.0, "Steering: beta *= (E[LAT] / T) ** gain after each theta epoch.")
    beta_range: tuple[float, float] = _opt((0.0, 20.0), "Steering keeps beta within LO HI.")
    # several devices (several tables)
    device_mode: Literal["per-device", "all-devices"] = _opt(
        "per-device",
        "Several tables: per-device: shared weights, a theta per device trained against its own table, one "
        "architecture per device; all-devices: one theta whose loss prices every device, one architecture "
        "within every device's budget.",
    )
    samples: int = _opt(5, "Architectures to sample from P_theta at the end.")
    seed: int = _opt(0, "Random seed (weights, Gumbel draws, data order).")
    # data
    data_seed: int | None = _opt(None, "Seed of the data split and class subset (default: --seed). Recorded.")
    classes: int | None = _opt(None, "Search on a random subset of N classes (the paper: 100 of ImageNet).")
    workers: int = _opt(4, "DataLoader worker processes per process (streamed data sets).")
    steps_per_epoch: int | None = _opt(None, "Cap the steps of each phase (quick tries and benchmarks).")
    validate: bool = _opt(True, "Evaluate the super net on the held-out split after every epoch.")
    # hardware and bookkeeping
    compute_device: Literal["auto", "cpu", "cuda"] = _opt("auto", "auto: CUDA when present (one GPU per process).")
    bf16: bool = _opt(False, "bfloat16 autocast for the forward pass (refused where the hardware lacks it).")
    threads: int | None = _opt(None, "torch threads per process.")
    checkpoint_every: int = _opt(1000, "Also checkpoint every N steps inside an epoch (0: at epoch ends only).")
    tensorboard: bool = _opt(True, "Write epoch metrics as TensorBoard events too (OUT/tensorboard).")

    def __post_init__(self) -> None:
        self.beta_range = tuple(self.beta_range)  # type: ignore[assignment]
        if isinstance(self.target_latency_ms, int | float):  # one budget, as the Python API has always taken it
            self.target_latency_ms = (float(self.target_latency_ms),)
        elif self.target_latency_ms is not None:
            self.target_latency_ms = tuple(float(t) for t in self.target_latency_ms)
        self.check()

    def check(self) -> None:
        """Refuse settings that would run for hours and then report nothing meaningful."""
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(
                f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs}): theta only trains "
                "after the warm-up, so this search would train no theta and report its uniform start"
            )
        if self.mode not in ("soft", "hard"):
            raise ConfigError(f"mode must be soft or hard, not {self.mode!r}")
        if self.target_mode not in ("at_most", "band"):
            raise ConfigError(f"target_mode must be at_most or band, not {self.target_mode!r}")
        if self.compute_device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"compute_device must be auto, cpu or cuda, not {self.compute_device!r}")
        if self.target_latency_ms is not None:
            if not self.target_latency_ms:
                raise ConfigError("target_latency_ms needs at least one value")
            if not all(t > 0 and math.isfinite(t) for t in self.target_latency_ms):
                raise ConfigError("target_latency_ms must be positive")
        if self.device_mode not in ("per-device", "all-devices"):
            raise ConfigError(f"device_mode must be per-device or all-devices, not {self.device_mode!r}")
        if not 0 < self.target_tolerance < 1:
            raise ConfigError("target_tolerance must be in (0, 1)")
        if len(self.beta_range) != 2 or not 0 <= self.beta_range[0] <= self.beta_range[1]:
            raise ConfigError(f"beta_range must be LO HI with 0 <= LO <= HI, not {self.beta_range}")
        if self.classes is not None and self.classes < 2:
            raise ConfigError("classes must be at least 2")
        if self.workers < 0 or self.checkpoint_every < 0 or self.samples < 0:
            raise ConfigError("workers, checkpoint_every and samples cannot be negative")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError("steps_per_epoch must be at least 1")

    @property
    def split_seed(self) -> int:
        """The seed that decides which images are held out; `dnas train` must use the same one."""
        return self.seed if self.data_seed is None else self.data_seed

    def targets_us(self, devices: int = 1) -> list[float | None]:
        """The budget of each of `devices` devices in microseconds (None: no budget). One value applies to
        every device; otherwise there must be one per device."""
        if self.target_latency_ms is None:
            return [None] * devices
        if len(self.target_latency_ms) == 1:
            return [self.target_latency_ms[0] * 1e3] * devices
        if len(self.target_latency_ms) != devices:
            raise ConfigError(
                f"{len(self.target_latency_ms)} latency targets for {devices} device(s): give one per device, in "
                "the order of the tables, or one for all"
            )
        return [t * 1e3 for t in self.target_latency_ms]

    def tau(self, epoch: int) -> float:
        return self.tau0 * math.exp(-self.tau_decay * epoch)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Read a config as `to_dict` wrote it (a checkpoint's or search.json's); unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown search settings: {', '.join(sorted(unknown))}")
        return cls(**data)
