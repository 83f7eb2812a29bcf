"""Logging with secrets redacted: every configured secret value is replaced by ``****`` in every
record, whatever logger emitted it (ours, Faust's, aiokafka's, GitPython's)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from pydantic import SecretStr

from engine.settings import Settings


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

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
        return True


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
    redactor = RedactSecrets(secret_values(settings))
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faust.transport", "mode"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return redactor
