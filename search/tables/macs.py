"""A table whose price is multiply-adds: the FLOP counter that device tables are measured against.

FBNet's point is that multiply-adds are the wrong price for a device. To show it, the same search must be
run with multiply-adds in the latency term and its network measured on the device. This builds that price as a
table of the ordinary shape (one entry per unique op, the plain-sum rule), so every search path (budgets,
decoding, outputs) works on it unchanged and nothing special-cases "a FLOP search".

Units: an entry's `median_us` holds thousands of multiply-adds (kMAC), so `predict_us() / 1e3` (what budgets
compare in "ms") reads as millions (MMAC), and log(LAT) stays well above zero even for 32 px spaces.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from search.space.cost import op_cost
from search.space.enumerate import enumerate_ops
from search.space.macro import SearchSpace
from search.tables.predict import PLAIN

UNIT = "kMAC"


def macs_table(space: SearchSpace) -> dict[str, Any]:
    """A table payload pricing every op of `space` by its multiply-adds, as the service would serve one."""
    entries = [{"key": key, "median_us": op_cost(spec).macs / 1e3} for key, spec in enumerate_ops(space).ops.items()]
    body = {"space": space.to_dict(), "entries": entries}
    sha = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {
        **body,
        "space_hash": space.hash,
        "content_sha256": sha,
        "version": 1,
        "device": {"name": "multiply-adds", "platform": "counted"},
        "config": {"price": "macs", "unit": UNIT},
        "measured_as": "counted",
        "prediction": {"rule": PLAIN, "description": "plain sum of the ops' multiply-adds (kMAC)"},
    }
