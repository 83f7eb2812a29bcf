"""The read-only stats API and the web UI (docs/api.md).

* ``GET /api/stats`` — fleet figures: cost now vs recommended, pending and realised savings,
  decisions by outcome and guardrail, last cycles, lag per agent, dead letters by reason.
* ``GET /api/recommendations?namespace=&workload=`` — latest recommendation per workload.
* ``GET /api/decisions?namespace=&workload=&action=&limit=&before=`` — history, paginated.
* ``GET /api/workloads/{namespace}/{kind}/{name}`` — spec, usage per container and day, the
  recommendation, decisions and last action; routed to the worker owning the workload.
* ``GET /ui/`` and ``/ui/{file}`` — the pages and their assets (the vendored uPlot), from the
  package; ``/ui/?token=…`` trades the read token for a cookie.

Fleet answers come from MongoDB and Kafka (:mod:`engine.stats`): the same on every worker.  All
of it is behind the read token when one is set (the one decorator, ``bearer_required("read")``).
"""

from __future__ import annotations

import math
import mimetypes
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web as aioweb
from faust.exceptions import SameNode
from faust.web import Request, Response
from faust.web.exceptions import ServiceUnavailable

from agents.web import READ_COOKIE, RuntimeView, auth_problem, bearer_required, ready_state
from engine.core import bounds
from engine.core.model import workload_id
from engine.core.stats import daily_usage
from engine.errors import DependencyUnavailable
from engine.static import STATIC_DIR, page
from engine.stats import MAX_PAGE

UI_FILES = {
    "": "ui/index.html",
    "index.html": "ui/index.html",
    "workload.html": "ui/workload.html",
    "static/ui/app.js": "ui/app.js",
    "static/ui/fleet.js": "ui/fleet.js",
    "static/ui/workload.js": "ui/workload.js",
    "static/ui/app.css": "ui/app.css",
    "static/vendor/uplot/uPlot.iife.min.js": "vendor/uplot/uPlot.iife.min.js",
    "static/vendor/uplot/uPlot.min.css": "vendor/uplot/uPlot.min.css",
}


_NUMBER = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")  # plain decimal seconds (no 1_0, nan, inf)


def _time(value: str | None, name: str) -> float | None:
    """A query parameter holding a Unix time (seconds), or None when absent."""
    if value is None or value == "":
        return None
    number = float(value) if _NUMBER.fullmatch(value) else math.nan
    if not bounds.sane_time(number):
        raise ValueError(
            f"{name} must be a Unix time in seconds between {bounds.MIN_TIME:.0f} and "
            f"{bounds.MAX_TIME:.0f}"
        )
    return number


def _limit(value: str | None, default: int = 50) -> int:
    """``limit``: an integer 1..MAX_PAGE (out of range is an error, not clamped)."""
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit() and len(value) <= 4) or not (
        1 <= int(value) <= MAX_PAGE
    ):
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}")
    return int(value)


def _cursor_id(value: str | None) -> str | None:
    """``before_id``: the id half of the cursor (``next_before_id``), or None."""
    if value is None or value == "":
        return None
    if len(value) > 300 or not value.isprintable():
        raise ValueError("before_id must be the next_before_id of the previous page")
    return value


class StatsView(RuntimeView):
    def stats_service(self) -> Any:
        return self.rt.services.stats

    async def answer(self, ask: Callable[[Any], Awaitable[dict[str, Any]]]) -> Response:
        """``ask(service)`` as JSON; 503 without MongoDB or while it is unreachable."""
        svc = self.stats_service()
        if svc is None:
            return self.error(503, "no MongoDB configured: the stats API needs the history")
        try:
            return self.json(await ask(svc))
        except DependencyUnavailable as exc:
            return self.error(503, str(exc))


class Stats(StatsView):
    @bearer_required("read")
    async def get(self, request: Request) -> Response:
        return await self.answer(lambda svc: svc.stats())


class Recommendations(StatsView):
    @bearer_required("read")
    async def get(self, request: Request) -> Response:
        q = request.query
        return await self.answer(
            lambda svc: svc.recommendations(q.get("namespace"), q.get("workload"))
        )


class Decisions(StatsView):
    @bearer_required("read")
    async def get(self, request: Request) -> Response:
        q = request.query
        try:
            limit = _limit(q.get("limit"))
            before = _time(q.get("before"), "before")
            before_id = _cursor_id(q.get("before_id"))
        except ValueError as exc:
            return self.error(400, f"invalid query: {exc}")
        if before_id is not None and before is None:
            return self.error(400, "invalid query: before_id needs before (next_before)")
        action = q.get("action") or None
        if action not in (None, "apply", "hold", "skip"):
            return self.error(400, "action must be apply, hold or skip")
        return await self.answer(
            lambda svc: svc.decisions(
                q.get("namespace"),
                q.get("workload"),
                action=action,
                limit=limit,
                before=before,
                before_id=before_id,
            )
        )


class Workload(StatsView):
    @bearer_required("read")
    async def get(self, request: Request, namespace: str, kind: str, name: str) -> Response:
        wid = workload_id(namespace, kind, name)
        if not bounds.is_workload_id(wid):
            return self.error(400, f"not a workload id: {wid[:300]!r}")
        ok, state = ready_state(self.app)
        if not ok:
            return self.json(
                {"error": "worker not ready: tables recovering or partitions unassigned", **state},
                status=503,
                headers={"Retry-After": "2"},
            )
        try:  # the worker consuming the workload's metrics partition holds its usage and spec
            routed: Response = await self.app.router.route_topic_req(
                self.topics.metrics, wid.encode(), self.web, request
            )
            return routed
        except (SameNode, ServiceUnavailable):
            pass
        spec = self.rt.tables.workloads.get(wid)
        usage: dict[str, Any] = {}
        summary: dict[str, Any] = {}
        names = [c.name for c in spec.containers] if spec is not None else []
        for cname in names:
            cu = self.rt.tables.usage.get(f"{wid}/{cname}")
            if cu is not None:
                usage[cname] = daily_usage(cu)
                summary[cname] = {
                    res: {**s.model_dump(mode="json"), "span_seconds": s.span_seconds}
                    for res, s in ((r, cu.summary(r)) for r in ("cpu", "memory"))
                }
        svc = self.stats_service()
        history: dict[str, Any] = {"recommendation": None, "decisions": [], "last_action": None}
        if svc is not None:
            try:
                history = await svc.workload_history(wid)
            except DependencyUnavailable as exc:
                history["error"] = str(exc)
        if spec is None and history["recommendation"] is None:
            return self.error(404, f"unknown workload {wid}")
        return self.json(
            {
                "workload_id": wid,
                "spec": spec.model_dump(mode="json") if spec is not None else None,
                "usage": usage,
                "summary": summary,
                **history,
            }
        )


class Ui(RuntimeView):
    """The pages and their assets, read from the package (never a CDN)."""

    async def get(self, request: Request, path: str = "") -> Any:
        rel = UI_FILES.get(path)
        if rel is None:
            return self.error(404, "not found")
        settings = self.rt.settings
        token = request.query.get("token")
        if token is not None and (path == "" or path.endswith(".html")):
            # the page again without the token in its address (history, proxies' logs)
            rest = urlencode([(k, v) for k, v in request.query.items() if k != "token"])
            resp = aioweb.Response(
                status=303, headers={"Location": (path or "./") + (f"?{rest}" if rest else "")}
            )
            if settings.api_read_token is None:  # reads are open: nothing to remember
                return resp
            # only the read token becomes a cookie: the API token can write, and a browser's
            # cookie jar is no place for it (it still works as a bearer header)
            problem = auth_problem("read", f"Bearer {token}", None, settings.api_read_token)
            if problem is not None:
                return self.error(problem[0], "the UI takes the read token: " + problem[1])
            resp.set_cookie(
                READ_COOKIE,
                token,
                httponly=True,
                samesite="Strict",
                path="/",
                secure=request.url.scheme == "https",
            )
            return resp
        return await self.serve(request, rel=rel)

    @bearer_required("read")
    async def serve(self, request: Request, rel: str) -> Any:
        if rel.endswith(".html"):  # a page: its shared partials (the <head>) included
            body = page(rel.removeprefix("ui/")).encode()
        else:
            body = (STATIC_DIR / rel).read_bytes()
        ctype = mimetypes.guess_type(rel)[0] or "application/octet-stream"
        return aioweb.Response(
            body=body,
            content_type=ctype,
            charset="utf-8" if ctype.startswith(("text/", "application/javascript")) else None,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )


ROUTES: tuple[tuple[str, type[RuntimeView]], ...] = (
    ("/api/stats", Stats),
    ("/api/recommendations", Recommendations),
    ("/api/decisions", Decisions),
    ("/api/workloads/{namespace}/{kind}/{name}", Workload),
    ("/ui/", Ui),
    ("/ui/{path:.+}", Ui),
)
