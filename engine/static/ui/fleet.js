"use strict";
(async function fleet() {
  try {
    const [stats, recs] = await Promise.all([api("../api/stats"), api("../api/recommendations")]);
    const cur = stats.currency;
    const kpis = { "kpi-current": stats.cost.current_monthly, "kpi-recommended": stats.cost.recommended_monthly,
                   "kpi-pending": stats.savings.pending_monthly, "kpi-realised": stats.savings.realised_monthly };
    for (const [id, v] of Object.entries(kpis)) { const n = document.getElementById(id); n.textContent = money(v, cur); n.dataset.value = v; }
    document.getElementById("generated").textContent = stats.workloads + " workloads · " + when(stats.generated_at);

    const byNs = {};
    for (const r of recs.items) {
      const s = byNs[r.namespace] || (byNs[r.namespace] = { now: 0, rec: 0 });
      s.now += r.savings.current_monthly; s.rec += r.savings.recommended_monthly;
    }
    const names = Object.keys(byNs).sort();
    const axis = names.map((_, i) => i);
    const costChart = document.getElementById("chart-cost");
    chart(costChart, "", axis, [
      { label: "now", stroke: "#486581", fill: "rgba(72,101,129,.35)", bars: true, align: -1, values: names.map(n => +byNs[n].now.toFixed(2)) },
      { label: "recommended", stroke: "#1a7f37", fill: "rgba(26,127,55,.35)", bars: true, align: 1, values: names.map(n => +byNs[n].rec.toFixed(2)) },
    ], { time: false, xlabel: "namespace", categories: names, fmt: v => money(v, cur) });
    costChart.dataset.namespaces = names.join("|");

    const cycles = stats.cycles.slice().reverse();
    chart(document.getElementById("chart-cycles"), "", cycles.map(c => c.executed_at), [
      { label: "duration s", stroke: "#9f580a", values: cycles.map(c => c.duration_seconds) },
    ]);

    table(document.getElementById("opportunities"), ["workload", "saves / month", "confidence"],
      stats.top_opportunities.map(o => [el("a", { href: "workload.html?id=" + encodeURIComponent(o.workload_id) }, o.workload_id), money(o.monthly_savings, cur), o.confidence.join(", ")]), [1]);
    table(document.getElementById("risks"), ["workload", "container", "risk"],
      stats.risks.map(r => [el("a", { href: "workload.html?id=" + encodeURIComponent(r.workload_id) }, r.workload_id), r.container,
        r.kind === "oom" ? "OOMKilled " + when(r.at) : r.resource + " " + (r.resource === "cpu" ? cpu(r.current) + " → " + cpu(r.recommended) : mem(r.current) + " → " + mem(r.recommended))]));
    const d = stats.decisions;
    table(document.getElementById("decisions"), ["", "decisions"],
      [...Object.entries(d.by_action).map(([k, v]) => [el("b", {}, "outcome " + k), v]), ...Object.entries(d.by_guardrail).map(([k, v]) => ["guardrail " + k, v]),
        ...Object.entries((stats.verifications || {}).by_outcome || {}).map(([k, v]) => [el("b", {}, "verified change " + k), v]),
        ...Object.entries((stats.verifications || {}).by_cause || {}).map(([k, v]) => ["regression " + k, v])], [1]);
    const p = stats.pipeline;
    const rows = Object.entries(p.lag || {}).map(([agent, l]) => ["lag " + agent, l.lag == null ? "-" : l.lag]);
    rows.push(["dead letters", (p.dead_letters || {}).total || 0]);
    for (const [reason, n] of Object.entries((p.dead_letters || {}).by_reason || {})) rows.push(["  " + reason, n]);
    if (p.error) rows.push([el("span", { class: "error" }, p.error), ""]);
    table(document.getElementById("pipeline"), ["", "messages"], rows, [1]);
    table(document.getElementById("cycles"), ["executed", "cycle", "outcome", "workloads", "duration s", "commit"],
      stats.cycles.map(c => [when(c.executed_at), c.cycle, c.outcome, c.workloads, c.duration_seconds == null ? "-" : c.duration_seconds.toFixed(1),
        c.commit_sha ? (c.commit_url ? el("a", { href: c.commit_url }, c.commit_sha.slice(0, 10)) : el("code", {}, c.commit_sha.slice(0, 10))) : "-"]), [3, 4]);
    window.kfo.ready = true;
  } catch (err) { fail(err); }
})();
