/* KubeFinOps UI: read-only pages over the worker's own JSON API, charts with the vendored uPlot.
 * window.kfo.ready becomes true when every chart of the page is drawn; window.kfo.charts lists
 * them (id, series labels, points) so browser tests can check what is on screen. */
"use strict";
window.kfo = { ready: false, charts: [], errors: [] };

function money(value, currency) {
  const v = Math.round(value * 100) / 100;
  const sign = v < 0 ? "-" : "";
  return sign + Math.abs(v).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 }) + " " + (currency || "USD");
}
function cpu(cores) { return cores == null ? "unset" : (cores < 1 ? Math.round(cores * 1000) + "m" : (+cores.toFixed(3)) + ""); }
function mem(bytes) {
  if (bytes == null) return "unset";
  const mi = bytes / 1048576;
  return mi >= 1024 ? (+(mi / 1024).toFixed(2)) + "Gi" : Math.round(mi) + "Mi";
}
/* "current → next", or just "current (kept)" where nothing is recommended for it */
function change(current, next, fmt) { return next == null ? fmt(current) + " (kept)" : fmt(current) + " → " + fmt(next); }
function when(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 16) + "Z" : "-"; }
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function table(target, headers, rows, numeric) {
  const t = el("table");
  t.append(el("tr", {}, ...headers.map((h, i) => el("th", { class: (numeric || []).includes(i) ? "num" : "" }, h))));
  for (const r of rows) t.append(el("tr", {}, ...r.map((c, i) => el("td", { class: (numeric || []).includes(i) ? "num" : "" }, c))));
  if (!rows.length) t.append(el("tr", {}, el("td", { colspan: headers.length, class: "muted" }, "none")));
  target.replaceChildren(t);
}
async function api(path) {
  const resp = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}
/* One uPlot chart; `series` is [{label, stroke, values, bars?, dash?}], x in Unix seconds or indices. */
function chart(target, title, x, series, opts) {
  opts = opts || {};
  const width = Math.max(320, target.clientWidth || 560);
  const data = [x, ...series.map(s => s.values)];
  const xs = { time: opts.time !== false };
  if (opts.categories) xs.range = [-0.5, opts.categories.length - 0.5];
  else if (x.length === 1) { const pad = opts.pad || (opts.time === false ? 1 : 3600); xs.range = [x[0] - pad, x[0] + pad]; }
  const ys = { range: (u, lo, hi) => [Math.min(0, lo == null ? 0 : lo), Math.max(hi == null ? 1 : hi, 1e-9) * 1.1] };
  const xaxis = opts.categories
    ? { values: (u, vals) => vals.map(v => (Number.isInteger(v) && opts.categories[v] != null ? opts.categories[v] : "")) }
    : {};
  const plot = new uPlot({
    title, width, height: opts.height || 240,
    scales: { x: xs, y: ys },
    axes: [xaxis, { values: opts.fmt ? (u, vals) => vals.map(opts.fmt) : undefined, size: 80 }],
    series: [{ label: opts.xlabel || "time", value: opts.categories ? (u, v) => (v == null ? "-" : opts.categories[v]) : undefined },
      ...series.map(s => ({
      label: s.label, stroke: s.stroke, width: 2, dash: s.dash, fill: s.fill,
      paths: s.bars ? uPlot.paths.bars({ size: [0.6 / series.length, 80], align: s.align || 0 }) : undefined,
      points: { show: x.length < 40 },
      value: opts.fmt ? (u, v) => (v == null ? "-" : opts.fmt(v)) : undefined,
    }))],
  }, data, target);
  target.dataset.series = series.map(s => s.label).join("|");
  window.kfo.charts.push({ id: target.id, title, series: series.map(s => s.label), points: x.length, canvas: !!target.querySelector("canvas") });
  return plot;
}
function fail(err) {
  window.kfo.errors.push(String(err));
  const box = document.getElementById("error");
  if (box) box.textContent = String(err);
  window.kfo.ready = true;
}
