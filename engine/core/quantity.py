"""Kubernetes quantities and durations: the one units module (parse, round, format).

CPU is in cores and memory in bytes everywhere in the engine; this module is the only place that
turns ``"250m"`` / ``"512Mi"`` into numbers and numbers back into the text a manifest or a reason
shows.  Two kinds of text come out: *manifest* quantities, rounded UP to whole millicores / MiB
(:func:`cpu_quantity`, :func:`memory_quantity`, what the GitOps patches write), and *display*
values for reasons and tables (:func:`fmt_cpu`, :func:`fmt_memory`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime

MIB = 1024.0 * 1024.0
GIB = 1024.0 * MIB

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1024.0,
    "Mi": MIB,
    "Gi": GIB,
    "Ti": 1024.0 * GIB,
}
_DURATION_SUFFIX = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity -> a float in base units: ``"250m"`` -> 0.25, ``"1Gi"`` -> 2**30."""
    if isinstance(value, int | float):
        return float(value)
    match = _QUANTITY.match(value.strip())
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def parse_duration(value: str | int | float) -> float:
    """``"90s"``, ``"30m"``, ``"24h"``, ``"7d"``, ``"1w"`` -> seconds; numbers are seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    factor = _DURATION_SUFFIX.get(text[-1:], None)
    number = text[:-1] if factor is not None else text
    try:
        seconds = float(number) * (factor or 1.0)
    except ValueError:
        raise ValueError(f"not a valid duration: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a valid duration: {value!r}")
    return seconds


def _field(what: str) -> Callable[[object], object]:
    def parse(value: object) -> object:
        if not isinstance(value, str):
            return value  # numbers are base units; pydantic checks the type and the bounds
        try:
            return parse_quantity(value)
        except ValueError:
            raise ValueError(f"not a valid {what} quantity: {value!r}") from None

    return parse


# Pydantic pre-validators: text is parsed as a quantity, anything else is left to the type.
cpu_field = _field("cpu")
memory_field = _field("memory")


def duration_field(value: object) -> object:
    """Pydantic pre-validator: text is parsed as a duration, anything else is left to the type."""
    return parse_duration(value) if isinstance(value, str) else value


# --- rounding and manifest text ------------------------------------------------------------------


def ceil_cpu(cores: float) -> float:
    """Round UP to whole millicores (tolerating float noise: 0.2660000001 -> 266m)."""
    return math.ceil(round(cores * 1000.0, 6)) / 1000.0


def ceil_memory(n_bytes: float) -> float:
    """Round UP to whole MiB."""
    return math.ceil(round(n_bytes / MIB, 6)) * MIB


def cpu_quantity(cores: float) -> str:
    """Cores -> whole millicores rounded up, at least ``1m``: ``0.2501 -> "251m"``."""
    return f"{max(1, math.ceil(round(cores * 1000, 6)))}m"


def memory_quantity(num_bytes: float) -> str:
    """Bytes -> whole MiB rounded up, at least ``1Mi``: ``536870912 -> "512Mi"``."""
    return f"{max(1, math.ceil(round(num_bytes / MIB, 6)))}Mi"


def format_quantity(resource: str, value: float) -> str:
    """The manifest text of a ``cpu`` or ``memory`` value."""
    return cpu_quantity(value) if resource == "cpu" else memory_quantity(value)


# --- display text --------------------------------------------------------------------------------


def fmt_cpu(cores: float) -> str:
    return f"{round(cores * 1000.0, 3):g}m"


def fmt_memory(n_bytes: float) -> str:
    return f"{round(n_bytes / MIB, 1):g}Mi"


def fmt_time(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")
    except (OverflowError, ValueError, OSError):  # NaN, 1e300: say so instead of raising
        return f"t={ts!r}"


def fmt_duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m"
