"""Logging with secrets redacted: every configured secret value is replaced by ``****`` in every
record, whatever logger emitted it (ours, Faust's, aiokafka's, GitPython's)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO
from urllib.parse import quote, quote_plus, unquote

from pydantic import SecretStr

from engine.core.bounds import one_line
from engine.metrics import PRODUCER_BUFFER_WAITS
from engine.settings import Settings


def written_forms(secret: str) -> set[str]:
    """``secret`` as it may appear in a text: as is, percent-encoded (a password inside a URI —
    the MongoDB URI's ``p%40ss`` — or one an HTTP client quoted into a URL) and decoded (the
    password a URI carries encoded, as a driver's error may quote it)."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(unquote(secret, errors="strict"))
    return forms


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets: list[str] = []
        self.learn(*secrets)

    def learn(self, *secrets: str) -> None:
        """Mask these too (a token read again from its mounted file after a rotation); the list
        is replaced whole, so a log line formatted meanwhile in another thread sees one or the
        other."""
        known = set(self.secrets)
        for secret in secrets:
            known |= written_forms(secret)
        self.secrets = sorted({s for s in known if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "****")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message or record.exc_info:
                record.msg, record.args = clean, ()
                if record.exc_info:
                    record.exc_text = self.redact(
                        logging.Formatter().formatException(record.exc_info)
                    )
                    record.exc_info = None
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
        return True


# The redactor of the running process (set by :func:`setup_logging`): texts that leave it by
# another way than a log line — a dead letter's reason, an execution's detail, the CLI's error —
# go through :func:`redact` too.
_ACTIVE = RedactSecrets([])


def redact(text: str) -> str:
    """``text`` with every secret of the running process's settings masked."""
    return _ACTIVE.redact(text)


def remember(secret: str) -> None:
    """Mask ``secret`` from now on (one the process read after start: a rotated token file)."""
    if secret and secret not in _ACTIVE.secrets:
        _ACTIVE.learn(secret)


def remember_secrets(settings: Settings) -> RedactSecrets:
    """Make :func:`redact` mask ``settings``' secrets (the logging setup does it too)."""
    global _ACTIVE
    _ACTIVE = RedactSecrets(secret_values(settings))
    return _ACTIVE


class OncePer(logging.Filter):
    """A filter that lets one line of its kind out every ``every`` seconds and counts the rest;
    subclasses say which records are of the kind and what the line says."""

    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self.clock = clock
        self.count = 0  # since the last line that went out
        self.since: float | None = None  # when that line went out

    def due(self) -> tuple[int, float | None, float] | None:
        """Count one; ``(count, when the last line went out, now)`` when this one may go out
        (the count then restarts), None while it is within ``every`` of the last line."""
        self.count += 1
        now = self.clock()
        if self.since is not None and now - self.since < self.every:
            return None
        out = (self.count, self.since, now)
        self.count, self.since = 0, now
        return out


class ProducerBackPressure(OncePer):
    """Faust's "producer buffer full size N" as a counter and one line a minute.

    Table writes are produced through Faust's producer buffer (100 messages); when a stream
    writes faster than the changelog is sent, the stream waits for it to drain, and Faust logs a
    WARNING each time: ~100 lines per run of a 10,000-workload worker, for back-pressure that
    loses nothing.  Each wait counts in ``kubefinops_producer_buffer_waits_total``; the first
    line in ``every`` seconds still goes out (still a WARNING: a worker that waits all the time
    is a worker short of CPU or broker), saying how many waits it stands for.
    """

    PREFIX = "producer buffer full"

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        PRODUCER_BUFFER_WAITS.inc()
        due = self.due()
        if due is None:
            return False
        waits, since, now = due
        if since is not None:
            window = f"{waits} times in the last {now - since:.0f}s"
        else:
            window = "for the first time"
        record.msg = (
            f"{message}: table writes waited for the changelog producer {window} "
            "(back-pressure, nothing lost; kubefinops_producer_buffer_waits_total counts them)"
        )
        record.args = ()
        return True


PRODUCER_LOGGER = "faust.transport.producer"
_BACK_PRESSURE = ProducerBackPressure()


class MalformedRequests(OncePer):
    """aiohttp's "Error handling request" for a request it could not even parse (a line or a
    header over its 8 KiB limit, bytes that are not HTTP): refused with a 400, and until now
    logged as an ERROR with a traceback each time — anyone who can reach the port could fill
    the log.  One WARNING line in ``every`` seconds says how many and the last reason; errors
    in the worker's own handlers still go through as they were."""

    @staticmethod
    def _malformed(record: logging.LogRecord) -> BaseException | None:
        exc = record.exc_info[1] if record.exc_info else None
        # aiohttp.http_exceptions.HttpProcessingError and kin, told by shape (this module is
        # imported by handlers that must not import aiohttp)
        if (
            exc is not None
            and type(exc).__module__.startswith("aiohttp.")
            and (getattr(exc, "code", None) == 400)
        ):
            return exc
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        exc = self._malformed(record)
        if exc is None:
            return True
        due = self.due()
        if due is None:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "refused malformed HTTP requests with 400: %d since the last line; last: %s"
        record.args = (due[0], one_line(f"{type(exc).__name__}: {exc}", 200))
        record.exc_info, record.exc_text = None, None
        return True


HTTP_SERVER_LOGGER = "aiohttp.server"
_MALFORMED = MalformedRequests()


def install_log_filters() -> None:
    """The back-pressure filter on Faust's producer logger and the malformed-request filter on
    aiohttp's server logger (idempotent; again after Faust's own logging setup)."""
    for name, one in ((PRODUCER_LOGGER, _BACK_PRESSURE), (HTTP_SERVER_LOGGER, _MALFORMED)):
        logger = logging.getLogger(name)
        if one not in logger.filters:
            logger.addFilter(one)


def secret_values(settings: Settings) -> list[str]:
    out: list[str] = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            raw = value.get_secret_value()
            out.append(raw)
            if "@" in raw and "://" in raw:  # a URI with credentials: hide the password too
                creds = raw.split("://", 1)[1].split("@", 1)[0]
                out.extend(creds.split(":", 1)[1:])
    return out


def setup_logging(settings: Settings, stream: TextIO | None = None) -> RedactSecrets:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    redactor = remember_secrets(settings)
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faust.transport", "mode"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    install_log_filters()
    return redactor
