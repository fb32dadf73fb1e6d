// queues.list / retrieve / pause / resume, and what pausing does to runs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs, queues } from "@trigger.dev/sdk";
import { ECHO, finished, waitFor } from "./helpers.mjs";

test("every served task has a task queue that lists, retrieves, pauses and resumes", async () => {
  const names = [];
  for await (const queue of queues.list()) names.push(queue);
  const echo = names.find((q) => q.type === "task" && q.name === ECHO);
  assert.ok(echo, `the task queue of ${ECHO} is listed: ${JSON.stringify(names)}`);
  assert.match(echo.id, /^queue_/);
  assert.equal(echo.paused, false);

  const byName = await queues.retrieve({ type: "task", name: ECHO });
  assert.equal(byName.id, echo.id);
  const byId = await queues.retrieve(echo.id);
  assert.equal(byId.name, ECHO);

  const paused = await queues.pause({ type: "task", name: ECHO });
  assert.equal(paused.paused, true);
  try {
    const handle = await tasks.trigger(ECHO, { paused: true });
    await new Promise((r) => setTimeout(r, 1500));
    const held = await runs.retrieve(handle.id);
    assert.equal(held.status, "QUEUED", "a paused queue starts nothing");
    const counted = await queues.retrieve({ type: "task", name: ECHO });
    assert.ok(counted.queued >= 1, JSON.stringify(counted));

    const resumed = await queues.resume({ type: "task", name: ECHO });
    assert.equal(resumed.paused, false);
    const run = await waitFor(handle.id, finished);
    assert.equal(run.status, "COMPLETED");
  } finally {
    await queues.resume({ type: "task", name: ECHO });
  }
});

test("a queue's concurrency limit can be overridden and reset", async () => {
  const overridden = await queues.overrideConcurrencyLimit({ type: "task", name: ECHO }, 3);
  assert.equal(overridden.concurrencyLimit, 3);
  assert.equal(overridden.concurrency?.override, 3);
  const reset = await queues.resetConcurrencyLimit({ type: "task", name: ECHO });
  assert.equal(reset.concurrency?.override ?? null, null);
});
