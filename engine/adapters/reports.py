"""Cycle reports to S3/MinIO, with a durable local outbox so an S3 outage delays, never loses.

Plain S3 (endpoint URL + path-style addressing), so MinIO in production and any S3 in tests work.
Each report is four objects (``reports/YYYY/MM/DD/<cycle>/report.json|.md|.html|audit.json``)
with content types and metadata (cycle id, commit sha).  Writes retry with exponential backoff;
when S3 stays down the rendered objects go to ``<data_dir>/report-outbox/`` (one JSON file per
object, written atomically) and :meth:`ReportWriter.flush` delivers them later, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from engine.core.cycles import IncompleteCycle, join_cycle_log
from engine.core.decision_log import DecisionLog
from engine.core.model import CycleSummary
from engine.core.report import (
    CycleReport,
    ReportObject,
    StreamedObject,
    report_objects,
    report_prefix,
    safe_cycle,
)
from engine.core.verification import Verification
from engine.errors import AuthenticationFailed, DependencyUnavailable, PermanentError
from engine.metrics import REPORTS_PENDING, REPORTS_WRITTEN
from engine.settings import Settings

log = logging.getLogger(__name__)

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


@dataclass(frozen=True)
class Pending:
    """A report that could not be delivered yet (what one outbox file holds)."""

    prefix: str
    metadata: dict[str, str]
    objects: list[ReportObject | StreamedObject]

    def to_json(self) -> str:
        """The outbox file's text (a streamed object is rendered whole for it)."""
        wholes = (o if isinstance(o, ReportObject) else o.whole() for o in self.objects)
        return json.dumps(
            {
                "prefix": self.prefix,
                "metadata": self.metadata,
                "objects": [
                    {"key": o.key, "content_type": o.content_type, "body": o.body.decode("utf-8")}
                    for o in wholes
                ],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Pending:
        raw = json.loads(text)
        objects: list[ReportObject | StreamedObject] = [
            ReportObject(o["key"], o["body"].encode("utf-8"), o["content_type"])
            for o in raw["objects"]
        ]
        return cls(raw["prefix"], dict(raw["metadata"]), objects)


class ReportWriter:
    def __init__(
        self,
        settings: Settings,
        *,
        attempts: int = 4,
        backoff_seconds: float = 0.2,
        timeout_seconds: float = 5.0,
        park_on_failure: bool = True,
        multipart_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        # park_on_failure=False: raise DependencyUnavailable instead of parking in the local
        # outbox. The reporter agent uses that mode: its input topic is the durable queue (a
        # record is not acknowledged until its report is written), which survives the pod,
        # while the outbox directory only survives as long as the pod's volume.
        self.park_on_failure = park_on_failure
        self.settings = settings
        self.bucket = settings.s3_bucket
        self.outbox = Path(settings.data_dir) / "report-outbox"
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        # Objects larger than this go up as a multipart upload in parts of this size (S3's
        # smallest part but the last is 5 MiB; 8 MiB is boto3's own multipart chunk size).
        self.multipart_bytes = multipart_bytes
        access = settings.s3_access_key
        secret = settings.s3_secret_key
        self._session = aioboto3.Session(
            aws_access_key_id=access.get_secret_value() if access else None,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            region_name=settings.s3_region,
        )
        self._config = AioConfig(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},  # tenacity does the retrying
            connect_timeout=timeout_seconds,
            read_timeout=timeout_seconds,
        )
        self._bucket_ready = False
        self._lock = asyncio.Lock()
        self._s3: Any = None
        self._s3_stack: contextlib.AsyncExitStack | None = None
        REPORTS_PENDING.set(_reports(self.pending()))

    # --- public ------------------------------------------------------------------------------
    async def write(self, report: CycleReport) -> list[str]:
        """Deliver a cycle report; on a persistent failure park what is left in the outbox.

        The four objects are rendered, stored and let go one at a time, so at most one of them
        is held (with 10,000 applied decisions they are ~80 MiB together).  Each object is
        retried on its own; when S3 stays down, the object that failed and the ones not stored
        yet are parked, one outbox file each, and :meth:`flush` stores them later in order.

        Returns the object keys (where the report is, or will be once S3 is back).
        """
        ex = report.execution
        metadata = {
            "cycle-id": safe_cycle(report.cycle_id),
            "commit-sha": (ex.commit_sha if ex and ex.commit_sha else "none"),
        }
        keys: list[str] = []
        parking = False
        prefix = report_prefix(report)
        group = _outbox_name(prefix)
        async with self._lock:
            if self.pending():
                await self._flush_locked()
            for obj in report_objects(report):
                # one object per Pending (parked, its file is named after the report and n)
                pending = Pending(prefix=obj.key, metadata=metadata, objects=[obj])
                keys.append(obj.key)
                del obj  # the loop variable would hold it while the next one is rendered
                if not parking:
                    try:
                        await self._deliver(pending)
                        REPORTS_WRITTEN.labels(outcome="written").inc()
                    except (DependencyUnavailable, AuthenticationFailed) as exc:
                        if not self.park_on_failure:
                            raise
                        log.warning("report %s parked in the outbox: %s", prefix, exc)
                        parking = True
                if parking:
                    self._park(pending, group=group, index=len(keys) - 1)
                    REPORTS_WRITTEN.labels(outcome="queued").inc()
                del pending
        return keys

    async def write_cycle(
        self,
        summary: CycleSummary,
        generated_at: float | None = None,
        verifications: Sequence[Verification] = (),
    ) -> list[str]:
        """Report a cycle as the executor summarised it (``kubefinops.cycles``), with the
        verification outcomes of earlier changes recorded since the previous cycle.

        Dated by the execution time, so a re-delivered summary overwrites the same keys.  A
        cycle in several parts: each part is stored under ``<prefix>/parts/`` as it arrives
        (the parts are the durable buffer: a restart loses none), and the report is written
        once every part is there — the keys returned until then are the part's.
        """
        when = summary.execution.executed_at or generated_at or 0.0
        if summary.parts == 1:
            return await self.write(CycleReport.from_summary(summary, when, verifications))
        whole = await self._collect_part(summary, when)
        if isinstance(whole, list):
            return whole
        summary, decisions = whole
        report = CycleReport.from_summary(summary, when, verifications, decisions=decisions)
        return await self.write(report)

    async def _collect_part(
        self, part: CycleSummary, when: float
    ) -> tuple[CycleSummary, DecisionLog] | list[str]:
        """Store one part; once all parts are stored the joined cycle (without its decisions)
        and its decisions as a log — kept as JSON, ~28 MiB for 10,000 decisions where the
        parsed cycle was 118 MiB (engine/core/decision_log.py) — else the part's key."""
        prefix = report_prefix(CycleReport(cycle_id=part.cycle, generated_at=when, decisions=[]))
        parts_prefix = f"{prefix}/parts/"
        suffix = f"-of-{part.parts:05d}.json"
        key = f"{parts_prefix}{part.part:05d}{suffix}"
        pending = Pending(
            prefix=key,
            metadata={"cycle-id": safe_cycle(part.cycle), "part": f"{part.part}/{part.parts}"},
            objects=[ReportObject(key, part.model_dump_json().encode(), "application/json")],
        )
        async with self._lock:
            try:
                await self._deliver(pending)
            except (DependencyUnavailable, AuthenticationFailed) as exc:
                if not self.park_on_failure:
                    raise
                log.warning("report part %s parked in the outbox: %s", key, exc)
                self._park(pending)
                return [key]
            keys = await self._list(parts_prefix, suffix)
            if len(keys) < part.parts:  # read the parts once, when the last one is stored
                log.info("cycle %s: %d of %d parts stored", part.cycle, len(keys), part.parts)
                return [key]
            bodies = await self._read(keys)

        def parsed() -> Iterator[CycleSummary]:  # one part parsed at a time, its body let go
            while bodies:
                yield CycleSummary.model_validate_json(bodies.pop(0))

        try:
            return join_cycle_log(parsed())
        except (ValueError, IncompleteCycle) as exc:
            raise PermanentError(f"cycle {part.cycle}: unreadable parts: {exc}") from None

    async def _list(self, prefix: str, suffix: str) -> list[str]:
        """Keys under ``prefix`` that end with ``suffix``, sorted."""
        async with self._s3_errors():
            s3 = await self._client()
            keys: list[str] = []
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                found = [o["Key"] for o in page.get("Contents", [])]
                keys += [k for k in found if k.endswith(suffix)]
        return sorted(keys)

    async def _read(self, keys: Sequence[str]) -> list[bytes]:
        """The bodies of ``keys``, in order."""
        bodies = []
        async with self._s3_errors():
            s3 = await self._client()
            for key in keys:
                obj = await s3.get_object(Bucket=self.bucket, Key=key)
                async with obj["Body"] as stream:
                    bodies.append(await stream.read())
        return bodies

    @contextlib.asynccontextmanager
    async def _s3_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except ClientError as exc:
            raise _translate(exc) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            await self.close()
            raise DependencyUnavailable(f"S3 unreachable: {type(exc).__name__}: {exc}") from None

    async def _client(self) -> Any:
        """One S3 client for the writer's life: creating one loads the CA bundle into a new SSL
        context (~50 ms of CPU on the event loop, measured as a third of a worker's time while
        reports were written), so it is opened once and re-opened only after a network error."""
        if self._s3 is None:
            stack = contextlib.AsyncExitStack()
            self._s3 = await stack.enter_async_context(
                self._session.client(
                    "s3", endpoint_url=self.settings.s3_endpoint_url, config=self._config
                )
            )
            self._s3_stack = stack
        return self._s3

    async def close(self) -> None:
        """Close the S3 client (the worker calls this when it stops)."""
        stack, self._s3_stack, self._s3 = self._s3_stack, None, None
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()

    async def flush(self) -> int:
        """Deliver parked objects, oldest first; stop at the first failure.  Returns how many
        reports are now wholly delivered."""
        async with self._lock:
            return await self._flush_locked()

    def pending(self) -> list[Path]:
        """The outbox files, oldest first (one per report object, or per report for files
        parked before reports were written one object at a time)."""
        if not self.outbox.is_dir():
            return []
        return sorted(self.outbox.glob("*.json"), key=lambda p: (p.stat().st_mtime_ns, p.name))

    # --- internals ---------------------------------------------------------------------------
    async def _flush_locked(self) -> int:
        touched: set[str] = set()
        for path in self.pending():
            try:
                pending = Pending.from_json(path.read_text(encoding="utf-8"))
            except (ValueError, KeyError) as exc:
                log.error("unreadable outbox file %s kept aside: %s", path.name, exc)
                path.rename(path.with_suffix(".corrupt"))
                continue
            try:
                await self._deliver(pending)
            except (DependencyUnavailable, AuthenticationFailed) as exc:
                log.info("outbox flush stopped, S3 still failing: %s", exc)
                break
            path.unlink()
            touched.add(_report_of(path))
            REPORTS_WRITTEN.labels(outcome="flushed").inc(len(pending.objects))
        left = self.pending()
        REPORTS_PENDING.set(_reports(left))
        return len(touched - {_report_of(p) for p in left})

    def _park(self, pending: Pending, *, group: str | None = None, index: int = 0) -> None:
        """Park ``pending`` in the outbox, atomically and durably.

        A report's objects are ``<time_ns>-<hash of the report's prefix>-<n>.json``: the time
        keeps them in the order they were rendered when their mtimes tie (a coarse clock), the
        hash groups them per report (:func:`_report_of`), and parking the same object again
        replaces its file.  Other parked writes (a cycle's part) are ``<hash of prefix>.json``.
        """
        self.outbox.mkdir(parents=True, exist_ok=True)
        if group is None:
            name = _outbox_name(pending.prefix)
        else:
            for old in self.outbox.glob(f"*-{group}-{index}.json"):
                old.unlink()
            name = f"{time.time_ns():020d}-{group}-{index}"
        target = self.outbox / f"{name}.json"
        tmp = self.outbox / f".{name}.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            f.write(pending.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(self.outbox, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        REPORTS_PENDING.set(_reports(self.pending()))

    async def _deliver(self, pending: Pending) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff_seconds, max=5),
            retry=retry_if_exception_type(DependencyUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._put_all(pending)

    async def _put_all(self, pending: Pending) -> None:
        try:
            s3 = await self._client()
            await self._ensure_bucket(s3)
            for obj in pending.objects:
                if isinstance(obj, StreamedObject):
                    await self._put_streamed(s3, obj, pending.metadata)
                    continue
                if len(obj.body) > self.multipart_bytes:
                    await self._put_in_parts(s3, obj, pending.metadata)
                    continue
                await s3.put_object(
                    Bucket=self.bucket,
                    Key=obj.key,
                    Body=obj.body,
                    ContentType=obj.content_type,
                    Metadata=pending.metadata,
                )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                self._bucket_ready = False  # S3 lost its state (e.g. restarted): create again
            raise _translate(exc) from None
        except (TimeoutError, BotoCoreError, OSError) as exc:
            await self.close()
            raise DependencyUnavailable(f"S3 unreachable: {type(exc).__name__}: {exc}") from None

    async def _put_in_parts(self, s3: Any, obj: ReportObject, metadata: dict[str, str]) -> None:
        """A large object as a multipart upload, one part at a time.

        ``put_object`` copies the whole body once more on its way out (aiohttp sends it through
        ``BytesIO.getbuffer()``): +42 MiB for the audit snapshot of a 10,000-decision cycle, at
        the worker's peak.  In parts, at most one part (``multipart_bytes``) is copied at a
        time.
        """
        view = memoryview(obj.body)
        step = self.multipart_bytes
        chunks = (bytes(view[i : i + step]) for i in range(0, len(view), step))
        await self._upload(s3, obj.key, obj.content_type, metadata, chunks)

    async def _put_streamed(self, s3: Any, obj: StreamedObject, metadata: dict[str, str]) -> None:
        """An object made while it is stored: one ``put_object`` when it is one chunk, else a
        multipart upload of its chunks, each let go once sent — the audit snapshot of 10,000
        applied decisions (~44 MiB) is never held whole (docs/benchmarks.md)."""
        chunks = obj.chunks(self.multipart_bytes)
        first = next(chunks, b"")
        second = next(chunks, None)
        if second is None:
            await s3.put_object(
                Bucket=self.bucket,
                Key=obj.key,
                Body=first,
                ContentType=obj.content_type,
                Metadata=metadata,
            )
            return

        ahead = [first, second]
        del first, second

        def all_chunks() -> Iterator[bytes]:
            while ahead:  # popped, so that neither is held once sent
                yield ahead.pop(0)
            yield from chunks

        await self._upload(s3, obj.key, obj.content_type, metadata, all_chunks())

    async def _upload(
        self,
        s3: Any,
        key: str,
        content_type: str,
        metadata: dict[str, str],
        chunks: Iterator[bytes],
    ) -> None:
        """A multipart upload of ``chunks`` (each ≥ 5 MiB but the last, as S3 wants), one part
        at a time.  The object appears only when the upload completes, whole, as with
        ``put_object`` (a failed upload is aborted, and the retry starts a new one)."""
        upload = await s3.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type, Metadata=metadata
        )
        upload_id = upload["UploadId"]
        try:
            done = []
            for number, chunk in enumerate(chunks, 1):
                part = await s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
                )
                done.append({"ETag": part["ETag"], "PartNumber": number})
                del chunk
            await s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": done},
            )
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: the bucket's lifecycle rule, if
                await s3.abort_multipart_upload(  # any, removes what an abort could not
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            raise

    async def _ensure_bucket(self, s3: Any) -> None:
        if self._bucket_ready:
            return
        try:
            await s3.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in {"404", "NoSuchBucket", "NotFound"}:
                raise
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.settings.s3_region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {
                    "LocationConstraint": self.settings.s3_region
                }
            try:
                await s3.create_bucket(**kwargs)
            except ClientError as create_exc:
                code = str(create_exc.response.get("Error", {}).get("Code", ""))
                if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise
        self._bucket_ready = True


def _outbox_name(prefix: str) -> str:
    return hashlib.sha256(prefix.encode()).hexdigest()[:16]


def _report_of(path: Path) -> str:
    """The report an outbox file belongs to: the hash in its name (see ``_park``)."""
    parts = path.stem.split("-")
    return parts[1] if len(parts) == 3 else path.stem


def _reports(paths: Sequence[Path]) -> int:
    return len({_report_of(p) for p in paths})


def _translate(exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in _AUTH_CODES or status in (401, 403):
        return AuthenticationFailed(f"S3 refused the credentials ({code or status})")
    return DependencyUnavailable(f"S3 error {code or status}: {error.get('Message', '')}")
