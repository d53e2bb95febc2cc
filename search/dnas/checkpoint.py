"""The search's checkpoint: everything needed to continue exactly (position inside the epoch, optimiser
states, betas, every rank's RNG state and partial sums), and the checks that refuse to continue a search on
another space, other devices, other latencies or other data.

Kept beside the loop (as timm's `checkpoint_saver` is): the loop says when to save; this module says what a
checkpoint holds and when one may be resumed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from search.dnas.config import ConfigError
from search.tables.latency import LatencyLUT, TableError

if TYPE_CHECKING:
    from search.dnas.trainer import Searcher

log = logging.getLogger("dnas.search")
CHECKPOINT_FORMAT = 2


def lut_sha256(luts: Sequence[LatencyLUT]) -> str:
    """The latencies the search actually optimises (after any calibration): what a resume must not change.
    One device: its LUT's digest; several: the digest of their digests, in order."""
    digests = []
    for one in luts:
        h = hashlib.sha256(one.table.detach().cpu().to(torch.float64).numpy().tobytes())
        h.update(repr(float(one.fixed_us)).encode())
        digests.append(h.hexdigest())
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


def _as_list(value: Any) -> list[Any] | None:
    """A saved per-device value: a list, or one value (a one-device checkpoint of an earlier dnas)."""
    if value is None:
        return None
    return list(value) if isinstance(value, list | tuple) else [value]


def _short(hashes: list[str]) -> str:
    return ",".join(h[:12] for h in hashes)


def _rank_state(s: Searcher, totals: list[float] | None) -> dict[str, Any]:
    state: dict[str, Any] = {"rng_cpu": torch.get_rng_state(), "totals": totals}
    if s.device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(s.device)
    return state


def save_checkpoint(s: Searcher, totals: list[float] | None = None) -> None:
    """Collective under DDP (every rank's RNG state and partial sums are gathered); rank 0 writes."""
    mine = _rank_state(s, totals)
    if s.rank.world > 1:
        ranks: list[Any] = [None] * s.rank.world
        dist.all_gather_object(ranks, mine)
    else:
        ranks = [mine]
    if not s.rank.main:
        return
    state = {
        "format": CHECKPOINT_FORMAT,
        "position": {"epoch": s.epoch, "phase": s.phase, "step": s.step},
        "net": s.net.state_dict(),
        "opt_w": s.opt_w.state_dict(),
        "opt_theta": s.opt_theta.state_dict(),
        "beta": list(s.betas),
        "devices": s.n,
        "partial": s.partial,
        "history": s.history,
        "events": s.events,
        "config": s.cfg.to_dict(),
        "space_hash": s.space.hash,
        "table_sha256": s.table_sha256,
        "lut_sha256": lut_sha256(s.luts),
        "data": s.data.record,
        "world": s.rank.world,
        "ranks": ranks,
    }
    tmp = s.ckpt_path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, s.ckpt_path)


def check_resumable(s: Searcher, state: dict[str, Any]) -> None:
    """Refuse a checkpoint of another format, space, number of devices or data; a change of latencies only
    with --allow-table-change (recorded as an event)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{s.ckpt_path} was written by an older dnas; use a fresh --out directory")
    if state["space_hash"] != s.space.hash:
        raise ConfigError(f"{s.ckpt_path} belongs to another space; use a fresh --out directory")
    old_mode = state["config"].get("device_mode", "per-device")
    if state.get("devices", 1) != s.n or (s.n > 1 and old_mode != s.cfg.device_mode):
        raise ConfigError(
            f"{s.ckpt_path} searched {state.get('devices', 1)} device(s) ({old_mode}), this run "
            f"{s.n} ({s.cfg.device_mode}): theta has another shape; use a fresh --out directory"
        )
    old_table, old_lut = _as_list(state.get("table_sha256")), state.get("lut_sha256")
    changed = []
    if s.table_sha256 and old_table and old_table != s.table_sha256:
        changed.append(f"table {_short(old_table)} -> {_short(s.table_sha256)}")
    if old_lut != lut_sha256(s.luts):
        changed.append("latencies (table or calibration)")
    if changed:
        if not s.allow_table_change:
            raise TableError(
                f"{s.ckpt_path} searched against other latencies ({'; '.join(changed)}): resume with the "
                "same table, or pass --allow-table-change to continue on this one"
            )
        log.warning("resuming on a different table: %s", "; ".join(changed))
        s.events.append({"epoch": state["position"]["epoch"], "event": "table changed", "what": changed})
    old_data, new_data = state.get("data") or {}, s.data.record
    for key in ("kind", "split_seed", "classes", "rule"):
        if old_data.get(key) != new_data.get(key):
            raise ConfigError(
                f"the checkpoint searched on other data ({key}: {old_data.get(key)!r} -> {new_data.get(key)!r});"
                " theta would train on images held out so far: use the same data, or a fresh --out"
            )


def load_checkpoint(s: Searcher) -> bool:
    """Continue from `s.ckpt_path` if it exists: weights, optimisers, position, history, betas (unless --beta
    changed), and this rank's RNG state and partial sums when the number of processes is the same."""
    if not s.ckpt_path.exists():
        return False
    state = torch.load(s.ckpt_path, map_location="cpu", weights_only=False)
    s.events = list(state.get("events", []))
    check_resumable(s, state)
    s.net.load_state_dict(state["net"])
    s.opt_w.load_state_dict(state["opt_w"])
    s.opt_theta.load_state_dict(state["opt_theta"])
    for group in s.opt_w.param_groups:  # the lr follows this run's schedule, not the saved one
        group["lr"] = s.lr_w
    pos = state["position"]
    s.epoch, s.phase, s.step = pos["epoch"], pos["phase"], pos["step"]
    s.history, s.partial = state["history"], state["partial"]
    old_cfg = state["config"]
    # beta: the saved one is the steering's current value; a --beta that differs from the one the search
    # started with is the user's new choice and wins.
    if old_cfg.get("beta") != s.cfg.beta:
        log.warning("--beta %s replaces the checkpoint's beta %s", s.cfg.beta, state["beta"])
    else:
        s.betas = [float(b) for b in _as_list(state["beta"]) or []]
    if isinstance(old_cfg.get("target_latency_ms"), int | float):  # before budgets per device
        old_cfg = old_cfg | {"target_latency_ms": (float(old_cfg["target_latency_ms"]),)}
    old_cfg.setdefault("device_mode", s.cfg.device_mode)
    changed = {k: [old_cfg.get(k), v] for k, v in s.cfg.to_dict().items() if old_cfg.get(k) != v}
    if changed:
        log.warning("resumed with changed settings: %s", changed)
        s.events.append({"epoch": s.epoch, "event": "settings changed", "what": changed})
    ranks = state["ranks"]
    if state["world"] == s.rank.world:
        mine = ranks[s.rank.rank]
        torch.set_rng_state(mine["rng_cpu"])
        if s.device.type == "cuda" and "rng_cuda" in mine:
            torch.cuda.set_rng_state(mine["rng_cuda"], s.device)
        s.resume_totals = mine["totals"]
    else:
        # Another number of processes shards the data differently: restart the interrupted phase.
        log.warning("checkpoint from %d processes, now %d: the current phase restarts", state["world"],
                    s.rank.world)  # fmt: skip
        s.step = 0
        s.resume_totals = None
    return True
