"""The Result protocol every result class follows, and the conversion of numbers to plain JSON-able data."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["plain"]


def plain(v: Any) -> Any:
    """numpy -> JSON-able Python data; non-finite floats become None."""
    if isinstance(v, dict):
        return {k if isinstance(k, str) else str(k): plain(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return [plain(a) for a in v.tolist()] if v.ndim else plain(v.item())
    if isinstance(v, (list, tuple)):
        return [plain(a) for a in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v
