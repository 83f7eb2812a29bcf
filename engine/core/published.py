"""Which recommendations go on ``kubefinops.recommendations``: a workload's when it changed.

The recommender computes every workload's recommendation every cycle, and every one is decided
and archived (the MongoDB history, the stats API and the UI see each cycle).  The topic is the
operators' feed (``kubefinops tail``, kcat, anything downstream; no agent reads it), and like a
VPA object's status (its recommender writes the status only when the recommendation differs) it
carries a workload's recommendation when it **changed**: a new id (the content hash of the targets,
confidence, current requests/limits and policy: engine/core/recommend.py), other replicas or
other savings.  An unchanged one is published again once the last one published is
``refresh_seconds`` old, so the topic says at least that often which workloads are alive, and
after the worker restarts or a rebalance (the memo is this process's, cleared then), so a
partition that moved is republished by its new owner.  A decision's ``recommendation_id``
is always the id of a recommendation on the topic: the same id is the same content.

Not in the key: ``generated_at`` and ``collection_cycle`` (every cycle), and the reasons' text,
whose figures move without moving a target ("14.1d of history"): they are at most
``refresh_seconds`` old on the topic, current in the history.

Why: a recommendation produced per workload and cycle was one of the four records a workload
cost the worker in a collector burst; with the hourly data of ``bench_scale`` 87-88 % of them were
unchanged from the hour before in process (docs/benchmarks.md, "Burst: recommendations when
they change").
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.core.model import Recommendation, Savings

# The memo's bound: past it, entries older than the refresh are dropped, and if that is not
# enough the memo is cleared (each workload is then published once more: the safe direction).
# ~250 bytes an entry: 100,000 workloads are ~25 MB.
MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class _Published:
    id: str
    replicas: int
    savings: Savings
    target_savings: Savings | None
    at: float

    def same(self, rec: Recommendation) -> bool:
        return (
            self.id == rec.id
            and self.replicas == rec.replicas
            and self.savings == rec.savings
            and self.target_savings == rec.target_savings
        )


class PublishedRecommendations:
    """What this process last published per workload, to publish only what changed.

    ``refresh_seconds`` 0: every recommendation is published (the behaviour before).
    """

    def __init__(self, refresh_seconds: float, *, max_entries: int = MAX_ENTRIES) -> None:
        if refresh_seconds < 0:
            raise ValueError("refresh_seconds must be >= 0")
        self.refresh_seconds = refresh_seconds
        self.max_entries = max_entries
        self._last: dict[str, _Published] = {}

    def __len__(self) -> int:
        return len(self._last)

    def due(self, rec: Recommendation, now: float) -> bool:
        """Whether ``rec`` goes on the topic: changed, never published here, or the last one
        published is ``refresh_seconds`` old."""
        if self.refresh_seconds <= 0:
            return True
        last = self._last.get(rec.workload_id)
        return last is None or not last.same(rec) or now - last.at >= self.refresh_seconds

    def published(self, rec: Recommendation, now: float) -> None:
        """``rec`` was sent (call it after the send, so a failed one is sent again)."""
        if self.refresh_seconds <= 0:
            return
        if rec.workload_id not in self._last and len(self._last) >= self.max_entries:
            self._shrink(now)
        self._last[rec.workload_id] = _Published(
            rec.id, rec.replicas, rec.savings, rec.target_savings, now
        )

    def clear(self, *_: object, **__: object) -> None:
        """Forget every workload (a rebalance: its partitions may have had another owner, whose
        publications this process did not see).  Also a Faust signal receiver."""
        self._last.clear()

    def _shrink(self, now: float) -> None:
        stale = [w for w, p in self._last.items() if now - p.at >= self.refresh_seconds]
        for w in stale:
            del self._last[w]
        if len(self._last) >= self.max_entries:
            self._last.clear()
