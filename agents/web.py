"""The web endpoint: probes, the autopilot's own metrics, the usage read API and the policy API.

* ``GET /health`` — liveness: the event loop answers, and no table recovery is stalled (503).
* ``GET /ready`` — readiness: connected to the broker, partitions assigned, tables recovered.
* ``GET /metrics`` — prometheus-client exposition of :mod:`engine.metrics`, generated in a thread;
  bounded at fleet scale (per-workload series for the top workloads only); ``?name[]=...``
  (repeatable, prometheus-client's parameter) gives only those series.
* ``GET /api/usage/{namespace}/{kind}/{name}`` — percentiles, max, count and span per container and
  resource; routed (Faust's ``route_topic_req``) to the worker that owns the workload's partition;
  503 until ``/ready``.  Behind the read token (``KUBEFINOPS_API_READ_TOKEN``, or the API token)
  when one is set.
* ``POST /api/cycles`` — run a collection cycle now.
* ``GET|PUT|DELETE /api/policies[/{id}]`` — invalid documents get 400 with the field and the
  reason and are not stored.

One decorator guards the API, :func:`bearer_required` (``"write"``: the API token; ``"read"``:
the read token or the API token, open when no read token is set).  Views are plain classes;
:func:`register` binds them to the runtime.

Requests are checked before anything is stored (engine/core/bounds.py): 415 for a body that is
not JSON in UTF-8, 413 above 64 KiB, 400 for invalid or too deeply nested JSON, integers beyond
64 bits, NaN/Infinity, a policy id or an ``X-Kubefinops-User`` outside their documented
patterns; 409 when another writer stored the same policy version first.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

import faust
from faust.exceptions import SameNode
from faust.web import Request, Response, View
from faust.web.exceptions import MethodNotAllowed, ServiceUnavailable, WebError
from multidict import MultiMapping
from pydantic import SecretStr

from agents import collector
from agents import policies as policy_mod
from agents.runtime import Runtime
from engine.adapters.mongo import PolicyConflict
from engine.app import Topics, readiness
from engine.core import bounds
from engine.core.model import RESOURCES, workload_id
from engine.core.usage import ContainerUsage
from engine.errors import DependencyUnavailable, InvalidPolicy, KubeFinOpsError
from engine.metrics import scrape
from engine.services import PolicySource

log = logging.getLogger("kubefinops.web")
EXPOSITION = "text/plain; version=0.0.4"
USER_HEADER = "X-Kubefinops-User"


class BadRequest(Exception):
    """A request refused before anything is read further or stored (400/413/415)."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.field, self.reason = status, field, reason


class RuntimeView(View):
    """A view with the agents' runtime; :func:`register` binds ``rt`` and ``topics``."""

    rt: ClassVar[Runtime]
    topics: ClassVar[Topics]

    async def dispatch(self, request: Any) -> Any:
        """The errors every view answers the same way: 400/413/415, 409, 503."""
        try:
            return await super().dispatch(request)
        except BadRequest as exc:
            return self.json(
                {"error": "invalid request", "field": exc.field, "reason": exc.reason},
                status=exc.status,
            )
        except PolicyConflict as exc:
            return self.error(409, str(exc))
        except DependencyUnavailable as exc:
            return self.error(503, str(exc))

    async def head(self, request: Request, **kwargs: Any) -> Response:
        """HEAD of a GET route is the GET's status and headers (RFC 9110 §9.3.2; aiohttp sends
        no body for a HEAD request), so a monitor's HEAD probe sees what a GET would."""
        if "GET" not in self.allowed():
            raise MethodNotAllowed("Method HEAD not allowed.")
        response: Response = await self.get(request, **kwargs)
        return response

    def allowed(self) -> set[str]:
        """The methods this view answers: Faust's (those it overrides, and HEAD), HEAD only
        with a GET."""
        methods = set(self.get_methods())
        if "GET" not in methods:
            methods.discard("HEAD")
        return methods

    async def on_request_error(self, request: Request, exc: WebError) -> Response:
        if exc.code == 405:  # RFC 9110 §15.5.6: a 405 says which methods the resource takes
            # written as aiohttp writes it for a method a route was not registered for
            allow = ",".join(sorted(self.allowed()))
            return self.error(405, exc.detail, headers={"Allow": allow})
        return await super().on_request_error(request, exc)

    def policy_store(self) -> PolicySource:
        store = self.rt.services.policies
        if store is None:
            raise DependencyUnavailable("no policy store configured")
        return store


def audit_user(request: Request) -> str:
    """The ``X-Kubefinops-User`` recorded as "who" (default ``api``), validated and bounded."""
    who = request.headers.get(USER_HEADER)
    if who is None:
        return "api"
    if not bounds.is_user(who):
        raise BadRequest(400, USER_HEADER, f"must match {bounds.USER_RE}")
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


def _bearer(header: str) -> str | None:
    scheme, _, given = header.partition(" ")
    return given.strip() or None if scheme.lower() == "bearer" else None


def _matches(given: str, token: SecretStr | None) -> bool:
    # aiohttp decodes header bytes that are not UTF-8 as lone surrogates, which a plain encode
    # refuses (that was a 500): encoded as they are, such a token is just wrong (401)
    return token is not None and hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), token.get_secret_value().encode()
    )


Scope = Literal["read", "write"]
# The web UI's pages and their requests carry the read token in this cookie (HttpOnly,
# SameSite=Strict), set by ``/ui/?token=…`` (agents/stats_web.py); only reads accept it.
READ_COOKIE = "kubefinops_read"


def auth_problem(
    scope: Scope, header: str, token: SecretStr | None, read_token: SecretStr | None
) -> tuple[int, str] | None:
    """None when ``header`` may use ``scope``, else the status and the error to answer.

    ``write`` needs the API token (503 while none is configured); ``read`` is open until a read
    token is set, then takes it or the API token.
    """
    if scope == "read" and read_token is None:
        return None
    if scope == "write" and token is None:
        return 503, "policy API disabled: set KUBEFINOPS_API_TOKEN"
    given = _bearer(header)
    allowed = (token,) if scope == "write" else (read_token, token)
    if given is not None and any(_matches(given, t) for t in allowed):
        return None
    return 401, "missing or wrong bearer token"


Method = Callable[..., Awaitable[Response]]


def bearer_required(scope: Scope = "write") -> Callable[[Method], Method]:
    """The one auth check of the API: 503 while no API token is configured, 401 when wrong."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        async def guarded(self: RuntimeView, request: Request, **kwargs: Any) -> Response:
            settings = self.rt.settings
            header = request.headers.get("Authorization", "")
            if not header and scope == "read" and request.cookies.get(READ_COOKIE):
                header = f"Bearer {request.cookies[READ_COOKIE]}"
            problem = auth_problem(scope, header, settings.api_token, settings.api_read_token)
            if problem is not None:
                status, message = problem
                headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
                return self.error(status, message, headers=headers)
            return await method(self, request, **kwargs)

        return guarded

    return decorate


def ready_state(app: faust.types.AppT) -> tuple[bool, dict[str, Any]]:
    """:func:`engine.app.readiness` (total: never raises, says why it is not ready)."""
    return readiness(app)


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
        # 503 when the worker cannot get better by itself (a stalled table recovery,
        # engine/app.py RecoveryWatch): the liveness probe then restarts it
        problem = self.rt.liveness.problem
        if problem is not None:
            return self.json(
                {"status": "unhealthy", "reason": problem, "time": time.time()}, status=503
            )
        return self.json({"status": "ok", "time": time.time()})


class Ready(RuntimeView):
    async def get(self, request: Request) -> Response:
        ok, state = ready_state(self.app)
        return self.json({"ready": ok, **state}, status=200 if ok else 503)


# ``GET /metrics?name[]=a&name[]=b``: only those series (prometheus-client's own parameter), so
# a poller of one counter does not pay for the whole exposition; bounded like any other input
MAX_SCRAPE_NAMES = 64
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,199}")


class Metrics(RuntimeView):
    async def get(self, request: Request) -> Response:
        query = request.query  # aiohttp's MultiDict (Faust types it as a plain Mapping)
        names = query.getall("name[]", []) if isinstance(query, MultiMapping) else []
        if len(names) > MAX_SCRAPE_NAMES:
            return self.error(400, f"name[]: {len(names)} names, at most {MAX_SCRAPE_NAMES}")
        bad = next((n for n in names if not _METRIC_NAME.fullmatch(n)), None)
        if bad is not None:
            return self.error(
                400,
                f"name[]: {bad[:80]!r} is not a metric name (it must match {_METRIC_NAME.pattern})",
            )
        job = functools.partial(scrape, names=names or None)
        # In a thread: the event loop keeps consuming while the text is generated.
        body = await asyncio.get_running_loop().run_in_executor(None, job)
        # aiohttp adds "; charset=utf-8" itself and refuses it in content_type.
        return self.text(body.decode(), content_type=EXPOSITION)


class Usage(RuntimeView):
    @bearer_required("read")
    async def get(self, request: Request, namespace: str, kind: str, name: str) -> Response:
        wid = workload_id(namespace, kind, name)
        if not bounds.is_workload_id(wid):  # first: a retry after the 503 below would not help
            return self.error(400, f"not a workload id: {wid[:300]!r}")
        ok, state = ready_state(self.app)
        if not ok:  # recovering tables answer with partial (or no) state: say so, not 200
            return self.json(
                {"error": "worker not ready: tables recovering or partitions unassigned", **state},
                status=503,
                headers={"Retry-After": "2"},
            )
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
    @bearer_required()
    async def post(self, request: Request) -> Response:
        """Run a collection cycle now (the collector is single, wherever it runs)."""
        await collector.request_cycle(self.rt, audit_user(request))
        return self.json({"requested": True}, status=202)


class PolicyList(RuntimeView):
    @bearer_required()
    async def get(self, request: Request) -> Response:
        docs = [p.model_dump(mode="json") for p in policy_mod.current_policies(self.rt)]
        return self.json({"policies": sorted(docs, key=lambda d: d["id"])})


def invalid(view: View, field: str, reason: str) -> Response:
    """400 for a policy document that is not stored, naming the field and the reason."""
    return view.json({"error": "invalid policy", "field": field, "reason": reason}, status=400)


class PolicyItem(RuntimeView):
    @bearer_required()
    async def get(self, request: Request, policy_id: str) -> Response:
        check_policy_id(policy_id)
        if self.rt.services.policies is not None:
            doc = await self.rt.services.policies.get(policy_id)
        else:
            policy = self.rt.tables.policies.get(policy_id)
            doc = policy.model_dump(mode="json") if policy is not None else None
        if doc is None:
            return self.error(404, f"policy {policy_id!r} not found")
        return self.json(doc)

    @bearer_required()
    async def put(self, request: Request, policy_id: str) -> Response:
        store = self.policy_store()
        check_policy_id(policy_id)
        who = audit_user(request)
        body = await json_body(request)
        if not isinstance(body, dict):
            return invalid(self, "body", "must be a JSON object")
        if "id" in body and body["id"] != policy_id:  # not silently renamed to the path's id
            why = f"the body's id must be the path's ({policy_id!r}) or absent"
            return invalid(self, "id", why)
        try:
            stored = await store.put({**body, "id": policy_id}, by=who)
        except InvalidPolicy as exc:
            return invalid(self, exc.field, exc.reason)
        try:
            await policy_mod.publish(self.rt, policy_id, stored)
        except (KubeFinOpsError, OSError, RuntimeError) as exc:  # Kafka refused or away
            log.warning("policy %s stored but not published yet: %s", policy_id, exc)
            why = "stored in MongoDB but not published; the next reconcile publishes it"
            return self.error(503, f"{why} ({type(exc).__name__})", policy=stored)
        return self.json(stored)

    @bearer_required()
    async def delete(self, request: Request, policy_id: str) -> Response:
        store = self.policy_store()
        check_policy_id(policy_id)
        if not await store.delete(policy_id, by=audit_user(request)):
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


def register(
    app: faust.App,
    topics: Topics,
    rt: Runtime,
    routes: tuple[tuple[str, type[RuntimeView]], ...] = ROUTES,
) -> None:
    """Serve every route of ``routes`` (default :data:`ROUTES`) on the worker's web server,
    bound to ``rt``."""
    for path, view in routes:
        bound = type(view.__name__, (view,), {"rt": rt, "topics": topics})
        app.page(path)(bound)
