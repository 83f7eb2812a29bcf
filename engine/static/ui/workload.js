"use strict";
(async function workload() {
  try {
    const id = new URLSearchParams(location.search).get("id") || "";
    const parts = id.split("/");
    if (parts.length !== 3) throw new Error("no workload: open this page as workload.html?id=namespace/Kind/name");
    document.getElementById("title").textContent = id;
    const w = await api("../api/workloads/" + parts.map(encodeURIComponent).join("/"));
    const rec = w.recommendation;
    const cur = rec ? rec.savings.currency : "USD";
    const summary = document.getElementById("summary");
    if (rec) {
      summary.append(el("p", {}, "Monthly: ", el("b", { id: "rec-current", "data-value": rec.savings.current_monthly }, money(rec.savings.current_monthly, cur)),
        " → ", el("b", { id: "rec-recommended", "data-value": rec.savings.recommended_monthly }, money(rec.savings.recommended_monthly, cur)),
        " (", el("span", { id: "rec-delta", "data-value": rec.savings.monthly_delta }, money(rec.savings.monthly_delta, cur)), ")"));
      table(summary.appendChild(el("div")), ["container", "cpu request", "cpu limit", "memory request", "memory limit", "confidence", "reasons"],
        rec.containers.map(c => [c.name,
          change(c.current.requests.cpu, c.cpu_request, cpu) + (c.target && c.target.cpu_request != null && c.target.cpu_request !== c.cpu_request ? " (target " + cpu(c.target.cpu_request) + ")" : ""),
          change(c.current.limits.cpu, c.cpu_limit, cpu),
          change(c.current.requests.memory, c.memory_request, mem) + (c.target && c.target.memory_request != null && c.target.memory_request !== c.memory_request ? " (target " + mem(c.target.memory_request) + ")" : ""),
          change(c.current.limits.memory, c.memory_limit, mem),
          c.confidence, el("ul", {}, ...c.reasons.map(r => el("li", {}, r)))]));
    } else summary.append(el("p", { class: "muted" }, "no recommendation yet"));

    const box = document.getElementById("containers");
    const spec = w.spec || { containers: [] };
    for (const [name, usage] of Object.entries(w.usage || {})) {
      const c = (spec.containers || []).find(s => s.name === name) || { requests: {}, limits: {} };
      const rc = rec ? rec.containers.find(x => x.name === name) : null;
      const section = el("section", {}, el("h2", {}, "Container " + name + ": daily usage over the window"));
      const row = el("div", { class: "grid2" });
      section.append(row); box.append(section);
      for (const [res, fmt, reqKey] of [["cpu", cpu, "cpu_request"], ["memory", mem, "memory_request"]]) {
        const days = usage[res] || [];
        const target = el("div", { class: "chart", id: "chart-" + name + "-" + res });
        row.append(target);
        const x = days.map(d => d.start);
        const flat = v => days.map(() => (v == null ? null : v));
        const tgt = rc ? ((rc.target && rc.target[reqKey] != null) ? rc.target[reqKey] : rc[reqKey]) : null;
        chart(target, res + " (" + name + ")", x, [
          { label: "P50", stroke: "#486581", values: days.map(d => d.p50) },
          { label: "P95", stroke: "#d64545", values: days.map(d => d.p95) },
          { label: "max", stroke: "#9f580a", values: days.map(d => d.max) },
          { label: "request", stroke: "#102a43", dash: [6, 4], values: flat(c.requests[res]) },
          { label: "limit", stroke: "#829ab1", dash: [2, 4], values: flat(c.limits[res]) },
          { label: "target", stroke: "#1a7f37", dash: [10, 4], values: flat(tgt) },
        ], { fmt: v => fmt(v), pad: 43200 });
      }
    }
    table(document.getElementById("timeline"), ["decided", "action", "guardrail", "reason", "monthly delta", "execution", "commit"],
      w.decisions.map(d => [when(d.decided_at), d.action, d.guardrail, d.reason, d.monthly_delta == null ? "-" : money(d.monthly_delta, cur), d.execution || "-",
        d.commit_sha ? (d.commit_url ? el("a", { href: d.commit_url }, d.commit_sha.slice(0, 10)) : el("code", {}, d.commit_sha.slice(0, 10))) : "-"]), [4]);
    window.kfo.ready = true;
  } catch (err) { fail(err); }
})();
