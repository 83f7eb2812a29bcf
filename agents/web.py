"""The web endpoint: probes, the autopilot's own metrics, the usage read API and the policy API.

* ``GET /health`` — liveness: the event loop answers.
* ``GET /ready`` — readiness: connected to the broker, partitions assigned, tables recovered.
* ``GET /metrics`` — prometheus-client exposition of :mod:`engine.metrics`, generated in a thread;
  bounded at fleet scale (per-workload series for the top workloads only).
* ``GET /api/usage/{namespace}/{kind}/{name}`` — percentiles, max, count and span per container and
  resource; routed to the worker that owns the workload's partition; 503 until ``/ready``.
  Behind the read token (``KUBEFINOPS_API_READ_TOKEN``, or the API token) when one is set.
* ``GET|PUT|DELETE /api/policies[/{id}]`` — bearer-token guarded; invalid documents get 400 with
  the field and the reason and are not stored.

Requests are checked before anything is stored (engine/core/bounds.py): 415 for a body that is
not JSON in UTF-8, 413 above 64 KiB, 400 for invalid or too deeply nested JSON, integers beyond
64 bits, NaN/Infinity, a policy id or an ``X-Kubefinops-User`` outside their documented
patterns; 409 when another writer stored the same policy version first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from typing import Any

from faust.exceptions import SameNode
from faust.web import Request, Response, View
from yarl import URL

from agents import collector
from agents import policies as policy_mod
from agents.runtime import Runtime
from engine.adapters.mongo import PolicyConflict
from engine.core import bounds
from engine.core.model import RESOURCES, WorkloadSpec, workload_id
from engine.core.usage import ContainerUsage
from engine.errors import DependencyUnavailable, InvalidPolicy, KubeFinOpsError
from engine.metrics import scrape

log = logging.getLogger("kubefinops.web")
EXPOSITION = "text/plain; version=0.0.4"


def _summary_json(usage: ContainerUsage) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for res in RESOURCES:
        s = usage.summary(res)
        out[res] = {**s.model_dump(), "span_seconds": s.span_seconds}
    return out


def ready_state(rt: Runtime) -> tuple[bool, dict[str, Any]]:
    app = rt.app
    assigned = list(app.consumer.assignment()) if app.consumer is not None else []
    recovering = bool(getattr(app, "in_recovery", False))
    state = {
        "rebalancing": bool(app.rebalancing),
        "assigned_partitions": len(assigned),
        "recovering": recovering,
    }
    return bool(assigned) and not app.rebalancing and not recovering, state


def owner_of(rt: Runtime, wid: str) -> URL | None:
    """The peer that owns the workload's partition, or None when it is this worker (or unknown).

    ``kubefinops.metrics`` partition p and the ``usage`` changelog partition p live on the same
    worker (co-partitioning), so the assignor's table metadata tells who holds the state.
    """
    app = rt.app
    try:
        tp = app.producer.key_partition(rt.settings.topic("metrics"), wid.encode())
        hosts = app.router.table_metadata("usage")
    except Exception:  # no metadata yet (starting, rebalancing): answer from local state
        return None
    me = str(app.conf.canonical_url).rstrip("/")
    for host, topics in hosts.items():
        if any(tp.partition in parts for parts in topics.values()):
            return None if str(host).rstrip("/") == me else URL(str(host))
    return None


class BadRequest(Exception):
    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.field, self.reason = status, field, reason


def audit_user(request: Request) -> str:
    """The ``X-Kubefinops-User`` recorded as "who" (default ``api``), validated and bounded."""
    who = request.headers.get("X-Kubefinops-User")
    if who is None:
        return "api"
    if not bounds.is_user(who):
        raise BadRequest(400, "X-Kubefinops-User", f"must match {bounds.USER_RE}")
    return who


def check_policy_id(policy_id: str) -> None:
    if not bounds.is_policy_id(policy_id):
        raise BadRequest(400, "id", f"must match {bounds.POLICY_ID_RE}")


async def json_body(request: Request) -> Any:
    """The request's JSON document, or :class:`BadRequest` (415/413/400) before reading more
    than the limit."""
    length = request.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > bounds.MAX_BODY_BYTES:
        raise BadRequest(413, "body", f"larger than {bounds.MAX_BODY_BYTES} bytes")
    raw = await request.read()  # aiohttp refuses more than 1 MiB itself (413)
    try:
        return bounds.parse_json_body(raw, request.headers.get("Content-Type"))
    except bounds.BodyError as exc:
        raise BadRequest(exc.status, "body", exc.reason) from None


def _bearer_matches(request: Request, *tokens: Any) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    return any(
        token is not None
        and hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
        for token in tokens
    )


def register(rt: Runtime) -> None:
    app = rt.app

    def authorized(request: Request) -> bool:
        token = rt.settings.api_token
        if token is None:
            return False
        return _bearer_matches(request, token)

    def read_authorized(request: Request) -> bool:
        read = rt.settings.api_read_token
        return read is None or _bearer_matches(request, read, rt.settings.api_token)

    def bad(view: View, exc: BadRequest) -> Response:
        return view.json(
            {"error": "invalid request", "field": exc.field, "reason": exc.reason},
            status=exc.status,
        )

    def deny(view: View) -> Response:
        if rt.settings.api_token is None:
            return view.json({"error": "policy API disabled: set KUBEFINOPS_API_TOKEN"}, status=503)
        return view.json(
            {"error": "missing or wrong bearer token"},
            status=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok", "time": time.time()})

    @app.page("/ready")
    class Ready(View):
        async def get(self, request: Request) -> Response:
            ok, state = ready_state(rt)
            return self.json({"ready": ok, **state}, status=200 if ok else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            # In a thread: the event loop keeps consuming while the text is generated.
            body = await asyncio.get_running_loop().run_in_executor(None, scrape)
            # aiohttp adds "; charset=utf-8" itself and refuses it in content_type.
            return self.text(body.decode(), content_type=EXPOSITION)

    @app.page("/api/usage/{namespace}/{kind}/{name}")
    class Usage(View):
        async def get(self, request: Request, namespace: str, kind: str, name: str) -> Response:
            if not read_authorized(request):
                return self.json(
                    {"error": "missing or wrong bearer token"},
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            ok, state = ready_state(rt)
            if not ok:
                # Recovering tables answer with partial (or no) state: say so instead of 200.
                return self.json(
                    {"error": "worker not ready: tables recovering or partitions unassigned",
                     **state},
                    status=503,
                    headers={"Retry-After": "2"},
                )  # fmt: skip
            wid = workload_id(namespace, kind, name)
            if not bounds.is_workload_id(wid):
                return self.json({"error": f"not a workload id: {wid[:300]!r}"}, status=400)
            owner = owner_of(rt, wid)
            if owner is not None:
                router: Any = app.router
                with contextlib.suppress(SameNode):
                    response: Response = await router._route_req(owner, self.web, request)
                    return response
            spec_doc = rt.tables.workloads.get(wid)
            prefix = wid + "/"
            if spec_doc:  # the spec names the containers: direct lookups
                keys = [prefix + c["name"] for c in spec_doc.get("containers", [])]
            else:  # usage before the first cycle-end: scan this worker's keys
                keys = [
                    k
                    for k in list(rt.tables.usage.keys())
                    if isinstance(k, str) and k.startswith(prefix)
                ]
            containers: dict[str, Any] = {}
            for key in keys:
                stored = rt.tables.usage.get(key)
                if stored:
                    containers[key[len(prefix) :]] = _summary_json(ContainerUsage.from_dict(stored))
            if not containers and spec_doc is None:
                return self.json({"error": f"no usage recorded for {wid}"}, status=404)
            spec = (
                WorkloadSpec.model_validate(spec_doc).model_dump(mode="json") if spec_doc else None
            )
            return self.json({"workload": wid, "containers": containers, "spec": spec})

    @app.page("/api/cycles")
    class Cycles(View):
        async def post(self, request: Request) -> Response:
            """Run a collection cycle now (the collector is single, wherever it runs)."""
            if not authorized(request):
                return deny(self)
            try:
                who = audit_user(request)
            except BadRequest as exc:
                return bad(self, exc)
            await collector.request_cycle(rt, who)
            return self.json({"requested": True}, status=202)

    @app.page("/api/policies")
    class PolicyList(View):
        async def get(self, request: Request) -> Response:
            if not authorized(request):
                return deny(self)
            docs = [p.model_dump(mode="json") for p in policy_mod.current_policies(rt)]
            return self.json({"policies": sorted(docs, key=lambda d: d["id"])})

    @app.page("/api/policies/{policy_id}")
    class PolicyItem(View):
        async def get(self, request: Request, policy_id: str) -> Response:
            if not authorized(request):
                return deny(self)
            try:
                check_policy_id(policy_id)
            except BadRequest as exc:
                return bad(self, exc)
            store = rt.service("policies")
            try:
                doc = await store.get(policy_id) if store else rt.tables.policies.get(policy_id)
            except DependencyUnavailable as exc:
                return self.json({"error": str(exc)}, status=503)
            if doc is None:
                return self.json({"error": f"policy {policy_id!r} not found"}, status=404)
            return self.json(doc)

        async def put(self, request: Request, policy_id: str) -> Response:
            if not authorized(request):
                return deny(self)
            store = rt.service("policies")
            if store is None:
                return self.json({"error": "no policy store configured"}, status=503)
            try:
                check_policy_id(policy_id)
                who = audit_user(request)
                body = await json_body(request)
            except BadRequest as exc:
                return bad(self, exc)
            if not isinstance(body, dict):
                return self.json(
                    {"error": "invalid policy", "field": "body", "reason": "must be a JSON object"},
                    status=400,
                )
            body["id"] = policy_id
            try:
                stored = await store.put(body, by=who)
            except InvalidPolicy as exc:
                return self.json(
                    {"error": "invalid policy", "field": exc.field, "reason": exc.reason},
                    status=400,
                )
            except PolicyConflict as exc:
                return self.json({"error": str(exc)}, status=409)
            except DependencyUnavailable as exc:
                return self.json({"error": str(exc)}, status=503)
            try:
                await policy_mod.publish(rt, policy_id, stored)
            except (KubeFinOpsError, OSError, RuntimeError) as exc:  # Kafka refused or away
                log.warning("policy %s stored but not published yet: %s", policy_id, exc)
                return self.json(
                    {
                        "error": "stored in MongoDB but not published; the next reconcile "
                        f"publishes it ({type(exc).__name__})",
                        "policy": stored,
                    },
                    status=503,
                )
            return self.json(stored)

        async def delete(self, request: Request, policy_id: str) -> Response:
            if not authorized(request):
                return deny(self)
            store = rt.service("policies")
            if store is None:
                return self.json({"error": "no policy store configured"}, status=503)
            try:
                check_policy_id(policy_id)
                who = audit_user(request)
            except BadRequest as exc:
                return bad(self, exc)
            try:
                existed = await store.delete(policy_id, by=who)
            except PolicyConflict as exc:
                return self.json({"error": str(exc)}, status=409)
            except DependencyUnavailable as exc:
                return self.json({"error": str(exc)}, status=503)
            if not existed:
                return self.json({"error": f"policy {policy_id!r} not found"}, status=404)
            await policy_mod.publish(rt, policy_id, None)
            return self.json({"deleted": policy_id})
