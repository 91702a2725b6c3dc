"""Ranges for numeric command-line options, checked like recipe fields.

An out-of-range value is a `ConfigError` naming the option, the range and why it exists, so
`curate` prints it as one line and exits 2 (click's own range types print a usage block instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from curator.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range, the same bound a recipe's seed has


def in_range(lo: float | None = None, hi: float | None = None, why: str = "", zero_ok: bool = False) -> Callable:
    """A click callback: the value (None passes: an optional option left out) must lie in [lo, hi]
    (or be 0 with ``zero_ok``)."""

    def check(ctx: Any, param: Any, value: Any) -> Any:
        if value is None or (zero_ok and value == 0):
            return value
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = (
                f"from {lo:,} to {hi:,}"
                if lo is not None and hi is not None
                else f">= {lo:,}"
                if lo is not None
                else f"<= {hi:,}"
            )
            name = param.opts[0] if param is not None and param.opts else "value"
            zero = "0 or " if zero_ok else ""
            raise ConfigError(
                f"{name} {value:,} is out of range; give {zero}a value {span}" + (f" ({why})" if why else "")
            )
        return value

    return check


SEED = in_range(0, SEED_MAX, "a seed is a 32-bit unsigned number, as in a recipe")
