"""Policies: which workloads, in which mode, with which estimator knobs and guardrails.

A policy is a plain document (MongoDB is the system of record, ``kubefinops.policies`` carries
it) validated by :func:`validate_policy`.  :func:`select_policy` picks the one policy that
governs a workload with a defined precedence (docs/policies.md):

1. highest ``priority`` wins;
2. tie: the most specific selector — workload names > label selector > namespaces > catch-all,
   then the number of constraints;
3. tie: the most recently updated (``updated_at``);
4. tie: the smallest ``id``.

:func:`policy_for` falls back to :data:`DEFAULT_POLICY` (mode ``recommend``) when none matches.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.core.bounds import (
    MAX_BODY_BYTES,
    MAX_JSON_DEPTH,
    MAX_TIME,
    POLICY_ID_RE,
    BodyError,
    json_depth,
    parse_json_body,
)
from engine.core.estimators import Duration, EstimatorParams
from engine.core.model import Mode, WorkloadSpec
from engine.core.verification import VerificationOverrides
from engine.errors import InvalidPolicy

EXCLUDE_ANNOTATION = "kubefinops.io/exclude"
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class _Doc(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False
    )


# Sizes a policy may have (a policy travels as one Kafka record and lives in every worker's memory)
Str = Annotated[str, Field(max_length=253)]
Strs = Annotated[list[Str], Field(max_length=256)]
StrMap = Annotated[dict[Str, Str], Field(max_length=256)]


class LabelRequirement(_Doc):
    key: Str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: Strs = []

    @model_validator(mode="after")
    def _values_match_operator(self) -> LabelRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: dict[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        if self.operator == "In":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values  # NotIn: absent key matches, like k8s


class LabelSelector(_Doc):
    match_labels: StrMap = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelRequirement] = Field(
        default_factory=list, alias="matchExpressions", max_length=64
    )

    @property
    def size(self) -> int:
        return len(self.match_labels) + len(self.match_expressions)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            req.matches(labels) for req in self.match_expressions
        )


def _glob_any(patterns: list[str], value: str) -> bool:
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


class Selectors(_Doc):
    """All given constraints must hold (AND); within a list any entry may match (OR, globs)."""

    namespaces: Strs = []
    label_selector: LabelSelector | None = Field(None, alias="labelSelector")
    workloads: Strs = []  # workload names, globs
    kinds: Strs = []
    containers: Strs = []  # globs; other containers of a matched workload are left alone

    def matches(self, workload: WorkloadSpec) -> bool:
        return (
            _glob_any(self.namespaces, workload.namespace)
            and _glob_any(self.workloads, workload.name)
            and (not self.kinds or workload.kind in self.kinds)
            and (self.label_selector is None or self.label_selector.matches(workload.labels))
            and (
                not self.containers
                or any(_glob_any(self.containers, c.name) for c in workload.containers)
            )
        )

    def selects_container(self, name: str) -> bool:
        return _glob_any(self.containers, name)

    def specificity(self) -> tuple[int, int]:
        """(level, constraint count): workload names 3 > labels 2 > namespaces 1 > catch-all 0."""
        labels = self.label_selector.size if self.label_selector else 0
        level = 3 if self.workloads else 2 if labels else 1 if self.namespaces else 0
        count = labels + sum(
            1 for c in (self.namespaces, self.workloads, self.kinds, self.containers) if c
        )
        return level, count


class Exclusions(_Doc):
    namespaces: Strs = ["kube-system"]
    labels: StrMap = {}  # any one matching label excludes the workload
    workloads: Strs = []  # globs on the workload name


class Guardrails(_Doc):
    min_change: float = Field(0.10, ge=0, le=1)
    # a decrease smaller than this share is dropped (left unchanged): hysteresis against churn
    min_decrease: float = Field(0.40, ge=0, le=1)
    # an increase smaller than this share is dropped too (OOM fixes are never held)
    min_increase: float = Field(0.0, ge=0, le=10)
    # memory increases only (None = min_increase): memory below the limit is never killed, so a
    # small rise of a memory request/limit with no OOMKill can wait for a material one
    min_memory_increase: float | None = Field(0.35, ge=0, le=10)
    cooldown: Duration = 86400.0
    # the gate's clock and the ledger's executed_at differ by the apply latency: a cooldown is
    # over when this close to its end (a daily cycle must not wait two days for 24 h)
    cooldown_tolerance: Duration = 900.0
    # "decreases": an increase (a risk removed) is never held by the cooldown; "all": it is
    cooldown_scope: Literal["all", "decreases"] = "decreases"
    hpa: Literal["skip", "memory-only", "allow"] = "memory-only"
    oom: Literal["protect", "ignore"] = "protect"
    exclusions: Exclusions = Exclusions()


class Window(_Doc):
    """Apply allowed on ``days`` from ``start_hour`` (incl.) to ``end_hour`` (excl.), UTC."""

    days: list[Day] = list(DAYS)
    start_hour: int = Field(0, ge=0, le=23)
    end_hour: int = Field(24, ge=1, le=24)

    @field_validator("end_hour")
    @classmethod
    def _after_start(cls, end: int, info: Any) -> int:
        start = info.data.get("start_hour")
        if start is not None and end <= start:
            raise ValueError(f"must be after start_hour ({end} <= {start})")
        return end

    def is_open(self, now: float) -> bool:
        at = datetime.fromtimestamp(now, tz=UTC)
        return DAYS[at.weekday()] in self.days and self.start_hour <= at.hour < self.end_hour


class Schedule(_Doc):
    windows: list[Window] = Field(min_length=1, max_length=64)

    def is_open(self, now: float) -> bool:
        return any(w.is_open(now) for w in self.windows)


class Policy(_Doc):
    id: str = Field(pattern=POLICY_ID_RE)  # see engine/core/bounds.py
    name: str = Field("", max_length=200)
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)
    selectors: Selectors = Selectors()
    mode: Mode = Mode.RECOMMEND
    estimator: EstimatorParams = EstimatorParams()
    guardrails: Guardrails = Guardrails()
    schedule: Schedule | None = None
    verification: VerificationOverrides = VerificationOverrides()
    version: int = Field(1, ge=1, le=2**53)
    updated_by: str = Field("", max_length=128)
    updated_at: float = Field(0.0, ge=0, le=MAX_TIME)

    @field_validator("updated_at", mode="before")
    @classmethod
    def _iso_time(cls, value: object) -> object:
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be Unix seconds or an ISO-8601 time") from None
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        return value


DEFAULT_POLICY = Policy(
    id="default",
    name="built-in default",
    priority=-(2**31),
    mode=Mode.RECOMMEND,
    updated_by="kubefinops",
)


_BOUND_ERRORS = ("greater_than_equal", "less_than_equal", "greater_than", "less_than")


def _range_message(loc: tuple[int | str, ...]) -> str | None:
    """``must be 0..5`` for a bounded field, from the schema itself (one source of truth)."""
    model: Any = Policy
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None:
            return None
        info = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if info is None:
            return None
        model = info.annotation
    if info is None:
        return None
    lo = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
    hi = next((m.le for m in info.metadata if hasattr(m, "le")), None)
    if lo is not None and hi is not None:
        return f"must be {_num(lo)}..{_num(hi)}"
    if lo is not None:
        return f"must be >= {_num(lo)}"
    if hi is not None:
        return f"must be <= {_num(hi)}"
    return None


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


_GOT_CHARS = 200  # of the offending value quoted in a rejection


def _json_value(value: Any) -> Any:
    """What a YAML document holds beyond JSON (dates and times) as the JSON text of it."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def validate_policy(doc: dict[str, Any]) -> Policy:
    """Validate a policy document or raise :class:`InvalidPolicy` naming the FIRST bad field.

    Depth and size are checked too (before anything stores or publishes it): a policy is one
    record on a compacted topic that every worker loads, so one that cannot be published must
    not be accepted either.
    """
    if not isinstance(doc, dict):
        raise InvalidPolicy("policy", "must be a JSON object")
    if json_depth(doc, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise InvalidPolicy("policy", f"nested deeper than {MAX_JSON_DEPTH} levels")
    clean = {k: v for k, v in doc.items() if k != "_id"}  # MongoDB's own key
    try:
        policy = Policy.model_validate(clean)
        # Again, strictly, as the JSON it is: lax validation turned ``true`` into 1 (a 100 %
        # headroom) and ``"95"`` into 95.0 and stored the document as sent; a number must be a
        # number and a flag a flag.
        Policy.model_validate_json(json.dumps(clean, default=_json_value), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "policy"
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] in _BOUND_ERRORS:
            message = _range_message(first["loc"]) or message
        if first["type"] not in ("missing", "extra_forbidden"):
            got = repr(first.get("input"))
            if len(got) > _GOT_CHARS:  # a 10,000-item list is named, not echoed back
                got = f"{got[:_GOT_CHARS]}... ({len(got):,} characters)"
            message = f"{message} (got {got})"
        raise InvalidPolicy(field, message) from None
    size = len(policy.model_dump_json())
    if size > MAX_BODY_BYTES:
        raise InvalidPolicy("policy", f"{size} bytes serialized, more than {MAX_BODY_BYTES}")
    return policy


def parse_policy_record(raw: bytes | str) -> Policy:
    """A policy from its JSON text (a topic record): size and depth are checked before parsing,
    so a hostile record is an :class:`InvalidPolicy`, never a RecursionError."""
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    try:
        doc = parse_json_body(data, None, max_bytes=4 * MAX_BODY_BYTES)
    except BodyError as exc:
        raise InvalidPolicy("policy", exc.reason) from None
    return validate_policy(doc)


def precedence_key(policy: Policy) -> tuple[int, int, int, float, str]:
    """Sort key: the first policy in ascending order of this key wins."""
    level, count = policy.selectors.specificity()
    return (-policy.priority, -level, -count, -policy.updated_at, policy.id)


def matching(policies: Iterable[Policy], workload: WorkloadSpec) -> list[Policy]:
    """Every policy whose selectors match, best first."""
    return sorted((p for p in policies if p.selectors.matches(workload)), key=precedence_key)


def select_policy(policies: Iterable[Policy], workload: WorkloadSpec) -> Policy | None:
    """The policy that governs ``workload``, or None when no policy matches."""
    found = matching(policies, workload)
    return found[0] if found else None


def policy_for(
    policies: Iterable[Policy], workload: WorkloadSpec, default: Policy = DEFAULT_POLICY
) -> Policy:
    """Like :func:`select_policy`, falling back to the built-in default policy."""
    return select_policy(policies, workload) or default


def exclusion(workload: WorkloadSpec, policy: Policy) -> str | None:
    """Why the workload is excluded from any change, or None."""
    if workload.annotations.get(EXCLUDE_ANNOTATION, "").strip().lower() == "true":
        return f'annotation {EXCLUDE_ANNOTATION}: "true"'
    ex = policy.guardrails.exclusions
    if _glob_any(ex.namespaces, workload.namespace) and ex.namespaces:
        return f"namespace {workload.namespace} is excluded by policy {policy.id}"
    for key, value in sorted(ex.labels.items()):
        if workload.labels.get(key) == value:
            return f"label {key}={value} is excluded by policy {policy.id}"
    if ex.workloads and _glob_any(ex.workloads, workload.name):
        return f"workload {workload.name} is excluded by policy {policy.id}"
    return None
