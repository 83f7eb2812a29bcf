"""Helm charts: strict lint, offline render, Kubernetes schema validation, secrets by reference.

Rendering uses the Helm v4 SDK bundled in PyPI ``helm-python-sdk`` (no helm binary, no cluster).
Built-in kinds are validated with ``kubernetes-validate --strict`` for K3s 1.31; the CRD kinds
(ServiceMonitor, Argo CD Application/AppProject) against the fields their CRDs define.
The ``infra`` chart's dependency tarballs cannot be downloaded here, so only its own templates
are rendered and linted (see docs/deploy.md).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from engine.app import topic_specs
from engine.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
APP_CHART = ROOT / "charts" / "kubefinops"
INFRA_CHART = ROOT / "charts" / "infra"
K8S_VERSION = "1.31.0"  # K3s v1.31
NAMESPACE = "kubefinops"
SENTINEL = "S3cr3t-SENTINEL-7f3a9c"

CRD_KINDS = {"ServiceMonitor", "Application", "AppProject"}


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


APP_PROD = _load_yaml(APP_CHART / "ci" / "production-values.yaml")
INFRA_PROD = _load_yaml(INFRA_CHART / "ci" / "production-values.yaml")


@pytest.fixture(scope="module")
def app_chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(APP_CHART) as chart:
        yield chart


@pytest.fixture(scope="module")
def infra_chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(INFRA_CHART) as chart:
        yield chart


def render(chart: helm.Chart, values: dict[str, Any] | None, release: str) -> list[dict[str, Any]]:
    out = chart.render(values=values, name=release, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


APP_CASES = {"default": None, "production": APP_PROD}


# --- lint ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", APP_CASES)
def test_app_chart_lints_strict(case: str) -> None:
    report = helm.lint(
        APP_CHART, APP_CASES[case], strict=True, namespace=NAMESPACE, kube_version=f"v{K8S_VERSION}"
    )
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_infra_own_templates_lint_strict(tmp_path: Path) -> None:
    """Without the subchart tarballs, lint a copy whose Chart.yaml has no dependencies."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA_CHART, copy)
    meta = _load_yaml(copy / "Chart.yaml")
    meta.pop("dependencies")
    (copy / "Chart.yaml").write_text(yaml.safe_dump(meta))
    for values in (None, INFRA_PROD):
        report = helm.lint(copy, values, strict=True, namespace=NAMESPACE)
        assert report["errors"] == [], report


def test_infra_lint_only_misses_the_tarballs() -> None:
    report = helm.lint(INFRA_CHART, None, strict=True, namespace=NAMESPACE)
    serious = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    assert len(serious) == 1 and "missing these dependencies" in serious[0], report


def test_infra_dependencies_pinned_with_aliases_and_conditions(infra_chart: helm.Chart) -> None:
    deps = {d.get("alias") or d["name"]: d for d in infra_chart.metadata["dependencies"]}
    assert set(deps) == {"kafka", "mongodb", "minio", "monitoring", "argocd"}
    assert deps["monitoring"]["name"] == "kube-prometheus-stack"
    assert deps["argocd"]["name"] == "argo-cd"
    values = infra_chart.values
    for key, dep in deps.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", dep["version"]), f"{key}: pin an exact version"
        assert dep["condition"] == f"{key}.enabled"
        assert values[key]["enabled"] is True
    for name in ("kafka", "mongodb", "minio"):
        assert deps[name]["repository"] == "oci://registry-1.docker.io/bitnamicharts"


# --- validation of rendered manifests -----------------------------------------------------------
_OBJECT_META = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}},
}
# Field lists of the CRDs (monitoring.coreos.com/v1 ServiceMonitor, argoproj.io/v1alpha1).
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": {"type": "object", "minProperties": 1},
                    "namespaceSelector": {
                        "type": "object",
                        "properties": {
                            "matchNames": {"type": "array", "items": {"type": "string"}}
                        },
                    },
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}],
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["string", "integer"]},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {
                                    "type": "string",
                                    "pattern": "^(0|([0-9]+(ms|s|m|h))+)$",
                                },
                                "scrapeTimeout": {
                                    "type": "string",
                                    "pattern": "^(0|([0-9]+(ms|s|m|h))+)$",
                                },
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
    "Application": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "argoproj.io/v1alpha1"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "required": ["destination", "project", "source"],
                "additionalProperties": False,
                "properties": {
                    "project": {"type": "string"},
                    "source": {
                        "type": "object",
                        "required": ["repoURL"],
                        "additionalProperties": False,
                        "properties": {
                            "repoURL": {"type": "string"},
                            "targetRevision": {"type": "string"},
                            "path": {"type": "string"},
                        },
                    },
                    "destination": {
                        "type": "object",
                        "additionalProperties": False,
                        "anyOf": [{"required": ["server"]}, {"required": ["name"]}],
                        "properties": {
                            "server": {"type": "string"},
                            "name": {"type": "string"},
                            "namespace": {"type": "string"},
                        },
                    },
                    "syncPolicy": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "automated": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "prune": {"type": "boolean"},
                                    "selfHeal": {"type": "boolean"},
                                    "allowEmpty": {"type": "boolean"},
                                },
                            },
                            "syncOptions": {"type": "array", "items": {"type": "string"}},
                            "retry": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "limit": {"type": "integer"},
                                    "backoff": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "properties": {
                                            "duration": {"type": "string"},
                                            "factor": {"type": "integer"},
                                            "maxDuration": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                    "revisionHistoryLimit": {"type": "integer"},
                },
            },
        },
    },
    "AppProject": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "argoproj.io/v1alpha1"},
            "metadata": _OBJECT_META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["sourceRepos", "destinations"],
                "properties": {
                    "description": {"type": "string"},
                    "sourceRepos": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                    "destinations": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "server": {"type": "string"},
                                "name": {"type": "string"},
                                "namespace": {"type": "string"},
                            },
                        },
                    },
                    "clusterResourceWhitelist": {"type": "array"},
                    "namespaceResourceWhitelist": {"type": "array"},
                },
            },
        },
    },
}


def validate_manifest(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_KINDS:
        jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("case", APP_CASES)
def test_app_render_passes_kubernetes_validation(app_chart: helm.Chart, case: str) -> None:
    docs = render(app_chart, APP_CASES[case], "kubefinops")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "AppProject",
            "Application",
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
        ]
    )
    for doc in docs:
        validate_manifest(doc)


def test_validation_catches_bad_manifests() -> None:
    """The validators used above do reject an unknown field and a missing CRD field."""
    bad_pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"maxUnavailable": 1, "selektor": {}},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad_pdb, K8S_VERSION, strict=True)
    bad_app = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "x", "namespace": "y"},
        "spec": {"project": "p", "destination": {"server": "s"}},
    }
    with pytest.raises(jsonschema.ValidationError, match="source"):
        validate_manifest(bad_app)


@pytest.mark.parametrize("case", ["default", "production", "no-deps"])
def test_infra_own_templates_render_and_validate(infra_chart: helm.Chart, case: str) -> None:
    values = {
        "default": None,
        "production": INFRA_PROD,
        "no-deps": {
            k: {"enabled": False} for k in ("kafka", "mongodb", "minio", "monitoring", "argocd")
        },
    }[case]
    docs = render(infra_chart, values, "infra")
    endpoints = one(docs, "ConfigMap")
    validate_manifest(endpoints)
    if case == "no-deps":
        assert not endpoints.get("data")
    else:
        assert endpoints["data"]["prometheus"] == (
            "http://infra-monitoring-kube-prom-prometheus.kubefinops.svc.cluster.local:9090"
        )


# --- the two charts agree -----------------------------------------------------------------------
def test_infra_and_app_charts_agree(app_chart: helm.Chart, infra_chart: helm.Chart) -> None:
    app, infra = app_chart.values, infra_chart.values
    endpoints = one(render(infra_chart, None, "infra"), "ConfigMap")["data"]
    cfg = app["config"]
    assert cfg["prometheus_url"] == endpoints["prometheus"]
    assert cfg["s3_endpoint_url"] == endpoints["minio"]
    assert cfg["kafka_bootstrap_servers"] == endpoints["kafka"]
    assert app["secrets"]["kafkaPassword"]["secretName"] == endpoints["kafkaUserPasswordsSecret"]
    kafka = infra["kafka"]
    assert kafka["listeners"]["client"]["protocol"] == cfg["kafka_security_protocol"]
    assert cfg["kafka_sasl_mechanism"] in kafka["sasl"]["enabledMechanisms"].split(",")
    # client-passwords holds one password per client user: the bot must be the only one.
    assert kafka["sasl"]["client"]["users"] == [cfg["kafka_username"]]
    assert kafka["provisioning"]["numPartitions"] == cfg["topic_partitions"]
    settings = Settings(kafka_password=SecretStr("x"))
    provisioned = {
        t["name"]: (
            t.get("partitions", kafka["provisioning"]["numPartitions"]),
            t.get("config", {}).get("cleanup.policy") == "compact",
        )
        for t in kafka["provisioning"]["topics"]
    }
    wanted = {
        settings.topic(spec.name): (spec.partitions, spec.compacted)
        for spec in topic_specs(settings).values()
    }
    assert provisioned == wanted
    sidecar = infra["monitoring"]["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"]) == (
        app["dashboard"]["label"],
        app["dashboard"]["labelValue"],
    )
    assert infra["minio"]["defaultBuckets"] == cfg["s3_bucket"]


# --- the Deployment ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", APP_CASES)
def test_deployment_shape(app_chart: helm.Chart, case: str) -> None:
    docs = render(app_chart, APP_CASES[case], "kubefinops")
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["kubefinops", "worker"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["ports"] == [{"name": "web", "containerPort": 6066, "protocol": "TCP"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "requests" in container["resources"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/kubefinops"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "web"
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    expected = 1 if case == "default" else APP_PROD["replicaCount"]
    assert deploy["spec"]["replicas"] == expected


def test_rendered_env_is_accepted_by_engine_settings(
    app_chart: helm.Chart, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain env values the chart renders load into engine.settings.Settings."""
    container = one(render(app_chart, APP_PROD, "kubefinops"), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in plain.items():
        if name.startswith("KUBEFINOPS_") and not name.endswith("_FILE"):
            monkeypatch.setenv(name, value.replace("$(POD_IP)", "10.42.0.17"))
    assert plain["KUBEFINOPS_WEB_CANONICAL_URL"] == "http://$(POD_IP):6066"
    settings = load_settings(kafka_password=SecretStr("x"))
    assert settings.web_canonical_url == "http://10.42.0.17:6066"
    assert settings.topic_partitions == 8
    assert settings.kafka_username == "kubefinops-bot"
    assert settings.git_mode.value == "branch"
    assert settings.history_days == 14
    assert settings.collect_interval_seconds == 3600.0


def test_schema_config_covers_every_non_secret_setting() -> None:
    schema = json.loads((APP_CHART / "values.schema.json").read_text())
    config_keys = set(schema["properties"]["config"]["properties"])
    secret_like = {
        name
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation) or name.endswith("_file")
    }
    assert config_keys == set(Settings.model_fields) - secret_like
    # every secret reference maps onto a SecretStr setting; "file" mode only where *_file exists
    refs = schema["properties"]["secrets"]["properties"]
    fields = yaml.safe_load(
        re.search(
            r'define "kubefinops.secretFields" -}}\n(.*?)\n{{- end',
            (APP_CHART / "templates" / "_helpers.tpl").read_text(),
            re.S,
        ).group(1)  # type: ignore[union-attr]
    )
    assert set(fields) == set(refs) - {"optional"}
    for ref, field in fields.items():
        assert "SecretStr" in str(Settings.model_fields[field].annotation)
        has_file = f"{field}_file" in Settings.model_fields
        assert ("file" in refs[ref]["properties"]["mode"]["enum"]) == has_file, ref


# --- secrets by reference only -------------------------------------------------------------------
@pytest.mark.parametrize("case", APP_CASES)
def test_secrets_are_references_only(app_chart: helm.Chart, case: str) -> None:
    docs = render(app_chart, APP_CASES[case], "kubefinops")
    assert by_kind(docs, "Secret") == []
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    secret_fields = [
        n for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
    ]
    mounted = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    values = yaml.safe_load((APP_CHART / "values.yaml").read_text())
    optional = {  # references left empty by default (optional features): not wired at all
        re.sub(r"(?<!^)(?=[A-Z])", "_", ref).lower()
        for ref, spec in values["secrets"].items()
        if isinstance(spec, dict) and not spec.get("secretName")
    }
    for field in secret_fields:
        name = f"KUBEFINOPS_{field.upper()}"
        if field in optional:
            assert name not in env and f"{name}_FILE" not in env, field
            continue
        if name in env:
            assert "value" not in env[name], f"{name} inlined"
            assert "secretKeyRef" in env[name]["valueFrom"]
        else:
            path = Path(env[f"{name}_FILE"]["value"])
            volume = volumes[mounted[str(path.parent)]]
            assert volume["secret"]["items"] == [{"key": path.name, "path": path.name}]
    kafka = Path(env["KUBEFINOPS_KAFKA_PASSWORD_FILE"]["value"])
    secret = volumes[mounted[str(kafka.parent)]]["secret"]
    assert (secret["secretName"], kafka.name) == ("infra-kafka-user-passwords", "client-passwords")


INJECTIONS = {
    "config.kafka_password": {"config": {"kafka_password": SENTINEL}},
    "config.mongodb_uri": {"config": {"mongodb_uri": f"mongodb://u:{SENTINEL}@h:27017"}},
    "secrets.gitToken.value": {
        "secrets": {"gitToken": {"secretName": "x", "key": "k", "mode": "env", "value": SENTINEL}}
    },
    "extraEnv token": {"extraEnv": [{"name": "KUBEFINOPS_GIT_TOKEN", "value": SENTINEL}]},
    "extraEnv password": {"extraEnv": [{"name": "MY_PASSWORD", "value": SENTINEL}]},
    "git url with credentials": {
        "config": {"git_remote_url": f"https://bot:{SENTINEL}@git.example.com/r.git"}
    },
    "argocd repo with credentials": {
        "argocd": {"repoURL": f"https://bot:{SENTINEL}@git.example.com/r.git"}
    },
    "prometheus url with credentials": {
        "config": {"prometheus_url": f"http://bot:{SENTINEL}@prom:9090"}
    },
}


@pytest.mark.parametrize("route", INJECTIONS)
def test_secret_values_never_reach_the_manifests(app_chart: helm.Chart, route: str) -> None:
    """A secret-looking value is refused by the schema (helm install/lint fail) on every route."""
    values = INJECTIONS[route]
    with pytest.raises(helm.HelmValuesError) as err:
        app_chart.validate_schema(values)
    # (a URL refused by its pattern is quoted by the schema error: no worse than the values file)
    assert SENTINEL not in str(err.value) or route.startswith(("git url", "argocd", "prometheus"))
    report = helm.lint(APP_CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"], route


@pytest.mark.parametrize("case", APP_CASES)
def test_rendered_output_holds_no_secret_material(app_chart: helm.Chart, case: str) -> None:
    text = json.dumps(
        app_chart.render(values=APP_CASES[case], name="kubefinops", namespace=NAMESPACE)
    )
    assert SENTINEL not in text
    for pattern in (
        r"(?i)password\W+[:=]\W*\w{6,}",
        r"mongodb://[^\"\s]*:[^\"\s]*@",
        r"https://[^/\s\"]*:[^/\s\"]*@",
    ):
        assert not re.search(pattern, text), pattern


# --- schema: wrong types fail with a clear message ----------------------------------------------
WRONG = {
    "replicaCount": ({"replicaCount": "three"}, "replicaCount"),
    "topic_partitions as string": ({"config": {"topic_partitions": "8"}}, "topic_partitions"),
    "unknown config key": ({"config": {"kafka_bootstrap": "x:1"}}, "kafka_bootstrap"),
    "port out of range": ({"service": {"port": 70000}}, "port"),
    "bad log level": ({"config": {"log_level": "loud"}}, "log_level"),
    "credentials in the Prometheus URL": (
        {"config": {"prometheus_url": "http://u:pw@prom:9090"}},
        "prometheus_url",
    ),
    "a colon in the Prometheus user": (
        {"config": {"prometheus_username": "bot:pw"}},
        "prometheus_username",
    ),
    "credentials in the S3 URL": (
        {"config": {"s3_endpoint_url": "http://key:secret@minio:9000"}},
        "s3_endpoint_url",
    ),
    "secret mode not file/env": (
        {"secrets": {"mongodbUri": {"secretName": "m", "key": "uri", "mode": "inline"}}},
        "mode",
    ),
    "root filesystem writable": (
        {
            "containerSecurityContext": {
                "readOnlyRootFilesystem": False,
                "allowPrivilegeEscalation": False,
            }
        },
        "readOnlyRootFilesystem",
    ),
    "selfHeal as string": (
        {"argocd": {"syncPolicy": {"automated": {"selfHeal": "yes"}}}},
        "selfHeal",
    ),
}


@pytest.mark.parametrize("case", WRONG)
def test_schema_rejects_wrong_values(app_chart: helm.Chart, case: str) -> None:
    values, key = WRONG[case]
    with pytest.raises(helm.HelmValuesError, match=key):
        app_chart.validate_schema(values)


@pytest.mark.parametrize("case", APP_CASES)
def test_schema_accepts_shipped_values(app_chart: helm.Chart, case: str) -> None:
    app_chart.validate_schema(APP_CASES[case])


def test_more_replicas_than_partitions_is_refused(app_chart: helm.Chart) -> None:
    with pytest.raises(
        helm.HelmRenderError, match=r"replicaCount \(9\) must be <= config.topic_partitions \(8\)"
    ):
        app_chart.render(values={"replicaCount": 9}, name="kubefinops", namespace=NAMESPACE)
    docs = render(app_chart, {"replicaCount": 12, "config": {"topic_partitions": 12}}, "kubefinops")
    assert one(docs, "Deployment")["spec"]["replicas"] == 12


def test_persistent_volume_option(app_chart: helm.Chart) -> None:
    docs = render(app_chart, {"persistence": {"enabled": True, "size": "20Gi"}}, "kubefinops")
    pvc = one(docs, "PersistentVolumeClaim")
    kubernetes_validate.validate(pvc, K8S_VERSION, strict=True)
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    data = next(v for v in volumes if v["name"] == "data")
    assert data["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    with pytest.raises(helm.HelmRenderError, match="replicaCount 1"):
        app_chart.render(
            values={"persistence": {"enabled": True}, "replicaCount": 2},
            name="kubefinops",
            namespace=NAMESPACE,
        )


# --- monitoring, network, GitOps ----------------------------------------------------------------
def test_servicemonitor_scrapes_metrics_and_keeps_workload_labels(app_chart: helm.Chart) -> None:
    docs = render(app_chart, None, "kubefinops")
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "infra"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == (
        "web",
        "/metrics",
        True,
    )
    selector = monitor["spec"]["selector"]["matchLabels"]
    service_labels = one(docs, "Service")["metadata"]["labels"]
    assert selector.items() <= service_labels.items()


def test_dashboard_configmap(app_chart: helm.Chart) -> None:
    cm = next(
        d
        for d in render(app_chart, None, "kubefinops")
        if d["metadata"]["name"].endswith("-dashboard")
    )
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    shipped = json.loads((APP_CHART / "dashboards" / "finops-overview.json").read_text())
    assert json.loads(cm["data"][key]) == shipped
    assert len(cm["data"][key].encode()) < 256 * 1024  # kubectl apply annotation limit


def test_networkpolicy_egress(app_chart: helm.Chart) -> None:
    policy = one(render(app_chart, None, "kubefinops"), "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ports = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert ports == {
        ("web", "TCP"),
        (9092, "TCP"),
        (27017, "TCP"),
        (9000, "TCP"),
        (9090, "TCP"),
        (53, "UDP"),
        (53, "TCP"),
        (443, "TCP"),
    }
    peers = {
        rule["ports"][0]["port"]: rule["to"][0]["podSelector"]["matchLabels"]
        for rule in policy["spec"]["egress"]
        if "podSelector" in rule["to"][0] and "namespaceSelector" not in rule["to"][0]
    }
    assert peers[9092]["app.kubernetes.io/name"] == "kafka"
    assert peers[27017]["app.kubernetes.io/name"] == "mongodb"


def test_argocd_application_tracks_the_gitops_overlay(app_chart: helm.Chart) -> None:
    docs = render(app_chart, APP_PROD, "kubefinops")
    app, project = one(docs, "Application"), one(docs, "AppProject")
    assert app["metadata"]["namespace"] == project["metadata"]["namespace"] == NAMESPACE
    spec = app["spec"]
    assert spec["project"] == project["metadata"]["name"]
    assert spec["source"]["path"] == "smarthealth-gitops/overlays/production"
    assert spec["source"]["repoURL"] in project["spec"]["sourceRepos"]
    assert spec["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    dest = project["spec"]["destinations"][0]
    assert (dest["server"], dest["namespace"]) == (
        spec["destination"]["server"],
        spec["destination"]["namespace"],
    )
    # uninstalling the autopilot must not cascade-delete the SmartHealth workloads
    assert "finalizers" not in app["metadata"]
    manual = render(app_chart, {"argocd": {"syncPolicy": {"automated": None}}}, "kubefinops")
    assert "automated" not in one(manual, "Application")["spec"]["syncPolicy"]


@pytest.mark.parametrize(("values", "static"), [(None, True), ({"staticMembership": False}, False)])
def test_static_membership_by_default_keyed_by_pod_name(
    app_chart: helm.Chart, values: dict[str, Any] | None, static: bool
) -> None:
    """By default each pod is a static group member named after itself: a container restarted in
    its pod (crash, OOM kill) takes its partitions back without waiting out the session timeout
    (docs/deploy.md, "Crash recovery"); ``staticMembership: false`` turns it off."""
    container = one(render(app_chart, values, "kubefinops"), "Deployment")["spec"]["template"][
        "spec"
    ]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    if static:
        ref = env["KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]
        assert ref == {"fieldPath": "metadata.name"}
    else:
        assert "KUBEFINOPS_KAFKA_GROUP_INSTANCE_ID" not in env
