"""Checking the shape of a parsed manifest (YAML) before anything relies on it."""
from __future__ import annotations

import math

from skyfix.errors import PackError

NUMBER = (int, float)
DIGEST = {"bytes": int, "sha256": str}


def check_shape(value, shape, where: str) -> None:
    """Raise PackError naming the first field of `value` that does not have `shape`."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise PackError(f"{where}: expected a mapping, found {type(value).__name__}")
        for key, sub in shape.items():
            if key not in value:
                raise PackError(f"{where}: '{key}' is missing")
            check_shape(value[key], sub, f"{where}.{key}")
        return
    types = shape if isinstance(shape, tuple) else (shape,)
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise PackError(f"{where}: expected {names}, found {type(value).__name__} {str(value)[:40]!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PackError(f"{where}: not a finite number")
