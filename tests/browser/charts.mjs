// Drives the dashboard's charts, events page and sources panel in headless Chromium while
// outboxd is under load. Run by tests/tests/dashboard_charts.rs, which checks what this script
// prints against the store.
//
// Environment: DASHBOARD_URL, ARTIFACTS (a directory for the screenshots), SEARCH_KEY (the
// idempotency key of an event billing refused), EXPECTED_DELIVERIES (how many deliveries
// there are once the load is over), CHROMIUM, TIMEOUT_MS.
import { chromium } from "playwright-core";
import path from "node:path";

const url = process.env.DASHBOARD_URL;
const artifacts = process.env.ARTIFACTS;
const searchKey = process.env.SEARCH_KEY;
const expected = Number(process.env.EXPECTED_DELIVERIES);
const timeout = Number(process.env.TIMEOUT_MS || 60000);
if (!url || !artifacts || !searchKey || !expected) {
  console.error("DASHBOARD_URL, ARTIFACTS, SEARCH_KEY and EXPECTED_DELIVERIES are required");
  process.exit(2);
}
const shot = (name) => path.join(artifacts, "dashboard-" + name + ".png");
const step = (what) => console.log("step: " + what);
// Polls a condition from Node (the page's CSP forbids page.waitForFunction's eval).
const until = async (what, check) => {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
};
// The API, from Node (not through the page).
const api = async (p) => {
  const res = await fetch(new URL(p, url), { headers: { "X-Outboxd-Request": "dashboard" } });
  if (!res.ok) throw new Error(p + ": HTTP " + res.status);
  return res.json();
};
// What the deliveries chart draws: the sum of its bars of each kind.
const drawn = (page) => page.$$eval("#chart-deliveries rect.bar", (bars) => {
  const sum = { delivered: 0, retried: 0, failed: 0 };
  for (const b of bars) for (const k of Object.keys(sum)) if (b.classList.contains(k)) sum[k] += Number(b.dataset.value);
  return `delivered=${sum.delivered} retried=${sum.retried} failed=${sum.failed}`;
});

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run",
  ],
});
let page;
const pageErrors = [];
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 1000 } });
  page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const offsite = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) offsite.push(r.url()); });
  page.on("pageerror", (e) => { pageErrors.push(e.message); console.error("page error: " + e.message); });
  page.on("console", (m) => { if (m.type() === "error") console.error("console: " + m.text()); });

  step("open the dashboard under load");
  await page.goto(url);
  await page.selectOption("#chart-minutes", "15");
  await until("the chart to draw delivered, retried and failed attempts", async () => {
    const d = await drawn(page);
    return !/=0\b/.test(d);
  });
  console.log("under load: " + (await drawn(page)) + " ");
  const title = await page.textContent("#chart-deliveries title");
  console.log("chart title: " + title);
  await page.screenshot({ path: shot("charts") });

  step("the sources panel shows the relay");
  await until("the source to relay its rows", async () =>
    Number(await page.locator('#sources-table tr[data-source="shop"] td.relayed').textContent().catch(() => "0")) >= 20);
  const state = await page.getAttribute('#sources-table tr[data-source="shop"]', "data-state");
  const relayed = await page.textContent('#sources-table tr[data-source="shop"] td.relayed');
  console.log("source: shop " + state + " " + relayed);
  await page.locator("#sources-section").screenshot({ path: shot("sources") });

  step("search an event by its key and open it");
  await page.fill('#events-search input[name="key"]', searchKey);
  await page.click("#events-search-go");
  await until("the search to find it", async () => {
    const rows = await page.$$eval("#events tbody tr", (rs) => rs.map((r) => r.dataset.event));
    return rows.length === 1;
  });
  const found = await page.$$eval("#events tbody tr", (rs) => rs.map((r) => r.dataset.event));
  console.log("search: " + found.length + " " + found[0]);
  // Its delivery to billing dies after three refused attempts: wait until the list says so.
  await until("billing to be dead in the listing", async () => {
    await page.click("#events-search-go");
    return (await page.locator('#events tbody tr .chip[data-target="billing"][data-status="dead"]').count()) === 1;
  });
  await page.click("#events tbody tr a.event-link");
  await page.waitForSelector('#event-deliveries tr[data-target="billing"][data-status="dead"]');
  const answers = await page.$$eval("#event-deliveries .response", (els) => els.map((e) => e.textContent));
  // One line: a body's line breaks (the receiver's own) written as \\n.
  console.log("answers: " + answers.map((a) => a.replace(/\n/g, "\\n")).join(" | "));
  await page.evaluate(() => document.querySelector("#events-section").scrollIntoView({ block: "start" }));
  await page.screenshot({ path: shot("events") });

  step("once the load is over, the chart draws what the API says");
  await until("every delivery to be final", async () => {
    const targets = await api("/v1/targets");
    let final = 0, backlog = 0;
    for (const t of targets) {
      final += (t.counts.delivered || 0) + (t.counts.dead || 0);
      backlog += (t.counts.pending || 0) + (t.counts.in_flight || 0) + (t.counts.paused || 0);
    }
    return final === expected && backlog === 0;
  });
  // A refresh that started after the last attempt was counted.
  const settled = Date.now();
  await until("the charts to refresh", async () => Number(await page.getAttribute("#charts", "data-updated")) > settled);
  const history = await api("/v1/history?minutes=15");
  const sum = (k) => history.all.reduce((a, p) => a + p[k], 0);
  console.log("drawn: " + (await drawn(page)));
  console.log("history: " + `delivered=${sum("delivered")} retried=${sum("retried")} failed=${sum("failed")}`);
  console.log("latency points: " + (await page.locator("#chart-latency polyline.p99, #chart-latency circle.p99").count()));
  const series = await page.$$eval("#chart-backlog [data-series]", (els) => [...new Set(els.map((e) => e.dataset.series))]);
  console.log("backlog series: " + series.join(","));

  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: shot("full"), fullPage: true });
  console.log("offsite requests: " + offsite.length + (offsite.length ? " " + offsite.join(" ") : ""));
  console.log("page errors: " + pageErrors.length);
} catch (e) {
  console.error("FAILED: " + e.message);
  if (page) await page.screenshot({ path: shot("full"), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
