// schedules.create / list / retrieve / update / deactivate / activate / del / timezones
// against the key's own environment, their errors as the SDK's ApiError, and one real
// occurrence: a `* * * * *` schedule fires a run of the harness's scheduled exec task.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { runs, schedules } from "@trigger.dev/sdk";
import { ECHO, SCHEDULED, waitFor, finished } from "./helpers.mjs";

const unique = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;

/** Rejects with the SDK's ApiError of `status` whose message matches `pattern`. */
async function rejectsWith(promise, status, pattern) {
  await assert.rejects(promise, (error) => {
    assert.equal(error.status, status, `${error}`);
    assert.match(error.message, pattern);
    return true;
  });
}

test("create, upsert by key, retrieve, update, deactivate, activate and delete", async () => {
  const key = unique("compat-report");
  const created = await schedules.create({
    task: SCHEDULED,
    cron: "0 9 * * 1",
    deduplicationKey: key,
    externalId: "user-1",
    timezone: "Europe/Paris",
  });
  assert.match(created.id, /^sched_/);
  assert.equal(created.type, "IMPERATIVE");
  assert.equal(created.task, SCHEDULED);
  assert.equal(created.active, true);
  assert.equal(created.deduplicationKey, key);
  assert.equal(created.externalId, "user-1");
  assert.deepEqual(
    { type: created.generator.type, expression: created.generator.expression },
    { type: "CRON", expression: "0 9 * * 1" },
  );
  assert.ok(created.generator.description.length > 0);
  assert.equal(created.timezone, "Europe/Paris");
  // The SDK's schema turns nextRun into a Date.
  assert.ok(created.nextRun instanceof Date && created.nextRun > new Date(), `${created.nextRun}`);
  assert.equal(created.environments.length, 1);
  assert.equal(created.environments[0].type, "PRODUCTION");

  // The same key again updates the same schedule.
  const upserted = await schedules.create({
    task: SCHEDULED,
    cron: "30 8 * * *",
    deduplicationKey: key,
  });
  assert.equal(upserted.id, created.id);
  assert.equal(upserted.generator.expression, "30 8 * * *");
  assert.equal(upserted.timezone, "UTC");
  assert.equal(upserted.externalId ?? null, null);

  const byId = await schedules.retrieve(created.id);
  const byKey = await schedules.retrieve(key);
  assert.deepEqual(byId, upserted);
  assert.deepEqual(byKey, upserted);

  const updated = await schedules.update(created.id, {
    task: SCHEDULED,
    cron: "0 */2 * * *",
    timezone: "America/New_York",
    externalId: "user-2",
    window: "15m",
  });
  assert.equal(updated.id, created.id);
  assert.equal(updated.deduplicationKey, key, "an update keeps the key");
  assert.equal(updated.generator.expression, "0 */2 * * *");
  assert.equal(updated.timezone, "America/New_York");
  assert.equal(updated.externalId, "user-2");
  assert.equal(updated.window, "15m");

  const off = await schedules.deactivate(created.id);
  assert.equal(off.active, false);
  assert.equal(off.nextRun ?? null, null);
  const on = await schedules.activate(key);
  assert.equal(on.active, true);
  assert.ok(on.nextRun instanceof Date && on.nextRun > new Date(), `${on.nextRun}`);

  assert.deepEqual(await schedules.del(created.id), { id: created.id });
  await rejectsWith(schedules.retrieve(created.id), 404, /Schedule not found/);
  await rejectsWith(schedules.del(key), 404, /Schedule not found/);
});

test("list pages through the environment's schedules", async () => {
  const prefix = unique("compat-page");
  const ids = [];
  for (let i = 0; i < 5; i++) {
    const schedule = await schedules.create({
      task: SCHEDULED,
      cron: `${i} 0 * * *`,
      deduplicationKey: `${prefix}-${i}`,
    });
    ids.push(schedule.id);
  }
  try {
    const first = await schedules.list({ perPage: 2 });
    assert.equal(first.data.length, 2);
    assert.equal(first.pagination.currentPage, 1);
    assert.ok(first.pagination.count >= 5, JSON.stringify(first.pagination));
    assert.equal(first.pagination.totalPages, Math.ceil(first.pagination.count / 2));
    assert.equal(first.hasNextPage(), true);

    // Following the pages (the SDK's own iteration) reaches every schedule once.
    const seen = [];
    for await (const page of first.iterPages()) {
      assert.ok(page.data.length <= 2);
      seen.push(...page.data.map((s) => s.id));
    }
    assert.equal(seen.length, first.pagination.count);
    assert.equal(new Set(seen).size, seen.length);
    for (const id of ids) assert.ok(seen.includes(id), `${id} listed`);

    const second = await schedules.list({ page: 2, perPage: 2 });
    assert.equal(second.pagination.currentPage, 2);
    assert.deepEqual(
      second.data.map((s) => s.id),
      seen.slice(2, 4),
    );
  } finally {
    for (const id of ids) await schedules.del(id);
  }
});

test("bad settings are 422s and an unknown schedule is a 404", async () => {
  const base = { task: SCHEDULED, cron: "0 0 * * *", deduplicationKey: unique("compat-bad") };
  await rejectsWith(schedules.create({ ...base, cron: "not a cron" }), 422, /Invalid cron expression/);
  await rejectsWith(
    schedules.create({ ...base, timezone: "Mars/Olympus" }),
    422,
    /Invalid IANA timezone: 'Mars\/Olympus'/,
  );
  await rejectsWith(schedules.create({ ...base, window: "200%" }), 422, /window/);
  await rejectsWith(
    schedules.create({ ...base, task: "compat-no-such-task" }),
    422,
    /Task with identifier compat-no-such-task not found in project\./,
  );
  await rejectsWith(
    schedules.create({ ...base, task: ECHO }),
    422,
    new RegExp(`Task with identifier ${ECHO} is not a scheduled task\\.`),
  );
  await rejectsWith(schedules.retrieve(base.deduplicationKey), 404, /Schedule not found/);
  await rejectsWith(
    schedules.update("sched_0000000000000000000000aa", { task: SCHEDULED, cron: "0 0 * * *" }),
    404,
    /Schedule not found/,
  );
});

test("timezones need no key and list UTC first unless excluded", async () => {
  const { timezones } = await schedules.timezones();
  assert.equal(timezones[0], "UTC");
  assert.ok(timezones.includes("Europe/Paris") && timezones.includes("Asia/Tokyo"));
  const without = await schedules.timezones({ excludeUtc: true });
  assert.deepEqual(without.timezones, timezones.slice(1));
});

test("a schedule fires a run of its task with the scheduled payload", async () => {
  const key = unique("compat-every-minute");
  const schedule = await schedules.create({
    task: SCHEDULED,
    cron: "* * * * *",
    deduplicationKey: key,
    externalId: "fired-ext",
  });
  try {
    // The next minute boundary, then the scheduler's pass: at most ~60 s plus a little.
    const deadline = Date.now() + 80_000;
    let listed = [];
    while (Date.now() < deadline) {
      listed = (await runs.list({ schedule: schedule.id })).data;
      if (listed.length > 0) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(listed.length >= 1, `no run of ${schedule.id} within 80 s`);
    assert.equal(listed[0].taskIdentifier, SCHEDULED);

    const run = await waitFor(listed[0].id, finished, 30_000);
    assert.equal(run.status, "COMPLETED", JSON.stringify(run));
    assert.equal(run.schedule?.id, schedule.id);
    assert.equal(run.schedule?.generator?.expression, "* * * * *");
    assert.equal(run.schedule?.externalId, "fired-ext");
    assert.equal(run.schedule?.deduplicationKey, key);
    // The exec command echoed its payload: the scheduled payload names the schedule.
    const output = typeof run.output === "string" ? run.output : JSON.stringify(run.output);
    assert.ok(output.includes(schedule.id), `the output names the schedule: ${output}`);
    assert.ok(output.includes("fired-ext"), `the output carries the externalId: ${output}`);
  } finally {
    await schedules.del(schedule.id);
  }
});
