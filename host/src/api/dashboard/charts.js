// outboxd dashboard: the charts of the first screen, drawn as SVG from GET /v1/history
// (attempts per minute stacked delivered / retried / failed, latency p50 / p99, backlog per
// target). No chart library: a few rectangles and polylines. Uses api() and el() of app.js.
"use strict";

const CHART_POLL_MS = 5000;
// The SVG namespace: a name, never fetched.
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_W = 460;
const CHART_H = 170;
const PAD = { left: 44, right: 8, top: 8, bottom: 22 };
// Colours by series index (backlog lines); the others are set in app.css by class.
const LINE_CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5"];

let chartMinutes = 60;

function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at least max.
function niceMax(max) {
  if (!(max > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(max)));
  for (const m of [1, 2, 5, 10]) if (m * p >= max) return m * p;
  return 10 * p;
}

function shortNumber(n) {
  if (n >= 1e6) return (n / 1e6).toFixed(n >= 1e7 ? 0 : 1) + "M";
  if (n >= 1e3) return (n / 1e3).toFixed(n >= 1e4 ? 0 : 1) + "k";
  return String(Math.round(n * 100) / 100);
}

function hhmm(iso) {
  const d = new Date(iso);
  return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
}

// The frame of a chart: the SVG, its title for screen readers, the y grid and the time axis.
// `ticks` are [value, label] pairs placed by `place`.
function frame(id, title, points, ticks, place) {
  const s = svg("svg", {
    id, class: "chart", viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img",
    "aria-labelledby": id + "-title", preserveAspectRatio: "xMidYMid meet",
  });
  s.append(svg("title", { id: id + "-title" }, document.createTextNode(title)));
  for (const [v, label] of ticks) {
    const ty = place(v);
    s.append(svg("line", { class: "grid", x1: PAD.left, x2: CHART_W - PAD.right, y1: ty, y2: ty }));
    s.append(svg("text", { class: "tick", x: PAD.left - 5, y: ty + 3, "text-anchor": "end" }, document.createTextNode(label)));
  }
  const n = points.length;
  const step = Math.max(1, Math.ceil(n / 6));
  for (let i = n - 1; i >= 0; i -= step) {
    s.append(svg("text", { class: "tick", x: x(i, n) + barWidth(n) / 2, y: CHART_H - 6, "text-anchor": "middle" },
      document.createTextNode(hhmm(points[i].at))));
  }
  return s;
}

// Three ticks of a linear axis from 0 to max.
function linearTicks(max) {
  return [0, 0.5, 1].map((f) => [max * f, shortNumber(max * f)]);
}

function barWidth(n) { return (CHART_W - PAD.left - PAD.right) / Math.max(n, 1); }
function x(i, n) { return PAD.left + i * barWidth(n); }
function y(v, max) { return PAD.top + (CHART_H - PAD.top - PAD.bottom) * (1 - v / max); }

// Attempts per minute, stacked: delivered at the bottom, then retried, then failed.
function deliveriesChart(points) {
  const kinds = ["delivered", "retried", "failed"];
  const max = niceMax(Math.max(0, ...points.map((p) => p.delivered + p.retried + p.failed)));
  const total = Object.fromEntries(kinds.map((k) => [k, points.reduce((a, p) => a + p[k], 0)]));
  const s = frame("chart-deliveries",
    `Attempts per minute over the last ${points.length} minutes: ${total.delivered} delivered, ${total.retried} retried, ${total.failed} failed`,
    points, linearTicks(max), (v) => y(v, max));
  const n = points.length;
  const w = Math.max(1, barWidth(n) - 1);
  points.forEach((p, i) => {
    let base = 0;
    for (const k of kinds) {
      if (p[k] === 0) continue;
      const top = y(base + p[k], max);
      const bottom = y(base, max);
      s.append(svg("rect", {
        class: "bar " + k, x: x(i, n) + 0.5, y: top, width: w, height: Math.max(0.5, bottom - top),
        "data-at": p.at, "data-value": p[k],
      }, svg("title", {}, document.createTextNode(`${hhmm(p.at)}: ${p[k]} ${k}`))));
      base += p[k];
    }
  });
  for (const k of kinds) s.dataset[k] = total[k];
  return s;
}

// A polyline per series over the minutes that have a value, placed by `place`; a lone value
// is a dot.
function lines(s, series, place, n) {
  for (const { name, cls, values } of series) {
    const pts = [];
    const flush = () => {
      if (pts.length === 1) {
        const [px, py] = pts[0].split(",");
        s.append(svg("circle", { class: "dot " + cls, cx: px, cy: py, r: 2.5, "data-series": name }));
      } else if (pts.length > 1) {
        s.append(svg("polyline", { class: "line " + cls, points: pts.join(" "), "data-series": name }));
      }
      pts.length = 0;
    };
    values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      pts.push((x(i, n) + barWidth(n) / 2).toFixed(1) + "," + place(v).toFixed(1));
    });
    flush();
  }
}

// Latency on a log scale (a median of 3 ms and a p99 of 300 ms both readable), in decades.
function latencyChart(points) {
  const p50 = points.map((p) => p.p50_ms);
  const p99 = points.map((p) => p.p99_ms);
  const known = p50.concat(p99).filter((v) => v !== null);
  const lo = Math.floor(Math.log10(Math.max(0.1, Math.min(1, ...known))));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(1, ...known))));
  const place = (v) => y(Math.log10(Math.max(v, Math.pow(10, lo))) - lo, hi - lo);
  const ticks = [];
  for (let d = lo; d <= hi; d++) {
    const v = Math.pow(10, d);
    ticks.push([v, v >= 1000 ? v / 1000 + " s" : v + " ms"]);
  }
  const last = (vs) => { const v = vs.filter((x) => x !== null).pop(); return v === undefined ? "none" : v.toFixed(1) + " ms"; };
  const s = frame("chart-latency",
    `Attempt latency per minute: p50 latest ${last(p50)}, p99 latest ${last(p99)}`, points, ticks, place);
  lines(s, [{ name: "p50", cls: "p50", values: p50 }, { name: "p99", cls: "p99", values: p99 }], place, points.length);
  return s;
}

function backlogChart(history) {
  const targets = history.targets.filter((t) => t.points.some((p) => p.backlog !== null));
  const points = history.all;
  const max = niceMax(Math.max(0, ...targets.flatMap((t) => t.points.map((p) => p.backlog || 0))));
  const latest = targets.map((t) => {
    const v = t.points.map((p) => p.backlog).filter((b) => b !== null).pop();
    return t.target + " " + v;
  });
  const s = frame("chart-backlog",
    "Backlog per target (pending, in flight, paused), sampled every 15 s" + (latest.length ? ": " + latest.join(", ") : ": no sample yet"),
    points, linearTicks(max), (v) => y(v, max));
  lines(s, targets.map((t, i) => ({
    name: t.target, cls: LINE_CLASSES[i % LINE_CLASSES.length], values: t.points.map((p) => p.backlog),
  })), (v) => y(v, max), points.length);
  return { svg: s, legend: targets.map((t, i) => [t.target, LINE_CLASSES[i % LINE_CLASSES.length]]) };
}

function legend(items) {
  return el("div", { class: "legend" }, ...items.map(([name, cls]) =>
    el("span", {}, el("i", { class: "swatch " + cls }), name)));
}

function card(title, figure, legendItems, summary) {
  return el("figure", { class: "card" },
    el("figcaption", {}, el("strong", { text: title }), summary ? el("span", { class: "muted", text: " " + summary }) : ""),
    figure,
    legend(legendItems));
}

function renderCharts(history) {
  const all = history.all;
  const sum = (k) => all.reduce((a, p) => a + p[k], 0);
  const lastMinute = all[all.length - 1] || { delivered: 0, retried: 0, failed: 0 };
  const backlog = backlogChart(history);
  $("#charts").replaceChildren(
    card("Attempts per minute", deliveriesChart(all),
      [["delivered", "delivered"], ["retried", "retried"], ["failed", "failed"]],
      `${sum("delivered")} delivered · ${sum("retried")} retried · ${sum("failed")} failed · this minute ${lastMinute.delivered + lastMinute.retried + lastMinute.failed}`),
    card("Latency", latencyChart(all), [["p50", "p50"], ["p99", "p99"]], "per minute, all targets"),
    card("Backlog per target", backlog.svg, backlog.legend.length ? backlog.legend : [["no target yet", "none"]],
      "pending + in flight + paused"),
  );
  $("#charts").dataset.updated = String(Date.now());
}

async function refreshCharts() {
  const history = await api("GET", "/v1/history?minutes=" + chartMinutes);
  renderCharts(history);
}

async function chartTick() {
  try {
    await refreshCharts();
  } catch (e) {
    report(e);
  }
  setTimeout(chartTick, CHART_POLL_MS);
}

$("#chart-minutes").addEventListener("change", (e) => {
  chartMinutes = Number(e.target.value);
  refreshCharts().catch(report);
});
chartTick();
