// tasks.batchTrigger (two-phase: POST /api/v3/batches + NDJSON items) and batch.retrieve.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, batch } from "@trigger.dev/sdk";
import { ECHO, finished, uniqueTag, waitFor } from "./helpers.mjs";

test("tasks.batchTrigger creates one run per item, all of which execute", async () => {
  const tag = uniqueTag("batch");
  const items = Array.from({ length: 25 }, (_, i) => ({ payload: { i }, options: { tags: [tag] } }));
  const handle = await tasks.batchTrigger(ECHO, items);
  assert.match(handle.batchId, /^batch_[a-z0-9]+$/);
  assert.equal(handle.runCount, 25);

  const retrieved = await batch.retrieve(handle.batchId);
  assert.equal(retrieved.id, handle.batchId);
  assert.equal(retrieved.runCount, 25);
  assert.equal(retrieved.runs.length, 25);
  assert.equal(new Set(retrieved.runs).size, 25);

  for (const [i, id] of retrieved.runs.entries()) {
    const run = await waitFor(id, finished);
    assert.equal(run.status, "COMPLETED");
    assert.deepEqual(run.payload, { i }, "runs are listed in item order");
    assert.deepEqual(run.output, { i });
    assert.equal(run.batchId, handle.batchId);
    assert.equal(run.triggerFunction, "batchTrigger");
    assert.deepEqual(run.tags, [tag]);
  }
});

test("a batch with an idempotency key is created once", async () => {
  const idempotencyKey = uniqueTag("batch-key");
  const items = [{ payload: { a: 1 } }, { payload: { a: 2 } }];
  const first = await tasks.batchTrigger(ECHO, items, { idempotencyKey });
  const second = await tasks.batchTrigger(ECHO, items, { idempotencyKey });
  assert.equal(second.batchId, first.batchId);
});
