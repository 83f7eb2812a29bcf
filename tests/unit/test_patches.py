"""Pure patch building: quantities, canonical YAML, merging, commit trailers, render checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core import patches, quantity
from engine.core.model import (
    Action,
    ContainerRecommendation,
    ContainerSpec,
    Decision,
    Mode,
    ResourcePair,
    Savings,
)

MIB = 1024 * 1024


def rec(name: str, **values: float | None) -> ContainerRecommendation:
    current = ContainerSpec(
        name=name,
        requests=ResourcePair(cpu=0.5, memory=512 * MIB),
        limits=ResourcePair(memory=1024 * MIB),
    )
    return ContainerRecommendation(name=name, current=current, **values)  # type: ignore[arg-type]


def dec(
    *containers: ContainerRecommendation,
    kind: str = "Deployment",
    name: str = "patient-api",
    action: Action = Action.APPLY,
    did: str = "d1",
    delta: float = -3.0,
) -> Decision:
    return Decision(
        id=did,
        recommendation_id="r1",
        workload_id=f"smarthealth/{kind}/{name}",
        namespace="smarthealth",
        kind=kind,
        name=name,
        action=action,
        guardrail="none",
        reason="usage low\nfor 14 days",
        mode=Mode.AUTOPILOT,
        containers=list(containers),
        savings=Savings(monthly_delta=delta),
        decided_at=0.0,
    )


@pytest.mark.parametrize(
    ("cores", "text"),
    [
        (0.25, "250m"),
        (0.2501, "251m"),
        (1.0, "1000m"),
        (0.0, "1m"),
        (0.0004, "1m"),
        (0.1, "100m"),
    ],
)
def test_cpu_quantity(cores: float, text: str) -> None:
    assert quantity.cpu_quantity(cores) == text


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (512 * MIB, "512Mi"),
        (512 * MIB + 1, "513Mi"),
        (1, "1Mi"),
        (1.5 * 1024**3, "1536Mi"),
    ],
)
def test_memory_quantity(num_bytes: float, text: str) -> None:
    assert quantity.memory_quantity(num_bytes) == text


@given(st.floats(min_value=0.001, max_value=64, allow_nan=False))
def test_cpu_rounds_up_by_less_than_a_millicore(cores: float) -> None:
    back = quantity.parse_quantity(quantity.cpu_quantity(cores))
    assert cores - 1e-9 <= back < cores + 0.001 + 1e-9


@given(st.integers(min_value=1, max_value=2**40))
def test_memory_rounds_up_by_less_than_a_mib(num_bytes: int) -> None:
    back = quantity.parse_quantity(quantity.memory_quantity(num_bytes))
    assert num_bytes <= back < num_bytes + MIB


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("250m", 0.25),
        ("2", 2.0),
        ("1Gi", 1024.0**3),
        ("1.5Gi", 1.5 * 1024**3),
        ("128Mi", 128 * MIB),
        ("1G", 1e9),
        (3, 3.0),
    ],
)
def test_parse_quantity(text: str | int, value: float) -> None:
    assert quantity.parse_quantity(text) == pytest.approx(value)


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a quantity"):
        quantity.parse_quantity("12 cores")


def test_patch_filename_is_deterministic_and_safe() -> None:
    assert patches.patch_filename("Deployment", "patient-api") == "deployment-patient-api.yaml"
    assert patches.patch_filename("StatefulSet", "Patients_DB") == "statefulset-patients-db.yaml"


def test_patch_lists_only_changed_containers_and_fields() -> None:
    d = dec(rec("app", cpu_request=0.25, memory_request=384 * MIB), rec("envoy"))
    doc = patches.build_patch(d)
    assert doc == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "patient-api"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "resources": {"requests": {"cpu": "250m", "memory": "384Mi"}},
                        },
                    ]
                }
            }
        },
    }


def test_statefulset_and_cronjob_paths() -> None:
    sts = patches.build_patch(dec(rec("postgres", memory_limit=2048 * MIB), kind="StatefulSet"))
    assert sts["spec"]["template"]["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "2048Mi"}
    }
    cron = patches.build_patch(dec(rec("job", cpu_request=0.1), kind="CronJob"))
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["name"] == "job"


def test_unsupported_kind() -> None:
    with pytest.raises(patches.UnsupportedWorkload):
        patches.build_patch(dec(rec("x", cpu_request=0.1), kind="Pod"))


def test_rendering_is_byte_stable_and_merges_earlier_bot_values() -> None:
    first = patches.render_yaml(patches.build_patch(dec(rec("app", cpu_request=0.25))))
    assert first == patches.render_yaml(patches.build_patch(dec(rec("app", cpu_request=0.25))))
    assert first.startswith(patches.HEADER)
    # a later cycle changes another container: the earlier value for "app" survives
    later = patches.build_patch(
        dec(rec("envoy", memory_request=96 * MIB)), patches.parse_yaml(first)
    )
    containers = later["spec"]["template"]["spec"]["containers"]
    assert containers == [
        {"name": "app", "resources": {"requests": {"cpu": "250m"}}},
        {"name": "envoy", "resources": {"requests": {"memory": "96Mi"}}},
    ]
    # re-reading what we wrote and re-rendering the same decision changes nothing
    again = patches.render_yaml(
        patches.build_patch(dec(rec("app", cpu_request=0.25)), patches.parse_yaml(first))
    )
    assert again == first


def test_component_kustomization_sorted_and_without_itself() -> None:
    text = patches.component_kustomization(["b.yaml", "kustomization.yaml", "a.yaml", "a.yaml"])
    doc = patches.parse_yaml(text)
    assert doc["kind"] == "Component"
    assert doc["patches"] == [{"path": "a.yaml"}, {"path": "b.yaml"}]
    assert patches.parse_yaml(patches.component_kustomization([]))["patches"] == []


def test_apply_decisions_filters_and_dedupes() -> None:
    keep = dec(rec("app", cpu_request=0.2), did="new")
    chosen = patches.apply_decisions(
        [
            dec(rec("app", cpu_request=0.3), did="old"),
            keep,
            dec(rec("app", cpu_request=0.2), name="billing", action=Action.HOLD),
            dec(rec("app"), name="frontend"),  # nothing to set
        ]
    )
    assert chosen == [keep]


def test_commit_message_subject_body_and_trailers() -> None:
    d1 = dec(rec("app", cpu_request=0.25), did="d1", delta=-3.0)
    d2 = dec(rec("nginx", memory_limit=300 * MIB), name="frontend", did="d2", delta=1.25)
    message = patches.commit_message("cycle-7", [d1, d2])
    subject, blank, *_ = message.splitlines()
    assert subject == "chore(rightsizing): apply 2 recommendations" and blank == ""
    trailers = patches.parse_trailers(message)
    assert trailers["Kubefinops-Cycle"] == ["cycle-7"]
    assert trailers["Kubefinops-Decision"] == ["d1", "d2"]
    assert trailers["Kubefinops-Monthly-Delta"] == ["-1.75 USD"]
    assert trailers["Kubefinops-Workload"] == [
        "smarthealth/Deployment/patient-api app requests.cpu 500m -> 250m",
        "smarthealth/Deployment/frontend nginx limits.memory 1024Mi -> 300Mi",
    ]
    assert "usage low for 14 days" in message  # multi-line reasons are flattened
    single = patches.commit_message("c", [d1])
    assert single.startswith("chore(rightsizing): apply 1 recommendation\n")


def _rendered(cpu_req: str, mem_req: str, mem_lim: str) -> list[dict[str, object]]:
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "patient-api", "namespace": "smarthealth"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "resources": {
                                    "requests": {"cpu": cpu_req, "memory": mem_req},
                                    "limits": {"memory": mem_lim},
                                },
                            }
                        ]
                    }
                }
            },
        }
    ]


def test_check_rendered() -> None:
    d = dec(rec("app", cpu_request=0.25))
    assert patches.check_rendered(_rendered("250m", "512Mi", "1Gi"), [d]) is None
    assert "renders as 500m" in (
        patches.check_rendered(_rendered("500m", "512Mi", "1Gi"), [d]) or ""
    )
    assert "exceeds limit" in (patches.check_rendered(_rendered("250m", "2Gi", "1Gi"), [d]) or "")


def test_missing_target() -> None:
    present = patches.workload_containers(_rendered("250m", "512Mi", "1Gi"))
    assert patches.missing_target(present, dec(rec("app", cpu_request=0.1))) is None
    assert "not in the overlay" in (
        patches.missing_target(present, dec(rec("app", cpu_request=0.1), name="ghost")) or ""
    )
    assert "sidecar" in (
        patches.missing_target(present, dec(rec("sidecar", cpu_request=0.1))) or ""
    )
