"""The actors.  Each ``agents.<name>`` module holds an agent's handler: a plain async function
over a :class:`~agents.runtime.Runtime`, callable without a broker.  :func:`assemble` builds the
Faust app, its topics and tables and wires the handlers to streams (:mod:`agents.wiring`), the
web endpoint (:mod:`agents.web`) and the lag meter (:mod:`agents.lag`)."""

from __future__ import annotations

from dataclasses import dataclass

import faust
import mode

from agents.runtime import Runtime, Sinks
from engine.app import Topics
from engine.services import Services
from engine.settings import Settings


@dataclass(frozen=True)
class Assembly:
    """A worker's app with everything registered on it, and the runtime its handlers share."""

    app: faust.App
    topics: Topics
    rt: Runtime


def assemble(settings: Settings, services: Services) -> Assembly:
    from agents import lag, stats_web, web, wiring
    from engine.app import create_app, declare_topics
    from engine.metrics import FLEET, init_series
    from tables import declare_tables

    app = create_app(settings)
    if settings.web_canonical_url:
        app.conf.canonical_url = settings.web_canonical_url  # type: ignore[assignment]
    topics = declare_topics(app, settings)
    rt = Runtime(
        settings=settings,
        topics=Sinks.of(topics),
        tables=declare_tables(app, settings),
        services=services,
    )
    wiring.register(app, topics, rt)
    web.register(app, topics, rt, (*web.ROUTES, *stats_web.ROUTES))
    lag.register(app)
    FLEET.top = settings.metrics_top_workloads
    FLEET.stale_seconds = 3 * settings.collect_interval_seconds
    init_series(wiring.AGENTS)

    class Clients(mode.Service):
        """Closes every client the services opened when the app stops."""

        async def on_stop(self) -> None:
            await services.aclose()

    app.service(Clients)
    return Assembly(app=app, topics=topics, rt=rt)
