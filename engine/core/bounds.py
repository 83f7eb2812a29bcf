"""Bounds on everything that arrives from outside (pure): ids, times, numbers, sizes, text.

One place for the limits the wire schema (:mod:`engine.core.model`), the policy schema and the
REST API enforce, so a hostile or broken record is refused at the edge with a reason instead of
crashing an agent further in (a 400-digit integer, ``1e300`` as a time, a newline in an id that
later becomes a commit trailer).  docs/robustness.md lists them for operators.

Identifier patterns (Kubernetes' own rules, so anything a real cluster reports passes):

=============  ====================================================  ===========================
namespace      DNS-1123 label: ``[a-z0-9]([-a-z0-9]*[a-z0-9])?``      <= 63 characters
kind           ``[A-Z][A-Za-z0-9]*``                                  <= 63 characters
name           DNS-1123 subdomain (dots allowed)                     <= 253 characters
container      DNS-1123 label                                        <= 63 characters
policy id      ``[a-z0-9]([a-z0-9._-]*[a-z0-9])?``                    <= 63 characters
record id      ``[A-Za-z0-9][A-Za-z0-9._:+-]*`` (cycles, decisions)   <= 128 characters
audit user     ``[A-Za-z0-9][A-Za-z0-9._@:+-]*``                      <= 128 characters
=============  ====================================================  ===========================
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

# --- times (Unix seconds, UTC) ------------------------------------------------------------------
MIN_TIME = 946_684_800.0  # 2000-01-01: anything earlier is a unit mistake (ms, 1970 defaults)
MAX_TIME = 4_102_444_800.0  # 2100-01-01: a sanity ceiling for fields not checked against "now"
FUTURE_SLACK_SECONDS = 300.0  # clock skew tolerated between a collector and the aggregator

# --- numbers ------------------------------------------------------------------------------------
MAX_CPU_CORES = 4096.0  # a request or limit; a usage sample above 1024 cores is already absurd
MAX_MEMORY_BYTES = float(2**46)  # 64 TiB, above any machine's memory
TARGET_FACTOR = 4.0  # a recommended target may exceed the bounds above by this (headroom, OOM bump)
MAX_REPLICAS = 100_000
MAX_COUNT = 2**53  # the largest integer a float (and JavaScript) holds exactly
MAX_MONEY = 1e12  # monthly cost of one workload, any currency

# --- sizes --------------------------------------------------------------------------------------
MAX_CONTAINERS = 64  # per pod (Kubernetes has no hard limit; real pods have a handful)
MAX_LABELS = 256  # labels or annotations of one workload
MAX_LABEL_CHARS = 4096  # one label/annotation key or value (annotations can be long-ish)
MAX_TEXT_CHARS = 4096  # a reason, a detail
MAX_REASONS = 64
MAX_SAMPLES = 200_000  # per resource in one metrics batch (a 6 h chunk at 1 s, x 10 pods)
MAX_RESOURCES = 8  # resource keys in one batch (two are known; the rest are counted as unknown)
MAX_DECISIONS = 10_000  # decisions in one cycle summary
MAX_BODY_BYTES = 64 * 1024  # a policy document on the API (Kafka's limit is 1 MiB)
MAX_JSON_DEPTH = 12  # nesting of a policy document: the schema needs 5
MAX_RECORD_BYTES = 900 * 1024  # what the app produces per message (Kafka's default is 1 MiB)
# workloads' records in one metrics bundle (engine/core/bundles.py): the aggregator handles a
# bundle as one event, ~2 ms a member at a cycle's end; 100 keeps one event near 0.2 s
MAX_BUNDLE_RECORDS = 100

NAMESPACE_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
KIND_RE = r"^[A-Z][A-Za-z0-9]{0,62}$"
NAME_RE = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
CONTAINER_RE = NAMESPACE_RE
POLICY_ID_RE = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
RECORD_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$"
USER_RE = r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$"

_POLICY_ID = re.compile(POLICY_ID_RE)
_USER = re.compile(USER_RE)
_WORKLOAD_ID = re.compile(
    NAMESPACE_RE.rstrip("$") + "/" + KIND_RE.lstrip("^").rstrip("$") + "/" + NAME_RE.lstrip("^")
)


def is_policy_id(value: str) -> bool:
    return bool(_POLICY_ID.fullmatch(value))


def is_user(value: str) -> bool:
    return bool(_USER.fullmatch(value))


def is_workload_id(value: str) -> bool:
    return bool(_WORKLOAD_ID.fullmatch(value))


def sane_time(value: float) -> bool:
    return math.isfinite(value) and MIN_TIME <= value <= MAX_TIME


# --- text that ends up on one line (commit messages, logs) --------------------------------------
def one_line(text: object, limit: int = 512) -> str:
    """``text`` as one printable line: control, format (bidi overrides such as U+202E) and
    separator characters become spaces, runs of whitespace collapse, at most ``limit`` chars."""
    chars = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        chars.append(" " if cat[0] in ("C", "Z") else ch)
    line = " ".join("".join(chars).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


# --- JSON bodies (the REST API) -----------------------------------------------------------------
class BodyError(ValueError):
    """A request body refused before it is looked at: ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise BodyError(400, f"{name} is not a number JSON allows")


def _check_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > 2**63 - 1:
        raise BodyError(400, "integer out of range (at most 2^63-1)")
    return value


def _check_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(400, f"number {text[:40]} is out of range")
    return value


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth, iteratively (a recursive walk is what a deep document is meant to break)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def _nesting_prefix(raw: bytes, limit: int) -> bool:
    """True when the raw text opens more than ``limit`` containers before closing them (checked
    before parsing: CPython's json raises RecursionError on deep enough input)."""
    level = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            level += 1
            if level > limit:
                return True
        elif byte in (0x5D, 0x7D):
            level -= 1
    return False


def _charset(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            return value.strip().strip('"')
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: with a key twice, which one a reader keeps is
    the parser's choice (``{"mode": "observe", "mode": "autopilot"}``), so it is refused."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise BodyError(400, f"duplicate key {one_line(key, 80)!r} in a JSON object")
        out[key] = value
    return out


def parse_json_body(
    raw: bytes,
    content_type: str | None,
    *,
    max_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Decode a JSON request body (``content_type``: the whole header, or None) or raise
    :class:`BodyError`: 415 for another media type or a charset other than UTF-8, 413 when
    larger than ``max_bytes``, 400 for invalid JSON, nesting deeper than ``max_depth``,
    integers beyond 64 bits and NaN/Infinity."""
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media not in ("application/json", "") and not media.endswith("+json"):
        raise BodyError(415, f"content type {one_line(media, 80)!r} is not application/json")
    encoding = (_charset(content_type or "") or "utf-8").strip().lower()
    if encoding not in ("utf-8", "utf8", "us-ascii", "ascii"):
        raise BodyError(415, f"charset {one_line(encoding, 40)!r} is not utf-8")
    if len(raw) > max_bytes:
        raise BodyError(413, f"body of {len(raw)} bytes is larger than {max_bytes}")
    if _nesting_prefix(raw, max_depth):
        raise BodyError(400, f"JSON nested deeper than {max_depth} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(400, "body is not valid UTF-8") from None
    try:
        value = json.loads(
            text,
            parse_int=_check_int,
            parse_float=_check_float,
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_keys,
        )
    except BodyError:
        raise
    except (ValueError, RecursionError) as exc:
        raise BodyError(400, f"not JSON: {one_line(exc, 200)}") from None
    if json_depth(value, max_depth) > max_depth:
        raise BodyError(400, f"JSON nested deeper than {max_depth} levels")
    return value
