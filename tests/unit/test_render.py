"""render: table / json / yaml / csv text of recommendations (pure)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from ruamel.yaml import YAML

from engine.core.cost import Prices
from engine.core.model import Confidence, Recommendation
from engine.core.render import (
    CSV_COLUMNS,
    TABLE_HEADERS,
    money,
    render,
    render_csv,
    render_json,
    render_table,
    render_yaml,
    rows,
    totals,
)
from tests.fakes import MIB, recommendation

PRICES = Prices(cpu_core_hour=0.04, memory_gib_hour=0.005)


def workload(
    namespace: str,
    name: str,
    containers: dict[str, tuple[float, float]],
    usage: dict[str, tuple[float, float]],
    replicas: int = 2,
) -> Recommendation:
    """``containers``: name -> (cpu request, memory request); ``usage``: name -> (cpu, mem)."""
    return recommendation(
        containers, usage, namespace=namespace, name=name, replicas=replicas, prices=PRICES
    )


@pytest.fixture
def recs() -> list[Recommendation]:
    # "zeta" first on purpose: output is ordered by namespace/kind/name
    return [
        workload("zeta", "api", {"app": (1.0, 1024 * MIB)}, {"app": (0.6, 600 * MIB)}),
        workload(
            "alpha",
            "web",
            {"web": (0.5, 512 * MIB), "sidecar": (0.1, 128 * MIB)},
            {"web": (0.8, 700 * MIB)},
            replicas=3,
        ),  # sidecar has no usage: no targets
    ]


def test_rows_are_ordered_and_deltas_add_up_to_the_workload(recs: list[Recommendation]) -> None:
    out = rows(recs, PRICES)
    assert [(r.namespace, r.container) for r in out] == [
        ("alpha", "web"),
        ("alpha", "sidecar"),
        ("zeta", "app"),
    ]
    for rec in recs:
        mine = [r for r in out if r.namespace == rec.namespace]
        assert sum(r.monthly_delta for r in mine) == pytest.approx(
            rec.savings.monthly_delta, abs=1e-5
        )
    sidecar = out[1]
    assert sidecar.confidence is Confidence.NONE
    assert sidecar.recommended_cpu is None and sidecar.monthly_delta == 0.0
    assert out[2].recommended_cpu == pytest.approx(0.69)  # 0.6 x 1.15
    assert out[2].monthly_delta < 0 < out[0].monthly_delta


def test_totals_split_savings_and_increases(recs: list[Recommendation]) -> None:
    t = totals(recs, PRICES)
    assert t.monthly_savings == pytest.approx(sum(r.savings.monthly_savings for r in recs))
    assert t.monthly_increase == pytest.approx(sum(r.savings.monthly_increase for r in recs))
    assert t.monthly_savings > 0 and t.monthly_increase > 0
    assert (t.workloads, t.containers, t.without_data) == (2, 3, 1)
    assert t.monthly_delta == pytest.approx(t.monthly_increase - t.monthly_savings)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (-12.346, "-12.35 USD"),
        (1234.5, "+1,234.50 USD"),
        (-0.004, "0.00 USD"),
        (0.0, "0.00 USD"),
    ],
)
def test_money(value: float, text: str) -> None:
    assert money(value) == text


def test_table_lists_requests_limits_targets_confidence_reason_and_footer(
    recs: list[Recommendation],
) -> None:
    text = render_table(recs, PRICES)
    lines = text.splitlines()
    header = lines[0]
    for title in TABLE_HEADERS:
        assert title in header
    app = next(line for line in lines if line.startswith("zeta/Deployment/api"))
    cells = [c.strip() for c in app.split("  ") if c.strip()]
    # requests AND limits, current -> target; the cpu limit stays unset (strategy none)
    assert cells[1:7] == ["app", "1000m -> 690m", "unset", "1024Mi -> 690Mi", "1024Mi -> 690Mi",
                          "high"]  # fmt: skip
    assert cells[8] == recs[0].containers[0].reasons[0][:63] or cells[8].endswith("…")
    sidecar = next(line for line in lines if " sidecar " in line)
    cells = [c.strip() for c in sidecar.split("  ") if c.strip()]
    assert cells[2:6] == ["100m -> ?", "unset -> ?", "128Mi -> ?", "128Mi -> ?"]
    assert cells[6] == "none" and cells[-1].startswith("? ")  # "?" and why: no recommendation
    t = totals(recs, PRICES)
    assert f"Total monthly savings:   {t.monthly_savings:,.2f} USD" in lines
    assert f"Total monthly increases: {t.monthly_increase:,.2f} USD" in lines
    assert "2 workloads, 3 containers (1 without enough data)" in lines
    # every data line starts each column at the header's offset: columns are aligned
    at = header.index("CONFIDENCE")
    assert all(line[at:].split()[0] in ("high", "none", "low", "medium") for line in lines[2:5])


def test_held_changes_show_but_do_not_count_in_totals(recs: list[Recommendation]) -> None:
    api = "zeta/Deployment/api"
    note = {api: ["HPA api-hpa scales on cpu: it would change memory only"]}
    full = totals(recs, PRICES)
    cpu_held = totals(recs, PRICES, {api: frozenset({"cpu"})})
    all_held = totals(recs, PRICES, {api: frozenset({"cpu", "memory"})})
    zeta = next(r for r in recs if r.workload_id == api)
    others = [r for r in recs if r.workload_id != api]
    assert all_held.monthly_savings == pytest.approx(sum(r.savings.monthly_savings for r in others))
    assert all_held.monthly_delta == pytest.approx(sum(r.savings.monthly_delta for r in others))
    assert all_held.monthly_savings < cpu_held.monthly_savings < full.monthly_savings
    assert full.monthly_savings - cpu_held.monthly_savings == pytest.approx(
        (1.0 - 0.69) * PRICES.cpu_core_hour * 730 * zeta.replicas, rel=1e-3
    )
    text = render_table(recs, PRICES, note, {api: frozenset({"cpu"})})
    row = next(line for line in text.splitlines() if line.startswith(api))
    assert row.rstrip().endswith("HPA api-hpa scales on cpu: it would change memory only")
    assert (
        "2 workloads, 3 containers (1 without enough data); 1 held by the gate, not in totals"
        in (text.splitlines())
    )


def test_empty_table() -> None:
    text = render_table([], PRICES)
    assert "(no workloads found)" in text
    assert "Total monthly savings:   0.00 USD" in text


def test_json_is_the_full_recommendations(recs: list[Recommendation]) -> None:
    docs = json.loads(render_json(recs))
    back = [Recommendation.model_validate(d) for d in docs]
    assert back == sorted(recs, key=lambda r: r.namespace)
    assert docs[0]["containers"][0]["reasons"]  # the why travels with the numbers


def test_yaml_matches_json(recs: list[Recommendation]) -> None:
    loaded = YAML(typ="safe", pure=True).load(render_yaml(recs))
    assert loaded == json.loads(render_json(recs))


def test_csv_has_stable_columns_and_one_row_per_container(recs: list[Recommendation]) -> None:
    table = list(csv.reader(io.StringIO(render_csv(recs, PRICES))))
    assert tuple(table[0]) == CSV_COLUMNS
    body = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in table[1:]]
    assert [r["container"] for r in body] == ["web", "sidecar", "app"]
    app = body[2]
    assert float(app["recommended_cpu_request"]) == pytest.approx(0.69)
    assert float(app["current_memory_request"]) == 1024 * MIB
    assert app["recommended_cpu_limit"] == ""  # strategy none: not managed
    assert body[1]["recommended_memory_request"] == "" and body[1]["confidence"] == "none"
    assert sum(float(r["monthly_delta"]) for r in body) == pytest.approx(
        sum(r.savings.monthly_delta for r in recs), abs=1e-4
    )
    assert render_csv([]).splitlines() == [",".join(CSV_COLUMNS)]


def test_render_dispatch(recs: list[Recommendation]) -> None:
    assert render(recs, "json") == render_json(recs)
    assert render(recs, "csv", PRICES) == render_csv(recs, PRICES)
    with pytest.raises(ValueError, match="unknown output format"):
        render(recs, "xml")


def test_table_notes_only_for_listed_workloads(recs: list[Recommendation]) -> None:
    notes = {
        "zeta/Deployment/api": ["HPA api-hpa scales on cpu: it would change memory only"],
        "other/Deployment/gone": ["not listed"],
    }
    lines = render_table(recs, PRICES, notes).splitlines()
    at = lines.index("Notes:")
    assert lines[at + 1 :] == [
        "  zeta/Deployment/api: HPA api-hpa scales on cpu: it would change memory only"
    ]
    assert "Notes:" not in render_table(recs, PRICES)
    assert render(recs, "json", PRICES, notes) == render_json(recs)  # json keeps reasons only
