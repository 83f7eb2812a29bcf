"""Reading the topics as an operator does: decode any record with the wire schema (pure).

* :func:`decode` — a raw value of a known topic into its model and a one-line summary; a value
  that does not decode is returned raw with the reason, never an exception (``kubefinops tail``
  shows unknown records instead of crashing).
* :func:`group_dead_letters` — dead letters grouped by reason class with counts and samples.
* :func:`replay_check` — may a dead letter go back to its original topic? Only if its value is
  valid *now* (the producer or the schema was fixed, or an operator fixed the value up).

The schema per topic is :data:`SCHEMAS`: the short topic name (``metrics``, ``decisions``…) as
in :func:`engine.app.topic_specs`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from engine.core.model import (
    CycleSummary,
    DeadLetter,
    Decision,
    Execution,
    Recommendation,
    WorkloadSpec,
    parse,
    parse_metrics_record,
)
from engine.core.policy import validate_policy
from engine.errors import InvalidPolicy, InvalidRecord, KubeFinOpsError

Decoder = Callable[[bytes], BaseModel]


def _policy(raw: bytes) -> BaseModel:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InvalidRecord(f"Policy: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidRecord("Policy: not a JSON object")
    try:
        return validate_policy(doc)
    except InvalidPolicy as exc:
        raise InvalidRecord(f"Policy: {exc}") from None


def _model(model: type[BaseModel]) -> Decoder:
    return lambda raw: parse(model, raw)  # type: ignore[type-var]


SCHEMAS: dict[str, Decoder] = {
    "metrics": parse_metrics_record,
    "workloads": _model(WorkloadSpec),
    "policies": _policy,
    "recommendations": _model(Recommendation),
    "decisions": _model(Decision),
    "executions": _model(Execution),
    "deadletter": _model(DeadLetter),
    "cycles": _model(CycleSummary),
}


@dataclass(frozen=True)
class Decoded:
    """One record as shown to an operator: the model's JSON, or the raw text and why."""

    kind: str  # model name, "tombstone", "raw" (undecodable) or "json" (no schema known)
    value: Any  # JSON-able: the model dump, the parsed JSON, or the raw text
    summary: str
    error: str | None = None


def _raw_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def decode(short: str, raw: bytes | None) -> Decoded:
    """Decode a value of topic ``short``; never raises."""
    if raw is None:
        return Decoded("tombstone", None, "(tombstone: deleted)")
    decoder = SCHEMAS.get(short)
    if decoder is None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return Decoded("raw", _raw_text(raw), _clip(_raw_text(raw)))
        return Decoded("json", doc, _clip(json.dumps(doc, separators=(",", ":"))))
    try:
        model = decoder(raw)
    except (KubeFinOpsError, ValueError) as exc:
        return Decoded("raw", _raw_text(raw), _clip(_raw_text(raw)), error=str(exc))
    return Decoded(type(model).__name__, model.model_dump(mode="json"), summarize(model))


def _clip(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _money(value: float, currency: str) -> str:
    return f"{value:+.2f} {currency}/month"


def summarize(model: BaseModel) -> str:
    """A one-line description of a decoded record."""
    m: Any = model
    name = type(model).__name__
    if name == "MetricsChunk":
        series = sum(len(rows) for res in m.containers.values() for rows in res.values())
        return (
            f"usage {m.workload_id} ({m.start:.0f}, {m.end:.0f}]: {len(m.containers)} containers, "
            f"{series} series x {m.n} points every {m.step:g}s, {m.sample_count()} samples"
        )
    if name == "MetricsBatch":
        n = {r: len(v) for r, v in m.samples.items()}
        counts = ", ".join(f"{k} {v}" for k, v in sorted(n.items()))
        return f"usage {m.container_id} ({m.start:.0f}, {m.end:.0f}]: {counts} samples"
    if name == "MetricsBundle":
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(m.kinds().items()))
        first = m.records[0]
        spec = first.get("spec") if isinstance(first.get("spec"), dict) else first
        wid = "/".join(str(spec.get(f, "?")) for f in ("namespace", "kind", "name"))
        if "workload" in first:
            wid = "/".join(str(first.get(f, "?")) for f in ("namespace", "kind", "workload"))
        return f"bundle of {len(m.records)} records ({kinds}), first {wid}"
    if name == "CycleEnd":
        return f"cycle-end {m.spec.workload_id} cycle {m.cycle}"
    if name == "WorkloadSpec":
        hpa = f", HPA {m.hpa.name}" if m.hpa else ""
        return f"spec {m.workload_id}: {m.replicas} replicas, {len(m.containers)} containers{hpa}"
    if name == "Policy":
        return f"policy {m.id} v{m.version} mode {m.mode.value}"
    if name == "Recommendation":
        confidence = ",".join(sorted({c.confidence.value for c in m.containers})) or "-"
        s = m.savings
        return (
            f"recommendation {m.workload_id}: {_money(s.monthly_delta, s.currency)}, "
            f"confidence {confidence}"
        )
    if name == "Decision":
        return f"decision {m.workload_id}: {m.action.value} ({m.guardrail}) {_clip(m.reason, 70)}"
    if name == "Execution":
        sha = f" {m.commit_sha[:10]}" if m.commit_sha else ""
        return f"execution cycle {m.cycle}: {m.outcome}{sha}, {len(m.workload_ids)} workloads"
    if name == "CycleSummary":
        return f"cycle {m.cycle}: {len(m.decisions)} decisions, {m.execution.outcome}"
    if name == "DeadLetter":
        return f"dead letter from {m.topic} by {m.agent}: {_clip(m.reason, 70)}"
    return name


# --- dead letters ------------------------------------------------------------------------------


def reason_class(reason: str) -> str:
    """A low-cardinality group for a reason: the text before the first ':' (as the metric)."""
    head = reason.split(":", 1)[0].strip()
    return head[:60] or "unknown"


@dataclass(frozen=True)
class Letter:
    """A dead letter with where it sits on the dead-letter topic."""

    partition: int
    offset: int
    letter: DeadLetter


@dataclass
class Group:
    reason: str
    count: int = 0
    topics: dict[str, int] = field(default_factory=dict)
    samples: list[Letter] = field(default_factory=list)


def matches(letter: DeadLetter, reason: str | None) -> bool:
    """``--reason R``: a case-insensitive substring of the reason (or its class)."""
    return reason is None or reason.lower() in letter.reason.lower()


def group_dead_letters(
    letters: Iterable[Letter], reason: str | None = None, samples: int = 3
) -> list[Group]:
    """Counts per reason class (most frequent first), with up to ``samples`` of each."""
    groups: dict[str, Group] = {}
    for item in letters:
        if not matches(item.letter, reason):
            continue
        g = groups.setdefault(
            reason_class(item.letter.reason), Group(reason_class(item.letter.reason))
        )
        g.count += 1
        g.topics[item.letter.topic] = g.topics.get(item.letter.topic, 0) + 1
        if len(g.samples) < samples:
            g.samples.append(item)
    return sorted(groups.values(), key=lambda g: (-g.count, g.reason))


def short_name(topic: str, prefix: str) -> str:
    """``kubefinops.metrics`` -> ``metrics`` for the app's prefix; other names unchanged."""
    return topic[len(prefix) + 1 :] if topic.startswith(prefix + ".") else topic


def replay_check(letter: DeadLetter, prefix: str, max_bytes: int) -> str | None:
    """None if the letter's value is valid now for its original topic, else why not."""
    short = short_name(letter.topic, prefix)
    if short not in SCHEMAS or short == "deadletter":
        return f"{letter.topic} is not a topic of this app (prefix {prefix!r})"
    raw = letter.value.encode("utf-8")
    if len(raw) >= max_bytes:
        return f"value was truncated to {max_bytes} bytes when parked"
    if short == "policies" and not letter.key:
        return "policy record without a key"
    decoded = decode(short, raw)
    return decoded.error
