"""Decoding topic records for operators: never a crash, always a reason (engine.core.records)."""

from __future__ import annotations

import json

from engine.core.collect import chunks_from_batches
from engine.core.model import DeadLetter, MetricsBatch
from engine.core.records import Letter, decode, group_dead_letters, replay_check

BATCH = MetricsBatch(
    namespace="shop",
    kind="Deployment",
    workload="checkout",
    container="app",
    start=0,
    end=60,
    samples={"cpu": [(30.0, 0.5), (60.0, 0.7)], "memory": [(60.0, 1e8)]},
)


def letter(reason: str, value: str, topic: str = "kubefinops.metrics") -> DeadLetter:
    return DeadLetter(
        topic=topic, key="shop/Deployment/checkout", reason=reason, value=value,
        rejected_at=1.0, agent="aggregator",
    )  # fmt: skip


def test_decode_known_unknown_and_tombstone() -> None:
    ok = decode("metrics", BATCH.model_dump_json().encode())
    assert ok.kind == "MetricsBatch" and ok.error is None
    assert ok.summary == "usage shop/Deployment/checkout/app (0, 60]: cpu 2, memory 1 samples"
    assert ok.value["samples"]["cpu"] == [[30.0, 0.5], [60.0, 0.7]]
    bad = decode("metrics", b"{not json")
    assert bad.kind == "raw" and bad.value == "{not json" and "invalid JSON" in (bad.error or "")
    odd = decode("decisions", json.dumps({"id": 1}).encode())
    assert odd.kind == "raw" and odd.error and odd.error.startswith("Decision.")
    assert decode("workloads", None).kind == "tombstone"
    assert decode("somebody-elses", b'{"a": 1}').kind == "json"
    assert decode("somebody-elses", b"\xff\xfe").kind == "raw"


def test_a_bundle_is_summarized_by_its_members() -> None:
    from engine.core.bundles import bundle
    from engine.core.model import CycleEnd, WorkloadSpec

    end = CycleEnd(
        cycle="c1", spec=WorkloadSpec(namespace="shop", kind="Deployment", name="checkout")
    )
    raw = bundle([BATCH.model_dump_json().encode()] * 2 + [end.model_dump_json().encode()])
    got = decode("metrics", raw)
    assert got.kind == "MetricsBundle" and got.error is None
    assert got.summary == (
        "bundle of 3 records (1 cycle-end, 2 usage), first shop/Deployment/checkout"
    )
    assert got.value["records"][2]["spec"]["name"] == "checkout"


def test_group_dead_letters_counts_filters_and_samples() -> None:
    letters = [
        Letter(0, i, letter(f"MetricsRecord.usage.workload: Field required #{i}", "{}"))
        for i in range(5)
    ] + [Letter(0, 9, letter("invalid policy: mode", "{}", topic="kubefinops.policies"))]
    groups = group_dead_letters(letters, samples=2)
    assert [(g.reason, g.count) for g in groups] == [
        ("MetricsRecord.usage.workload", 5),
        ("invalid policy", 1),
    ]
    assert [s.offset for s in groups[0].samples] == [0, 1]
    only = group_dead_letters(letters, reason="POLICY")
    assert [(g.reason, g.count, g.topics) for g in only] == [
        ("invalid policy", 1, {"kubefinops.policies": 1})
    ]


def test_replay_only_what_is_valid_now() -> None:
    broken = json.loads(BATCH.model_dump_json())
    del broken["workload"]
    assert "workload" in (replay_check(letter("x", json.dumps(broken)), "kubefinops", 1000) or "")
    assert replay_check(letter("x", BATCH.model_dump_json()), "kubefinops", 10_000) is None
    assert "truncated" in (
        replay_check(letter("x", BATCH.model_dump_json()), "kubefinops", 50) or ""
    )
    other = letter("x", BATCH.model_dump_json(), topic="other.metrics")
    assert "not a topic of this app" in (replay_check(other, "kubefinops", 10_000) or "")


def test_a_columnar_chunk_decodes_with_its_shape_and_sample_count() -> None:
    chunk = chunks_from_batches([BATCH])[0]
    decoded = decode("metrics", chunk.encode())
    assert decoded.kind == "MetricsChunk" and decoded.error is None
    # the batch's two cpu samples and one memory sample, on a 30 s grid from t=30
    assert decoded.summary == (
        "usage shop/Deployment/checkout (0, 60]: 1 containers, "
        "2 series x 2 points every 30s, 3 samples"
    )
    assert decoded.value["containers"]["app"] == {"cpu": [[0.5, 0.7]], "memory": [[None, 1e8]]}


def test_a_spec_supersedes_the_stored_one_when_it_changed_or_is_refreshed() -> None:
    from engine.core.model import ContainerSpec, ResourcePair, WorkloadSpec

    def at(t: float, cpu: float = 1.0, **kw: object) -> WorkloadSpec:
        c = ContainerSpec(name="app", requests=ResourcePair(cpu=cpu, memory=2.0**30))
        return WorkloadSpec(
            namespace="shop", kind="Deployment", name="api", containers=[c], observed_at=t, **kw
        )

    assert at(10).supersedes(None, 100)
    assert not at(50).supersedes(at(10), 100)  # only observed again
    assert not at(5).supersedes(at(10), 100)  # an older marker re-delivered: the newer stays
    assert at(110).supersedes(at(10), 100)  # refreshed: observed_at at most `refresh` stale
    assert at(50, cpu=2.0).supersedes(at(10), 100)  # a request changed
    assert at(50, replicas=3).supersedes(at(10), 100)
    assert at(50, labels={"team": "a"}).supersedes(at(10), 100)
