"""Kafka pre-flight: authenticate once before starting the worker.

Faust retries a refused SASL handshake forever; an operator wants a wrong password to end the
process at once with one line that says so (and never the password).  This check connects with
the same credentials, fetches metadata, and maps the outcome onto the error tree.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from engine.errors import AuthenticationFailed, DependencyUnavailable
from engine.settings import SecurityProtocol, Settings


def client_kwargs(settings: Settings) -> dict[str, object]:
    protocol = settings.effective_security_protocol
    kwargs: dict[str, object] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": protocol.value,
    }
    if protocol in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL):
        assert settings.kafka_password is not None
        kwargs.update(
            sasl_mechanism=settings.kafka_sasl_mechanism.value,
            sasl_plain_username=settings.kafka_username,
            sasl_plain_password=settings.kafka_password.get_secret_value(),
        )
    return kwargs


def _redact(text: str, settings: Settings) -> str:
    if settings.kafka_password is not None:
        text = text.replace(settings.kafka_password.get_secret_value(), "****")
    return text


async def preflight(settings: Settings, timeout: float = 25.0) -> None:
    client = AIOKafkaClient(**client_kwargs(settings), request_timeout_ms=int(timeout * 1000))
    where = settings.kafka_bootstrap_servers
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
    except TimeoutError:
        raise DependencyUnavailable(
            f"Kafka at {where} did not answer within {timeout:.0f}s"
        ) from None
    except KafkaConnectionError as exc:
        text = _redact(str(exc), settings)
        if "auth" in text.lower() or "sasl" in text.lower():
            raise AuthenticationFailed(
                f"Kafka at {where} refused user {settings.kafka_username!r} "
                f"({settings.kafka_sasl_mechanism.value}): authentication failed"
            ) from None
        raise DependencyUnavailable(f"Kafka at {where} unreachable: {text}") from None
    except KafkaError as exc:
        text = _redact(str(exc), settings)
        if "auth" in type(exc).__name__.lower() or "authentication" in text.lower():
            raise AuthenticationFailed(
                f"Kafka at {where} refused user {settings.kafka_username!r} "
                f"({settings.kafka_sasl_mechanism.value}): authentication failed"
            ) from None
        raise DependencyUnavailable(f"Kafka at {where}: {type(exc).__name__}: {text}") from None
    finally:
        await client.close()
