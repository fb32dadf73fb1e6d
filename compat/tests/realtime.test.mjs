// runs.subscribeToRun, runs.subscribeToRunsWithTag and runs.subscribeToBatch: the SDK's
// realtime subscriptions (shape long polls on /realtime/v1/…) against Runnel.
import { test } from "node:test";
import assert from "node:assert/strict";
import { auth, batch, queues, runs, tasks } from "@trigger.dev/sdk";
import { ECHO, SLOW, uniqueTag } from "./helpers.mjs";

/** Collects what a subscription yields until `done(run, seen)` holds. */
async function collect(subscription, done, timeoutMs = 30_000) {
  const seen = [];
  const timer = setTimeout(() => subscription.unsubscribe(), timeoutMs);
  try {
    for await (const run of subscription) {
      seen.push(run);
      if (done(run, seen)) break;
    }
  } finally {
    clearTimeout(timer);
    subscription.unsubscribe();
  }
  return seen;
}

test("subscribeToRun receives every status of a run up to COMPLETED, with its output", async () => {
  const tag = uniqueTag("realtime-run");
  // A paused queue holds the run in QUEUED after its delay, until the test resumes it.
  await queues.pause({ type: "task", name: SLOW });
  let resumed = false;
  try {
    const handle = await tasks.trigger(SLOW, { hello: "realtime" }, { delay: "1s", tags: [tag] });
    const statuses = [];
    const subscription = runs.subscribeToRun(handle.id);
    const seen = await collect(subscription, (run) => {
      if (statuses.at(-1) !== run.status) statuses.push(run.status);
      if (run.status === "QUEUED" && !resumed) {
        resumed = true;
        queues.resume({ type: "task", name: SLOW });
      }
      return run.isCompleted;
    });
    // DEQUEUED lasts the few milliseconds between a worker's dequeue and its start.
    assert.deepEqual(
      statuses.filter((s) => s !== "DEQUEUED"),
      ["DELAYED", "QUEUED", "EXECUTING", "COMPLETED"],
    );
    const last = seen.at(-1);
    assert.equal(last.id, handle.id);
    assert.equal(last.taskIdentifier, SLOW);
    assert.deepEqual(last.payload, { hello: "realtime" });
    assert.deepEqual(last.output, { hello: "realtime" });
    assert.deepEqual(last.tags, [tag]);
    assert.ok(last.finishedAt instanceof Date && last.startedAt instanceof Date);
    assert.ok(last.finishedAt >= last.startedAt);
    assert.ok(last.durationMs >= 1000, `durationMs ${last.durationMs}`);
    assert.equal(last.isSuccess, true);
  } finally {
    if (!resumed) await queues.resume({ type: "task", name: SLOW });
  }
});

test("subscribeToRunsWithTag sees the runs of that tag only, old and new", async () => {
  const [tag, other] = [uniqueTag("realtime-tag"), uniqueTag("realtime-other")];
  const before = await tasks.trigger(ECHO, { n: 1 }, { tags: [tag] });
  await tasks.trigger(ECHO, { n: 0 }, { tags: [other] });
  const subscription = runs.subscribeToRunsWithTag(tag);
  let after;
  const completed = new Set();
  const seen = await collect(subscription, (run, seen) => {
    if (seen.length === 1) {
      // A run triggered once the subscription is open arrives too.
      after = tasks.trigger(ECHO, { n: 2 }, { tags: [tag, other] });
    }
    if (run.status === "COMPLETED") completed.add(run.id);
    return completed.size === 2;
  });
  after = await after;
  for (const run of seen) {
    assert.ok(run.tags.includes(tag), `run ${run.id} with tags ${run.tags} is not of ${tag}`);
  }
  assert.deepEqual([...completed].sort(), [before.id, after.id].sort());
});

test("subscribeToBatch follows every run of a batch to its end", async () => {
  const handle = await batch.trigger([
    { id: ECHO, payload: { item: 1 } },
    { id: ECHO, payload: { item: 2 } },
    { id: ECHO, payload: { item: 3 } },
  ]);
  const completed = new Map();
  await collect(runs.subscribeToBatch(handle.batchId), (run) => {
    if (run.status === "COMPLETED") completed.set(run.id, run.output);
    return completed.size === 3;
  });
  assert.deepEqual(
    [...completed.values()].map((o) => o.item).sort(),
    [1, 2, 3],
  );
});

test("a public token reads the runs its scopes name, and only those, without its skipped columns", async () => {
  const mine = await tasks.trigger(ECHO, { scoped: true });
  const others = await tasks.trigger(ECHO, { scoped: false });
  const accessToken = await auth.createPublicToken({
    scopes: { read: { runs: [mine.id] } },
    realtime: { skipColumns: ["payload"] },
  });
  const seen = await auth.withAuth({ accessToken }, () =>
    collect(runs.subscribeToRun(mine.id), (run) => run.isCompleted),
  );
  assert.equal(seen.at(-1).status, "COMPLETED");
  // The token's realtime.skipColumns leaves the payload out; the output stays.
  assert.equal(seen.at(-1).payload, undefined);
  assert.deepEqual(seen.at(-1).output, { scoped: true });
  const refused = await fetch(`${process.env.TRIGGER_API_URL}/realtime/v1/runs/${others.id}?offset=-1`, {
    headers: { authorization: `Bearer ${accessToken}` },
  });
  assert.equal(refused.status, 403);
});
