// tasks.trigger with every option the SDK sends, and runs.retrieve in both status sets.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs, idempotencyKeys } from "@trigger.dev/sdk";
import { ECHO, UNSERVED, finished, rawGet, uniqueTag, waitFor, workerVersion } from "./helpers.mjs";

test("a run triggered with every option executes and retrieves with each option applied", async () => {
  const tag = uniqueTag("every-option");
  const userKey = uniqueTag("key");
  const key = await idempotencyKeys.create(userKey, { scope: "global" });
  const payload = { name: "Ada", nested: { n: 42, list: [1, 2, 3] } };
  const handle = await tasks.trigger(ECHO, payload, {
    idempotencyKey: key,
    idempotencyKeyTTL: "1h",
    ttl: "10m",
    tags: [tag, "b-tag", "a-tag"],
    maxAttempts: 2,
    metadata: { source: "compat", step: 1 },
    maxDuration: 60,
    machine: "small-2x",
    priority: 5,
    concurrencyKey: "user-1",
    queue: "compat-shared-queue",
    version: workerVersion,
  });
  assert.match(handle.id, /^run_[a-z0-9]+$/);
  assert.ok(handle.publicAccessToken, "the trigger answer carries x-trigger-jwt");

  const run = await waitFor(handle.id, finished);
  assert.equal(run.status, "COMPLETED", JSON.stringify(run));
  assert.equal(run.isCompleted, true);
  assert.equal(run.isSuccess, true);
  assert.equal(run.isFailed, false);
  assert.equal(run.taskIdentifier, ECHO);
  assert.deepEqual(run.payload, payload);
  assert.deepEqual(run.output, payload, "the echo task printed its payload back");
  assert.deepEqual(run.tags, ["a-tag", "b-tag", tag]);
  assert.deepEqual(run.metadata, { source: "compat", step: 1 });
  assert.equal(run.ttl, "10m");
  assert.equal(run.idempotencyKey, userKey, "retrieve shows the user's own key");
  assert.equal(run.version, workerVersion);
  assert.equal(run.attemptCount, 1);
  assert.ok(run.startedAt instanceof Date && run.finishedAt instanceof Date);
  assert.ok(run.finishedAt >= run.startedAt);
  assert.ok(run.costInCents > 0, "prod runs cost their compute");
  assert.ok(run.baseCostInCents > 0, "prod runs pay the run fee");
  assert.equal(run.depth, 0);
  assert.equal(run.triggerFunction, "trigger");

  // The same idempotency key returns the same run.
  const again = await tasks.trigger(ECHO, { other: true }, { idempotencyKey: key });
  assert.equal(again.id, handle.id);
});

test("a delayed run is DELAYED with delayedUntil, a run nobody serves waits in both vocabularies", async () => {
  const delayed = await tasks.trigger(ECHO, {}, { delay: "1h" });
  const run = await runs.retrieve(delayed.id);
  assert.equal(run.status, "DELAYED");
  assert.equal(run.isQueued, true);
  assert.ok(run.delayedUntil instanceof Date);
  assert.ok(run.delayedUntil.getTime() > Date.now() + 50 * 60 * 1000);
  await runs.cancel(delayed.id);

  const waiting = await tasks.trigger(UNSERVED, { x: 1 });
  // The SDK sends x-trigger-api-version: 2025-07-16 and gets the current set...
  const current = await runs.retrieve(waiting.id);
  assert.equal(current.status, "PENDING_VERSION");
  assert.equal(current.isQueued, true);
  // ...a client without the header gets the legacy one.
  const legacy = await rawGet(`/api/v3/runs/${waiting.id}`);
  assert.equal(legacy.status, 200);
  assert.equal(legacy.body.status, "WAITING_FOR_DEPLOY");
  await runs.cancel(waiting.id);
  const canceled = await runs.retrieve(waiting.id);
  assert.equal(canceled.status, "CANCELED");
  assert.equal(canceled.isCancelled, true);
});

test("runs.poll follows a run to its end", async () => {
  const handle = await tasks.trigger(ECHO, { poll: true });
  const run = await runs.poll(handle.id, { pollIntervalMs: 200 });
  assert.equal(run.status, "COMPLETED");
  assert.deepEqual(run.output, { poll: true });
});
