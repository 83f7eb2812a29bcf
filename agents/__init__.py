"""The actors. :func:`build_runtime` assembles the app, topics, tables, adapters and every agent."""

from __future__ import annotations

import logging
from typing import Any

from agents.runtime import Runtime
from engine.settings import Settings

log = logging.getLogger("kubefinops")


def build_services(settings: Settings) -> dict[str, Any]:
    """Adapters from settings. A dependency that is not configured is simply absent."""
    from engine.adapters.gitops import GitOpsWriter
    from engine.adapters.mongo import PolicyStore, RecordStore, connect
    from engine.adapters.prometheus import Collector, PrometheusClient
    from engine.adapters.reports import ReportWriter
    from engine.adapters.verification import ClusterTelemetry
    from engine.core.policy import validate_policy

    services: dict[str, Any] = {}
    prometheus = PrometheusClient(settings)
    services["collector"] = Collector(prometheus, settings)
    services["telemetry"] = ClusterTelemetry(prometheus)  # verified apply
    db = connect(settings)
    services["policies"] = PolicyStore(db, validate=validate_policy)
    services["records"] = RecordStore(db, retention_days=settings.history_retention_days)
    if settings.git_remote_url:
        services["gitops"] = GitOpsWriter(settings)
    services["reports"] = ReportWriter(settings, park_on_failure=False)
    return services


def build_runtime(settings: Settings, services: dict[str, Any] | None = None) -> Runtime:
    from agents import (
        aggregator,
        collector,
        executor,
        gate,
        lag,
        ledger,
        policies,
        reporter,
        verifier,
        web,
    )
    from engine.app import create_app, declare_topics
    from engine.metrics import init_series
    from tables import declare_tables

    app = create_app(settings)
    if settings.web_canonical_url:
        app.conf.canonical_url = settings.web_canonical_url  # type: ignore[assignment]
    rt = Runtime(
        settings=settings,
        app=app,
        topics=declare_topics(app, settings),
        tables=declare_tables(app, settings),
        services=build_services(settings) if services is None else services,
    )
    modules = (
        policies,
        collector,
        aggregator,
        gate,
        executor,
        ledger,
        reporter,
        verifier,
        lag,
        web,
    )
    for module in modules:
        module.register(rt)
    init_series(tuple(getattr(m, "AGENT", "") for m in modules if hasattr(m, "AGENT")))
    return rt
