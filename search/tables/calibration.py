"""Calibration: what a table's rule still gets wrong, learnt from whole networks measured on the device.

The table's rule (search/tables/predict.py) gets the per-call overhead and the network constant from measurements.
What remains is how each kind of block behaves inside a network compared with alone (cache pressure grows
with the expansion ratio; a skip costs next to nothing in a network). So the calibration is a non-negative
factor per block family (e1, e3, e6, other) on the ops' in-network times, plus an intercept for what every
network of the space shares (stem, head, pool, classifier and the call):

    measured ~ intercept + sum over families f of factor_f * (sum of in-network us of the network's f ops)

It is fitted on measurements normalised by the drift the anchors show between profiling and validation, so
it corrects the table, not the machine's mood that afternoon. Its error is only ever reported held out
(k-fold): an in-sample figure of a fitted model says nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear

from search.space.macro import SearchSpace
from search.space.opspec import OpSpec
from search.tables.predict import PredictionRule

KIND = "family-v1"
FAMILIES = ("e1", "e3", "e6", "other")


def family(spec: OpSpec) -> str | None:
    """The group a searchable op's factor belongs to; None for the layers every network shares."""
    if spec.kind in ("conv", "pool", "fc", "probe"):
        return None
    if spec.kind == "ir" and spec.expansion in (1, 3, 6):
        return f"e{spec.expansion}"
    return "other"


def features(space: SearchSpace, rule: PredictionRule, medians: dict[str, float], arch: Sequence[str]) -> np.ndarray:
    x = dict.fromkeys(FAMILIES, 0.0)
    for spec in space.network_ops(list(arch), rule.dtype):
        fam = family(spec)
        if fam is not None:
            x[fam] += rule.in_network_us(spec, medians[spec.key])
    return np.array([x[f] for f in FAMILIES])


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Non-negative factors, free intercept, least squares (bounded, so no family can cost less than 0)."""
    a = np.hstack([x, np.ones((len(x), 1))])
    lower = [0.0] * x.shape[1] + [-np.inf]
    sol = lsq_linear(a, y, bounds=(lower, [np.inf] * (x.shape[1] + 1))).x
    return {
        "kind": KIND,
        "factors": dict(zip(FAMILIES, map(float, sol[:-1]), strict=True)),
        "intercept_us": float(sol[-1]),
    }


def predict(model: dict[str, Any], x: np.ndarray) -> np.ndarray:
    factors = np.array([model["factors"][f] for f in FAMILIES])
    return x @ factors + model["intercept_us"]


def kfold_predictions(x: np.ndarray, y: np.ndarray, k: int = 5) -> np.ndarray:
    """Each network predicted by a calibration fitted without it (k folds, interleaved by index)."""
    k = max(2, min(k, len(y)))
    out = np.empty_like(y, dtype=float)
    folds = np.arange(len(y)) % k
    for fold in range(k):
        test = folds == fold
        out[test] = predict(fit(x[~test], y[~test]), x[test])
    return out
