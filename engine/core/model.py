"""The wire schema: what travels on the Kafka topics, as JSON.

Plain pydantic models (no I/O).  Every topic value is one of these, serialized with
``model_dump_json()``; consumers validate with :func:`parse` and park what fails on the
dead-letter topic.  Units everywhere: CPU in cores (float), memory in bytes, time in Unix
seconds (float, UTC).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SkipValidation,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import from_json

from engine.errors import InvalidRecord

Resource = Literal["cpu", "memory"]
RESOURCES: tuple[Resource, ...] = ("cpu", "memory")

NonNegFloat = Annotated[float, Field(ge=0)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def workload_id(namespace: str, kind: str, name: str) -> str:
    """``smarthealth/Deployment/patient-api``: the key of workload-level topics."""
    return f"{namespace}/{kind}/{name}"


def container_id(namespace: str, kind: str, name: str, container: str) -> str:
    """``smarthealth/Deployment/patient-api/app``: the key of ``kubefinops.metrics``."""
    return f"{namespace}/{kind}/{name}/{container}"


class MetricsBatch(Wire):
    """Usage samples of one workload container for one collection chunk ``(start, end]``.

    The collector sends exactly one batch per container and chunk, holding the samples of every
    pod of that container in the chunk; the aggregator uses ``end`` as a per-key high-water mark
    so a re-delivered or re-collected chunk is never counted twice.
    """

    namespace: str = Field(min_length=1)
    kind: str = Field(min_length=1)
    workload: str = Field(min_length=1)
    container: str = Field(min_length=1)
    start: float
    end: float
    # Pydantic checks the envelope only: the pairs themselves are checked by
    # engine.core.samples.validate_batch with numpy, which parks bad samples with per-sample
    # reasons instead of rejecting the whole batch — and per-element validation here cost ~1 µs
    # a sample, 40% of the aggregator (bench/bench_pipeline.py --profile).
    samples: dict[str, Annotated[list[tuple[float, float]], SkipValidation]]
    source: str = "prometheus"
    type: Literal["usage"] = "usage"

    @property
    def container_id(self) -> str:
        return container_id(self.namespace, self.kind, self.workload, self.container)

    @property
    def workload_id(self) -> str:
        return workload_id(self.namespace, self.kind, self.workload)

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: float, info: object) -> float:
        start = getattr(info, "data", {}).get("start")
        if not math.isfinite(end) or (start is not None and end < start):
            raise ValueError("end must be a finite time not before start")
        return end


class UsageSummary(Wire):
    """History-wide usage of one container and resource, merged over all live windows.

    ``count == 0`` means no data; estimators treat that as "not enough data", not an error.
    """

    p50: float = 0.0
    p90: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0
    mean: float = 0.0
    count: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    # Peak of each usage window (daily by default), oldest first: the growth trend of memory.
    window_max: tuple[float, ...] = ()
    window_seconds: float = 86_400.0

    @property
    def span_seconds(self) -> float:
        if self.first_ts is None or self.last_ts is None:
            return 0.0
        return max(0.0, self.last_ts - self.first_ts)


class ResourcePair(Wire):
    cpu: NonNegFloat | None = None  # cores
    memory: NonNegFloat | None = None  # bytes


class ContainerSpec(Wire):
    name: str
    requests: ResourcePair = ResourcePair()
    limits: ResourcePair = ResourcePair()
    last_oom_at: float | None = None  # last OOMKilled termination seen (Unix s)
    oom_limit_bytes: float | None = None  # memory limit in force when it was OOMKilled
    restarts: int = 0
    is_jvm: bool = False


class HpaSpec(Wire):
    name: str
    min_replicas: int = 1
    max_replicas: int = 1
    metrics: list[str] = []  # "cpu", "memory" or another metric name


class WorkloadSpec(Wire):
    namespace: str
    kind: str
    name: str
    replicas: int = Field(ge=0, default=1)
    containers: list[ContainerSpec] = []
    hpa: HpaSpec | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    observed_at: float = 0.0

    @property
    def workload_id(self) -> str:
        return workload_id(self.namespace, self.kind, self.name)


class CycleEnd(Wire):
    """In-band marker on ``kubefinops.metrics``: every batch of this workload for the cycle has
    been sent before it.  Because it travels on the same partition as the batches, the aggregator
    sees it after them and can recommend from complete state (no cross-topic race)."""

    type: Literal["cycle-end"] = "cycle-end"
    cycle: str = Field(min_length=1)
    spec: WorkloadSpec


class Confidence(StrEnum):
    NONE = "none"  # not enough data: no recommendation
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class Targets(Wire):
    """What the estimators say, before the autopilot's max-step guardrail."""

    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request: float | None = None
    memory_limit: float | None = None


class ContainerRecommendation(Wire):
    """``cpu_request``... are the next *step* the gate may apply; ``target`` is the estimate it
    steps toward (``None``: the step is the target)."""

    name: str
    current: ContainerSpec
    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request: float | None = None
    memory_limit: float | None = None
    target: Targets | None = None
    confidence: Confidence = Confidence.NONE
    reasons: list[str] = []
    usage: dict[
        str, dict[str, float]
    ] = {}  # resource -> {"p50","p90","p95","p99","max","count","span_s"}


class Savings(Wire):
    currency: str = "USD"
    current_monthly: float = 0.0
    recommended_monthly: float = 0.0
    monthly_delta: float = 0.0  # recommended - current: negative saves money
    monthly_savings: float = 0.0  # max(0, -delta)
    monthly_increase: float = 0.0  # max(0, delta): the price of removing a risk


class Recommendation(Wire):
    id: str
    workload_id: str
    namespace: str
    kind: str
    name: str
    replicas: int
    containers: list[ContainerRecommendation]
    savings: Savings  # of the next step
    target_savings: Savings | None = None  # of the target, when a step falls short of it
    generated_at: float
    cycle: str = ""


class Action(StrEnum):
    APPLY = "apply"
    HOLD = "hold"
    SKIP = "skip"


class Mode(StrEnum):
    OBSERVE = "observe"
    RECOMMEND = "recommend"
    AUTOPILOT = "autopilot"


class Decision(Wire):
    id: str
    recommendation_id: str
    workload_id: str
    namespace: str
    kind: str
    name: str
    action: Action
    guardrail: str  # the rule that decided, e.g. "min-change", "cooldown", "hpa-conflict"
    reason: str
    mode: Mode
    policy_id: str | None = None
    policy_version: int | None = None
    containers: list[ContainerRecommendation] = []
    savings: Savings = Savings()  # of what this decision applies (the step)
    target_savings: Savings | None = None  # of the target, when the step falls short of it
    decided_at: float
    cycle: str = ""


class Execution(Wire):
    id: str
    cycle: str
    workload_ids: list[str]
    decision_ids: list[str]
    outcome: Literal["committed", "pushed", "noop", "held", "failed"]
    commit_sha: str | None = None
    branch: str | None = None
    report_key: str | None = None
    detail: str = ""
    executed_at: float


class CycleSummary(Wire):
    """Internal record on ``kubefinops.cycles``: every decision the executor handled in one
    cycle and what happened to them, for the reporter."""

    cycle: str
    decisions: list[Decision]
    execution: Execution
    policies: dict[str, int] = {}  # policy id -> version in force


class DeadLetter(Wire):
    topic: str
    key: str | None
    reason: str
    value: str  # the rejected payload, decoded as UTF-8 with replacement
    rejected_at: float
    agent: str


M = TypeVar("M", bound=Wire)


def _invalid(name: str, exc: ValidationError) -> InvalidRecord:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "value"
    return InvalidRecord(f"{name}.{loc}: {first['msg']}")


def parse(model: type[M], raw: bytes | str | None) -> M:
    """Validate a topic value; raise :class:`InvalidRecord` with a one-line reason."""
    if raw is None:
        raise InvalidRecord("empty value")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(model.__name__, exc) from None


def _metrics_kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "usage"))  # producers may omit the default tag
    return str(getattr(value, "type", "usage"))


# A ``kubefinops.metrics`` value is a usage batch or a cycle-end marker: one JSON parse decides
# and validates both (parsing once to peek at "type" and again to validate cost a third of the
# aggregator's time in the benchmark).
_METRICS_RECORD: TypeAdapter[MetricsBatch | CycleEnd] = TypeAdapter(
    Annotated[
        Annotated[MetricsBatch, Tag("usage")] | Annotated[CycleEnd, Tag("cycle-end")],
        Discriminator(_metrics_kind),
    ]
)


def parse_metrics_record(raw: bytes | str | None) -> MetricsBatch | CycleEnd:
    """Validate a ``kubefinops.metrics`` value; :class:`InvalidRecord` with a one-line reason."""
    if raw is None:
        raise InvalidRecord("empty value")
    try:
        # One JSON parse, then validation of Python objects: the union's own JSON mode measured
        # ~1.5x slower than this on 1000-sample batches.
        document = from_json(raw)
    except ValueError as exc:
        raise InvalidRecord(f"MetricsRecord: invalid JSON: {exc}") from None
    try:
        return _METRICS_RECORD.validate_python(document)
    except ValidationError as exc:
        raise _invalid("MetricsRecord", exc) from None
