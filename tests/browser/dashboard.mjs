// Drives the outboxd dashboard in real headless Chromium (Debian's /usr/bin/chromium) through
// playwright-core. Run by tests/tests/dashboard.rs, which starts outboxd with three targets,
// one of whose deliveries is dead, and checks what this script prints. With CANCEL_EVENT, it
// also cancels that event (whose delivery to a target is dead) from the event view; with
// ERASED_EVENT, it looks that event up and prints what the page says about its payload. With
// BULK_TARGET, it filters the dead letters to that target, replays all matching (a replay job)
// and watches the job's progress bar reach the end (screenshots while it runs and when done).
//
// Environment: DASHBOARD_URL, DASHBOARD_TOKEN (an admin token), SCREENSHOT (output path),
// CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS (default 30000), TARGETS (how many the
// page lists, default 3).
import { chromium } from "playwright-core";

const url = process.env.DASHBOARD_URL;
const token = process.env.DASHBOARD_TOKEN;
const screenshot = process.env.SCREENSHOT;
const timeout = Number(process.env.TIMEOUT_MS || 30000);
if (!url || !token || !screenshot) {
  console.error("DASHBOARD_URL, DASHBOARD_TOKEN and SCREENSHOT are required");
  process.exit(2);
}

const step = (what) => console.log("step: " + what);
// Polls a condition from Node. (`page.waitForFunction` evaluates its predicate with `eval` in
// the page, which the dashboard's Content-Security-Policy rightly forbids.)
const until = async (what, check) => {
  const deadline = Date.now() + timeout;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error("timed out waiting for " + what);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
};

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
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  page = await context.newPage();
  page.setDefaultTimeout(timeout);
  const offsite = [];
  page.on("request", (r) => { if (!r.url().startsWith(url)) offsite.push(r.url()); });
  page.on("pageerror", (e) => console.error("page error: " + e.message));

  step("open the dashboard");
  await page.goto(url);
  step("it asks for a token");
  await page.waitForSelector("#login:not([hidden])");
  await page.fill("#token-input", token);
  await page.click("#token-save");

  const expected = Number(process.env.TARGETS || 3);
  step(expected + " targets");
  await until(expected + " targets", async () => (await page.locator("#targets tbody tr").count()) === expected);
  const names = await page.$$eval("#targets tbody tr", (rows) => rows.map((r) => r.dataset.target));
  console.log("targets: " + names.join(","));

  step("a dead delivery");
  const dead = page.locator('#dead tbody tr[data-status="dead"]').first();
  await dead.waitFor();
  const eventId = await dead.getAttribute("data-event");
  const target = await dead.getAttribute("data-target");
  console.log("dead: " + target + " " + eventId);
  console.log("dead response: " + (await dead.locator("td.response").textContent()));

  step("select it and replay with the button, confirming");
  await dead.locator("input[type=checkbox]").check();
  await page.click("#replay-selected");
  await page.waitForSelector("#confirm:not([hidden])");
  console.log("confirm: " + (await page.textContent("#confirm-text")));
  await page.click("#confirm-yes");
  await until("the replay result", async () => ((await page.textContent("#replay-result")) || "").startsWith("Replayed"));
  console.log("result: " + (await page.textContent("#replay-result")));

  step("the event shows the delivery delivered");
  await page.fill("#event-id", eventId);
  await page.click("#event-lookup");
  await page.waitForSelector(`#event-deliveries tr[data-target="${target}"][data-status="delivered"]`);
  const statuses = await page.$$eval("#event-deliveries tr[data-target]", (rows) =>
    rows.map((r) => r.dataset.target + "=" + r.dataset.status));
  console.log("event: " + statuses.join(","));
  const responses = await page.$$eval("#event-deliveries .response", (els) => els.map((e) => e.textContent));
  // One line: a body's line breaks (the receiver's own) written as \n.
  console.log("responses: " + responses.map((r) => r.replace(/\n/g, "\\n")).join(" | "));
  step("the dead-letter list no longer shows it");
  await until("the replayed row to leave the list", async () =>
    (await page.locator(`#dead tbody tr[data-event="${eventId}"]`).count()) === 0);

  const cancelId = process.env.CANCEL_EVENT;
  if (cancelId) {
    step("cancel another event's dead delivery, confirming");
    await page.fill("#event-id", cancelId);
    await page.click("#event-lookup");
    await page.waitForSelector(`#event-deliveries tr[data-status="dead"]`);
    await page.click("#event-cancel");
    await until("the confirmation", async () => ((await page.textContent("#event-cancel")) || "").startsWith("Really"));
    console.log("cancel confirm: " + (await page.textContent("#event-cancel")));
    await page.click("#event-cancel");
    await page.waitForSelector(`#event-deliveries tr[data-status="cancelled"]`);
    await until("the cancel result", async () => ((await page.textContent("#event-cancel-result")) || "").startsWith("Cancelled"));
    console.log("cancel result: " + (await page.textContent("#event-cancel-result")));
    const after = await page.$$eval("#event-deliveries tr[data-target]", (rows) =>
      rows.map((r) => r.dataset.target + "=" + r.dataset.status));
    console.log("cancelled event: " + after.join(","));
    console.log("cancel button left: " + (await page.locator("#event-cancel").count()));
  }

  const erasedId = process.env.ERASED_EVENT;
  if (erasedId) {
    step("an erased event says so");
    await page.fill("#event-id", erasedId);
    await page.click("#event-lookup");
    await page.waitForSelector("#event-erased");
    console.log("erased: " + (await page.textContent("#event-erased")));
  }

  const bulk = process.env.BULK_TARGET;
  if (bulk) {
    step("filter the dead letters to " + bulk + " and replay all matching, confirming: a replay job");
    await page.fill('#dead-filter input[name="target"]', bulk);
    await page.click('#dead-filter button[type="submit"]');
    await until("only " + bulk + "'s dead letters", async () =>
      (await page.locator(`#dead tbody tr[data-target="${bulk}"]`).count()) > 0 &&
      (await page.locator(`#dead tbody tr:not([data-target="${bulk}"])`).count()) === 0);
    await page.click("#replay-all");
    await page.waitForSelector("#confirm:not([hidden])");
    console.log("bulk confirm: " + (await page.textContent("#confirm-text")));
    await page.click("#confirm-yes");
    await until("the job to start", async () => ((await page.textContent("#replay-result")) || "").startsWith("Replay job"));
    console.log("bulk result: " + (await page.textContent("#replay-result")));
    step("watch the job's progress bar reach the end");
    const row = page.locator("#replays tbody tr").first();
    await row.waitFor();
    const seen = [];
    let max = null;
    let shotRunning = false;
    await until("the job's progress to reach the end", async () => {
      const bar = row.locator("progress");
      const value = Number(await bar.getAttribute("value"));
      max = Number(await bar.getAttribute("max"));
      const status = await row.getAttribute("data-status");
      if (seen[seen.length - 1] !== value) seen.push(value);
      if (status === "running" && !shotRunning) {
        shotRunning = true;
        await page.screenshot({ path: screenshot.replace(/\.png$/, "-replay-running.png"), fullPage: true });
        console.log("screenshot while running at " + value + "/" + max);
      }
      return status === "done" && value === max;
    });
    console.log("bulk progress: " + seen.join(","));
    console.log("bulk max: " + max);
    console.log("bulk summary: " + (await row.locator("td.summary").textContent()));
    console.log("bulk cancel buttons: " + (await row.locator("button").count()));
    await page.screenshot({ path: screenshot.replace(/\.png$/, "-replay-done.png"), fullPage: true });
  }

  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("screenshot: " + screenshot);
  console.log("offsite requests: " + offsite.length + (offsite.length ? " " + offsite.join(" ") : ""));
} catch (e) {
  console.error("FAILED: " + e.message);
  if (page) await page.screenshot({ path: screenshot, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
