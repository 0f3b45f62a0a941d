// outboxd dashboard: a small page over the JSON API (no framework, no build step).
// It polls the API every few seconds. The API token, if the server needs one, lives in
// sessionStorage only: it is gone when the tab is closed.
"use strict";

const POLL_MS = 3000;
const TOKEN_KEY = "outboxd.token";
const $ = (sel) => document.querySelector(sel);

let deadFilter = {};
let shownEvent = null;
let pendingReplay = null;
// The event whose cancellation awaits the second click, and what the last one did.
let confirmCancel = null;
let cancelResult = null;

class Unauthorized extends Error {}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(method, path, body) {
  // The marker of a request the API's own page sent (a page elsewhere cannot send it).
  const headers = { "X-Outboxd-Request": "dashboard" };
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (res.status === 401) {
    showLogin(data && data.error);
    throw new Unauthorized(data ? data.error : "401");
  }
  if (!res.ok) throw new Error((data && data.error) || (method + " " + path + ": HTTP " + res.status));
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function duration(ms) {
  if (ms < 1000) return ms + " ms";
  const s = ms / 1000;
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function showLogin(message) {
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#forget-token").hidden = true;
  if (message && token()) setError("token refused: " + message);
}

function setError(message) {
  const e = $("#error");
  e.textContent = message || "";
  e.hidden = !message;
}

// ---- targets ----

async function setPaused(name, paused) {
  await api("POST", "/v1/targets/" + encodeURIComponent(name) + (paused ? "/pause" : "/resume"));
  await refresh();
}

function renderTargets(targets) {
  const body = $("#targets tbody");
  body.replaceChildren(...targets.map((t) => {
    const c = t.counts || {};
    const backlog = (c.pending || 0) + (c.in_flight || 0) + (c.paused || 0);
    const rate = t.recent && t.recent.success_rate !== null && t.recent.success_rate !== undefined
      ? Math.round(t.recent.success_rate * 100) + "% of " + (t.recent.delivered + t.recent.failed)
      : "–";
    const breaker = t.breaker ? t.breaker.state : "closed";
    const cl = t.concurrency_limit;
    const limit = cl
      ? cl.limit + " / " + cl.ceiling + (cl.mode === "fixed" ? " fixed" : "") +
        (cl.pace_per_sec !== null && cl.pace_per_sec !== undefined ? ", paced " + Math.round(cl.pace_per_sec) + "/s" : "")
      : "–";
    const budget = t.retry_budget;
    const limitTitle = cl
      ? cl.mode + "; " + cl.refusals + " refused since start-up" +
        (cl.baseline_ms !== null ? "; unloaded round trip " + cl.baseline_ms.toFixed(1) + " ms" : "") +
        (budget ? "; retry budget " + (budget.engaged ? "engaged" : "idle") + ": " + budget.retries + " of " +
          budget.allowed + " retries in its window, " + budget.held + " held" : "")
      : "";
    const err = t.last_reload_error;
    // Credentials the host holds (never their values) and the OAuth2 token's state.
    const creds = (t.credentials || []).join(" · ");
    const o = t.oauth2;
    const credsTitle = o
      ? "OAuth2 token from " + o.token_url + ": " +
        (o.token_valid_ms !== null ? "valid for " + duration(o.token_valid_ms) : "none cached") +
        "; " + o.fetches + " fetched, " + o.failures + " failed"
      : "credentials the host sets on the plugin's requests";
    const errText = err ? err.message : (o && o.last_error ? o.last_error : "");
    const version = t.loaded ? (t.hash || "").slice(0, 12) + " (" + t.compiled_from + ")" : "not loaded";
    return el("tr", { "data-target": t.name },
      el("td", {}, el("strong", { text: t.name }),
        ...(creds ? [el("div", { class: "creds muted" + (o && o.last_error ? " error" : ""), title: credsTitle, text: creds })] : [])),
      el("td", { class: "mono", title: t.hash || "" }, version),
      el("td", { text: t.class || "–" }),
      el("td", { class: "num backlog", text: backlog }),
      el("td", { class: "num" + ((c.dead || 0) > 0 ? " s-dead" : ""), text: c.dead || 0 }),
      el("td", { class: "num", text: rate }),
      el("td", { class: "num lag", text: t.lag_ms ? duration(t.lag_ms) : "0" }),
      el("td", { class: "num limit" + (cl && cl.limit < cl.ceiling ? " s-limited" : ""), title: limitTitle, text: limit }),
      el("td", { class: "b-" + breaker, text: breaker.replace("_", " ") + (t.breaker && t.breaker.consecutive_failures ? " (" + t.breaker.consecutive_failures + ")" : "") }),
      el("td", { class: "paused", text: t.paused ? "paused" : "no" }),
      el("td", { class: "wrap error", title: err ? err.file : null, text: errText }),
      el("td", {}, el("button", {
        type: "button", class: t.paused ? "resume" : "pause",
        onclick: () => setPaused(t.name, !t.paused).catch(report),
      }, t.paused ? "Resume" : "Pause")),
    );
  }));
}

// ---- one event ----

// A receiver's answer (status and the first KiB of its body) on one line.
function responseText(r) {
  return "HTTP " + r.status + (r.body ? ": " + r.body : "");
}

async function loadEvent(id) {
  shownEvent = id;
  $("#event-id").value = id;
  let ev;
  try {
    ev = await api("GET", "/v1/events/" + encodeURIComponent(id));
  } catch (e) {
    if (!(e instanceof Unauthorized)) $("#event").replaceChildren(el("p", { class: "error", text: e.message }));
    return;
  }
  if (shownEvent !== id) return;
  const rows = [];
  for (const d of ev.deliveries) {
    rows.push(el("tr", { "data-target": d.target, "data-status": d.status },
      el("td", {}, el("strong", { text: d.target })),
      el("td", { class: "status s-" + d.status, text: d.scheduled ? "scheduled" : d.status }),
      el("td", { class: "num", text: d.attempts }),
      el("td", { class: "wrap", text: d.last_error || "" }),
      el("td", { class: "mono", text: d.delivered_at || d.next_attempt_at || "" }),
    ));
    // Each attempt, and under it what the receiver answered (its own text: set as text, never as HTML).
    const history = d.history.flatMap((h) => [
      el("div", { class: "history mono", text: "#" + h.n + " " + h.started_at + " " + h.outcome +
        (h.duration_ms !== null ? " " + h.duration_ms + " ms" : "") + (h.error ? ": " + h.error : "") }),
      ...(h.response ? [el("div", { class: "response mono", "data-attempt": h.n, text: responseText(h.response) })] : []),
      ...(h.detail ? [el("div", { class: "detail mono", "data-attempt": h.n, text: "plugin: " + h.detail })] : []),
    ]);
    rows.push(el("tr", { class: "history-row" }, el("td", { colspan: 5 }, ...history)));
  }
  // Pending, paused and dead deliveries can be cancelled; one in flight finishes its attempt.
  const cancellable = ev.deliveries.filter((d) => ["pending", "paused", "dead"].includes(d.status)).length;
  const sure = confirmCancel === id;
  const actions = el("div", { class: "actions" },
    ...(cancellable > 0 ? [el("button", {
      id: "event-cancel", type: "button", class: sure ? "danger" : null,
      onclick: () => cancelEvent(id).catch(report),
    }, sure ? "Really cancel " + cancellable + (cancellable === 1 ? " delivery?" : " deliveries?") : "Cancel deliveries")] : []),
    ...(sure ? [el("button", { type: "button", onclick: () => { confirmCancel = null; loadEvent(id).catch(report); } }, "Keep them")] : []),
    el("span", { id: "event-cancel-result", class: "muted", text: cancelResult && cancelResult.event === id ? cancelResult.text : "" }));
  $("#event").replaceChildren(
    el("p", {}, el("span", { class: "mono", text: ev.id }), " ", el("strong", { text: ev.type }),
      el("span", { class: "muted", text: " accepted " + ev.created_at }),
      ...(ev.erased_at ? [" ", el("span", { id: "event-erased", class: "erased", text: "payload erased " + ev.erased_at })] : [])),
    actions,
    el("table", { id: "event-deliveries" },
      el("thead", {}, el("tr", {}, ...["target", "status", "attempts", "last error", "delivered / next attempt"].map((h) => el("th", { text: h })))),
      el("tbody", {}, ...rows)),
  );
}

// The first click asks, the second cancels (POST /v1/events/{id}/cancel) and says what happened.
async function cancelEvent(id) {
  if (confirmCancel !== id) {
    confirmCancel = id;
    return loadEvent(id);
  }
  confirmCancel = null;
  const res = await api("POST", "/v1/events/" + encodeURIComponent(id) + "/cancel");
  const running = res.deliveries.filter((d) => d.result === "in_flight").map((d) => d.target);
  cancelResult = { event: id, text: "Cancelled " + res.cancelled + (res.cancelled === 1 ? " delivery" : " deliveries") +
    (running.length ? "; in flight, left to finish: " + running.join(", ") : "") };
  await refresh();
  await loadEvent(id);
}

// ---- dead letters ----

function query(filter) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(filter)) if (v) q.set(k, v);
  return q.toString();
}

function selectedIds() {
  return [...document.querySelectorAll("#dead tbody input[type=checkbox]:checked")].map((c) => Number(c.value));
}

function renderDead(page) {
  const selected = new Set(selectedIds());
  $("#dead tbody").replaceChildren(...page.deliveries.map((d) => el("tr", {
    "data-delivery": d.delivery_id, "data-event": d.event_id, "data-target": d.target, "data-status": d.status,
  },
    el("td", {}, el("input", { type: "checkbox", value: d.delivery_id, checked: selected.has(d.delivery_id), onchange: updateButtons })),
    el("td", { class: "num", text: d.delivery_id }),
    el("td", {}, el("a", { href: "#", class: "mono", onclick: (e) => { e.preventDefault(); loadEvent(d.event_id).catch(report); } }, d.event_id)),
    el("td", { text: d.event_type }),
    el("td", { text: d.target }),
    el("td", { class: "s-" + d.status, text: d.status }),
    el("td", { class: "num", text: d.attempts }),
    el("td", { class: "wrap", text: d.last_error || "" }),
    el("td", { class: "wrap mono response", text: d.last_response ? responseText(d.last_response) : "" }),
    el("td", { class: "mono", text: d.failed_at }),
  )));
  $("#dead-more").hidden = page.next_after === null;
  updateButtons();
}

function updateButtons() {
  $("#replay-selected").disabled = selectedIds().length === 0;
}

function askReplay(body, text) {
  pendingReplay = body;
  $("#confirm-text").textContent = text;
  $("#confirm").hidden = false;
}

async function doReplay() {
  const body = pendingReplay;
  pendingReplay = null;
  $("#confirm").hidden = true;
  if (!body) return;
  const res = await api("POST", "/v1/deliveries/replay", body);
  if (res.id !== undefined) {
    // A filter: a bulk replay job, followed below.
    $("#replay-result").textContent = "Replay job " + res.id + " started: " + res.total +
      (res.total === 1 ? " delivery matches" : " deliveries match");
    followJobs();
  } else {
    $("#replay-result").textContent = "Replayed " + res.replayed + (res.replayed === 1 ? " delivery" : " deliveries") +
      (res.more ? " (more match: replay again for the next ones)" : "");
  }
  $("#dead-all").checked = false;
  await refresh();
  if (shownEvent) await loadEvent(shownEvent);
}

// ---- replay jobs ----

const JOB_POLL_MS = 500;
let followingJobs = false;

function jobFilter(job) {
  const parts = Object.entries(job.filter).map(([k, v]) => k + "=" + v);
  if (job.after) parts.push("after=" + job.after);
  if (job.limit !== null) parts.push("limit=" + job.limit);
  return parts.length ? parts.join(", ") : "every failed delivery";
}

function jobSummary(job) {
  if (job.status === "running") return Math.floor(job.progress * 100) + " %";
  let text = job.status + ": replayed " + job.replayed + " of " + job.total;
  if (job.skipped) text += ", skipped " + job.skipped + " (payload erased)";
  if (job.error) text += ": " + job.error;
  if (job.finished_at) text += " · " + job.finished_at;
  return text;
}

async function cancelJob(id) {
  await api("POST", "/v1/replays/" + id + "/cancel");
  await loadJobs();
}

function renderJobs(jobs) {
  $("#replays-none").hidden = jobs.length > 0;
  $("#replays tbody").replaceChildren(...jobs.map((j) => el("tr", { "data-job": j.id, "data-status": j.status },
    el("td", { class: "num", text: j.id }),
    el("td", { class: "j-" + j.status, text: j.status }),
    el("td", {}, el("progress", { value: j.replayed + j.skipped, max: Math.max(j.total, 1), title: Math.floor(j.progress * 100) + " %" })),
    el("td", { class: "num", text: j.replayed }),
    el("td", { class: "num", text: j.skipped }),
    el("td", { class: "num", text: j.total }),
    el("td", { class: "wrap", text: jobFilter(j) }),
    el("td", { class: "mono", text: j.created_at }),
    el("td", { class: "summary", text: jobSummary(j) }),
    el("td", {}, j.status === "running"
      ? el("button", { type: "button", class: "danger", onclick: () => cancelJob(j.id).catch(report) }, "Cancel job")
      : ""),
  )));
  return jobs.some((j) => j.status === "running");
}

// The jobs; `false` when this token may not see them (they need the `admin` scope).
async function loadJobs() {
  try {
    return renderJobs((await api("GET", "/v1/replays?limit=10")).jobs);
  } catch (e) {
    if (e instanceof Unauthorized) throw e;
    $("#replays-section").hidden = true;
    return false;
  }
}

// While a job runs, its progress is shown twice a second.
async function followJobs() {
  if (followingJobs) return;
  followingJobs = true;
  try {
    while (await loadJobs()) await new Promise((r) => setTimeout(r, JOB_POLL_MS));
  } catch (e) {
    report(e);
  } finally {
    followingJobs = false;
  }
}

// ---- polling ----

function report(e) {
  if (!(e instanceof Unauthorized)) setError(e.message);
}

async function refresh() {
  const [targets, dead] = await Promise.all([
    api("GET", "/v1/targets"),
    api("GET", "/v1/deliveries/failed?" + query({ ...deadFilter, limit: 100 })),
  ]);
  renderTargets(targets);
  renderDead(dead);
  if (!followingJobs && await loadJobs()) followJobs();
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#forget-token").hidden = !token();
  setError("");
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString() + " · every " + POLL_MS / 1000 + " s";
}

async function tick() {
  try {
    await refresh();
    if (shownEvent) await loadEvent(shownEvent);
  } catch (e) {
    report(e);
  }
  setTimeout(tick, POLL_MS);
}

$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token-input").value.trim());
  $("#token-input").value = "";
  refresh().catch(report);
});
$("#forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin();
});
$("#event-form").addEventListener("submit", (e) => {
  e.preventDefault();
  loadEvent($("#event-id").value.trim()).catch(report);
});
$("#dead-filter").addEventListener("submit", (e) => {
  e.preventDefault();
  deadFilter = Object.fromEntries(new FormData(e.target).entries());
  refresh().catch(report);
});
$("#dead-all").addEventListener("change", (e) => {
  for (const c of document.querySelectorAll("#dead tbody input[type=checkbox]")) c.checked = e.target.checked;
  updateButtons();
});
$("#replay-selected").addEventListener("click", () => {
  const ids = selectedIds();
  askReplay({ delivery_ids: ids }, "Replay " + ids.length + " selected " + (ids.length === 1 ? "delivery" : "deliveries") + "?");
});
$("#replay-all").addEventListener("click", () => {
  const filter = Object.fromEntries(Object.entries(deadFilter).filter(([, v]) => v));
  const described = Object.entries(filter).map(([k, v]) => k + "=" + v).join(", ");
  askReplay(filter, "Replay every failed delivery" + (described ? " matching " + described : "") + "?");
});
$("#confirm-yes").addEventListener("click", () => doReplay().catch(report));
$("#confirm-no").addEventListener("click", () => { pendingReplay = null; $("#confirm").hidden = true; });

tick();
