// The dashboard end to end: headless Chromium (Debian's package) driven by playwright-core
// against a real `runnel serve` and a real `runnel worker`, as a person would use it.
//
// The Rust harness (crates/runnel-cli/tests/dashboard_e2e.rs) starts both and runs this
// file with:
//   RUNNEL_E2E_URL          the server
//   RUNNEL_E2E_KEY          a secret key of the environment the worker serves
//   RUNNEL_E2E_KEY_PREFIX   the part of that key `runnel keys list` shows
//   RUNNEL_E2E_OTHER_KEY    a secret key of another environment of the same project
//   RUNNEL_E2E_SCREENSHOTS  the directory that receives one PNG per page visited
//   RUNNEL_E2E_CHROMIUM     the browser (default /usr/bin/chromium; never downloaded)
// The worker serves `hello` (prints its payload back), `slow` (sleeps two minutes) and
// `nightly` (a scheduled task printing its payload back).
//
// The steps run in order and build on each other (one browser, one signed-in session);
// the first failing step names what broke. Nothing waits for a fixed time: every wait
// polls for a condition with a deadline.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";
import { chromium } from "playwright-core";

for (const name of [
  "RUNNEL_E2E_URL",
  "RUNNEL_E2E_KEY",
  "RUNNEL_E2E_KEY_PREFIX",
  "RUNNEL_E2E_OTHER_KEY",
  "RUNNEL_E2E_SCREENSHOTS",
]) {
  assert.ok(process.env[name], `${name} must be set (run through cargo test -p runnel --test dashboard_e2e)`);
}
const baseUrl = process.env.RUNNEL_E2E_URL;
const key = process.env.RUNNEL_E2E_KEY;
const keyPrefix = process.env.RUNNEL_E2E_KEY_PREFIX;
const otherKey = process.env.RUNNEL_E2E_OTHER_KEY;
const screenshots = process.env.RUNNEL_E2E_SCREENSHOTS;
const executablePath = process.env.RUNNEL_E2E_CHROMIUM || "/usr/bin/chromium";

/** How long a page may take to show what it should (live updates included). */
const UI_TIMEOUT_MS = 10_000;
/** How long a run may take to reach a status through the worker. */
const RUN_TIMEOUT_MS = 15_000;
/** This machine's network is closed: without these Chromium stalls on connections it tries. */
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const DESKTOP = { width: 1280, height: 800 };
const NARROW = { width: 390, height: 844 };

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until it returns a truthy value (returned); fails after `timeoutMs`. */
async function until(what, probe, timeoutMs = UI_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
      last = value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) assert.fail(`${what}: not within ${timeoutMs} ms (last: ${last})`);
    await sleep(50);
  }
}

// ---- the HTTP API, with a secret key ----

const API_VERSION = "2025-07-16";

async function api(method, path, body, secret = key) {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${secret}`,
      // The v4 SDK's version: statuses in the vocabulary the dashboard shows.
      "x-trigger-api-version": API_VERSION,
      ...(body === undefined ? {} : { "content-type": "application/json" }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

async function trigger(task, payload, tags) {
  const { id } = await api("POST", `/api/v1/tasks/${task}/trigger`, { payload, options: { tags } });
  assert.match(id, /^run_/);
  return id;
}

const runStatus = async (id) => (await api("GET", `/api/v3/runs/${id}`)).status;

async function waitForStatus(id, status) {
  await until(`run ${id} reaching ${status}`, async () => (await runStatus(id)) === status, RUN_TIMEOUT_MS);
}

// ---- the browser ----

let context;
let page;
let userDataDir;
const shots = [];

/** A full-page screenshot of what `target` shows, named `name.png`. */
async function screenshot(name, target = page) {
  const path = join(screenshots, `${name}.png`);
  await target.screenshot({ path, fullPage: true });
  shots.push(path);
}

const h1 = (target = page) => target.getByRole("heading", { level: 1 });
const nav = (target = page) => target.getByRole("navigation", { name: "Dashboard" });
const statusField = (target = page) => target.locator('[data-field="status"]').first();
const runRow = (id, target = page) => target.locator(`tr[data-run-id="${id}"]`);
const runRowIds = (target = page) =>
  target.locator("tr[data-run-id]").evaluateAll((rows) => rows.map((row) => row.dataset.runId));

async function text(locator) {
  return ((await locator.textContent({ timeout: UI_TIMEOUT_MS })) ?? "").trim();
}

async function expectHeading(expected, target = page) {
  await until(`an h1 "${expected}" on ${target.url()}`, async () => (await text(h1(target))) === expected);
}

/**
 * Clicks `locator` (which submits a form or follows a link) and waits until the page has
 * navigated to a URL matching `url` (a full URL, a RegExp or a predicate on a URL) and
 * loaded it. Unlike `page.waitForURL`, a form that posts and is redirected back to the
 * URL already shown still waits for that new navigation.
 */
async function clickTo(locator, url) {
  const matches =
    typeof url === "function" ? url : url instanceof RegExp ? (u) => url.test(u.href) : (u) => u.href === url;
  await Promise.all([
    page.waitForEvent("framenavigated", {
      predicate: (frame) => frame === page.mainFrame() && matches(new URL(frame.url())),
      timeout: UI_TIMEOUT_MS,
    }),
    locator.click(),
  ]);
  await page.waitForLoadState("load");
}

async function signIn(secret) {
  await page.goto(`${baseUrl}/dashboard/login`);
  await expectHeading("Sign in");
  await page.getByLabel("Secret key").fill(secret);
  await clickTo(page.getByRole("button", { name: "Sign in" }), /\/dashboard\/runs$/);
  await expectHeading("Runs");
}

/** Applies the runs filter form with `fields` (label → value); the others are cleared. */
async function filterRuns(fields) {
  const { Status = "", Task = "", Tag = "", From = "", To = "" } = fields;
  await page.getByLabel("Status").selectOption(Status);
  await page.getByLabel("Task").fill(Task);
  await page.getByLabel("Tag").fill(Tag);
  await page.getByLabel("Created from").fill(From);
  await page.getByLabel("Created to").fill(To);
  await clickTo(page.getByRole("button", { name: "Filter" }), (url) => url.pathname === "/dashboard/runs" && url.search !== "");
  await expectHeading("Runs");
}

/**
 * A step of the walk-through: `test`, skipped once an earlier step failed (the steps
 * build on each other, so the first failure is the one that says what broke).
 */
let failedStep;
function step(name, fn) {
  test(name, async (t) => {
    if (failedStep) {
      t.skip(`after the failed step "${failedStep}"`);
      return;
    }
    try {
      await fn();
    } catch (error) {
      failedStep = name;
      // What the page showed when the step failed, next to the others.
      await screenshot("failed-step").catch(() => {});
      throw error;
    }
  });
}

// ---- the runs this file makes ----

const tag = `e2e-${randomUUID().slice(0, 8)}`;
const otherTag = `${tag}-other`;
let helloId; // COMPLETED, tagged `tag`
let otherHelloId; // COMPLETED, tagged `otherTag`
let waitingId; // never runs (no worker serves its task: PENDING_VERSION), tagged `tag`
let waitingStatus; // its status, as the API reports it
let slowId; // EXECUTING until the dashboard cancels it
let replayId; // the replay of the canceled slow run

describe("the dashboard in headless Chromium", () => {
  before(async () => {
    rmSync(screenshots, { recursive: true, force: true });
    mkdirSync(screenshots, { recursive: true });
    userDataDir = mkdtempSync(join(tmpdir(), "runnel-e2e-chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: DESKTOP,
    });
    context.setDefaultTimeout(UI_TIMEOUT_MS);
    context.setDefaultNavigationTimeout(UI_TIMEOUT_MS);
    page = context.pages()[0] ?? (await context.newPage());

    helloId = await trigger("hello", { greeting: "hello from e2e" }, [tag]);
    otherHelloId = await trigger("hello", { greeting: "the other one" }, [otherTag]);
    waitingId = await trigger("e2e-nobody-serves-this", { waiting: true }, [tag]);
    await waitForStatus(helloId, "COMPLETED");
    await waitForStatus(otherHelloId, "COMPLETED");
    waitingStatus = await runStatus(waitingId);
    assert.ok(["PENDING_VERSION", "QUEUED"].includes(waitingStatus), `an unserved task's run is ${waitingStatus}`);
  });

  after(async () => {
    await context?.close();
    if (userDataDir) rmSync(userDataDir, { recursive: true, force: true });
    console.log(`screenshots:\n${shots.map((s) => `  ${s}`).join("\n")}`);
  });

  step("a page without a session goes to sign-in; a wrong key is refused with an alert", async () => {
    const response = await page.goto(`${baseUrl}/dashboard/runs`);
    assert.equal(new URL(page.url()).pathname, "/dashboard/login", "no session: redirected to sign-in");
    assert.equal(response.status(), 200);
    await expectHeading("Sign in");
    assert.equal(await page.getByLabel("Secret key").getAttribute("type"), "password");
    await screenshot("01-sign-in");

    await page.getByLabel("Secret key").fill(`${key.slice(0, -4)}zzzz`);
    const [refused] = await Promise.all([
      page.waitForResponse((r) => r.request().method() === "POST" && new URL(r.url()).pathname === "/dashboard/login"),
      page.getByRole("button", { name: "Sign in" }).click(),
    ]);
    assert.equal(refused.status(), 401);
    await until("the alert", async () => (await text(page.getByRole("alert"))).includes("Invalid secret key"));
    await screenshot("02-sign-in-refused");
  });

  step("the right key lands on Runs, which lists this environment's runs", async () => {
    await signIn(key);
    const names = await nav().getByRole("link").allTextContents();
    for (const name of ["Runs", "Queues", "Schedules", "Tokens", "Keys"]) {
      assert.ok(names.map((n) => n.trim()).includes(name), `nav links ${JSON.stringify(names)} lack ${name}`);
    }
    assert.ok(await page.getByRole("button", { name: "Sign out" }).isVisible());
    const ids = await runRowIds();
    for (const id of [helloId, otherHelloId, waitingId]) assert.ok(ids.includes(id), `${id} not in ${ids}`);
    assert.equal(await text(runRow(helloId).locator('[data-field="status"]')), "COMPLETED");
    assert.equal(await text(runRow(waitingId).locator('[data-field="status"]')), waitingStatus);
    // The run id is a link to its page.
    assert.equal(
      await runRow(helloId).getByRole("link", { name: helloId }).getAttribute("href"),
      `/dashboard/runs/${helloId}`,
    );
    await screenshot("03-runs");
  });

  step("filtering by status and by tag shows only the matching rows", async () => {
    await filterRuns({ Status: "COMPLETED" });
    assert.equal(new URL(page.url()).searchParams.get("status"), "COMPLETED");
    let ids = await runRowIds();
    assert.ok(ids.includes(helloId) && ids.includes(otherHelloId), `completed runs missing: ${ids}`);
    assert.ok(!ids.includes(waitingId), `the waiting run is still listed: ${ids}`);
    for (const cell of await page.locator('tr[data-run-id] [data-field="status"]').allTextContents()) {
      assert.equal(cell.trim(), "COMPLETED");
    }
    await screenshot("04-runs-completed");

    await filterRuns({ Tag: tag });
    ids = await runRowIds();
    assert.deepEqual(new Set(ids), new Set([helloId, waitingId]), "only the runs tagged this way");

    await filterRuns({ Status: waitingStatus, Tag: tag });
    assert.deepEqual(await runRowIds(), [waitingId]);
    await screenshot("05-runs-waiting-tagged");

    await filterRuns({ Task: "hello", Tag: tag });
    assert.deepEqual(await runRowIds(), [helloId], "only the tagged run of that task");

    // datetime-local values; a day either side of now is clear of any time zone's offset.
    const local = (date) => date.toISOString().slice(0, 16);
    const dayAgo = local(new Date(Date.now() - 86_400_000));
    const dayAhead = local(new Date(Date.now() + 86_400_000));
    await filterRuns({ Tag: tag, From: dayAgo, To: dayAhead });
    assert.deepEqual(new Set(await runRowIds()), new Set([helloId, waitingId]), "created today");
    await filterRuns({ Tag: tag, From: dayAhead });
    assert.deepEqual(await runRowIds(), [], "none created from tomorrow on");

    await filterRuns({ Tag: `${tag}-nothing` });
    assert.deepEqual(await runRowIds(), []);
    assert.ok(await page.getByText("No runs match.").isVisible());
  });

  step("a run's page shows its status, sections, payload and output", async () => {
    await filterRuns({ Tag: tag, Status: "COMPLETED" });
    await clickTo(runRow(helloId).getByRole("link", { name: helloId }), `${baseUrl}/dashboard/runs/${helloId}`);
    assert.ok((await text(h1())).includes(helloId), "the h1 names the run");
    assert.equal(await text(statusField()), "COMPLETED");
    for (const section of ["Timeline", "Attempts", "Payload", "Output", "Tags", "Metadata", "Related runs"]) {
      assert.ok(
        await page.getByRole("heading", { level: 2, name: section }).first().isVisible(),
        `no visible h2 "${section}"`,
      );
    }
    const body = await text(page.locator("main"));
    // `cat` printed the payload back: it is both the payload and the output.
    assert.ok(body.includes("hello from e2e"), "the payload is shown");
    assert.ok(body.includes(tag), "the tag is shown");
    // A final run has nothing to cancel.
    assert.equal(await page.getByRole("button", { name: "Cancel run" }).count(), 0);
    await screenshot("06-run-completed");
  });

  step("canceling an executing run changes its status live, without a reload", async () => {
    slowId = await trigger("slow", { nap: 120 }, [tag]);
    await waitForStatus(slowId, "EXECUTING");

    // "Cancel run" is a POST form: the tab that clicks it navigates (back to the run's
    // page, rendered anew). So a second tab watches the run; it never navigates, and
    // what it shows next comes from the live updates alone.
    const watcher = await context.newPage();
    await watcher.goto(`${baseUrl}/dashboard/runs/${slowId}`);
    assert.equal(await text(statusField(watcher)), "EXECUTING");
    await watcher.evaluate(() => {
      window.runnelE2eMarker = "still the same document";
    });
    let navigations = 0;
    watcher.on("framenavigated", (frame) => {
      if (frame === watcher.mainFrame()) navigations += 1;
    });

    await page.goto(`${baseUrl}/dashboard/runs/${slowId}`);
    assert.equal(await text(statusField()), "EXECUTING");
    await screenshot("07-run-executing");
    await clickTo(page.getByRole("button", { name: "Cancel run" }), `${baseUrl}/dashboard/runs/${slowId}`);
    await until("the canceled status on the page that canceled", async () => (await text(statusField())) === "CANCELED");
    assert.equal(await runStatus(slowId), "CANCELED");

    await until("the watching tab showing CANCELED", async () => (await text(statusField(watcher))) === "CANCELED");
    assert.equal(
      await watcher.evaluate(() => window.runnelE2eMarker),
      "still the same document",
      "the watching tab reloaded",
    );
    assert.equal(navigations, 0, "the watching tab navigated");
    await until("the Cancel run button hidden once final", () =>
      watcher.getByRole("button", { name: "Cancel run" }).isHidden(),
    );
    await until("the reload notice", () => watcher.getByText("Status changed; reload for details").isVisible());
    await screenshot("08-run-canceled-live", watcher);
    await watcher.close();
  });

  step("replaying the canceled run lands on the new run's page", async () => {
    await clickTo(page.getByRole("button", { name: "Replay run" }), (url) => {
      const match = url.pathname.match(/^\/dashboard\/runs\/(run_[^/]+)$/);
      return Boolean(match) && match[1] !== slowId;
    });
    replayId = new URL(page.url()).pathname.split("/").pop();
    assert.ok((await text(h1())).includes(replayId), "the h1 names the new run");
    const replayed = await api("GET", `/api/v3/runs/${replayId}`);
    assert.equal(replayed.taskIdentifier, "slow");
    await until("the replay executing", async () => ["QUEUED", "DEQUEUED", "EXECUTING"].includes(await text(statusField())));
    await screenshot("09-run-replayed");
  });

  step("rescheduling a delayed run", async () => {
    const { id } = await api("POST", "/api/v1/tasks/hello/trigger", {
      payload: { later: true },
      options: { delay: "1h", tags: [otherTag] },
    });
    const before = await api("GET", `/api/v3/runs/${id}`);
    assert.equal(before.status, "DELAYED");
    await page.goto(`${baseUrl}/dashboard/runs/${id}`);
    assert.equal(await text(statusField()), "DELAYED");
    await page.getByLabel("Delay").fill("5m");
    await clickTo(page.getByRole("button", { name: "Reschedule" }), `${baseUrl}/dashboard/runs/${id}`);
    const after = await api("GET", `/api/v3/runs/${id}`);
    const minutes = (Date.parse(after.delayedUntil) - Date.now()) / 60_000;
    assert.ok(minutes > 3 && minutes <= 5, `delayed until ${after.delayedUntil}, ${minutes} minutes away`);
    assert.equal(await text(statusField()), "DELAYED");
  });

  step("the runs list updates a status cell live", async () => {
    await waitForStatus(replayId, "EXECUTING");
    await page.goto(`${baseUrl}/dashboard/runs?tag=${encodeURIComponent(tag)}`);
    const cell = runRow(replayId).locator('[data-field="status"]');
    assert.equal(await text(cell), "EXECUTING");
    await page.evaluate(() => {
      window.runnelE2eMarker = "list";
    });
    await api("POST", `/api/v2/runs/${replayId}/cancel`);
    await until("the list's cell showing CANCELED", async () => (await text(cell)) === "CANCELED");
    assert.equal(await page.evaluate(() => window.runnelE2eMarker), "list", "the list reloaded");
  });

  step("pausing a queue and setting its limit on Queues", async () => {
    await clickTo(nav().getByRole("link", { name: "Queues", exact: true }), `${baseUrl}/dashboard/queues`);
    await expectHeading("Queues");
    const row = page.locator('tr[data-queue-name="task/hello"]');
    assert.equal(await text(row.locator('[data-field="state"]')), "Running");
    await clickTo(row.getByRole("button", { name: "Pause" }), `${baseUrl}/dashboard/queues`);
    await until("the queue shown Paused", async () => (await text(row.locator('[data-field="state"]'))) === "Paused");
    assert.equal((await api("GET", "/api/v1/queues/hello?type=task")).paused, true);
    assert.ok(await row.getByRole("button", { name: "Resume" }).isVisible(), "a paused queue offers Resume");

    await row.getByLabel("Concurrency limit").fill("3");
    await clickTo(row.getByRole("button", { name: "Set limit" }), `${baseUrl}/dashboard/queues`);
    await until("the limit stored", async () => (await api("GET", "/api/v1/queues/hello?type=task")).concurrencyLimit === 3);
    await screenshot("10-queues");
  });

  step("Schedules, Tokens and Keys", async () => {
    const schedule = await api("POST", "/api/v1/schedules", {
      task: "nightly",
      cron: "0 9 * * 1",
      deduplicationKey: `e2e-${tag}`,
      timezone: "Europe/Paris",
    });
    const token = await api("POST", "/api/v1/waitpoints/tokens", { timeout: "1h", tags: [tag] });

    await clickTo(nav().getByRole("link", { name: "Schedules", exact: true }), `${baseUrl}/dashboard/schedules`);
    await expectHeading("Schedules");
    const scheduleRow = page.locator("tr", { hasText: "0 9 * * 1" });
    assert.equal(await scheduleRow.count(), 1, "one row for the schedule");
    assert.ok((await text(scheduleRow)).includes("nightly"));
    assert.ok(await scheduleRow.getByRole("button", { name: "Deactivate" }).isVisible());
    assert.ok(schedule.id);
    await screenshot("11-schedules");

    await clickTo(nav().getByRole("link", { name: "Tokens", exact: true }), `${baseUrl}/dashboard/tokens`);
    await expectHeading("Waitpoint tokens");
    assert.equal(await page.locator("tr", { hasText: token.id }).count(), 1, `a row for ${token.id}`);
    await screenshot("12-tokens");

    await clickTo(nav().getByRole("link", { name: "Keys", exact: true }), `${baseUrl}/dashboard/keys`);
    await expectHeading("Keys");
    const html = await page.content();
    // The key's prefix is listed (the part `runnel keys list` shows); the key itself never.
    assert.ok(html.includes(keyPrefix), "the signed-in key's prefix is listed");
    assert.ok(!html.includes(key), "the full secret key is on the page");
    assert.ok(!html.includes(otherKey), "the other key is on the page");
    await screenshot("13-keys");
  });

  step("on a narrow screen", async () => {
    await page.setViewportSize(NARROW);
    await page.goto(`${baseUrl}/dashboard/runs`);
    await expectHeading("Runs");
    assert.ok(await nav().getByRole("link", { name: "Runs", exact: true }).isVisible());
    // The page itself does not scroll sideways (the table's wrapper does).
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page is ${overflow}px wider than the screen`);
    await screenshot("14-runs-narrow");
    await page.setViewportSize(DESKTOP);
  });

  step("signing out, then another environment's key sees none of these runs", async () => {
    await clickTo(page.getByRole("button", { name: "Sign out" }), /\/dashboard\/login$/);
    await page.goto(`${baseUrl}/dashboard/runs`);
    assert.equal(new URL(page.url()).pathname, "/dashboard/login", "signed out: back to sign-in");

    // This time by keyboard: Enter in the key field submits the form.
    await page.goto(`${baseUrl}/dashboard/login`);
    await page.getByLabel("Secret key").fill(otherKey);
    await Promise.all([
      page.waitForURL(`${baseUrl}/dashboard/runs`, { timeout: UI_TIMEOUT_MS }),
      page.getByLabel("Secret key").press("Enter"),
    ]);
    await expectHeading("Runs");
    assert.deepEqual(await runRowIds(), []);
    assert.ok(await page.getByText("No runs match.").isVisible());
    await screenshot("15-runs-other-environment");
    await page.goto(`${baseUrl}/dashboard/queues`);
    await expectHeading("Queues");
    assert.equal(await page.locator('tr[data-queue-name="task/hello"]').count(), 0, "the first environment's queue");

    const response = await page.goto(`${baseUrl}/dashboard/runs/${helloId}`);
    assert.equal(response.status(), 404, "another environment's run");
    assert.ok(!(await page.content()).includes("hello from e2e"), "the payload leaked");
    await screenshot("16-run-other-environment-404");
  });
});
