"""The web endpoint: probes, the autopilot's own metrics, the usage read API and the policy API.

* ``GET /health`` — liveness: the event loop answers.
* ``GET /ready`` — readiness: connected to the broker, partitions assigned, tables recovered.
* ``GET /metrics`` — prometheus-client exposition of :mod:`engine.metrics`.
* ``GET /api/usage/{namespace}/{kind}/{name}`` — percentiles, max, count and span per container and
  resource; routed (Faust's ``route_topic_req``) to the worker that owns the workload's partition.
* ``POST /api/cycles`` — run a collection cycle now.
* ``GET|PUT|DELETE /api/policies[/{id}]`` — invalid documents get 400 with the field and the
  reason and are not stored.

Everything under ``/api/`` that changes or reveals configuration is guarded by one decorator,
:func:`bearer_required`.  Views are plain classes; :func:`register` binds them to the runtime.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import faust
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable
from prometheus_client import generate_latest
from pydantic import SecretStr

from agents import collector
from agents import policies as policy_mod
from agents.runtime import Runtime
from engine.app import Topics
from engine.core.model import RESOURCES, workload_id
from engine.core.usage import ContainerUsage
from engine.errors import DependencyUnavailable, InvalidPolicy
from engine.metrics import REGISTRY

log = logging.getLogger("kubefinops.web")
EXPOSITION = "text/plain; version=0.0.4"
USER_HEADER = "X-Kubefinops-User"


class RuntimeView(View):
    """A view with the agents' runtime; :func:`register` binds ``rt`` and ``topics``."""

    rt: ClassVar[Runtime]
    topics: ClassVar[Topics]

    def user(self, request: Request) -> str:
        return request.headers.get(USER_HEADER, "api")


def auth_problem(token: SecretStr | None, header: str) -> tuple[int, str] | None:
    """None when ``header`` carries the bearer token, else the status and the error to answer."""
    if token is None:
        return 503, "policy API disabled: set KUBEFINOPS_API_TOKEN"
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.get_secret_value().encode()
    ):
        return None
    return 401, "missing or wrong bearer token"


Method = Callable[..., Awaitable[Response]]


def bearer_required(method: Method) -> Method:
    """The one auth check of the API: 503 when no token is configured, 401 when it is wrong."""

    @functools.wraps(method)
    async def guarded(self: RuntimeView, request: Request, **kwargs: Any) -> Response:
        problem = auth_problem(self.rt.settings.api_token, request.headers.get("Authorization", ""))
        if problem is not None:
            status, message = problem
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return self.error(status, message, headers=headers)
        return await method(self, request, **kwargs)

    return guarded


def ready_state(app: faust.types.AppT) -> tuple[bool, dict[str, Any]]:
    assigned = list(app.consumer.assignment()) if app.consumer is not None else []
    recovering = bool(getattr(app, "in_recovery", False))
    state = {
        "rebalancing": bool(app.rebalancing),
        "assigned_partitions": len(assigned),
        "recovering": recovering,
    }
    return bool(assigned) and not app.rebalancing and not recovering, state


def summary_json(usage: ContainerUsage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in RESOURCES:
        s = usage.summary(res)
        out[res] = {**s.model_dump(), "span_seconds": s.span_seconds}
    return out


def local_usage(rt: Runtime, wid: str) -> dict[str, Any] | None:
    """The workload's usage held by this worker, or None when it has none."""
    spec = rt.tables.workloads.get(wid)
    prefix = wid + "/"
    if spec is not None:  # the spec names the containers: direct lookups
        keys = [prefix + c.name for c in spec.containers]
    else:  # usage before the first cycle-end: scan this worker's keys
        keys = [k for k in rt.tables.usage.keys() if k.startswith(prefix)]
    containers: dict[str, Any] = {}
    for key in keys:
        usage = rt.tables.usage.get(key)
        if usage is not None:
            containers[key[len(prefix) :]] = summary_json(usage)
    if not containers and spec is None:
        return None
    return {
        "workload": wid,
        "containers": containers,
        "spec": spec.model_dump(mode="json") if spec is not None else None,
    }


class Health(RuntimeView):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok", "time": time.time()})


class Ready(RuntimeView):
    async def get(self, request: Request) -> Response:
        ok, state = ready_state(self.app)
        return self.json({"ready": ok, **state}, status=200 if ok else 503)


class Metrics(RuntimeView):
    async def get(self, request: Request) -> Response:
        # aiohttp adds "; charset=utf-8" itself and refuses it in content_type.
        return self.text(generate_latest(REGISTRY).decode(), content_type=EXPOSITION)


class Usage(RuntimeView):
    async def get(self, request: Request, namespace: str, kind: str, name: str) -> Response:
        wid = workload_id(namespace, kind, name)
        try:  # the worker consuming the workload's metrics partition holds its usage state
            routed: Response = await self.app.router.route_topic_req(
                self.topics.metrics, wid.encode(), self.web, request
            )
            return routed
        except (SameNode, ServiceUnavailable):  # ours, or no assignment yet: answer locally
            pass
        body = local_usage(self.rt, wid)
        if body is None:
            return self.error(404, f"no usage recorded for {wid}")
        return self.json(body)


class Cycles(RuntimeView):
    @bearer_required
    async def post(self, request: Request) -> Response:
        """Run a collection cycle now (the collector is single, wherever it runs)."""
        await collector.request_cycle(self.rt, self.user(request))
        return self.json({"requested": True}, status=202)


class PolicyList(RuntimeView):
    @bearer_required
    async def get(self, request: Request) -> Response:
        docs = [p.model_dump(mode="json") for p in policy_mod.current_policies(self.rt)]
        return self.json({"policies": sorted(docs, key=lambda d: d["id"])})


def invalid(view: View, field: str, reason: str) -> Response:
    """400 for a policy document that is not stored, naming the field and the reason."""
    return view.json({"error": "invalid policy", "field": field, "reason": reason}, status=400)


class PolicyItem(RuntimeView):
    @bearer_required
    async def get(self, request: Request, policy_id: str) -> Response:
        store = self.rt.services.policies
        try:
            if store is not None:
                doc = await store.get(policy_id)
            else:
                policy = self.rt.tables.policies.get(policy_id)
                doc = policy.model_dump(mode="json") if policy is not None else None
        except DependencyUnavailable as exc:
            return self.error(503, str(exc))
        if doc is None:
            return self.error(404, f"policy {policy_id!r} not found")
        return self.json(doc)

    @bearer_required
    async def put(self, request: Request, policy_id: str) -> Response:
        store = self.rt.services.policies
        if store is None:
            return self.error(503, "no policy store configured")
        try:
            body = json.loads(await request.text())
        except ValueError as exc:
            return invalid(self, "body", f"not JSON: {exc}")
        if not isinstance(body, dict):
            return invalid(self, "body", "must be a JSON object")
        body["id"] = policy_id
        try:
            stored = await store.put(body, by=self.user(request))
        except InvalidPolicy as exc:
            return invalid(self, exc.field, exc.reason)
        except DependencyUnavailable as exc:
            return self.error(503, str(exc))
        await policy_mod.publish(self.rt, policy_id, stored)
        return self.json(stored)

    @bearer_required
    async def delete(self, request: Request, policy_id: str) -> Response:
        store = self.rt.services.policies
        if store is None:
            return self.error(503, "no policy store configured")
        try:
            existed = await store.delete(policy_id, by=self.user(request))
        except DependencyUnavailable as exc:
            return self.error(503, str(exc))
        if not existed:
            return self.error(404, f"policy {policy_id!r} not found")
        await policy_mod.publish(self.rt, policy_id, None)
        return self.json({"deleted": policy_id})


ROUTES: tuple[tuple[str, type[RuntimeView]], ...] = (
    ("/health", Health),
    ("/ready", Ready),
    ("/metrics", Metrics),
    ("/api/usage/{namespace}/{kind}/{name}", Usage),
    ("/api/cycles", Cycles),
    ("/api/policies", PolicyList),
    ("/api/policies/{policy_id}", PolicyItem),
)


def register(app: faust.App, topics: Topics, rt: Runtime) -> None:
    """Serve every route of :data:`ROUTES` on the worker's web server, bound to ``rt``."""
    for path, view in ROUTES:
        bound = type(view.__name__, (view,), {"rt": rt, "topics": topics})
        app.page(path)(bound)
