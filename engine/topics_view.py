"""How ``kubefinops topics | tail | deadletters`` print: rich tables on stdout, or JSON lines.

JSON output is one object per line (``jq``-friendly, and ``deadletters --output json`` lines are
what ``deadletters --replay --input FILE`` reads back after an operator fixed them up).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

from engine.core.records import Group, Letter, reason_class
from engine.topics import Record, ReplayResult, TopicInfo, fmt_time


def _console(out: TextIO | None) -> Console:
    return Console(file=out, soft_wrap=False, width=160 if out is not None else None)


def _retention(info: TopicInfo) -> str:
    if "compact" in info.cleanup:
        return info.cleanup
    if info.retention_ms is None or info.retention_ms < 0:
        return f"{info.cleanup}, forever"
    hours = info.retention_ms / 3_600_000
    return f"{info.cleanup}, {hours / 24:g}d" if hours >= 24 else f"{info.cleanup}, {hours:g}h"


def topics_json(infos: Sequence[TopicInfo]) -> str:
    return "".join(
        json.dumps(
            {
                "topic": i.name,
                "partitions": i.partitions,
                "start_offsets": i.start_offsets,
                "end_offsets": i.end_offsets,
                "records": i.records,
                "cleanup_policy": i.cleanup,
                "retention_ms": i.retention_ms,
                "consumer": i.consumer or None,
                "lag": i.lag,
            }
        )
        + "\n"
        for i in infos
    )


def print_topics(infos: Sequence[TopicInfo], out: TextIO | None = None) -> None:
    table = Table("TOPIC", "PARTITIONS", "END OFFSETS", "RECORDS", "RETENTION", "CONSUMER", "LAG")
    for i in infos:
        table.add_row(
            i.name,
            str(i.partitions),
            f"{i.end_offsets:,}",
            f"{i.records:,}",
            _retention(i),
            i.consumer or "-",
            "-" if i.lag is None else f"{i.lag:,}",
        )
    _console(out).print(table)


def record_json(rec: Record) -> str:
    return json.dumps(rec.to_json(), separators=(",", ":")) + "\n"


def record_line(rec: Record) -> str:
    where = f"{rec.partition}/{rec.offset}"
    line = f"{where:>9}  {fmt_time(rec.timestamp)}  {rec.key or '-'}  {rec.decoded.summary}"
    if rec.decoded.error:
        line += f"\n{'':>9}  ! not valid: {rec.decoded.error}"
    return line + "\n"


def letter_json(item: Letter) -> dict[str, Any]:
    return {
        "partition": item.partition,
        "offset": item.offset,
        "letter": item.letter.model_dump(mode="json"),
    }


def dead_letters_json(letters: Sequence[Letter]) -> str:
    """One line per letter (all of them, not only the samples): the replay input format."""
    return "".join(
        json.dumps({**letter_json(i), "reason_class": reason_class(i.letter.reason)}) + "\n"
        for i in letters
    )


def print_dead_letters(
    groups: Sequence[Group], broken: Sequence[Record], out: TextIO | None = None
) -> None:
    console = _console(out)
    if not groups and not broken:
        console.print("no dead letters")
        return
    table = Table("COUNT", "REASON", "FROM TOPICS")
    for g in groups:
        topics = ", ".join(f"{t} ({n})" for t, n in sorted(g.topics.items()))
        table.add_row(str(g.count), g.reason, topics)
    console.print(table)
    for g in groups:
        console.print(f"[bold]{g.reason}[/bold]: {g.count} record(s), e.g.", highlight=False)
        for s in g.samples:
            value = " ".join(s.letter.value.split())
            console.print(
                f"  offset {s.offset}  {fmt_time(s.letter.rejected_at)}  key={s.letter.key}  "
                f"agent={s.letter.agent}\n    reason: {s.letter.reason}\n"
                f"    value:  {value[:200]}{'…' if len(value) > 200 else ''}",
                highlight=False,
                markup=False,
            )
    if broken:
        console.print(f"{len(broken)} record(s) on the dead-letter topic are not dead letters")


def print_replay(result: ReplayResult, out: TextIO | None = None) -> None:
    console = _console(out)
    console.print(
        f"replayed {len(result.replayed)} record(s); "
        f"{len(result.refused)} still invalid and left on the dead-letter topic",
        highlight=False,
    )
    for item in result.replayed:
        console.print(
            f"  offset {item.offset} -> {item.letter.topic} key={item.letter.key}",
            highlight=False,
            markup=False,
        )
    for item, why in result.refused:
        console.print(f"  offset {item.offset}: {why}", highlight=False, markup=False)
