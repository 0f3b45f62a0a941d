// outboxd dashboard: the events page. A search form over GET /v1/events (type, idempotency
// key, delivery status, target, time range), newest first, a page at a time; a click on an
// event opens its whole attempt history with the receivers' answers in the event view of
// app.js (loadEvent). Uses api(), el(), report() and loadEvent() of app.js.
"use strict";

const EVENTS_PAGE = 25;
let eventSearch = {};
// The `before` of each page shown so far: the first page has none.
let eventPages = [null];

async function searchEvents() {
  const before = eventPages[eventPages.length - 1];
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(eventSearch)) if (v) q.set(k, v);
  q.set("limit", EVENTS_PAGE);
  if (before) q.set("before", before);
  const page = await api("GET", "/v1/events?" + q.toString());
  renderEvents(page);
  return page;
}

function openEvent(id) {
  loadEvent(id).then(() => $("#event-section").scrollIntoView({ behavior: "instant", block: "start" })).catch(report);
}

function renderEvents(page) {
  $("#events tbody").replaceChildren(...page.events.map((ev) => el("tr", { "data-event": ev.id },
    el("td", {}, el("a", { href: "#event-section", class: "mono event-link", onclick: (e) => { e.preventDefault(); openEvent(ev.id); } }, ev.id)),
    el("td", { text: ev.type }),
    el("td", { class: "mono wrap", text: ev.idempotency_key || "" }),
    el("td", { class: "mono", text: ev.created_at }),
    el("td", {}, ...ev.deliveries.map((d) =>
      el("span", { class: "chip s-" + d.status, "data-target": d.target, "data-status": d.status }, d.target + " " + d.status.replace("_", " ")))),
  )));
  const n = eventPages.length;
  $("#events-note").textContent = page.events.length === 0
    ? "No event matches."
    : "Page " + n + ": " + page.events.length + (page.events.length === 1 ? " event" : " events") + ", newest first";
  $("#events-older").hidden = page.next_before === null;
  $("#events-older").onclick = () => { eventPages.push(page.next_before); searchEvents().catch(report); };
  $("#events-newer").hidden = n === 1;
}

$("#events-search").addEventListener("submit", (e) => {
  e.preventDefault();
  eventSearch = Object.fromEntries([...new FormData(e.target).entries()].map(([k, v]) => [k, String(v).trim()]));
  eventPages = [null];
  searchEvents().catch(report);
});
$("#events-newer").addEventListener("click", () => { eventPages = [null]; searchEvents().catch(report); });
// The first page follows new events (every 5 s); an older page stays as it is.
async function eventsTick() {
  try {
    if (eventPages.length === 1) await searchEvents();
  } catch (e) {
    report(e);
  }
  setTimeout(eventsTick, 5000);
}
eventsTick();
