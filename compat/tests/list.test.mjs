// runs.list: filters and auto-pagination.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs } from "@trigger.dev/sdk";
import { ECHO, UNSERVED, finished, uniqueTag, waitFor } from "./helpers.mjs";

test("runs.list auto-paginates over more than two pages, newest first, without repeats", async () => {
  const tag = uniqueTag("list");
  const triggered = [];
  for (let i = 0; i < 7; i++) {
    triggered.push((await tasks.trigger(UNSERVED, { i }, { tags: [tag] })).id);
  }
  const seen = [];
  for await (const run of runs.list({ tag, limit: 3 })) {
    seen.push(run);
  }
  assert.deepEqual(
    seen.map((r) => r.id),
    [...triggered].reverse(),
    "every run once, newest first, across three pages of 3",
  );
  for (const run of seen) {
    assert.equal(run.taskIdentifier, UNSERVED);
    assert.equal(run.status, "PENDING_VERSION");
    assert.deepEqual(run.tags, [tag]);
    assert.ok(run.createdAt instanceof Date);
    assert.equal(run.env.name, "prod");
  }

  // One page at a time, by hand: next cursors, and nothing after the last page.
  const first = await runs.list({ tag, limit: 3 });
  assert.equal(first.data.length, 3);
  assert.ok(first.hasNextPage());
  const second = await first.getNextPage();
  assert.deepEqual(second.data.map((r) => r.id), seen.slice(3, 6).map((r) => r.id));
  const third = await second.getNextPage();
  assert.deepEqual(third.data.map((r) => r.id), [seen[6].id]);
  assert.equal(third.hasNextPage(), false);

  for (const id of triggered) await runs.cancel(id);
});

test("runs.list filters by status, task, tag and creation time", async () => {
  const tag = uniqueTag("filters");
  const done = await tasks.trigger(ECHO, { done: true }, { tags: [tag] });
  const waiting = await tasks.trigger(UNSERVED, { waiting: true }, { tags: [tag] });
  await waitFor(done.id, finished);

  const completed = await runs.list({ tag, status: ["COMPLETED"] });
  assert.deepEqual(completed.data.map((r) => r.id), [done.id]);
  const pending = await runs.list({ tag, status: ["PENDING_VERSION"] });
  assert.deepEqual(pending.data.map((r) => r.id), [waiting.id]);
  const byTask = await runs.list({ tag, taskIdentifier: [ECHO] });
  assert.deepEqual(byTask.data.map((r) => r.id), [done.id]);
  const both = await runs.list({ tag });
  assert.deepEqual(both.data.map((r) => r.id), [waiting.id, done.id]);
  const future = await runs.list({ tag, from: new Date(Date.now() + 60_000) });
  assert.deepEqual(future.data, []);
  const recent = await runs.list({ tag, period: "1h" });
  assert.equal(recent.data.length, 2);

  await runs.cancel(waiting.id);
});
