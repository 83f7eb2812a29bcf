"""Bootstrap of a worker: settings -> pre-flight -> services -> app -> run -> close the clients.

``kubefinops worker`` and the demo both start here, so there is one way to start the autopilot.
Errors an operator can fix surface as :class:`~engine.errors.AuthenticationFailed` (not retried)
or :class:`~engine.errors.DependencyUnavailable` (retried a few times first); the CLI turns them
into one line and an exit code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.backoff import retry_sync
from engine.errors import DependencyUnavailable
from engine.logs import install_log_filters
from engine.services import Services
from engine.settings import Settings

if TYPE_CHECKING:
    from agents import Assembly
    from engine.memory import HeapDumps

log = logging.getLogger("kubefinops")


def preflight(settings: Settings) -> None:
    """Authenticate to Kafka and create every topic with its partitions, waiting for the broker
    with backoff for ``settings.kafka_wait_seconds`` (one log line per failed attempt).

    A refused password or a TLS failure raises at once: waiting does not fix them.
    """
    from engine.adapters.kafka import ensure_topics
    from engine.adapters.kafka import preflight as check_broker

    async def check() -> list[str]:
        await check_broker(settings)
        return await ensure_topics(settings)

    try:
        created = retry_sync(
            lambda: asyncio.run(check()),
            what="Kafka not reachable",
            within=settings.kafka_wait_seconds,
            retry_on=(DependencyUnavailable,),
        )
    except DependencyUnavailable as exc:
        raise DependencyUnavailable(
            f"{exc} (gave up after {settings.kafka_wait_seconds:.0f}s)"
        ) from None
    if created:
        log.info("created topics: %s", ", ".join(created))


def build_services(settings: Settings) -> Services:
    """The real adapters from settings; a dependency that is not configured stays ``None``.

    Clients are created lazily-connecting (a worker starts while MongoDB is down) and registered
    with :meth:`Services.on_close`, so stopping the worker closes every one of them.
    """
    from engine.adapters.gitops import GitOpsWriter
    from engine.adapters.mongo import HistoryReader, PolicyStore, RecordStore, connect
    from engine.adapters.prometheus import Collector, PrometheusClient
    from engine.adapters.reports import ReportWriter
    from engine.adapters.verification import ClusterTelemetry
    from engine.core.policy import validate_policy
    from engine.stats import StatsService

    services = Services()
    prometheus = PrometheusClient(settings)
    services.on_close(prometheus.close)
    services.usage = Collector(prometheus, settings)
    services.telemetry = ClusterTelemetry(prometheus)  # verified apply
    db = connect(settings)
    services.on_close(db.client.close)
    services.policies = PolicyStore(db, validate=validate_policy)
    services.history = RecordStore(db, retention_days=settings.history_retention_days)
    services.stats = StatsService(settings, HistoryReader(db))
    if settings.git_remote_url:
        services.git = GitOpsWriter(settings)
    reports = ReportWriter(settings, park_on_failure=False)
    services.on_close(reports.close)  # its one S3 client
    services.reports = reports
    return services


def make_worker(
    app: Any, settings: Settings, redactor: logging.Filter, heap: HeapDumps | None = None
) -> Any:
    """A Faust worker whose log handlers (Faust installs its own) all redact secrets; with
    ``heap`` (debug only), SIGUSR2 writes a heap dump instead of entering pdb (mode's default)."""
    import faust

    class Worker(faust.Worker):
        def _on_sigusr2(self) -> None:
            if heap is None:
                super()._on_sigusr2()
            else:
                heap.dump()

        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            # No terminal spinner in a service: at a level of WARN or above Faust's spinner set
            # the root logger to DEBUG (and added a DEBUG handler), so every library's debug
            # record was built and passed through the redaction filter — Faust alone logs each
            # produced record's value with %r (~4 % of a worker's time in a burst, py-spy), and
            # table recovery one f-string record per changelog record (~half of its loop).
            self.spinner = None
            super().on_setup_root_logger(logger, level)

        def _setup_logging(self) -> None:
            super()._setup_logging()
            for handler in logging.getLogger().handlers:
                handler.addFilter(redactor)
            install_log_filters()  # Faust's dictConfig ran in between

    # redirect_stdouts=False: the demo prints its tables to the terminal, not into the log.
    return Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False)


def run_worker(
    settings: Settings,
    redactor: logging.Filter,
    *,
    services: Services | None = None,
    customize: Callable[[Assembly], None] | None = None,
) -> None:
    """Pre-flight, assemble the app over ``services`` (default: the real adapters), run it until
    stopped; the services' clients are closed when the app stops."""
    from agents import assemble
    from engine.memory import GC_PAUSES, HeapDumps, set_mmap_threshold, tune_gc

    set_mmap_threshold(settings.malloc_mmap_threshold_bytes)
    tune_gc(settings.gc_gen0_threshold)
    GC_PAUSES.install()
    heap = None
    if settings.debug_tracemalloc_frames:
        heap = HeapDumps(settings.data_dir / "heap", settings.debug_tracemalloc_frames)
        heap.install()
    preflight(settings)
    assembly = assemble(settings, build_services(settings) if services is None else services)
    if customize is not None:
        customize(assembly)
    make_worker(assembly.app, settings, redactor, heap).execute_from_commandline()
