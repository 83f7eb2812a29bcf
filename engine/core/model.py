"""The wire schema: what travels on the Kafka topics, as JSON.

Plain pydantic models (no I/O).  Every topic value is one of these, serialized with
``model_dump_json()``; consumers validate with :func:`parse` and park what fails on the
dead-letter topic.  Units everywhere: CPU in cores (float), memory in bytes, time in Unix
seconds (float, UTC).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol, TypeVar

import numpy as np
import orjson
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SkipValidation,
    Tag,
    TypeAdapter,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import from_json

from engine.core import bounds as b
from engine.errors import InvalidRecord

Resource = Literal["cpu", "memory"]
RESOURCES: tuple[Resource, ...] = ("cpu", "memory")

# Bounded field types (engine/core/bounds.py has the limits and why): every number on the wire is
# finite (``allow_inf_nan=False`` below) and in a range the engine can compute with; every id
# matches a documented pattern, so it can go into a file name, a log line or a commit trailer.
NonNegFloat = Annotated[float, Field(ge=0, le=b.MAX_MEMORY_BYTES)]
Cores = Annotated[float, Field(ge=0, le=b.MAX_CPU_CORES)]
Bytes = Annotated[float, Field(ge=0, le=b.MAX_MEMORY_BYTES)]
TargetCores = Annotated[float, Field(ge=0, le=b.MAX_CPU_CORES * b.TARGET_FACTOR)]
TargetBytes = Annotated[float, Field(ge=0, le=b.MAX_MEMORY_BYTES * b.TARGET_FACTOR)]
# An instant the engine computes with (formats, subtracts): finite, not negative, not absurd.
Time = Annotated[float, Field(ge=0, le=b.MAX_TIME)]
Count = Annotated[int, Field(ge=0, le=b.MAX_COUNT)]
Money = Annotated[float, Field(ge=-b.MAX_MONEY, le=b.MAX_MONEY)]
Namespace = Annotated[str, Field(pattern=b.NAMESPACE_RE)]
Kind = Annotated[str, Field(pattern=b.KIND_RE)]
Name = Annotated[str, Field(pattern=b.NAME_RE)]
ContainerName = Annotated[str, Field(pattern=b.CONTAINER_RE)]
RecordId = Annotated[str, Field(pattern=b.RECORD_ID_RE)]
PolicyId = Annotated[str, Field(pattern=b.POLICY_ID_RE)]
Text = Annotated[str, Field(max_length=b.MAX_TEXT_CHARS)]
Label = Annotated[str, Field(max_length=b.MAX_LABEL_CHARS)]
Labels = Annotated[dict[Label, Label], Field(max_length=b.MAX_LABELS)]


class Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


def _check_workload_id(model: Any) -> Any:  # Recommendation | Decision
    """``workload_id`` must be the one its namespace/kind/name make (key = value consistency)."""
    expected = workload_id(model.namespace, model.kind, model.name)
    if model.workload_id != expected:
        raise ValueError(f"workload_id {model.workload_id!r} is not {expected!r}")
    return model


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

    namespace: Namespace
    kind: Kind
    workload: Name
    container: ContainerName
    # Chunk bounds: finite and not absurd; ``end`` is also checked against "now" by
    # engine.core.samples.validate_batch (a chunk from the future is refused whole).
    start: Annotated[float, Field(ge=0, le=b.MAX_TIME)]
    end: Annotated[float, Field(ge=0, le=b.MAX_TIME)]
    # Pydantic checks the envelope only: the pairs themselves are checked by
    # engine.core.samples.validate_batch with numpy, which parks bad samples with per-sample
    # reasons instead of rejecting the whole batch — and per-element validation here cost ~1 µs
    # a sample, 40% of the aggregator (bench/bench_pipeline.py --profile).
    samples: Annotated[
        dict[
            Annotated[str, Field(max_length=64)],
            Annotated[list[tuple[float, float]], SkipValidation],
        ],
        Field(max_length=b.MAX_RESOURCES),
    ]
    source: Annotated[str, Field(max_length=64)] = "prometheus"
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

    @field_validator("samples")
    @classmethod
    def _bounded_lists(cls, samples: dict[str, Any]) -> dict[str, Any]:
        for resource, pairs in samples.items():
            if not isinstance(pairs, list):
                raise ValueError(f"{resource}: must be a list of [timestamp, value] pairs")
            if len(pairs) > b.MAX_SAMPLES:
                raise ValueError(f"{resource}: more than {b.MAX_SAMPLES} samples in one batch")
        return samples


# One row of a columnar grid: a value per grid point, ``None`` (JSON ``null``) where the series
# has no sample.
GridRow = list[float | None]
MAX_CHUNK_STEP = 86_400.0  # a grid step longer than a day is not a usage series


class MetricsChunk(Wire):
    """Usage samples of every container of ONE workload for one collection chunk ``(start, end]``,
    columnar (``type: "chunk"``, docs/collector.md "The metrics record").

    Every series shares one time grid: point ``i`` is at ``t0 + i * step`` for ``i < n``
    (Prometheus' range queries answer on exactly that grid).  ``containers`` maps a container
    name to ``{resource: rows}``; each row is one series (one pod) of ``n`` values, ``null``
    where that series has no sample (a pod that did not exist yet, a scrape gap): a ``null`` is
    not a sample and is counted nowhere.  A non-standard ``NaN``/``Infinity`` token is a bad
    sample, counted under ``nan``/``inf`` like in :class:`MetricsBatch`.

    The aggregator treats each container exactly like a :class:`MetricsBatch` of the same chunk
    (the same per-container high-water mark and accepted ranges, the same per-sample reasons);
    the record only saves per-event work: one record, one parse, one numpy conversion per
    container-resource instead of a record and a list of pairs per container.
    """

    type: Literal["chunk"]
    namespace: Namespace
    kind: Kind
    workload: Name
    start: Annotated[float, Field(ge=0, le=b.MAX_TIME)]
    end: Annotated[float, Field(ge=0, le=b.MAX_TIME)]
    t0: Annotated[float, Field(ge=0, le=b.MAX_TIME)]
    step: Annotated[float, Field(gt=0, le=MAX_CHUNK_STEP)]
    n: Annotated[int, Field(ge=0, le=b.MAX_SAMPLES)]
    # The rows are checked by engine.core.samples.validate_chunk with numpy (per-sample reasons);
    # pydantic checks the envelope and the sizes only.
    containers: Annotated[
        dict[
            ContainerName,
            Annotated[
                dict[
                    Annotated[str, Field(max_length=64)],
                    Annotated[list[GridRow], SkipValidation],
                ],
                Field(max_length=b.MAX_RESOURCES),
            ],
        ],
        Field(max_length=b.MAX_CONTAINERS),
    ]
    source: Annotated[str, Field(max_length=64)] = "prometheus"
    # Set by parse_metrics_record when the JSON held non-standard NaN/Infinity tokens: only then
    # can a NaN in a row be a bad sample rather than a null (validate_chunk tells them apart).
    _nan_tokens: bool = PrivateAttr(default=False)

    @property
    def workload_id(self) -> str:
        return workload_id(self.namespace, self.kind, self.workload)

    def container_id(self, container: str) -> str:
        return container_id(self.namespace, self.kind, self.workload, container)

    def times(self) -> list[float]:
        """The grid's timestamps (for display; the aggregator computes them with numpy)."""
        return [self.t0 + i * self.step for i in range(self.n)]

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, end: float, info: object) -> float:
        start = getattr(info, "data", {}).get("start")
        if start is not None and end < start:
            raise ValueError("end must not be before start")
        return end

    @field_validator("containers")
    @classmethod
    def _bounded_rows(cls, containers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, resources in containers.items():
            for resource, rows in resources.items():
                if isinstance(rows, np.ndarray) and rows.ndim == 2:  # built in-process
                    size = rows.size
                elif isinstance(rows, list):
                    size = sum(len(r) if isinstance(r, list | np.ndarray) else 1 for r in rows)
                else:
                    raise ValueError(f"{name}.{resource}: must be a list of rows")
                if size > b.MAX_SAMPLES:
                    raise ValueError(
                        f"{name}.{resource}: more than {b.MAX_SAMPLES} values in one chunk"
                    )
        return containers

    def sample_count(self) -> int:
        """Values that are not ``null`` (what the record carries, before validation)."""
        total = 0
        for resources in self.containers.values():
            for rows in resources.values():
                for row in rows:
                    if isinstance(row, np.ndarray):
                        total += int(np.count_nonzero(~np.isnan(row)))
                    elif isinstance(row, list):
                        total += sum(1 for v in row if v is not None)
                    else:
                        total += 1
        return total

    def encode(self) -> bytes:
        """The wire JSON.  Rows may be numpy arrays (the collector builds them so): ``orjson``
        writes them in C and a ``NaN`` (no sample) as ``null``."""
        doc = {
            "type": self.type,
            "namespace": self.namespace,
            "kind": self.kind,
            "workload": self.workload,
            "start": self.start,
            "end": self.end,
            "t0": self.t0,
            "step": self.step,
            "n": self.n,
            "containers": self.containers,
            "source": self.source,
        }
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)


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
    cpu: Cores | None = None  # cores
    memory: Bytes | None = None  # bytes


class ContainerSpec(Wire):
    name: ContainerName
    requests: ResourcePair = ResourcePair()
    limits: ResourcePair = ResourcePair()
    last_oom_at: Time | None = None  # last OOMKilled termination seen (Unix s)
    oom_limit_bytes: Bytes | None = None  # memory limit in force when it was OOMKilled
    restarts: Count = 0
    is_jvm: bool = False


Replicas = Annotated[int, Field(ge=0, le=b.MAX_REPLICAS)]


class HpaSpec(Wire):
    name: Name
    min_replicas: Replicas = 1
    max_replicas: Replicas = 1
    # "cpu", "memory" or another metric name
    metrics: Annotated[list[Annotated[str, Field(max_length=253)]], Field(max_length=64)] = []


class WorkloadSpec(Wire):
    namespace: Namespace
    kind: Kind
    name: Name
    replicas: Replicas = 1
    containers: Annotated[list[ContainerSpec], Field(max_length=b.MAX_CONTAINERS)] = []
    hpa: HpaSpec | None = None
    labels: Labels = {}
    annotations: Labels = {}
    observed_at: Annotated[float, Field(ge=0, le=b.MAX_TIME)] = 0.0  # 0: unknown

    @property
    def workload_id(self) -> str:
        return workload_id(self.namespace, self.kind, self.name)

    def supersedes(self, stored: WorkloadSpec | None, refresh: float) -> bool:
        """Whether this spec must be written over ``stored``: there is none, it differs in
        anything but ``observed_at``, or it was observed ``refresh`` seconds or more after it."""
        if stored is None or self.observed_at - stored.observed_at >= refresh:
            return True
        return stored.model_copy(update={"observed_at": self.observed_at}) != self


class CycleEnd(Wire):
    """In-band marker on ``kubefinops.metrics``: every batch of this workload for the cycle has
    been sent before it.  Because it travels on the same partition as the batches, the aggregator
    sees it after them and can recommend from complete state (no cross-topic race)."""

    type: Literal["cycle-end"] = "cycle-end"
    cycle: RecordId
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

    name: ContainerName
    current: ContainerSpec
    cpu_request: TargetCores | None = None
    cpu_limit: TargetCores | None = None
    memory_request: TargetBytes | None = None
    memory_limit: TargetBytes | None = None
    target: Targets | None = None
    confidence: Confidence = Confidence.NONE
    reasons: Annotated[list[Text], Field(max_length=b.MAX_REASONS)] = []
    # resource -> {"p50","p90","p95","p99","max","count","span_s"}
    usage: Annotated[
        dict[
            Annotated[str, Field(max_length=16)],
            Annotated[dict[Annotated[str, Field(max_length=16)], float], Field(max_length=16)],
        ],
        Field(max_length=4),
    ] = {}


class Savings(Wire):
    currency: Annotated[str, Field(max_length=8)] = "USD"
    current_monthly: Money = 0.0
    recommended_monthly: Money = 0.0
    monthly_delta: Money = 0.0  # recommended - current: negative saves money
    monthly_savings: Money = 0.0  # max(0, -delta)
    monthly_increase: Money = 0.0  # max(0, delta): the price of removing a risk


Containers = Annotated[list[ContainerRecommendation], Field(max_length=b.MAX_CONTAINERS)]
Cycle = Annotated[str, Field(pattern=r"^$|" + b.RECORD_ID_RE)]


class Recommendation(Wire):
    id: RecordId
    workload_id: str
    namespace: Namespace
    kind: Kind
    name: Name
    replicas: Replicas
    containers: Containers
    savings: Savings  # of the next step
    target_savings: Savings | None = None  # of the target, when a step falls short of it
    generated_at: Time
    # The collection cycle (the collector's CycleEnd marker) this recommendation was computed in;
    # "cycle" on the wire before it was renamed.
    collection_cycle: Cycle = Field("", validation_alias=AliasChoices("collection_cycle", "cycle"))

    @model_validator(mode="after")
    def _consistent(self) -> Recommendation:
        return _check_workload_id(self)  # type: ignore[no-any-return]


class Action(StrEnum):
    APPLY = "apply"
    HOLD = "hold"
    SKIP = "skip"


class Mode(StrEnum):
    OBSERVE = "observe"
    RECOMMEND = "recommend"
    AUTOPILOT = "autopilot"


class Decision(Wire):
    id: RecordId
    recommendation_id: RecordId
    workload_id: str
    namespace: Namespace
    kind: Kind
    name: Name
    action: Action
    # the rule that decided, e.g. "min-change", "cooldown", "hpa-conflict"
    guardrail: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,63}$")]
    reason: Text
    mode: Mode
    policy_id: PolicyId | None = None
    policy_version: Count | None = None
    containers: Containers = []
    savings: Savings = Savings()  # of what this decision applies (the step)
    target_savings: Savings | None = None  # of the target, when the step falls short of it
    decided_at: Time
    # The collection cycle of the recommendation decided on (not the executor's apply cycle).
    collection_cycle: Cycle = Field("", validation_alias=AliasChoices("collection_cycle", "cycle"))

    @model_validator(mode="after")
    def _consistent(self) -> Decision:
        return _check_workload_id(self)  # type: ignore[no-any-return]


WorkloadIds = Annotated[
    list[Annotated[str, Field(max_length=400)]], Field(max_length=b.MAX_DECISIONS)
]


def execution_id(apply_cycle: str) -> str:
    """The one place an execution id is built from its apply cycle."""
    return f"exec-{apply_cycle}"


Outcome = Literal["committed", "pushed", "noop", "held", "failed"]
APPLIED_OUTCOMES: frozenset[str] = frozenset({"pushed", "committed"})


class Identified(Protocol):
    """What names a decision: a :class:`Decision`, or its ref in a decision log."""

    @property
    def id(self) -> str: ...

    @property
    def workload_id(self) -> str: ...


class Execution(Wire):
    """What the executor did with one *apply cycle* (a batch of decisions, see
    :func:`agents.executor.apply_cycle_id`), not to be confused with the collection cycle."""

    cycle: RecordId  # the apply cycle id
    workload_ids: WorkloadIds
    decision_ids: Annotated[list[RecordId], Field(max_length=b.MAX_DECISIONS)]
    outcome: Outcome
    commit_sha: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")] | None = None
    branch: Annotated[str, Field(max_length=255)] | None = None
    detail: Annotated[str, Field(max_length=64 * 1024)] = ""
    # workload id -> why the executor held it (e.g. a human edited the bot's file)
    held: Annotated[
        dict[Annotated[str, Field(max_length=400)], Text], Field(max_length=b.MAX_DECISIONS)
    ] = {}
    executed_at: Time

    @computed_field  # type: ignore[prop-decorator]
    @property
    def id(self) -> str:
        return execution_id(self.cycle)

    @classmethod
    def of(
        cls,
        cycle: str,
        applied: Iterable[Identified],
        outcome: Outcome,
        *,
        executed_at: float,
        detail: str = "",
        held: Mapping[str, str] | None = None,
        commit_sha: str | None = None,
        branch: str | None = None,
    ) -> Execution:
        """The execution of ``cycle`` that applied (or tried) ``applied`` (decisions, or their
        refs in a :class:`~engine.core.decision_log.DecisionLog`: only the ids are read)."""
        pairs = [(d.workload_id, d.id) for d in applied]
        return cls(
            cycle=cycle,
            workload_ids=[w for w, _ in pairs],
            decision_ids=[i for _, i in pairs],
            outcome=outcome,
            commit_sha=commit_sha,
            branch=branch,
            detail=detail,
            held=dict(held or {}),
            executed_at=executed_at,
        )

    @property
    def applied(self) -> bool:
        return self.outcome in APPLIED_OUTCOMES


class CycleSummary(Wire):
    """Internal record on ``kubefinops.cycles``: the decisions the executor handled in one
    cycle and what happened to them, for the reporter.

    A big cycle travels as ``parts`` records (``part`` = 0..parts-1, same key), each with its
    own decisions and their share of the execution, so no record grows with the fleet
    (:mod:`engine.core.cycles`); the reporter writes one report once it has every part.
    """

    cycle: RecordId
    decisions: Annotated[list[Decision], Field(max_length=b.MAX_DECISIONS)]
    execution: Execution
    # policy id -> version in force
    policies: Annotated[dict[PolicyId, Count], Field(max_length=10_000)] = {}
    part: int = Field(default=0, ge=0)
    parts: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _part_in_range(self) -> CycleSummary:
        if self.part >= self.parts:
            raise ValueError(f"part {self.part} of {self.parts}")
        return self


HistoryKind = Literal["recommendations", "decisions", "executions", "verifications"]


def history_key(kind: str, doc: Mapping[str, Any]) -> str:
    """The key a history record is stored under, the same in MongoDB and the demo's memory:
    its ``id``, except executions — the executor publishes one record per workload of a cycle,
    all with the cycle's execution id, and each is kept."""
    if kind == "executions":
        return f"{doc['id']}/{','.join(doc.get('workload_ids') or [])}"
    return str(doc["id"])


class HistoryRecord(Wire):
    """On ``kubefinops.history`` (the outbox of the MongoDB history): one record to upsert."""

    kind: HistoryKind
    record: dict[str, Any]

    @field_validator("record")
    @classmethod
    def _has_id(cls, record: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(record.get("id"), str) or not record["id"]:
            raise ValueError("must carry a non-empty string id")
        return record


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


class MetricsBundle(Wire):
    """Many workloads' metrics records of ONE partition in one value (``type: "bundle"``,
    :mod:`engine.core.bundles`).  Each member is a record as it would be sent alone (a chunk, a
    usage batch or a cycle-end marker); members are validated one by one
    (:func:`parse_metrics_member`), so a bad one costs only itself."""

    type: Literal["bundle"]
    records: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=b.MAX_BUNDLE_RECORDS)]
    # the value needed pydantic's lenient JSON parser (NaN/Infinity tokens): so do its chunks
    _lenient: bool = PrivateAttr(default=False)

    @property
    def lenient(self) -> bool:
        return self._lenient

    def kinds(self) -> dict[str, int]:
        """How many members of each ``type`` (as they say; not validated)."""
        out: dict[str, int] = {}
        for doc in self.records:
            kind = _metrics_kind(doc)
            out[kind] = out.get(kind, 0) + 1
        return out


MetricsRecord = MetricsChunk | MetricsBatch | CycleEnd

# A ``kubefinops.metrics`` value is a columnar chunk, a (v1) usage batch or a cycle-end marker:
# one JSON parse decides and validates all three (parsing once to peek at "type" and again to
# validate cost a third of the aggregator's time in the benchmark).
_METRICS_RECORD: TypeAdapter[MetricsRecord] = TypeAdapter(
    Annotated[
        Annotated[MetricsChunk, Tag("chunk")]
        | Annotated[MetricsBatch, Tag("usage")]
        | Annotated[CycleEnd, Tag("cycle-end")],
        Discriminator(_metrics_kind),
    ]
)
_METRICS_VALUE: TypeAdapter[MetricsRecord | MetricsBundle] = TypeAdapter(
    Annotated[
        Annotated[MetricsChunk, Tag("chunk")]
        | Annotated[MetricsBatch, Tag("usage")]
        | Annotated[CycleEnd, Tag("cycle-end")]
        | Annotated[MetricsBundle, Tag("bundle")],
        Discriminator(_metrics_kind),
    ]
)


def load_json(raw: bytes | str) -> tuple[Any, bool]:
    """Parse JSON: ``(document, lenient)``.  ``orjson`` is the fast path; what it refuses goes
    to pydantic's parser (``lenient`` True), which also accepts what a producer may still send:
    ``NaN``/``Infinity`` tokens (bad samples counted downstream, not a broken record) and
    integers beyond 64 bits (refused by the bounds).  :class:`ValueError` if neither parses."""
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        return from_json(raw), True


def parse_metrics_record(raw: bytes | str | None) -> MetricsRecord | MetricsBundle:
    """Validate a ``kubefinops.metrics`` value; :class:`InvalidRecord` with a one-line reason.
    A bundle's members are not validated here (:func:`parse_metrics_member`)."""
    if raw is None:
        raise InvalidRecord("empty value")
    try:
        # One JSON parse, then validation of Python objects: the union's own JSON mode measured
        # ~1.5x slower than this on 1000-sample batches.
        document, lenient = load_json(raw)
    except ValueError as exc:
        raise InvalidRecord(f"MetricsRecord: invalid JSON: {exc}") from None
    return _validated(_METRICS_VALUE, document, lenient)


def parse_metrics_member(document: Any, *, lenient: bool = False) -> MetricsRecord:
    """Validate one member of a :class:`MetricsBundle` (a decoded record; a bundle inside a
    bundle is refused); :class:`InvalidRecord` with a one-line reason."""
    return _validated(_METRICS_RECORD, document, lenient)


def _validated(adapter: TypeAdapter[M], document: Any, lenient: bool) -> M:
    """A decoded metrics value validated; ``lenient`` (its JSON had NaN/Infinity tokens) is
    remembered by a chunk (its bad samples are counted) or a bundle (for its chunks)."""
    try:
        record = adapter.validate_python(document)
    except ValidationError as exc:
        raise _invalid("MetricsRecord", exc) from None
    if lenient and isinstance(record, MetricsChunk):
        record._nan_tokens = True
    elif lenient and isinstance(record, MetricsBundle):
        record._lenient = True
    return record
