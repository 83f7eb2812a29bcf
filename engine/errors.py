"""The exception tree: retryable (try again later) versus permanent (park it, say why).

Messages never carry secrets; adapters redact before raising.
"""

from __future__ import annotations


class KubeFinOpsError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(KubeFinOpsError):
    """A setting is missing or malformed. Fatal at start; the message names the setting."""


class PermanentError(KubeFinOpsError):
    """Retrying will not help: bad input, invalid policy, a conflict that needs a human."""


class InvalidRecord(PermanentError):
    """A record on a topic does not match the wire schema; it goes to the dead-letter topic."""


class InvalidPolicy(PermanentError):
    """A policy document was rejected; ``field`` and ``reason`` say why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RetryableError(KubeFinOpsError):
    """A dependency is slow, down or answered garbage; back off and try again."""


class DependencyUnavailable(RetryableError):
    """Prometheus, MongoDB, S3, Git or Kafka could not be reached or answered 5xx."""


class AnswerTooLarge(PermanentError):
    """An answer is over the size its caller bounded it to (the collector's point budget):
    asking the same again gives the same answer, asking for less (a shorter range) may not."""


class AuthenticationFailed(PermanentError):
    """Credentials were refused. Not retried: a wrong password does not heal itself."""
