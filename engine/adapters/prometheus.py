"""Prometheus over HTTP (aiohttp): the collector's I/O half.

:class:`PrometheusClient` sends ``query``/``query_range`` as POST forms (long selectors do not hit
URL limits), retries connection errors, timeouts, 5xx/429 and malformed bodies with exponential
backoff and jitter, then raises :class:`DependencyUnavailable`; a 4xx (bad query) is a
:class:`PermanentError` at once.  :class:`Collector` turns one chunk into
:class:`MetricsBatch` records and one instant into :class:`WorkloadSpec` records using the pure
functions of :mod:`engine.core.collect`; the watermarks live with the caller (a Faust table).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from engine.core.collect import (
    OWNER_METRICS,
    MalformedResponse,
    Owners,
    Series,
    SeriesArrays,
    SpecBuilder,
    answer_bytes_cap,
    build_batches,
    build_chunks,
    cpu_expr,
    eval_start,
    memory_expr,
    owner_expr,
    parse_matrix,
    parse_matrix_body,
    parse_result,
    parse_series,
    series_count_expr,
    spec_queries,
)
from engine.core.model import MetricsBatch, MetricsChunk, WorkloadSpec
from engine.errors import (
    AnswerTooLarge,
    AuthenticationFailed,
    DependencyUnavailable,
    PermanentError,
)
from engine.metrics import PROMETHEUS_QUERIES, PROMETHEUS_SAMPLES_READ
from engine.settings import Settings

LOOKBACK_SECONDS = 300  # Prometheus' default lookback delta
READ_PIECE = 1 << 20  # a capped answer is read in pieces of this size
# An answer larger than this is parsed in a worker thread: the parse's Python part gives the
# event loop the GIL back every few milliseconds (Python's switch interval) to serve heartbeats,
# probes and the other agents; orjson's one C call does not (~0.3 s of a 98 MB answer). The
# loop's longest stall reading a 98 MB range answer: 0.94-1.08 s parsed on the loop, 0.26-0.32 s
# in a thread (bench_collector_memory.py --stall). Small answers, the many, stay on the loop.
PARSE_IN_THREAD_BYTES = 1 << 20


class BadQuery(PermanentError):
    """Prometheus rejected the query itself (HTTP 400/422): retrying cannot help."""


class _Transient(Exception):
    """Internal: one attempt failed in a way worth retrying."""


def redact_url(url: str) -> str:
    """The URL without user info, safe for logs and exception messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class PrometheusClient:
    """A small async client for the Prometheus HTTP API; use as ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        session: aiohttp.ClientSession | None = None,
        compress: bool = True,
        max_in_flight: int | None = None,
    ) -> None:
        self.base_url = settings.prometheus_url.rstrip("/")
        password = settings.prometheus_password
        self._auth = (
            aiohttp.BasicAuth(settings.prometheus_username, password.get_secret_value())
            if settings.prometheus_username is not None and password is not None
            else None
        )
        # ``compress=False`` asks for identity encoding: gzipping a large matrix costs Prometheus
        # ~10 µs a point (7-10x the query itself, bench/bench_oneshot.py) to save bandwidth a
        # loopback or in-cluster link does not need.
        self._headers = {} if compress else {"Accept-Encoding": "identity"}
        self.timeout = settings.prometheus_timeout_seconds
        self.attempts = attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._session = session
        self._own_session = session is None
        self._where = redact_url(self.base_url)
        # ``max_in_flight``: requests awaiting their answer at once (not their parsing).  A
        # server given fewer queries at a time finishes the first ones sooner, so the caller
        # can parse one answer while the next is computed (the one-shot's pipeline).
        self._in_flight = asyncio.Semaphore(max_in_flight) if max_in_flight else None

    async def __aenter__(self) -> PrometheusClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), auth=self._auth
            )
            self._own_session = True
        return self._session

    def _range_form(self, expr: str, start: float, end: float, step: int) -> dict[str, str]:
        return {
            "query": expr,
            "start": f"{start:.3f}",
            "end": f"{end:.3f}",
            "step": str(step),
            "timeout": f"{self.timeout:g}s",
        }

    async def query_range(self, expr: str, start: float, end: float, step: int) -> list[Series]:
        form = self._range_form(expr, start, end, step)
        return await self._call("/api/v1/query_range", form, "matrix")

    async def query_range_arrays(
        self, expr: str, start: float, end: float, step: int, *, max_bytes: int | None = None
    ) -> list[SeriesArrays]:
        """:meth:`query_range` with each series' samples as numpy arrays.  ``max_bytes``: an
        answer longer than that (or one Prometheus refuses for loading too many samples) raises
        :class:`~engine.errors.AnswerTooLarge` as soon as it is known, not retried: read no
        further, ask for less."""
        form = self._range_form(expr, start, end, step)
        # the grid the answer's timestamps are on: Prometheus evaluates at start + k * step
        grid = (float(form["start"]), step)
        return await self._call("/api/v1/query_range", form, "matrix-arrays", grid, max_bytes)

    async def query_arrays(self, expr: str, at: float) -> list[SeriesArrays]:
        """An instant query whose answer is a matrix (a range selector: raw samples), each
        series' samples as numpy arrays."""
        form = {"query": expr, "time": f"{at:.3f}", "timeout": f"{self.timeout:g}s"}
        return await self._call("/api/v1/query", form, "matrix-arrays")

    async def series(self, matchers: list[str], start: float, end: float) -> list[Series]:
        """Label sets of the series matching any of ``matchers`` in ``[start, end]``.

        ``/api/v1/series`` answers from the index: no sample is read (the one-shot uses it for
        pod owners, which only need labels)."""
        form = [("match[]", m) for m in matchers]
        form += [("start", f"{start:.3f}"), ("end", f"{end:.3f}")]
        return await self._call("/api/v1/series", form, "series")

    async def build_version(self) -> str | None:
        """The server's version from ``/api/v1/status/buildinfo``, or None when it does not say
        (a Prometheus-compatible store without that endpoint, an unreachable server: the queries
        that follow report those).  One attempt, no retries: callers only pick a query shape
        by it, and every shape is correct PromQL."""
        try:
            async with self._client().get(
                self.base_url + "/api/v1/status/buildinfo", headers=self._headers
            ) as resp:
                if resp.status != 200:
                    return None
                doc: Any = orjson.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return None
        data = doc.get("data") if isinstance(doc, dict) else None
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) else None

    async def query(self, expr: str, at: float) -> list[Series]:
        form = {"query": expr, "time": f"{at:.3f}", "timeout": f"{self.timeout:g}s"}
        return await self._call("/api/v1/query", form, "vector")

    async def _call(
        self,
        path: str,
        form: dict[str, str] | list[tuple[str, str]],
        expect: str,
        grid: tuple[float, int] | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential_jitter(initial=self.backoff_initial, max=self.backoff_max),
            retry=retry_if_exception_type(_Transient),
            reraise=False,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(path, form, expect, grid, max_bytes)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            PROMETHEUS_QUERIES.labels(outcome="unavailable").inc()
            raise DependencyUnavailable(
                f"Prometheus at {self._where} unavailable after {self.attempts} attempts: {cause}"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        path: str,
        form: dict[str, str] | list[tuple[str, str]],
        expect: str,
        grid: tuple[float, int] | None = None,
        max_bytes: int | None = None,
    ) -> Any:
        slot = self._in_flight or contextlib.nullcontext()
        try:
            async with (
                slot,
                self._client().post(self.base_url + path, data=form, headers=self._headers) as resp,
            ):
                status = resp.status
                if max_bytes is None or status >= 400:
                    body = await resp.read()
                else:
                    body = await self._read_capped(resp, max_bytes)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            PROMETHEUS_QUERIES.labels(outcome="retry").inc()
            raise _Transient(f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if self._in_flight is not None:
            # let a request waiting for this slot go out before this body is parsed (a small
            # body's parse holds the loop): the server computes it meanwhile instead of idling
            await asyncio.sleep(0)
        if status >= 500 or status == 429:
            PROMETHEUS_QUERIES.labels(outcome="retry").inc()
            raise _Transient(f"HTTP {status}")
        if status in (401, 403):
            PROMETHEUS_QUERIES.labels(outcome="error").inc()
            raise AuthenticationFailed(
                f"Prometheus at {self._where} refused access (HTTP {status})"
            )
        if len(body) > PARSE_IN_THREAD_BYTES:
            return await asyncio.to_thread(self._parse, body, status, expect, grid, max_bytes)
        return self._parse(body, status, expect, grid, max_bytes)

    def _parse(
        self,
        body: bytes,
        status: int,
        expect: str,
        grid: tuple[float, int] | None,
        max_bytes: int | None,
    ) -> Any:
        """An answer's body into its result, or the error it says (retried or not)."""
        if expect == "matrix-arrays" and status < 400:
            try:
                result: Any = parse_matrix_body(body, orjson.loads, grid)
            except ValueError:
                PROMETHEUS_QUERIES.labels(outcome="retry").inc()
                raise _Transient(f"HTTP {status} with a body that is not JSON") from None
            except MalformedResponse as exc:
                PROMETHEUS_QUERIES.labels(outcome="retry").inc()
                raise _Transient(f"malformed response: {exc}") from None
            PROMETHEUS_QUERIES.labels(outcome="ok").inc()
            return result
        try:
            doc: Any = orjson.loads(body)
        except ValueError:
            PROMETHEUS_QUERIES.labels(outcome="retry").inc()
            raise _Transient(f"HTTP {status} with a body that is not JSON") from None
        if status >= 400:
            err = doc.get("error", "") if isinstance(doc, dict) else ""
            if max_bytes is not None and "too many samples" in str(err):
                # Prometheus' own bound (query.max-samples) is a smaller one than the caller's
                PROMETHEUS_QUERIES.labels(outcome="too-large").inc()
                raise AnswerTooLarge(f"Prometheus refused the answer: {str(err)[:300]}")
            PROMETHEUS_QUERIES.labels(outcome="error").inc()
            raise BadQuery(f"Prometheus rejected query (HTTP {status}): {str(err)[:300]}")
        try:
            if expect == "series":
                result = parse_series(doc)
            elif expect == "matrix-arrays":
                result = parse_matrix(doc)
            else:
                result = parse_result(doc, expect)
        except MalformedResponse as exc:
            PROMETHEUS_QUERIES.labels(outcome="retry").inc()
            raise _Transient(f"malformed response: {exc}") from None
        PROMETHEUS_QUERIES.labels(outcome="ok").inc()
        return result

    async def _read_capped(self, resp: aiohttp.ClientResponse, max_bytes: int) -> bytes:
        """The body, or :class:`AnswerTooLarge` once more than ``max_bytes`` of it arrived (or
        its declared length says so): what was read is dropped with the connection."""
        declared = resp.content_length
        if declared is not None and declared > max_bytes:
            PROMETHEUS_QUERIES.labels(outcome="too-large").inc()
            raise AnswerTooLarge(f"answer of {declared:,} bytes over the bound of {max_bytes:,}")
        pieces: list[bytes] = []
        size = 0
        async for piece in resp.content.iter_chunked(READ_PIECE):
            size += len(piece)
            if size > max_bytes:
                PROMETHEUS_QUERIES.labels(outcome="too-large").inc()
                raise AnswerTooLarge(f"answer over the bound of {max_bytes:,} bytes")
            pieces.append(piece)
        return b"".join(pieces)


async def spec_series(
    client: PrometheusClient, at: float, matchers: str = "", *, together: bool = False
) -> dict[str, list[Series]]:
    """The kube-state-metrics series of every spec metric at ``at``, by metric, each with only
    the labels a spec reads (:func:`spec_queries`; for
    :func:`~engine.core.collect.build_specs_by_name`): one answer at a time (the worker's
    leader: the least memory), or ``together`` (the one-shot: the round trips overlap, as
    many in flight as the client allows)."""
    queries = spec_queries(matchers)
    if together:
        found = await asyncio.gather(*(client.query(expr, at) for _, expr in queries))
        return {name: series for (name, _), series in zip(queries, found, strict=True)}
    return {name: await client.query(expr, at) for name, expr in queries}


class Collector:
    """Chunks into metrics batches and instants into workload specs (no state of its own)."""

    def __init__(
        self,
        client: PrometheusClient,
        settings: Settings | None = None,
        *,
        step: int | None = None,
        rate_window: int | None = None,
    ) -> None:
        self.client = client
        if step is None:
            if settings is None:
                raise TypeError("Collector needs settings or step")
            step = settings.prometheus_step_seconds
        self.step = step
        # At least two scrapes of a 30 s cAdvisor interval fit in the window.
        self.rate_window = rate_window or max(2 * step, 60)
        self.samples_read = 0

    async def _owners(self, start: float, end: float, matchers: str = "") -> Owners:
        """The owners of the pods seen in ``(start, end]`` (``matchers``: one shard's), one
        answer at a time, each with only the labels an owner needs (:func:`owner_expr`)."""
        window = int(end - start) + LOOKBACK_SECONDS
        found = [
            await self.client.query(owner_expr(m, window, matchers), end) for m in OWNER_METRICS
        ]
        return Owners.build(*found)

    def _count(self, read: int) -> None:
        self.samples_read += read
        PROMETHEUS_SAMPLES_READ.inc(read)

    async def _query_chunk(
        self, start: float, end: float
    ) -> tuple[list[Series], list[Series], Owners] | None:
        """The cpu and memory series of ``(start, end]`` and the pods' owners (None: the chunk
        holds no evaluation time of the step), each sample a tuple: the backtest's batches."""
        first = eval_start(start, end, self.step)
        if first is None:
            return None
        cpu, memory, owners = await asyncio.gather(
            self.client.query_range(cpu_expr(self.rate_window), first, end, self.step),
            self.client.query_range(memory_expr(self.step), first, end, self.step),
            self._owners(start, end),
        )
        self._count(sum(len(s.values) for s in (*cpu, *memory)))
        return cpu, memory, owners

    async def _query_chunk_arrays(
        self, start: float, end: float, matchers: str = "", max_points: int | None = None
    ) -> tuple[list[SeriesArrays], list[SeriesArrays], Owners] | None:
        """:meth:`_query_chunk` with each series' samples as numpy arrays (~16 bytes a point
        instead of ~110 as a tuple of floats; an answer parsed the tuple way peaked at ~600
        bytes a point, bench/bench_collector_memory.py) and the two range queries one after the
        other, so one answer's body is held at a time: the collector's records.  ``matchers``:
        one shard of the cluster (:func:`~engine.core.collect.plan_queries`), its owners too.
        ``max_points``: each answer is read up to :func:`~engine.core.collect.answer_bytes_cap`
        of it (:class:`AnswerTooLarge` beyond)."""
        first = eval_start(start, end, self.step)
        if first is None:
            return None
        cap = None if max_points is None else answer_bytes_cap(max_points)
        cpu_query = cpu_expr(self.rate_window, matchers)
        cpu, owners = await asyncio.gather(
            self.client.query_range_arrays(cpu_query, first, end, self.step, max_bytes=cap),
            self._owners(start, end, matchers),
        )
        memory = await self.client.query_range_arrays(
            memory_expr(self.step, matchers), first, end, self.step, max_bytes=cap
        )
        self._count(sum(s.values.size for s in (*cpu, *memory)))
        return cpu, memory, owners

    async def collect_chunk(self, start: float, end: float) -> list[MetricsBatch]:
        """Every workload container's samples in ``(start, end]``; same chunk, same batches."""
        answer = await self._query_chunk(start, end)
        return [] if answer is None else build_batches(*answer, start, end)

    async def collect_records(
        self, start: float, end: float, matchers: str = "", max_points: int | None = None
    ) -> list[MetricsChunk]:
        """Every workload's samples in ``(start, end]`` as one columnar record each (what the
        collector sends on ``kubefinops.metrics``); same chunk, same records.  ``matchers``:
        only the series they select (a shard of namespaces); ``max_points``: the point budget
        an answer was planned within (:class:`AnswerTooLarge` when one is well over it)."""
        answer = await self._query_chunk_arrays(start, end, matchers, max_points)
        return [] if answer is None else build_chunks(*answer, start, end, self.step)

    async def series_by_namespace(self, at: float) -> dict[str, int]:
        """How many series the range queries answer per namespace, counted at ``at`` (one
        number per namespace; pods that came and went earlier are not in it)."""
        found = await self.client.query(series_count_expr(), at)
        return {
            s.labels.get("namespace", ""): int(s.values[0][1])
            for s in found
            if s.values and s.labels.get("namespace")
        }

    async def collect_specs(self, at: float, matchers: str = "") -> list[WorkloadSpec]:
        """Every workload's spec at ``at`` (``matchers``: the namespaces of one shard), one
        metric's answer at a time with only the labels a spec needs (:func:`spec_queries`),
        each folded into the specs as soon as what it needs is in (:class:`SpecBuilder`)."""
        builder = SpecBuilder(at)
        for name, expr in spec_queries(matchers):
            series = await self.client.query(expr, at)
            # in a worker thread, like a large answer's parse: at 10,000 workloads in one
            # namespace a step is up to ~0.8 CPU-s and the last ~0.6 (the loop keeps serving)
            await asyncio.to_thread(builder.add, name, series)
        return await asyncio.to_thread(builder.finish)
