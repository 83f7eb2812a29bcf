"""Closed-loop backtest: replay usage history through a strategy, cycle by cycle (pure).

The loop is the production loop without Kafka: for every decision cycle ``t`` (``start``,
``start + interval``, ... before ``end``) and every strategy,

1. the samples of ``(t - interval, t]`` are scored against the spec *in force* during that
   period (CPU samples above the request, container-days whose peak memory exceeds the limit),
2. what the workload would have *shown* is derived: memory above the limit in force is an
   OOMKill, so the observed working set is capped at the limit and the kill is reported on the
   spec the next cycle sees (``last_oom_at`` = first sample over the limit, ``oom_limit_bytes`` =
   that limit), as the collector reports ``kube_pod_container_status_last_terminated_reason``;
   a rollout replaces the pods, so an apply clears it, as it does in a cluster,
3. the observed samples are fed incrementally into the strategy's state (for ``kubefinops``
   the aggregator's own :class:`ContainerUsage`: no re-ingest per cycle),
4. the strategy decides on every workload present; an ``apply`` becomes the spec in force, and
   the ledger's clock (``last_applied_at``) is the decision time plus ``apply_latency``, as the
   executor stamps ``executed_at`` after the gate decided,
5. the cycle hooks run (they see every workload's state and outcome and may change the spec in
   force: a hook can simulate a regression and a revert).

History before ``start`` is warm-up: fed, not scored, no decisions.  Every strategy gets its own
copy of the world, so strategies never see each other's specs.  Units: cores, bytes, Unix s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from engine.core.cost import DEFAULT_PRICES, Prices, hourly
from engine.core.model import ContainerSpec, MetricsBatch, ResourcePair, WorkloadSpec, workload_id
from engine.core.usage import DEFAULT_HISTORY_SECONDS, DEFAULT_WINDOW_SECONDS, ContainerUsage

DAY = 86_400.0
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass
class ContainerHistory:
    """Every sample of one container, sorted by time, and the provisioned spec per sample.

    ``provisioned`` columns (``cpu_request``, ``cpu_limit``, ``memory_request``,
    ``memory_limit``) are arrays aligned with ``ts`` (NaN = not given); the first sample's
    values are the starting spec, and the per-sample values are the baseline of "saving vs
    provisioned".
    """

    namespace: str
    kind: str
    workload: str
    container: str
    ts: FloatArray
    cpu: FloatArray
    memory: FloatArray
    provisioned: dict[str, FloatArray] = field(default_factory=dict)
    replicas: int = 1

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.workload}/{self.container}"

    @property
    def workload_id(self) -> str:
        return workload_id(self.namespace, self.kind, self.workload)

    def first(self, column: str) -> float | None:
        values = self.provisioned.get(column)
        if values is None or values.size == 0 or not math.isfinite(float(values[0])):
            return None
        return float(values[0])


@dataclass(frozen=True)
class BacktestParams:
    start: float
    end: float
    interval: float = DAY
    history_seconds: float = float(DEFAULT_HISTORY_SECONDS)
    window_seconds: int = DEFAULT_WINDOW_SECONDS
    apply_latency: float = 60.0  # decision -> executed_at (the ledger's clock), seconds
    min_day_samples: int = 1  # a container-day is scored with at least this many samples
    # An OOMKilled container never shows usage above its limit: the state sees the capped trace.
    cap_observed_memory: bool = True
    prices: Prices = DEFAULT_PRICES

    def __post_init__(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.end)) or self.end <= self.start:
            raise ValueError("the decision window needs start < end")
        if self.interval <= 0:
            raise ValueError("interval must be > 0")

    def cycles(self) -> list[float]:
        n = math.ceil((self.end - self.start) / self.interval - 1e-9)
        return [self.start + i * self.interval for i in range(max(n, 0))]


@dataclass
class ContainerState:
    """One container as a strategy sees it: its history up to ``cursor`` and what it showed."""

    history: ContainerHistory
    usage: ContainerUsage
    observed_memory: FloatArray  # memory as the workload showed it (capped at the limit in force)
    cursor: int = 0  # samples [0, cursor) have happened

    def window(self, seconds: float, now: float) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(ts, cpu, observed memory) of the samples in ``(now - seconds, now]``."""
        h = self.history
        lo = int(np.searchsorted(h.ts[: self.cursor], now - seconds, side="right"))
        hi = self.cursor
        return h.ts[lo:hi], h.cpu[lo:hi], self.observed_memory[lo:hi]


@dataclass
class WorkloadState:
    """The world of one workload under one strategy; ``spec`` is the spec in force."""

    spec: WorkloadSpec
    containers: dict[str, ContainerState]
    first_seen: float
    last_applied_at: float | None = None
    last_applied_id: str | None = None
    penalty_until: float | None = None  # set by a verified-apply hook after a revert
    applies: list[float] = field(default_factory=list)
    increases: int = 0
    decreases: int = 0
    guardrails: dict[str, int] = field(default_factory=dict)
    # the newest OOMKill per container, kept across rollouts (the spec's report is cleared by one)
    ooms: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> bool:
        return any(c.cursor > 0 for c in self.containers.values())

    def container(self, name: str) -> ContainerSpec:
        return next(c for c in self.spec.containers if c.name == name)


@dataclass(frozen=True)
class Values:
    """Requests and limits of one container; None = leave unchanged."""

    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request: float | None = None
    memory_limit: float | None = None


@dataclass(frozen=True)
class Outcome:
    """What a strategy decided for one workload in one cycle."""

    action: str  # "apply" | "hold" | "skip"
    guardrail: str = ""
    reason: str = ""
    containers: Mapping[str, Values] = field(default_factory=dict)  # applied values (the step)
    targets: Mapping[str, Values] = field(default_factory=dict)  # the estimate (for reports)
    decision_id: str | None = None


class Strategy(Protocol):
    """A recommender + applier under test: one decision per workload and cycle."""

    @property
    def name(self) -> str: ...

    def decide(self, state: WorkloadState, now: float) -> Outcome: ...


CycleHook = Callable[[str, float, Mapping[str, WorkloadState], Mapping[str, Outcome]], None]
"""``hook(strategy, now, states, outcomes)`` after every cycle; may change ``state.spec``."""


@dataclass
class DayScore:
    samples: int = 0
    cpu_above: int = 0
    memory_above: int = 0  # samples whose memory exceeds the memory request (not the limit)
    oom: bool = False
    cost: float = 0.0  # sum over samples of the hourly cost in force (x replicas)
    provisioned_cost: float = 0.0
    in_force: Values = Values()


@dataclass
class StrategyRun:
    """The result of one strategy over the window: per container and day, and per workload."""

    name: str
    days: dict[str, dict[int, DayScore]]  # container key -> day epoch -> score
    workloads: dict[str, WorkloadState]
    min_day_samples: int
    window_days: float

    def scored(self) -> Iterable[tuple[str, int, DayScore]]:
        for key in sorted(self.days):
            for day, score in sorted(self.days[key].items()):
                if score.samples >= self.min_day_samples:
                    yield key, day, score


def _mem_limit(c: ContainerSpec) -> float:
    """The memory a container may use before it is killed (no limit: never)."""
    return c.limits.memory if c.limits.memory is not None else math.inf


def starting_spec(
    histories: Sequence[ContainerHistory], template: WorkloadSpec | None = None
) -> WorkloadSpec:
    """The spec in force before the first cycle: ``template`` (HPA, labels...) where given,
    requests/limits from the first provisioned sample of each container otherwise."""
    first = histories[0]
    known = {c.name: c for c in template.containers} if template else {}
    containers = []
    for h in histories:
        base = known.get(h.container, ContainerSpec(name=h.container))
        req, lim = base.requests, base.limits
        containers.append(
            base.model_copy(
                update={
                    "requests": ResourcePair(
                        cpu=req.cpu if req.cpu is not None else h.first("cpu_request"),
                        memory=req.memory if req.memory is not None else h.first("memory_request"),
                    ),
                    "limits": ResourcePair(
                        cpu=lim.cpu if lim.cpu is not None else h.first("cpu_limit"),
                        memory=lim.memory if lim.memory is not None else h.first("memory_limit"),
                    ),
                }
            )
        )
    if template is not None:
        return template.model_copy(update={"containers": containers})
    return WorkloadSpec(
        namespace=first.namespace,
        kind=first.kind,
        name=first.workload,
        replicas=first.replicas,
        containers=containers,
    )


def apply_values(spec: WorkloadSpec, values: Mapping[str, Values]) -> WorkloadSpec:
    """The spec after a rollout of ``values``; the new pods have no OOM history."""
    out = []
    for c in spec.containers:
        v = values.get(c.name, Values())
        req, lim = c.requests, c.limits
        out.append(
            c.model_copy(
                update={
                    "requests": ResourcePair(
                        cpu=req.cpu if v.cpu_request is None else v.cpu_request,
                        memory=req.memory if v.memory_request is None else v.memory_request,
                    ),
                    "limits": ResourcePair(
                        cpu=lim.cpu if v.cpu_limit is None else v.cpu_limit,
                        memory=lim.memory if v.memory_limit is None else v.memory_limit,
                    ),
                    "last_oom_at": None,
                    "oom_limit_bytes": None,
                }
            )
        )
    return spec.model_copy(update={"containers": out})


def _cost_of(cpu: float | None, memory: float | None, replicas: int, prices: Prices) -> float:
    return hourly(cpu, memory, prices) * max(replicas, 0)


class Backtest:
    """Run strategies over histories; see the module docstring.  ``run`` may be called once."""

    def __init__(
        self,
        histories: Iterable[ContainerHistory],
        params: BacktestParams,
        *,
        specs: Mapping[str, WorkloadSpec] | None = None,
        hooks: Sequence[CycleHook] = (),
    ) -> None:
        self.params = params
        self.hooks = list(hooks)
        grouped: dict[str, list[ContainerHistory]] = {}
        for h in histories:
            if h.ts.size:
                grouped.setdefault(h.workload_id, []).append(h)
        self.workloads = {
            wid: sorted(hs, key=lambda h: h.container) for wid, hs in sorted(grouped.items())
        }
        self.templates = dict(specs or {})

    def _world(self) -> dict[str, WorkloadState]:
        p = self.params
        out = {}
        for wid, hs in self.workloads.items():
            containers = {
                h.container: ContainerState(
                    h, ContainerUsage(p.window_seconds), np.array(h.memory, dtype=np.float64)
                )
                for h in hs
            }
            out[wid] = WorkloadState(
                spec=starting_spec(hs, self.templates.get(wid)),
                containers=containers,
                first_seen=min(float(h.ts[0]) for h in hs),
            )
        return out

    def run(
        self,
        strategies: Sequence[Strategy],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[StrategyRun]:
        cycles = self.params.cycles()
        total = len(cycles) * len(strategies)
        runs = []
        for i, strategy in enumerate(strategies):
            offset = i * len(cycles)

            def tick(done: int, offset: int = offset) -> None:
                if progress is not None:
                    progress(offset + done, total)

            runs.append(self._run_one(strategy, cycles, tick))
        return runs

    def _run_one(
        self, strategy: Strategy, cycles: list[float], tick: Callable[[int], object]
    ) -> StrategyRun:
        p = self.params
        world = self._world()
        days: dict[str, dict[int, DayScore]] = {}
        prev: float | None = None
        for n, now in enumerate(cycles, 1):
            outcomes: dict[str, Outcome] = {}
            for wid, state in world.items():
                self._advance(state, prev, now, days)
                if not state.present:
                    continue
                outcome = strategy.decide(state, now)
                outcomes[wid] = self._record(state, outcome, now)
            for hook in self.hooks:
                hook(strategy.name, now, world, outcomes)
            prev = now
            tick(n)
        for state in world.values():
            self._advance(state, prev, p.end, days)
        return StrategyRun(strategy.name, days, world, p.min_day_samples, (p.end - p.start) / DAY)

    def _record(self, state: WorkloadState, outcome: Outcome, now: float) -> Outcome:
        state.guardrails[outcome.guardrail] = state.guardrails.get(outcome.guardrail, 0) + 1
        if outcome.action != "apply" or not outcome.containers:
            return outcome
        before = _cost_of_spec(state.spec, self.params.prices)
        state.spec = apply_values(state.spec, outcome.containers)
        after = _cost_of_spec(state.spec, self.params.prices)
        state.last_applied_at = now + self.params.apply_latency
        state.last_applied_id = outcome.decision_id
        state.applies.append(now)
        if after > before:
            state.increases += 1
        elif after < before:
            state.decreases += 1
        return outcome

    def _advance(
        self,
        state: WorkloadState,
        prev: float | None,
        now: float,
        days: dict[str, dict[int, DayScore]],
    ) -> None:
        """Let ``(prev, now]`` happen under the spec in force (``prev`` None = warm-up)."""
        p = self.params
        for name, cs in state.containers.items():
            h = cs.history
            lo = cs.cursor
            hi = int(np.searchsorted(h.ts, now, side="right"))
            if hi <= lo:
                continue
            spec = state.container(name)
            limit = _mem_limit(spec)
            mem = h.memory[lo:hi]
            over = mem > limit
            if over.any():
                if p.cap_observed_memory:
                    cs.observed_memory[lo:hi] = np.minimum(mem, limit)
                first = float(h.ts[lo + int(np.argmax(over))])
                if spec.last_oom_at is None or first > spec.last_oom_at:
                    self._report_oom(state, name, first, limit)
            if prev is not None:
                self._score(cs, spec, state.spec.replicas, lo, hi, over, days)
            cs.cursor = hi
            batch = MetricsBatch.model_construct(
                namespace=h.namespace,
                kind=h.kind,
                workload=h.workload,
                container=h.container,
                start=float(h.ts[lo]) - 1e-6,
                end=now,
                samples={"cpu": [], "memory": []},
            )
            ts = h.ts[lo:hi]
            cs.usage.ingest(
                batch,
                history_seconds=p.history_seconds,
                window_seconds=p.window_seconds,
                arrays={"cpu": (ts, h.cpu[lo:hi]), "memory": (ts, cs.observed_memory[lo:hi])},
            )
        for cs in state.containers.values():
            cs.usage.expire(now, p.history_seconds)

    def _report_oom(self, state: WorkloadState, name: str, at: float, limit: float) -> None:
        state.ooms[name] = max(at, state.ooms.get(name, at))
        out = [
            c.model_copy(update={"last_oom_at": at, "oom_limit_bytes": limit})
            if c.name == name
            else c
            for c in state.spec.containers
        ]
        state.spec = state.spec.model_copy(update={"containers": out})

    def _score(
        self,
        cs: ContainerState,
        spec: ContainerSpec,
        replicas: int,
        lo: int,
        hi: int,
        over: npt.NDArray[np.bool_],
        days: dict[str, dict[int, DayScore]],
    ) -> None:
        p = self.params
        h = cs.history
        ts = h.ts[lo:hi]
        in_window = (ts > p.start) & (ts <= p.end)
        if not in_window.any():
            return
        day = (ts // DAY).astype(np.int64)
        req = spec.requests.cpu
        above = h.cpu[lo:hi] > (req if req is not None else 0.0)
        mem_req = spec.requests.memory
        mem_above = h.memory[lo:hi] > (mem_req if mem_req is not None else 0.0)
        cost = _cost_of(spec.requests.cpu, spec.requests.memory, replicas, p.prices)
        prov = _provisioned_costs(h, lo, hi, replicas, p.prices)
        per_day = days.setdefault(h.key, {})
        in_force = Values(
            spec.requests.cpu, spec.limits.cpu, spec.requests.memory, spec.limits.memory
        )
        for d in np.unique(day[in_window]).tolist():
            sel = (day == d) & in_window
            score = per_day.setdefault(int(d) * int(DAY), DayScore())
            k = int(np.count_nonzero(sel))
            score.samples += k
            score.cpu_above += int(np.count_nonzero(above & sel))
            score.memory_above += int(np.count_nonzero(mem_above & sel))
            score.oom = score.oom or bool((over & sel).any())
            score.cost += cost * k
            score.provisioned_cost += float(prov[sel].sum())
            score.in_force = in_force


def _cost_of_spec(spec: WorkloadSpec, prices: Prices) -> float:
    return sum(
        _cost_of(c.requests.cpu, c.requests.memory, spec.replicas, prices) for c in spec.containers
    )


def _provisioned_costs(
    h: ContainerHistory, lo: int, hi: int, replicas: int, prices: Prices
) -> FloatArray:
    """Hourly cost of the provisioned requests per sample (the first sample's where not given)."""
    cpu = h.provisioned.get("cpu_request")
    mem = h.provisioned.get("memory_request")
    first_cpu, first_mem = h.first("cpu_request"), h.first("memory_request")
    cpu_v = cpu[lo:hi] if cpu is not None else np.full(hi - lo, np.nan)
    mem_v = mem[lo:hi] if mem is not None else np.full(hi - lo, np.nan)
    cpu_v = np.where(np.isfinite(cpu_v), cpu_v, first_cpu or 0.0)
    mem_v = np.where(np.isfinite(mem_v), mem_v, first_mem or 0.0)
    gib = 1024.0**3
    hourly_cost: FloatArray = cpu_v * prices.cpu_core_hour + mem_v / gib * prices.memory_gib_hour
    return hourly_cost * max(replicas, 0)
