"""Latency tables on the search side: check a table prices the whole space, turn it into the search's tensor
(the LUT), and spread a calibration over it. The table itself is search/tables/schema.py's `PublishedTable`
(fetched by search/tables/client.py, or read from a file); TableError is re-exported here for the callers
that have always imported it from this module."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from search.space.enumerate import enumerate_ops
from search.space.macro import SearchSpace
from search.tables import calibration
from search.tables.schema import PublishedTable, TableError

__all__ = ["LatencyLUT", "PublishedTable", "TableError", "apply_calibration", "build_lut"]

log = logging.getLogger("dnas.search")


@dataclass(frozen=True)
class LatencyLUT:
    """LUT[l, k]: microseconds of candidate k at searchable layer l; `fixed_us`: stem, head conv, pool, fc."""

    table: torch.Tensor
    fixed_us: float

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """E[LAT] under per-layer probabilities [..., L, K] (eq. 9 with m = P)."""
        return (probs * self.table).sum(dim=(-2, -1)) + self.fixed_us

    def of_arch(self, indices: list[int]) -> float:
        return float(sum(self.table[layer, k] for layer, k in enumerate(indices))) + self.fixed_us


def build_lut(space: SearchSpace, table: PublishedTable) -> LatencyLUT:
    """Every (layer, candidate) and fixed layer must be priced; a missing op is named, not guessed."""
    if table.space_hash and table.space_hash != space.hash:
        log.warning("table was measured for space %s; searching space %s", table.space_hash[:12], space.hash[:12])
    medians = table.medians
    en = enumerate_ops(space, table.dtype)
    missing = [k for k in en.ops if k not in medians]
    if missing:
        raise TableError(
            f"the latency table does not price {len(missing)} op(s) of this space, e.g. {missing[0]}; "
            "profile this space on the device first (dnas profile)"
        )
    rule = table.rule  # each op's in-network time, and the constant a network pays once
    cost = {key: rule.in_network_us(spec, medians[key]) for key, spec in en.ops.items()}
    lut = torch.tensor([[cost[k] for k in row] for row in en.layer_keys], dtype=torch.float64)
    fixed = sum(cost[k] for k in en.fixed_keys.values()) + rule.constant_us
    return LatencyLUT(table=lut.float(), fixed_us=fixed)


def apply_calibration(lut: LatencyLUT, model: dict[str, Any], space: SearchSpace | None = None) -> LatencyLUT:
    """Spread a calibration over the LUT; raw tables are never changed, this is applied on the client.
    - `family-v1` (search/tables/calibration.py): each (layer, candidate) scaled by its block family's factor, and
      the shared layers replaced by the intercept. Needs the space, to know each candidate's family.
    - `linear` (older calibrations): `measured = scale * sum + offset`, every op scaled."""
    if model.get("kind") == calibration.KIND:
        if space is None:
            raise TableError("a family calibration needs the search space to be applied")
        factors = model["factors"]
        scale = torch.tensor(
            [[factors[calibration.family(slot.op(c, space.batch)) or "other"] for c in space.candidates]
             for slot in space.slots], dtype=lut.table.dtype)  # fmt: skip
        if not all(0 <= float(f) < 100 for f in factors.values()):
            raise TableError(f"calibration factors {factors} are not plausible")
        out = LatencyLUT(table=lut.table * scale, fixed_us=float(model["intercept_us"]))
        fastest = out.of_arch(out.table.argmin(dim=1).tolist())
        if fastest <= 0:  # log(LAT) would be undefined: the calibration was fitted far outside this space
            raise TableError(f"calibration predicts {fastest:.1f} us for the fastest network of the space; not applied")
        return out
    if model.get("kind") != "linear":
        raise TableError(f"unknown calibration kind {model.get('kind')!r}")
    scale, offset = float(model["scale"]), float(model["offset_us"])
    if not 0 < scale < 100:
        raise TableError(f"calibration scale {scale} is not plausible")
    return LatencyLUT(table=lut.table * scale, fixed_us=lut.fixed_us * scale + offset)
