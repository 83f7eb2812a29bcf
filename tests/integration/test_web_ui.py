"""The stats API and the web UI against two real workers after a real cycle.

One deployment for the whole module (the slow part, ~1-2 min): a live Prometheus with eight hours
of SmartHealth usage, Kafka with SCRAM, MongoDB, a Git remote over HTTP, S3; an autopilot policy;
two workers with a read token; one collection cycle that commits.  Then:

* every stats endpoint's numbers equal what the topics and MongoDB hold (computed here from the
  records, not from the API's code), and the two workers give the same answers;
* ``/api/decisions`` pages through the whole history; ``/api/workloads`` is the same from either
  worker (routed to the owner) and its daily usage adds up to ``/api/usage``'s counts;
* without the read token everything is 401; ``/ui/?token=`` trades it for a cookie;
* the fleet and workload pages in headless Chromium: no console errors, the charts drawn with
  their series, the numbers on the page equal the API's; screenshots are kept for humans;
* the cycle's HTML report from S3, opened in Chromium, draws its charts.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.adapters.mongo import PolicyStore, connect
from engine.core.policy import validate_policy
from engine.settings import load_settings
from tests.harness.chromium import browser
from tests.harness.git_http import GitRemote
from tests.harness.prometheus import generate, promtool_backfill, start_prometheus
from tests.harness.s3 import S3Info
from tests.integration.test_closed_loop import SMARTHEALTH, s3_objects, wait_for
from tests.integration.workers import Deployment, consume_all, http_json

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "web-ui-api-token"
READ = "web-ui-read-token"
AUTH = {"Authorization": f"Bearer {READ}"}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


@pytest.fixture(scope="module")
def fleet(
    kafka: Any,
    mongo: Any,
    s3: S3Info,
    git_remote: GitRemote,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("web-ui")
    end = math.floor(time.time() / 60) * 60
    source = work / "cluster.om"
    with source.open("w") as out:
        generate(end - 8 * 3600, end, seed=23, out=out, workloads=SMARTHEALTH)
    promtool_backfill(source, work / "tsdb")
    prom, prom_url = start_prometheus(work / "tsdb", work)
    remote = git_remote.fresh("web-ui")
    db = f"webui{int(time.time())}"
    bucket = "kubefinops-webui"
    dep = Deployment(
        kafka=kafka,
        workdir=work,
        extra_env={
            "KUBEFINOPS_PROMETHEUS_URL": prom_url,
            "KUBEFINOPS_SCRAPE_LAG_SECONDS": "0",
            "KUBEFINOPS_HISTORY_DAYS": "1",
            "KUBEFINOPS_COLLECT_ON_START": "false",
            "KUBEFINOPS_MONGODB_URI": mongo.uri,
            "KUBEFINOPS_MONGODB_DATABASE": db,
            "KUBEFINOPS_API_TOKEN": TOKEN,
            "KUBEFINOPS_API_READ_TOKEN": READ,
            "KUBEFINOPS_GIT_REMOTE_URL": remote.url,
            "KUBEFINOPS_GIT_USERNAME": remote.username,
            "KUBEFINOPS_GIT_TOKEN": remote.token,
            "KUBEFINOPS_GIT_WORKDIR": str(work / "clone"),
            "KUBEFINOPS_S3_ENDPOINT_URL": s3.endpoint_url,
            "KUBEFINOPS_S3_ACCESS_KEY": s3.access_key,
            "KUBEFINOPS_S3_SECRET_KEY": s3.secret_key,
            "KUBEFINOPS_S3_BUCKET": bucket,
        },
    )
    settings = load_settings(
        mongodb_uri=mongo.uri, mongodb_database=db, kafka_security_protocol="PLAINTEXT"
    )

    async def put_policy() -> None:
        store = PolicyStore(connect(settings), validate=validate_policy)
        await store.put(
            {"id": "smarthealth-autopilot", "name": "autopilot", "mode": "autopilot", "priority": 5,
             "selectors": {"namespaces": ["smarthealth"]}},
            by="test",
        )  # fmt: skip

    asyncio.run(put_policy())
    try:
        # Both workers from the start (as a deployment runs them): each applies the reconciled
        # policy and each does part of the cycle's work, so each answers for the other's too.
        (s1, p1), (s2, p2) = dep.start_worker("w1"), dep.start_worker("w2")
        dep.wait_ready(p1, timeout=150, server=s1)
        dep.wait_ready(p2, timeout=150, server=s2)
        dep.wait_stable(2, timeout=150)
        bases = [f"http://127.0.0.1:{p}" for p in (p1, p2)]
        write = {"Authorization": f"Bearer {TOKEN}"}
        for base in bases:
            wait_for(
                lambda base=base: http_json(f"{base}/api/policies", headers=write)[1].get(
                    "policies"
                ),
                60,
                f"the reconciled policy on {base}",
            )
        assert http_json(f"{bases[0]}/api/cycles", "POST", headers=write)[0] == 202
        wait_for(lambda: len(remote.log()) > 1, 180, "the cycle's commit")
        wait_for(
            lambda: [k for k in s3_objects(s3, bucket) if k.endswith("report.html")],
            90,
            "the report",
        )
        yield {
            "dep": dep,
            "bases": bases,
            "db": db,
            "bucket": bucket,
            "remote": remote,
            "work": work,
        }
    finally:
        dep.stop_all()
        prom.stop()


def records(fleet: dict[str, Any], topic: str) -> list[dict[str, Any]]:
    dep: Deployment = fleet["dep"]
    return [
        json.loads(v)
        for _, v in asyncio.run(consume_all(dep.kafka, dep.topic(topic), expect=10**6, timeout=8))
    ]


def latest_by_workload(docs: list[dict[str, Any]], at: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in sorted(docs, key=lambda d: d[at]):
        out[d["workload_id"]] = d
    return out


def get(base: str, path: str, headers: dict[str, str] | None = AUTH) -> Any:
    status, body = http_json(base + path, headers=headers)
    assert status == 200, (path, status, body)
    return body


def test_stats_equal_the_records_and_both_workers_agree(fleet: dict[str, Any]) -> None:
    recs = latest_by_workload(records(fleet, "recommendations"), "generated_at")
    decisions = records(fleet, "decisions")
    executions = records(fleet, "executions")
    stats = [get(b, "/api/stats") for b in fleet["bases"]]
    for s in stats:
        s.pop("generated_at")
    assert stats[0] == stats[1]
    s = stats[0]
    assert s["workloads"] == len(recs)
    assert s["cost"]["current_monthly"] == pytest.approx(
        sum(r["savings"]["current_monthly"] for r in recs.values()), abs=0.01
    )
    assert s["cost"]["recommended_monthly"] == pytest.approx(
        sum(r["savings"]["recommended_monthly"] for r in recs.values()), abs=0.01
    )
    by_action: dict[str, int] = {}
    for d in decisions:
        by_action[d["action"]] = by_action.get(d["action"], 0) + 1
    assert s["decisions"]["by_action"] == dict(
        sorted(by_action.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    executed = {
        i for e in executions if e["outcome"] in ("pushed", "committed") for i in e["decision_ids"]
    }
    realised = sum(d["savings"]["monthly_savings"] for d in decisions if d["id"] in executed)
    assert executed and s["savings"]["realised_monthly"] == pytest.approx(realised, abs=0.01)
    assert s["cycles"] and s["cycles"][0]["commit_sha"] == executions[-1]["commit_sha"]
    assert s["cycles"][0]["duration_seconds"] > 0
    assert set(s["pipeline"]["lag"]) >= {"aggregator", "executor"}

    listed = get(fleet["bases"][1], "/api/recommendations")
    assert {r["workload_id"]: r["id"] for r in listed["items"]} == {
        w: r["id"] for w, r in recs.items()
    }
    only = get(fleet["bases"][0], "/api/recommendations?namespace=smarthealth&workload=billing")
    assert [r["workload_id"] for r in only["items"]] == ["smarthealth/Deployment/billing"]


def test_decisions_page_through_the_history(fleet: dict[str, Any]) -> None:
    decisions = records(fleet, "decisions")
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(50):
        page = get(fleet["bases"][1], "/api/decisions?limit=2" + cursor)
        seen += page["items"]
        if page["next_before"] is None:
            break
        cursor = "&" + urllib.parse.urlencode(
            {"before": repr(page["next_before"]), "before_id": page["next_before_id"]}
        )
    assert len(seen) == len({d["id"] for d in seen}), "a decision on two pages"
    assert sorted(d["id"] for d in seen) == sorted(d["id"] for d in decisions)
    times = [d["decided_at"] for d in seen]
    assert times == sorted(times, reverse=True)
    applied = get(fleet["bases"][0], "/api/decisions?action=apply")
    assert {d["id"] for d in applied["items"]} == {
        d["id"] for d in decisions if d["action"] == "apply"
    }
    assert http_json(fleet["bases"][0] + "/api/decisions?limit=x", headers=AUTH)[0] == 400


def test_workload_answer_is_routed_and_adds_up(fleet: dict[str, Any]) -> None:
    wid = "smarthealth/Deployment/billing"
    docs = [get(b, f"/api/workloads/{wid}") for b in fleet["bases"]]
    assert docs[0] == docs[1]
    doc = docs[0]
    usage = get(fleet["bases"][0], f"/api/usage/{wid}")
    for cname, resources in doc["usage"].items():
        for res, days in resources.items():
            assert sum(p["count"] for p in days) == usage["containers"][cname][res]["count"]
            assert max(p["max"] for p in days) == pytest.approx(
                usage["containers"][cname][res]["max"]
            )
    recs = latest_by_workload(records(fleet, "recommendations"), "generated_at")
    assert doc["recommendation"]["id"] == recs[wid]["id"]
    assert doc["spec"]["name"] == "billing"
    assert doc["decisions"] and all(d["guardrail"] for d in doc["decisions"])
    assert (
        http_json(fleet["bases"][0] + "/api/workloads/smarthealth/Deployment/nope", headers=AUTH)[0]
        == 404
    )


def test_read_token_is_required(fleet: dict[str, Any]) -> None:
    base = fleet["bases"][0]
    for path in (
        "/api/stats",
        "/api/recommendations",
        "/api/decisions",
        "/ui/",
        "/ui/workload.html",
    ):
        assert http_json(base + path)[0] == 401, path
        assert http_json(base + path, headers={"Authorization": "Bearer wrong"})[0] == 401, path
    assert http_json(base + "/ui/?token=wrong")[0] == 401
    # the API token reads too (as a bearer header), but is never traded for a browser cookie
    assert http_json(base + "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    status, said = http_json(base + f"/ui/?token={TOKEN}")
    assert status == 401 and "the UI takes the read token" in said["error"], said


async def check_page(page: Any, url: str, shot: Path) -> dict[str, Any]:
    await page.goto(url)
    await page.wait_for("window.kfo && window.kfo.ready")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(shot)
    return {
        "errors": list(page.errors) + await page.evaluate("window.kfo.errors"),
        "charts": await page.evaluate("window.kfo.charts"),
    }


def test_ui_pages_in_headless_chromium(fleet: dict[str, Any]) -> None:
    base = fleet["bases"][1]
    stats = get(base, "/api/stats")
    wid = "smarthealth/Deployment/billing"
    workload = get(base, f"/api/workloads/{wid}")

    async def run() -> None:
        async with browser(fleet["work"]) as page:
            await page.goto(f"{base}/ui/?token={READ}")  # the cookie, then the fleet page
            seen = await check_page(page, f"{base}/ui/", SCREENSHOTS / "fleet.png")
            assert seen["errors"] == []
            charts = {c["id"]: c for c in seen["charts"]}
            assert (
                charts["chart-cost"]["series"] == ["now", "recommended"]
                and charts["chart-cost"]["canvas"]
            )
            assert charts["chart-cycles"]["canvas"] and charts["chart-cycles"]["points"] == len(
                stats["cycles"]
            )
            for kpi, value in (
                ("kpi-current", stats["cost"]["current_monthly"]),
                ("kpi-recommended", stats["cost"]["recommended_monthly"]),
                ("kpi-pending", stats["savings"]["pending_monthly"]),
                ("kpi-realised", stats["savings"]["realised_monthly"]),
            ):
                shown = await page.evaluate(f"document.getElementById('{kpi}').dataset.value")
                text = await page.evaluate(f"document.getElementById('{kpi}').textContent")
                assert float(shown) == pytest.approx(value), kpi
                assert text == f"{value:,.2f} {stats['currency']}".replace("-0.00", "0.00"), kpi
            links = await page.evaluate(
                "[...document.querySelectorAll('#opportunities a')].map(a => a.textContent)"
            )
            assert links == [o["workload_id"] for o in stats["top_opportunities"]]

            seen = await check_page(
                page, f"{base}/ui/workload.html?id={wid}", SCREENSHOTS / "workload.png"
            )
            assert seen["errors"] == []
            drawn = [c for c in seen["charts"] if c["id"].startswith("chart-")]
            assert len(drawn) == 2 * len(workload["usage"])
            for c in drawn:
                assert c["canvas"] and c["series"] == [
                    "P50",
                    "P95",
                    "max",
                    "request",
                    "limit",
                    "target",
                ]
                name, res = c["id"].split("-")[1], c["id"].split("-")[2]
                assert c["points"] == len(workload["usage"][name][res])
            delta = await page.evaluate("document.getElementById('rec-delta').dataset.value")
            assert float(delta) == pytest.approx(
                workload["recommendation"]["savings"]["monthly_delta"]
            )

    asyncio.run(run())


def test_cycle_report_charts_in_headless_chromium(fleet: dict[str, Any], s3: S3Info) -> None:
    objects = s3_objects(s3, fleet["bucket"])
    key = next(k for k in objects if k.endswith("report.html"))
    path = fleet["work"] / "report.html"
    path.write_bytes(objects[key])

    async def run() -> None:
        async with browser(fleet["work"]) as page:
            await page.goto(path.as_uri())
            count = await page.wait_for("document.querySelectorAll('#charts canvas').length")
            assert page.errors == []
            series = await page.evaluate(
                "[...document.querySelectorAll('#charts .chart')].map(d => d.dataset.series)"
            )
            assert count == len(series) > 0
            assert set(series) == {"usage|old request|new request|old limit|new limit"}
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(SCREENSHOTS / "report.png")

    asyncio.run(run())
    shutil.copy(path, SCREENSHOTS / "report.html")
