// outboxd dashboard: the sources panel, from GET /v1/sources: each application outbox table
// relayed into outboxd, its state, lag, rows relayed and refused, and its last error.
// Uses api(), el(), duration() and report() of app.js.
"use strict";

const SOURCES_POLL_MS = 5000;

function renderSources(sources) {
  if (sources.length === 0) {
    $("#sources").replaceChildren(el("p", { id: "sources-empty", class: "muted" },
      "No sources configured. A ", el("code", { text: "[[sources]]" }),
      " entry in outboxd.toml relays an application's outbox table (SQLite, PostgreSQL, MySQL) into outboxd."));
    return;
  }
  $("#sources").replaceChildren(el("table", { id: "sources-table" },
    el("thead", {}, el("tr", {}, ...["source", "reads", "state", "lag", "relayed", "duplicate", "refused", "last poll", "last error"]
      .map((h) => el("th", { text: h })))),
    el("tbody", {}, ...sources.map((s) => el("tr", { "data-source": s.name, "data-state": s.state },
      el("td", {}, el("strong", { text: s.name })),
      el("td", { class: "mono", text: s.kind + " " + s.table }),
      el("td", { class: "state st-" + s.state, text: s.state }),
      el("td", { class: "num lag", text: s.lag_ms === null ? "–" : duration(s.lag_ms) }),
      el("td", { class: "num relayed", text: s.rows_relayed }),
      el("td", { class: "num", text: s.rows_duplicate }),
      el("td", { class: "num" + (s.rows_failed > 0 ? " s-dead" : ""), text: s.rows_failed }),
      el("td", { class: "mono", text: s.last_poll_at || "never" }),
      el("td", { class: "wrap error", title: s.last_error ? s.last_error.at : null,
        text: s.last_error ? s.last_error.message : (s.last_bad_row ? "bad row: " + s.last_bad_row.message : "") }),
    )))));
}

async function sourcesTick() {
  try {
    renderSources(await api("GET", "/v1/sources"));
  } catch (e) {
    report(e);
  }
  setTimeout(sourcesTick, SOURCES_POLL_MS);
}
sourcesTick();
