"""Kafka pre-flight: authenticate once before starting the worker.

Faust retries a refused SASL handshake forever; an operator wants a wrong password to end the
process at once with one line that says so (and never the password).  This check connects with
the same credentials, fetches metadata, and maps the outcome onto the error tree.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, TopicAlreadyExistsError

from engine.app import RETENTION, kafka_ssl_context, topic_specs
from engine.errors import AuthenticationFailed, ConfigError, DependencyUnavailable
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
    context = kafka_ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def _redact(text: str, settings: Settings) -> str:
    if settings.kafka_password is not None:
        text = text.replace(settings.kafka_password.get_secret_value(), "****")
    return text


async def preflight(settings: Settings, timeout: float = 25.0) -> None:
    """Connect to each bootstrap server with the worker's credentials until one accepts.

    A raw connection (not a client's bootstrap, which folds every failure into "unable to
    bootstrap") tells a refused SASL handshake apart from an unreachable broker.
    """
    where = settings.kafka_bootstrap_servers
    kwargs = {k: v for k, v in client_kwargs(settings).items() if k != "bootstrap_servers"}
    last: Exception | None = None
    for server in where.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            conn = await asyncio.wait_for(
                create_conn(host, int(port), request_timeout_ms=int(timeout * 1000), **kwargs),
                timeout,
            )
        except ssl.SSLError as exc:  # a wrong CA, a hostname mismatch: will not heal by waiting
            verify = getattr(exc, "verify_message", None)
            reason = f"certificate verify failed: {verify}" if verify else exc.reason or "error"
            raise ConfigError(
                f"TLS handshake with Kafka at {server.strip()} failed: {reason} "
                "(check KUBEFINOPS_KAFKA_SSL_CAFILE and the broker's certificate)"
            ) from None
        except SaslAuthenticationFailed:
            raise AuthenticationFailed(
                f"Kafka at {where} refused user {settings.kafka_username!r} "
                f"({settings.kafka_sasl_mechanism.value}): authentication failed"
            ) from None
        except (TimeoutError, OSError, KafkaError) as exc:
            last = exc
            continue
        conn.close()
        return
    text = _redact(f"{type(last).__name__}: {last}", settings) if last else "no servers"
    raise DependencyUnavailable(f"Kafka at {where} unreachable: {text}")


async def partitions(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, list[int]]:
    """Partition numbers of each existing topic among ``names`` (the pre-flight's check and
    ``kubefinops topics``)."""
    out: dict[str, list[int]] = {}
    for meta in await admin.describe_topics(names) if names else []:
        if meta.get("error_code", 0) == 0:
            out[meta["topic"]] = sorted(p["partition"] for p in meta.get("partitions", []))
    return out


def partition_mismatches(settings: Settings, found: dict[str, int]) -> list[str]:
    """What differs between the broker's partition counts (``found``: topic -> count, the
    existing topics) and :func:`engine.app.topic_specs`, one phrase per topic."""
    out = []
    for spec in topic_specs(settings).values():
        name = settings.topic(spec.name)
        if name in found and found[name] != spec.partitions:
            out.append(f"{name} has {found[name]} (expected {spec.partitions})")
    return out


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every topic of :func:`engine.app.topic_specs` that does not exist yet, and refuse
    to start against existing ones with another partition count.

    Brokers run with ``auto.create.topics.enable=false`` in production: a produce-only topic
    such as the dead-letter one would otherwise never exist.  Returns the names created.

    The partition counts are part of the design, not a tuning knob the broker may override: the
    usage state, the specs and the last actions are co-partitioned with the metrics topic by
    ``topic_partitions`` (the collector's bundles are grouped by it, so a metrics topic with
    another count had every bundle member dead-lettered as ``partition-mismatch``), and the
    one-partition topics are what makes the Git writer single.  A mismatch is a
    :class:`ConfigError` naming each topic and the setting to change.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        ours = [settings.topic(s.name) for s in topic_specs(settings).values()]
        parts = await partitions(admin, [n for n in ours if n in existing])
        mismatched = partition_mismatches(settings, {t: len(p) for t, p in parts.items()})
        if mismatched:
            raise ConfigError(
                "topic partition counts differ from this worker's: "
                + "; ".join(mismatched)
                + f". KUBEFINOPS_TOPIC_PARTITIONS is {settings.topic_partitions}: set it to the "
                "metrics topic's count, or recreate the topics (the tables are partitioned by it)"
            )
        wanted = []
        for spec in topic_specs(settings).values():
            name = settings.topic(spec.name)
            if name in existing:
                continue
            config = (
                {"cleanup.policy": "compact"}
                if spec.compacted
                else {
                    "cleanup.policy": "delete",
                    "retention.ms": str(int(RETENTION.total_seconds() * 1000)),
                }
            )
            wanted.append(NewTopic(name, spec.partitions, settings.topic_replication, None, config))
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a peer worker created them meanwhile
                pass
        return [t.name for t in wanted]
    except KafkaError as exc:
        raise DependencyUnavailable(
            f"cannot create topics: {type(exc).__name__}: {_redact(str(exc), settings)}"
        ) from None
    finally:
        await admin.close()
