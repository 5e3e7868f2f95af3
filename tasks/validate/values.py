"""Small value helpers shared by the validate modules: JSON-plain values, rounding, parameters."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

META = "dlops"  # our key in the suite's and each expectation's `meta` (report annotations)


def param(expression: str) -> dict[str, str]:
    """A GX suite parameter: resolved from params.yaml's `validate` section at validation time.

    `expression` is a key of that section or GX's arithmetic on keys (`1 - max_missing_target`).
    """
    return {"$PARAMETER": expression}


def lower(x: float) -> float:
    """Round down to 6 decimals, so that the observed value passes its inferred bound."""
    return math.floor(x * 1e6 + 1e-6) / 1e6


def upper(x: float) -> float:
    """Round up to 6 decimals."""
    return math.ceil(x * 1e6 - 1e-6) / 1e6


def plain(value: Any) -> Any:
    """Plain JSON values for numpy scalars, NaN and containers of them."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def sorted_values(values: Any) -> list[Any]:
    """Plain values, sorted (by text when they do not compare)."""
    values = [plain(v) for v in values]
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)
