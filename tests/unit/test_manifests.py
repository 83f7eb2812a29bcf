"""Reading and validating a rendered overlay one document at a time (engine/adapters/manifests.py)
and a cycle's applies kept as a DecisionLog through the Git writer's pure steps."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import VersionNotSupportedError

from engine.adapters.manifests import SchemaValidator, iter_documents
from engine.core import patches
from engine.core.decision_log import DecisionLog, identities, select
from engine.core.model import Action, Execution
from tests.unit.test_decision_log import decisions

REPO_ROOT = Path(__file__).resolve().parents[2]
OVERLAY = REPO_ROOT / "smarthealth-gitops/overlays/production"
VERSION = "1.31.0"


@pytest.fixture(scope="module")
def rendered() -> str:
    if shutil.which("kubectl") is None:  # scripts/install.sh refuses to go on without it
        pytest.fail("kubectl is not installed")
    return subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True
    ).stdout


# Values kubectl renders, and the ones where YAML 1.1 (PyYAML) and 1.2 (ruamel) readers differ
# when unquoted; go-yaml quotes those, as here.
TRICKY = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: tricky
  annotations:
    a: "on"
    b: "yes"
    c: "0755"
    d: "1e3"
    e: "2026-12-01"
    f: "~"
    g: "0x1F"
    h: "1_000"
data:
  cpu: 250m
  memory: 512Mi
  int: "1"
  text: |
    multi
    line
---
apiVersion: v1
kind: Namespace
metadata:
  name: ns
spec:
  finalizers: [kubernetes]
"""


def test_documents_read_as_the_ruamel_reader_reads_them(rendered: str) -> None:
    for text in (rendered, TRICKY):
        ours = list(iter_documents(text))
        theirs = [d for d in patches.parse_yaml_all(text) if isinstance(d, dict)]
        assert ours == theirs and len(ours) > 1


def test_documents_are_read_one_at_a_time() -> None:
    docs = iter_documents(TRICKY + "---\n: [unclosed\n")
    assert next(docs)["metadata"]["name"] == "tricky"  # read before the broken one is reached
    assert next(docs)["kind"] == "Namespace"
    with pytest.raises(yaml.YAMLError):
        next(docs)


def _errors(fn: Any, doc: dict[str, Any]) -> tuple[str, ...]:
    try:
        fn(doc)
    except kubernetes_validate.ValidationError as exc:
        return ("invalid", exc.message, ".".join(map(str, exc.path)), exc.version)
    except kubernetes_validate.SchemaNotFoundError as exc:
        return ("no schema", exc.message)
    return ("valid",)


def _broken(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    out = []
    unknown = copy.deepcopy(deployment)
    unknown["spec"]["template"]["spec"]["containers"][0]["resourcez"] = {}  # strict: no extras
    out.append(unknown)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "three"
    out.append(wrong_type)
    no_name = copy.deepcopy(deployment)
    del no_name["spec"]["template"]["spec"]["containers"][0]["name"]
    out.append(no_name)
    bad_quantity = copy.deepcopy(deployment)
    bad_quantity["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "requests": {"cpu": ["1"]}
    }
    out.append(bad_quantity)
    crd = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "metadata": {"name": "x"}}
    out.append(crd)
    return out


def test_the_validator_answers_as_kubernetes_validate(rendered: str) -> None:
    docs = list(iter_documents(rendered))
    validator = SchemaValidator(VERSION)
    cases = docs + _broken(docs) + docs  # the second round through the cached validators

    def library(doc: dict[str, Any]) -> None:
        kubernetes_validate.validate(doc, VERSION, strict=True)

    seen = set()
    for doc in cases:
        ours, theirs = _errors(validator.validate, doc), _errors(library, doc)
        assert ours == theirs, doc.get("kind")
        seen.add(ours[0])
    assert seen == {"valid", "invalid", "no schema"}
    with pytest.raises(VersionNotSupportedError):
        SchemaValidator("9.99.0")


def test_a_log_stays_a_log_through_the_writers_pure_steps() -> None:
    given = decisions(30)
    log = DecisionLog(given)
    applied = patches.apply_decisions(log)
    assert isinstance(applied, DecisionLog)
    assert list(applied) == patches.apply_decisions(given)
    assert patches.commit_message("c-1", applied) == patches.commit_message("c-1", list(applied))

    def even(d: Any) -> bool:
        return int(d.name.rsplit("-", 1)[1]) % 2 == 0

    picked = select(applied, even)
    assert isinstance(picked, DecisionLog) and list(picked) == [d for d in applied if even(d)]
    assert select(list(applied), even) == list(picked)
    assert [r.id for r in identities(log)] == [d.id for d in given]
    assert identities(given) is given
    # an execution built from the refs is the one built from the decisions
    at = 1_790_000_000.0
    from_refs = Execution.of("c-1", identities(applied), "pushed", executed_at=at)
    assert from_refs == Execution.of("c-1", list(applied), "pushed", executed_at=at)
    assert all(d.action is Action.APPLY for d in applied)


def test_overlay_per_namespace_and_a_bounded_held_detail() -> None:
    from engine.adapters.gitops import held_detail, namespace_of, overlay_path
    from engine.errors import ConfigError
    from engine.settings import load_settings

    assert overlay_path("clusters/prod/{namespace}/", "payments") == "clusters/prod/payments"
    assert overlay_path("/estate/overlays/production", "payments") == "estate/overlays/production"
    assert namespace_of("payments/Deployment/api") == "payments"
    for bad in ("clusters/{team}", "/abs/path", "a/../../etc", "{namespace"):
        with pytest.raises(ConfigError, match="gitops_overlay_path"):
            load_settings(gitops_overlay_path=bad, kafka_username=None)
    # thousands held (e.g. an overlay that does not render): the execution's detail stays
    # under its 64 KiB bound, every reason stays in Execution.held
    held = {
        f"ns/Deployment/w{i:05d}": "the overlay does not render: " + "x" * 200 for i in range(5000)
    }
    detail = held_detail(held)
    assert len(detail) < 64 * 1024 and detail.endswith("and 4980 more (Execution.held)")
    Execution.of("c", [], "held", executed_at=0.0, detail=detail, held=held)  # validates
    assert held_detail({"a": "b"}) == "a: b"
