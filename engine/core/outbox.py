"""History outbox records in batches (pure): many :class:`HistoryRecord` in one Kafka message.

The gate archives a recommendation and a decision per workload; one outbox message each made a
1,000-workload burst 2,000 produced and 2,000 consumed records on the worker's one event loop.
:func:`pack_history` joins already-serialized records into messages of at most ``max_bytes``
(one record bigger than that still goes, alone); :func:`unpack_history` is the inverse and
tells the single-record form (``HistoryRecord``, still what the ledger and verifier send) from
the batch form.  The writer validates each member on its own, so one bad member is
dead-lettered alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from engine.core.model import HistoryKind, HistoryRecord, Wire, parse
from engine.errors import InvalidRecord

MAX_BATCH_BYTES = 256 * 1024  # well under Kafka's 1 MiB default message limit
_HEAD = b'{"type":"history-batch","records":['
_TAIL = b"]}"


class HistoryBatch(Wire):
    """On ``kubefinops.history``: several history records (each a ``HistoryRecord`` document)."""

    type: Literal["history-batch"] = "history-batch"
    records: list[dict[str, Any]] = Field(max_length=1_000_000)


def pack_history(records: Sequence[HistoryRecord], max_bytes: int | None = None) -> list[bytes]:
    """``records`` as batch messages of at most ``max_bytes`` (default ``MAX_BATCH_BYTES``)
    each, in order."""
    return pack_raw([record.model_dump_json().encode() for record in records], max_bytes)


def history_raw(kind: HistoryKind, item: BaseModel) -> bytes:
    """``HistoryRecord(kind=kind, record=item.model_dump(mode="json")).model_dump_json()``,
    byte for byte, without building the intermediate dict and re-serializing it untyped (the
    gate archives two records per workload).  ``item`` must carry a non-empty string ``id``
    (what ``HistoryRecord`` checks); anything else takes the validating path and its error."""
    ident = getattr(item, "id", None)
    if not isinstance(ident, str) or not ident:
        return (
            HistoryRecord(kind=kind, record=item.model_dump(mode="json")).model_dump_json().encode()
        )
    return history_raw_of(kind, item.model_dump_json().encode())


def history_raw_of(kind: HistoryKind, item_json: bytes) -> bytes:
    """:func:`history_raw` of an item already serialized (its ``model_dump_json()``, with a
    non-empty string ``id``)."""
    return b'{"kind":"' + kind.encode() + b'","record":' + item_json + b"}"


def pack_raw(raws: Sequence[bytes], max_bytes: int | None = None) -> list[bytes]:
    """Serialized history records (:func:`history_raw`) as batch messages of at most
    ``max_bytes`` (default ``MAX_BATCH_BYTES``) each, in order."""
    max_bytes = MAX_BATCH_BYTES if max_bytes is None else max_bytes
    out: list[bytes] = []
    part: list[bytes] = []
    size = len(_HEAD) + len(_TAIL)
    for raw in raws:
        if part and size + len(raw) + 1 > max_bytes:
            out.append(_HEAD + b",".join(part) + _TAIL)
            part, size = [], len(_HEAD) + len(_TAIL)
        part.append(raw)
        size += len(raw) + 1
    if part:
        out.append(_HEAD + b",".join(part) + _TAIL)
    return out


def is_batch(raw: bytes | str | None) -> bool:
    """Whether an outbox value is the batch form (its type leads the document)."""
    if raw is None:
        return False
    head = raw[:64].encode() if isinstance(raw, str) else raw[:64]
    return b'"history-batch"' in head.replace(b" ", b"")


def members(raw: bytes | str) -> list[dict[str, Any]]:
    """The member documents of a batch message (each still to be validated: :func:`member`)."""
    return parse(HistoryBatch, raw).records


def member(doc: dict[str, Any]) -> HistoryRecord:
    """One member as a history record, or :class:`InvalidRecord` naming the field."""
    try:
        return HistoryRecord.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "value"
        raise InvalidRecord(f"HistoryRecord.{loc}: {first['msg']}") from None


def member_raw(member: dict[str, Any]) -> bytes:
    """A member as the bytes a dead letter carries."""
    return json.dumps(member, separators=(",", ":"), default=str).encode()
