"""The pre-flight's partition check (engine.adapters.kafka.partition_mismatches): the broker's
counts against the design's, per topic."""

from __future__ import annotations

from engine.adapters.kafka import partition_mismatches
from engine.app import topic_specs
from engine.settings import load_settings


def test_matching_and_absent_topics_are_not_mismatches() -> None:
    s = load_settings(kafka_username=None, topic_partitions=8)
    found = {s.topic(spec.name): spec.partitions for spec in topic_specs(s).values()}
    assert partition_mismatches(s, found) == []
    assert partition_mismatches(s, {}) == []  # not created yet: ensure_topics creates them
    assert partition_mismatches(s, {"someone-elses.metrics": 3}) == []


def test_each_differing_topic_is_named_with_both_counts() -> None:
    s = load_settings(kafka_username=None, topic_partitions=8, topic_prefix="kfo")
    found = {"kfo.metrics": 12, "kfo.decisions": 3, "kfo.executions": 8}
    assert partition_mismatches(s, found) == [
        "kfo.metrics has 12 (expected 8)",
        "kfo.decisions has 3 (expected 1)",  # the single Git writer's topic
    ]
