"""The Faust app, built from settings, with every topic of the architecture declared explicitly.

Topics carry JSON bytes (``raw`` serializers): agents validate them with the wire schema in
:mod:`engine.core.model` so that a malformed record is parked on the dead-letter topic with a
reason instead of crashing a stream inside Faust's deserializer.

Partitioning: every workload-level topic is keyed by the **workload id** (``ns/Kind/name``) and has
``topic_partitions`` partitions, so the usage state, the workload specs, the recommendations and the
last-action ledger of one workload live on the same partition number and Faust's assignor places
them on the same worker (co-partitioning).  ``kubefinops.metrics`` is therefore keyed by workload
id too (the container travels in the value) — the architecture page keyed it by container, which
would have split a workload's containers across workers and broken the co-partitioned read.

Single-writer work (the collector, the Git executor, the reporter) consumes one-partition topics, so
exactly one worker owns it at a time and hand-over on rebalance is Kafka's job.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Collection, MutableMapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

import faust
from aiokafka.helpers import create_ssl_context
from faust.types.auth import SASLMechanism
from mode import Service

from engine.settings import SecurityProtocol, Settings

log = logging.getLogger("kubefinops.app")


@dataclass(frozen=True)
class Topics:
    metrics: faust.TopicT
    workloads: faust.TopicT
    policies: faust.TopicT
    recommendations: faust.TopicT
    decisions: faust.TopicT
    executions: faust.TopicT
    deadletter: faust.TopicT
    ticks: faust.TopicT  # internal: collector cycle trigger, one partition
    cycles: faust.TopicT  # internal: one record per executed cycle, for the reporter
    history: faust.TopicT  # internal: the outbox of the MongoDB history (gate -> history writer)
    apply_control: faust.TopicT  # internal: cycle manifests and apply ticks for the executor
    verifications: faust.TopicT  # outcomes of pushed changes (docs/verification.md)
    verification_queue: faust.TopicT  # internal: changes to watch + ticks, one partition

    def all(self) -> list[faust.TopicT]:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of ``SASL_SSL``/``SSL``: the CA file (else the system's CAs) and, for
    mutual TLS, the client certificate and key.  None for the plaintext protocols."""
    if settings.effective_security_protocol not in (
        SecurityProtocol.SASL_SSL,
        SecurityProtocol.SSL,
    ):
        return None
    password = settings.kafka_ssl_key_password
    context = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        password=password.get_secret_value() if password is not None else None,
    )
    context.check_hostname = settings.kafka_ssl_check_hostname
    return context


def broker_credentials(
    settings: Settings,
) -> faust.SASLCredentials | faust.SSLCredentials | None:
    protocol = settings.effective_security_protocol
    context = kafka_ssl_context(settings)
    if protocol is SecurityProtocol.SSL:
        assert context is not None
        return faust.SSLCredentials(context)
    if protocol not in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        return None
    assert settings.kafka_password is not None  # enforced by Settings validation
    return faust.SASLCredentials(
        username=settings.kafka_username or "",
        password=settings.kafka_password.get_secret_value(),
        mechanism=SASLMechanism(settings.kafka_sasl_mechanism.value),
        ssl_context=context,
    )


async def seek_to_committed_or_reset(
    consumer: Any, reset: str, changelogs: Collection[str] = ()
) -> dict[Any, int | None]:
    """aiokafka's ``seek_to_committed``, then, with ``reset == "earliest"``, every assigned
    partition that has no committed offset (or 0) sought to its beginning -- except the
    tables' ``changelogs``, whose positions Faust's recovery sets itself (they are never
    committed by the group; seeking them back would replay a standby or global table).

    Faust re-reads what it fetched but did not process by seeking every partition back to its
    committed offset after a rebalance or recovery (``Consumer.perform_seek``; also when records
    arrive while its flow is stopped, which it then drops).  aiokafka seeks only partitions whose
    committed offset is > 0, so a partition never committed kept the fetch position *past* the
    records Faust had dropped: they were skipped until the next restart.  That was the stall of
    a second worker in bench/bench_pipeline.py ``--cpu-workers 2`` (docs/benchmarks.md):
    it took over a metrics partition the first worker had not committed yet, ingested one
    record batch, and its fetch position stood at the partition's end with ~730 records never
    processed.  Seeking such a partition to its beginning re-reads it: at-least-once, and the
    aggregator's ingest is idempotent.  With ``latest`` nothing is re-read (as before)."""
    committed: dict[Any, int | None] = dict(await consumer.seek_to_committed())
    if reset == "earliest":
        fresh = [tp for tp, off in committed.items() if not off and tp.topic not in changelogs]
        if fresh:
            await consumer.seek_to_beginning(*fresh)
    return committed


def _install_seek_reset(app: faust.App) -> None:
    """Route Faust's seek-to-committed (its aiokafka consumer thread) through
    :func:`seek_to_committed_or_reset`: a class-level override, installed once per process (a
    worker runs one app), reading each app's own ``consumer_auto_offset_reset``."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread.seek_to_committed
    if getattr(original, "_kubefinops_reset", False):
        return

    async def seek_to_committed(self: Any) -> Any:
        reset = str(self.app.conf.consumer_auto_offset_reset)
        changelogs = set(self.app.tables.changelog_topics)
        consumer = self._ensure_consumer()
        return await self.call_thread(seek_to_committed_or_reset, consumer, reset, changelogs)

    seek_to_committed._kubefinops_reset = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


def _install_fetch_max_wait() -> None:
    """Give the worker's consumer ``kafka_fetch_max_wait_ms`` instead of Faust's fixed 1,500 ms
    (a class-level wrap of the consumer's factory, installed once per process; the value is the
    app's own, ``conf.kubefinops_fetch_max_wait_ms``).

    The broker handles one connection's requests in order, and aiokafka sends the consumer's
    fetches, offsets requests and metadata requests on one connection per broker: each offsets
    request Faust's recovery makes (highwaters, beginning offsets, committed offsets) waited for
    the empty fetch ahead of it, up to 1.5 s each — ~4.5 s of every start and rebalance."""
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = AIOKafkaConsumerThread._create_worker_consumer
    if getattr(original, "_kubefinops_fetch_wait", False):
        return

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        wait_ms = getattr(self.app.conf, "kubefinops_fetch_max_wait_ms", None)
        if wait_ms is not None:
            # read by the consumer's fetcher, created in ``start()``
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer

    create._kubefinops_fetch_wait = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


def _install_keep_queued_on_resume() -> None:
    """Make ``FlowControlEvent.resume`` leave the agents' queues as they are when the flow
    already runs (a class-level patch, installed once per process: a worker runs one app).

    Faust clears every agent queue on *each* ``resume()``.  At the end of a table recovery
    (``Recovery.on_recovery_completed``) it resumes the stream partitions, seeks them to their
    committed offsets, then calls ``resume()`` again -- while the consumer's flow has been
    running since the restore began.  Records fetched after the seek can already be in an
    agent's queue then: the clear drops them and the fetch position is past them.  Nothing
    tracked them as unacked, and Faust's ``Consumer._new_offset`` accepts acked offsets that
    start one past the committed one: one dropped record is committed over -- lost; two or more
    stop the partition's commits for good.  The first was seen in CI: ``test_topics_cli`` (a
    restarted worker's aggregator never ingested the first record after its committed offset;
    the cycle-end behind it was recommended without it).  ``test_recovery``'s SIGKILL restart
    whose committed offsets never reached the end (about once in 6 runs) fits the second; what
    was left of that stall was Faust's read offsets around the same seek (:class:`SeekFence`).
    Stale records are dropped where it matters already: a revocation suspends the flow and
    clears the queues, and the streams skip an event of another consumer generation.  Keeping
    what was queued while the flow ran can deliver a record fetched before the seek a second
    time (after it): at-least-once, which the handlers are built for (idempotent ingest, the
    same recommendation id for a recomputed cycle-end, one commit per cycle)."""
    from mode.utils.queues import FlowControlEvent

    original = FlowControlEvent.resume
    if getattr(original, "_kubefinops_keep_queued", False):
        return

    def resume(self: FlowControlEvent) -> None:
        if self.is_active():
            return
        original(self)

    resume._kubefinops_keep_queued = True  # type: ignore[attr-defined]
    FlowControlEvent.resume = resume  # type: ignore[method-assign]


class SeekFence:
    """Keep Faust's *read offsets* in step with the consumer thread's seeks.

    Faust's fetcher loop (``Consumer._drain_messages``) hands records to the agents one at a time
    and then raises the partition's read offset to the record's; a record below the read offset
    is dropped as already read.  After a rebalance or a table recovery Faust seeks the stream
    partitions back to their committed offsets (``perform_seek``): the consumer thread seeks
    them one by one, each after its own committed-offset request, and only when the last has
    answered does Faust lower the read offsets, all at once.  Meanwhile the fetcher loop runs on,
    so three kinds of record went wrong:

    - records fetched *after* their partition was sought, handed out before the read offsets
      were lowered: below the read offset of records handed out before the seek, so dropped;
    - the rest of a batch fetched *before* the seek, handed out after it;
    - a record whose hand-over (an agent's full queue) spanned the seek, which raised the read
      offset again after it was lowered.

    The records fetched again were dropped as read.  Where the first copy had not reached a
    handler either (an agent queue cleared when Faust resumes its flow, a stream skipping what
    arrives while that flow is stopped for the recovery; neither acks), they were never processed
    by this worker, and the partition's commits stopped at the hole (``_new_offset`` never
    commits past two offsets that were not acked).  That was ``test_recovery``'s SIGKILL
    restart whose committed offsets stayed 61-281 records short of the end: once in four CI runs
    and once in 15 local runs with a 100 ms fetch wait (more fetches land between the seeks);
    ``_install_keep_queued_on_resume`` describes an earlier form of it.

    The fence counts each partition's position resets in the consumer thread (aiokafka's
    ``Fetcher.seek_to`` and ``request_offset_reset``, the only ways a position is moved on
    purpose) and tags each fetched batch with the counts it was read under.  In the event loop:

    - a record whose partition was reset since its batch was fetched is not handed out: the
      reset moved the position to it or past it, so it is fetched again if still wanted;
    - before the first record fetched after a reset is handed out, the partition's read offset
      is set to what Faust sets for that seek (the offset; None for a reset to the beginning or
      the end, which Faust's ``perform_seek`` gives a partition without a committed offset);
    - a record handed out while its partition was reset gets that read offset put back after.

    Nothing is dropped that was not fetched again: at-least-once, which the handlers are built
    for.  The counts are ints in dicts, written by the consumer thread and read by the event
    loop under the GIL; every check is made again after the hand-over, so a reset between a
    check and a hand-over is caught by the second check."""

    def __init__(self) -> None:
        self.resets: dict[Any, int] = {}  # partition -> position resets so far
        self.reset_to: dict[Any, int | None] = {}  # partition -> read offset for its last reset
        self.batch: dict[Any, int] = {}  # the last fetched batch: partition -> resets then
        self.applied: dict[Any, int] = {}  # partition -> the reset its read offset was set for

    def on_reset(self, tp: Any, offset: int | None) -> None:
        """The consumer thread moved ``tp``'s position (to ``offset``; None: to a reset
        strategy's, found later)."""
        self.reset_to[tp] = offset if offset else None
        self.resets[tp] = self.resets.get(tp, 0) + 1

    def on_fetched(self, tps: Collection[Any]) -> None:
        self.batch = {tp: self.resets.get(tp, 0) for tp in tps}

    async def guard(
        self, records: AsyncIterator[tuple[Any, Any]], read_offset: MutableMapping[Any, Any]
    ) -> AsyncIterator[tuple[Any, Any]]:
        """``records`` (one fetched batch, as Faust's ``getmany`` yields it) without what a
        reset made stale, with ``read_offset`` (the consumer's) kept in step with the resets."""
        tags: dict[Any, int] | None = None
        for_tp = self.resets.get
        skipped: dict[Any, int] = {}
        lowered: set[Any] = set()
        try:
            async for tp, message in records:
                if tags is None:
                    tags = dict(self.batch)  # set by the consumer thread before returning them
                tag = tags.get(tp)
                if tag is None:  # not in the batch's tags (not expected): as Faust would
                    tag = tags[tp] = for_tp(tp, 0)
                if for_tp(tp, 0) != tag:
                    # fetched before its partition's reset: fetched again if still wanted
                    skipped[tp] = skipped.get(tp, 0) + 1
                    continue
                if tag and self.applied.get(tp) != tag:
                    # the first record read after its partition's reset: the read offset Faust
                    # gives that seek, before Faust itself gets to it
                    read_offset[tp] = self.reset_to.get(tp)
                    self.applied[tp] = tag
                    lowered.add(tp)
                yield tp, message
                if for_tp(tp, 0) != tag:  # reset while it was handed over (Faust set the
                    read_offset[tp] = self.reset_to.get(tp)  # read offset after the reset's)
                    lowered.add(tp)
        finally:
            if skipped:
                log.info(
                    "records fetched before a seek of their partition, to be fetched again: %s",
                    ", ".join(f"{tp[0]}[{tp[1]}]: {n}" for tp, n in sorted(skipped.items())),
                )
            if lowered:
                log.debug("read offsets set for seeks of %s", sorted(lowered))


def _fence_of(fetcher: Any) -> SeekFence:
    fence = getattr(fetcher, "_kubefinops_fence", None)
    if fence is None:
        fence = fetcher._kubefinops_fence = SeekFence()
    return cast(SeekFence, fence)


def _install_seek_fence() -> None:
    """Install :class:`SeekFence`: class-level wraps of aiokafka's ``Fetcher`` (its resets and
    its fetched batches, in the consumer thread) and of Faust's ``Consumer.getmany`` (the
    records it hands to the fetcher loop), once per process."""
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.consumer import Consumer

    original_getmany = Consumer.getmany
    if getattr(original_getmany, "_kubefinops_fence", False):
        return
    original_seek_to = Fetcher.seek_to
    original_reset = Fetcher.request_offset_reset
    original_fetched = Fetcher.fetched_records

    def seek_to(self: Any, tp: Any, offset: int) -> None:
        original_seek_to(self, tp, offset)
        _fence_of(self).on_reset(tp, offset)

    def request_offset_reset(self: Any, tps: Any, strategy: Any) -> Any:
        tps = list(tps)
        waiter = original_reset(self, tps, strategy)
        fence = _fence_of(self)
        for tp in tps:
            fence.on_reset(tp, None)
        return waiter

    async def fetched_records(self: Any, *args: Any, **kwargs: Any) -> Any:
        records = await original_fetched(self, *args, **kwargs)
        _fence_of(self).on_fetched(records)
        return records

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        records: Any = original_getmany(self, timeout)  # an async generator
        thread = getattr(self, "_thread", None)
        fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
        try:
            if fetcher is None:  # not an aiokafka consumer thread: Faust's own behaviour
                async for item in records:
                    yield item
            else:
                async for item in _fence_of(fetcher).guard(records, self._read_offset):
                    yield item
        finally:
            await records.aclose()

    getmany._kubefinops_fence = True  # type: ignore[attr-defined]
    Fetcher.seek_to = seek_to
    Fetcher.request_offset_reset = request_offset_reset
    Fetcher.fetched_records = fetched_records
    Consumer.getmany = getmany  # type: ignore[method-assign]


def create_app(settings: Settings) -> faust.App:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    request_timeout = max(40.0, settings.broker_session_timeout + 10)
    rebalance_timeout = min(60.0, request_timeout - 10)  # Faust's 60 s when the request outlives it
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{s.strip()}" for s in settings.kafka_bootstrap_servers.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",  # state is rebuilt from the compacted changelogs on start
        datadir=str(settings.data_dir / "faust"),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=True,
        topic_disable_leader=False,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_in_thread=False,
        # Faust's own /router and /table views answer without our tokens (a policy, any usage
        # state) and 500 on an unknown name: off.  Requests for a key another worker owns are
        # forwarded by ``app.router.route_topic_req``, which needs neither.
        web_router_enabled=False,
        web_tables_enabled=False,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout / 3),
        # The broker answers a JoinGroup only when every member rejoined or the rebalance timeout
        # passed; aiokafka waits for that answer no longer than the request timeout.  Faust's
        # default rebalance timeout (60 s) was above our request timeout (40 s): a rebalance held
        # by a slow member timed the others' JoinGroup out, they marked the coordinator dead and
        # joined again — one more rebalance round each time.  Request timeout > rebalance timeout,
        # as Kafka's own client does; a healthy member rejoins within a heartbeat or two (streams
        # are not waited for, stream_wait_empty=False).
        broker_rebalance_timeout=rebalance_timeout,
        broker_request_timeout=request_timeout,
        consumer_auto_offset_reset=settings.consumer_auto_offset_reset,
        consumer_max_fetch_size=settings.kafka_max_fetch_bytes,
        producer_acks=-1,
        producer_linger=settings.kafka_producer_linger_ms / 1000,
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
        table_standby_replicas=settings.table_standby_replicas,
        consumer_group_instance_id=settings.kafka_group_instance_id or None,
        stream_wait_empty=False,
        logging_config=None,
    )
    _install_seek_reset(app)
    _install_keep_queued_on_resume()
    _install_seek_fence()
    _install_fetch_max_wait()
    if settings.debug_lose_recovery_resume:
        _install_lost_recovery_resume(settings.debug_lose_recovery_resume)
    app.conf.kubefinops_fetch_max_wait_ms = settings.kafka_fetch_max_wait_ms
    if settings.kafka_group_instance_id:
        # cast: mode types handlers with mypy_extensions' NamedArg, which no plain def matches
        app.on_before_shutdown.connect(cast(Any, leave_group_on_stop))
    return app


RECOVERY_STALL_SECONDS = 30.0


def _install_lost_recovery_resume(mode: str) -> None:
    """Fault injection (``debug_lose_recovery_resume``, tests only): Faust's
    ``Consumer.resume_partitions`` loses the changelog partitions of a resume made during a
    table recovery, and pauses them: the recovery stalls as the one :func:`stalled_recovery`
    describes, for :class:`RecoveryWatch` to deal with.  ``once``: the first such resume only."""
    from faust.transport.consumer import Consumer

    original = Consumer.resume_partitions
    lost = [0]

    def resume_partitions(self: Any, tps: Any) -> None:
        tps = set(tps)
        changelog = {tp for tp in tps if self._is_changelog_tp(tp)}
        if changelog and self.app.in_recovery and (mode == "always" or not lost[0]):
            lost[0] += 1
            log.warning("debug: recovery resume of %d changelog partitions lost", len(changelog))
            original(self, tps - changelog)
            self.pause_partitions(changelog)
            return
        original(self, tps)

    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign]


def _stalled_tps(app: Any, now: float, after: float) -> list[Any]:
    """The active changelog partitions of a running table recovery that are behind their
    highwater and brought no record for ``after`` seconds (``now``: ``time.monotonic()``)."""
    rec = app.tables.recovery
    started = rec._recovery_started_at
    if not app.in_recovery or started is None or now - started < after:
        return []
    received = rec._active_events_received_at
    return [
        tp
        for tp in sorted(rec.active_tps)
        if now - received.get(tp, started) >= after
        and _behind(rec.active_offsets.get(tp), rec.active_highwaters.get(tp))
    ]


def stalled_recovery(app: Any, now: float, after: float = RECOVERY_STALL_SECONDS) -> list[str]:
    """One line per active changelog partition that a running table recovery still has to read
    (its offset below its highwater) and that brought no record for ``after`` seconds (``now``
    and Faust's times: ``time.monotonic()``): Faust's offset and highwater, the consumer's
    position, pause and fetch status (aiokafka's, then Faust's own pause set, the partitions its
    ``getmany`` asks for and its flow), Faust's read offset and :class:`SeekFence`'s counts.

    Why: once in CI (2026-12-03, ``test_second_worker_splits_partitions_and_loses_nothing``) and
    once in a local run before, a worker rebalanced seconds after its first writes never received
    the records of two changelog partitions it had to recover, and stayed unready; Faust's own
    warning ("No event received for active tp") names the partition but not the consumer's
    state, and the stall did not come back in ~50 runs with diagnostics.  This is what the next
    occurrence should leave in the log (:class:`RecoveryWatch` also acts on it).  Reads Faust's
    and aiokafka's internals, so it never raises: a line says what could not be read."""
    try:
        stalled = _stalled_tps(app, now, after)
    except Exception as exc:  # Faust changed: say so, once per call
        return [_unavailable(exc)]
    return [_describe(app, tp, now) for tp in stalled]


def _unavailable(exc: Exception) -> str:
    return f"recovery state unavailable ({type(exc).__name__})"


def _describe(app: Any, tp: Any, now: float) -> str:
    """:func:`stalled_recovery`'s line for one stalled partition."""
    rec = app.tables.recovery
    received = rec._active_events_received_at
    faust_part = (
        f"{tp.topic}[{tp.partition}]: offset {rec.active_offsets.get(tp)} of highwater "
        f"{rec.active_highwaters.get(tp)}, last record "
        + (f"{now - received[tp]:.0f}s ago" if tp in received else "never")
    )
    try:
        consumer = app.consumer
        kafka = consumer._thread._consumer
        state = kafka._subscription.subscription.assignment.state_value(tp)
        fence = getattr(kafka._fetcher, "_kubefinops_fence", None)
        fetched = consumer._active_partitions
        detail = (
            f"consumer position {getattr(state, '_position', None)}, paused "
            f"{getattr(state, 'paused', None)}, status {getattr(state, '_status', None)}, "
            f"reset {getattr(state, '_reset_strategy', None)}; Faust paused "
            f"{tp in consumer._paused_partitions}, fetched "
            f"{None if fetched is None else tp in fetched}, flow "
            f"{'on' if consumer.can_resume_flow.is_set() else 'stopped'}; Faust read offset "
            f"{consumer._read_offset.get(tp)}; seek fence resets "
            f"{fence.resets.get(tp) if fence else None} (to "
            f"{fence.reset_to.get(tp) if fence else None}), applied "
            f"{fence.applied.get(tp) if fence else None}, last batch "
            f"{fence.batch.get(tp) if fence else None}"
        )
    except Exception as exc:
        detail = f"consumer state unavailable ({type(exc).__name__})"
    return f"{faust_part}; {detail}"


class RecoveryWatch:
    """What the worker does about a table recovery that stopped receiving records.

    Faust's recovery can stall for good (faust-streaming issues #74, #155, #176, #651 describe
    such hangs; here twice in ~60 runs of one rebalancing test, see :func:`stalled_recovery`):
    the worker then stays unready, its partitions unprocessed, and nothing restarts it.  Every
    check (:class:`RecoveryWatchService`, every 15 s or half of ``after`` if shorter):

    1. a partition stalled for ``after`` seconds is logged (:func:`stalled_recovery`) and,
       once per recovery, *kicked*: taken out of Faust's pause set and put back in what its
       ``getmany`` fetches (``resume_partitions``), and sought to the offset Faust's recovery
       reads from (its last offset read; the start for none: what Faust's ``_seek_offsets``
       does).  Both are what Faust does at a recovery's start, so a kick cannot lose a record:
       at worst a record is read again, which a recovery applies again (the value of a key is
       its last record's).  Not when a new rebalance has signalled the recovery to restart:
       the restart seeks and resumes anyway.
    2. a partition still stalled ``unhealthy_after`` seconds after its last record (or the
       recovery's start) makes :attr:`problem` say so: ``GET /health`` then answers 503 and the
       kubelet's liveness probe restarts the pod, which recovers from the changelog (0: never).

    Reads and calls Faust's internals: a failure is a line in the log, never an exception."""

    def __init__(self, *, after: float = RECOVERY_STALL_SECONDS, unhealthy_after: float) -> None:
        self.after = after
        self.unhealthy_after = unhealthy_after
        self.problem: str | None = None
        self._kicked: set[tuple[float, Any]] = set()  # (recovery start, partition)

    async def check(self, app: Any, now: float) -> list[str]:
        """One pass: the log lines (WARNING), kicks made, :attr:`problem` updated."""
        self.problem = None
        try:
            stalled = _stalled_tps(app, now, self.after)
            rec = app.tables.recovery
            started = rec._recovery_started_at
            received = rec._active_events_received_at
        except Exception as exc:
            return [f"table recovery stalled: {_unavailable(exc)}"]
        lines = [f"table recovery stalled: {_describe(app, tp, now)}" for tp in stalled]
        if self.unhealthy_after > 0:
            stuck = [
                tp for tp in stalled if now - received.get(tp, started) >= self.unhealthy_after
            ]
            if stuck:
                names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in stuck)
                self.problem = (
                    f"table recovery stalled: no record for {self.unhealthy_after:.0f}s or more "
                    f"from {names}"
                )
        kick = [tp for tp in stalled if (started, tp) not in self._kicked]
        if not kick or rec.signal_recovery_start.is_set():
            # (a new rebalance is waiting to restart the recovery, which seeks and resumes
            # again; ``app.rebalancing`` stays true until a recovery ends, so it cannot tell)
            return lines
        # (only this recovery's kicks are remembered: a later one may kick the same partition)
        self._kicked = {k for k in self._kicked if k[0] == started}
        self._kicked.update((started, tp) for tp in kick)
        offsets = {tp: max(0, rec.active_offsets.get(tp) or 0) for tp in kick}
        try:
            app.consumer.resume_partitions(kick)
            await app.consumer.seek_wait(offsets)
        except Exception as exc:
            lines.append(f"table recovery stalled: the kick failed ({type(exc).__name__}: {exc})")
            return lines
        lines += [
            f"table recovery stalled: kicked {tp.topic}[{tp.partition}]: resumed, sought to "
            f"{offset}"
            for tp, offset in offsets.items()
        ]
        return lines


class RecoveryWatchService(Service):
    """Runs :meth:`RecoveryWatch.check` every ``interval`` seconds from the app's start.

    Not an ``app.timer``: Faust starts timers and tasks only once the first table recovery has
    completed (``App.on_started``), so a timer never ran during the stall it was for.  A
    dependency of the app starts with it, before the recovery; the web server, which answers
    ``/health`` from the same state, is one too."""

    def __init__(self, app: Any, watch: RecoveryWatch, interval: float) -> None:
        super().__init__()
        self.faust_app = app
        self.watch = watch
        self.interval = interval

    @Service.task
    async def _check(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            try:
                lines = await self.watch.check(self.faust_app, time.monotonic())
            except Exception:  # never the app's crash: the next check tries again
                log.exception("table recovery watch failed")
                continue
            for line in lines:
                log.warning("%s", line)


def _behind(offset: int | None, highwater: int | None) -> bool:
    """Faust's recovery offsets: ``highwater`` is the partition's last offset (-1: empty) and
    ``offset`` the last one read (-1 or None: none)."""
    if highwater is None or highwater < 0:
        return False
    return offset is None or offset < highwater


def readiness(app: faust.types.AppT) -> tuple[bool, dict[str, Any]]:
    """Whether the worker can serve: partitions assigned, no rebalance, tables recovered — and,
    when it cannot, a ``reason``.  Total: while a worker starts (or stops) Faust's consumer
    raises (``ConsumerNotStarted`` from ``assignment()`` before its thread runs); that is "not
    ready" with the exception named, never an exception out of a probe."""
    state: dict[str, Any] = {"rebalancing": False, "assigned_partitions": 0, "recovering": False}
    try:
        state["rebalancing"] = bool(app.rebalancing)
        state["recovering"] = bool(getattr(app, "in_recovery", False))
        state["assigned_partitions"] = len(app.consumer.assignment())
    except Exception as exc:  # any failure of Faust's state is "not ready"
        return False, {**state, "reason": f"consumer not available ({type(exc).__name__})"}
    if state["rebalancing"]:
        return False, {**state, "reason": "consumer group rebalancing"}
    if state["recovering"]:
        return False, {**state, "reason": "tables recovering from their changelogs"}
    if not state["assigned_partitions"]:
        return False, {**state, "reason": "no partitions assigned yet"}
    return True, state


def _group_coordinator(app: faust.App) -> object | None:
    """aiokafka's group coordinator under Faust's consumer (None when not started)."""
    thread = getattr(app.consumer, "_thread", None)
    consumer = getattr(thread, "_consumer", None)
    return getattr(consumer, "_coordinator", None)


def leave_group_on_stop(app: faust.App, *_: Any, **__: Any) -> None:
    """A static member leaves the group when it stops GRACEFULLY, like a plain member.

    aiokafka never sends LeaveGroup for a static member (``group_instance_id``), so a rolling
    update would leave the stopped pod's partitions unserved until its session timed out (30 s).
    Faust stops the aiokafka consumer after this signal; with the instance id cleared there,
    aiokafka sends its ordinary LeaveGroup (by member id, which the broker honours for a static
    member too) and the group rebalances at once.  A crash (SIGKILL, OOM kill) sends nothing: the
    container restarted in the same pod rejoins with the same id and takes its partitions back
    without waiting, which is what static membership is for (docs/deploy.md, "Crash recovery").
    """
    coordinator = _group_coordinator(app)
    if coordinator is None or not hasattr(coordinator, "_group_instance_id"):
        log.warning("static member: no group coordinator found; not leaving the group on stop")
        return
    coordinator._group_instance_id = None


async def wait_for_assignment(app: faust.App, timeout: float = 120.0, poll: float = 0.1) -> bool:
    """Wait until this worker is ready (:func:`readiness`: partitions assigned, no rebalance,
    tables recovered).

    True once ready, False when ``timeout`` passed first (the caller decides what that means).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if readiness(app)[0]:
            return True
        await asyncio.sleep(poll)
    return False


@dataclass(frozen=True)
class TopicSpec:
    name: str  # short name: the full topic is f"{settings.topic_prefix}.{name}"
    partitions: int
    compacted: bool
    consumer: str = ""  # the agent that consumes it (``kubefinops topics`` shows its lag)


RETENTION = timedelta(days=7)


def topic_specs(settings: Settings) -> dict[str, TopicSpec]:
    """Every topic of the architecture, with its partition count: one list for Faust and for the
    pre-flight that creates them (Faust itself only creates the topics an agent consumes)."""
    n = settings.topic_partitions
    specs = [
        TopicSpec("metrics", n, False, "aggregator"),
        TopicSpec("workloads", n, True),
        TopicSpec("policies", 1, True, "policy-sync"),
        TopicSpec("recommendations", n, False),  # an output: the gate decides in the aggregator
        TopicSpec("decisions", 1, False, "executor"),
        TopicSpec("executions", n, False, "ledger"),
        TopicSpec("deadletter", 1, False),
        TopicSpec("collector-ticks", 1, False, "collector"),
        TopicSpec("cycles", 1, False, "reporter"),
        TopicSpec("history", n, False, "history"),
        TopicSpec("apply-control", 1, False, "executor"),
        TopicSpec("verifications", n, False, "ledger-verifications"),
        TopicSpec("verification-queue", 1, False, "verifier"),
    ]
    return {spec.name: spec for spec in specs}


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    specs = topic_specs(settings)

    def topic(name: str) -> faust.TopicT:
        spec = specs[name]
        return app.topic(
            settings.topic(name),
            partitions=spec.partitions,
            replicas=settings.topic_replication,
            compacting=spec.compacted or None,
            deleting=None if spec.compacted else True,
            retention=None if spec.compacted else RETENTION,
            internal=True,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

    return Topics(
        metrics=topic("metrics"),
        workloads=topic("workloads"),
        policies=topic("policies"),
        recommendations=topic("recommendations"),
        decisions=topic("decisions"),
        executions=topic("executions"),
        deadletter=topic("deadletter"),
        ticks=topic("collector-ticks"),
        cycles=topic("cycles"),
        history=topic("history"),
        apply_control=topic("apply-control"),
        verifications=topic("verifications"),
        verification_queue=topic("verification-queue"),
    )
