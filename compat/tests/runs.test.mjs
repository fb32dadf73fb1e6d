// runs.cancel, runs.replay, runs.reschedule and idempotencyKeys.reset.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs, idempotencyKeys, BadRequestError } from "@trigger.dev/sdk";
import { ECHO, UNSERVED, finished, uniqueTag, waitFor } from "./helpers.mjs";

test("runs.cancel ends a waiting run and answers for a finished one too", async () => {
  const handle = await tasks.trigger(UNSERVED, {});
  const canceled = await runs.cancel(handle.id);
  assert.equal(canceled.id, handle.id);
  const run = await runs.retrieve(handle.id);
  assert.equal(run.status, "CANCELED");
  assert.ok(run.finishedAt instanceof Date);
  const again = await runs.cancel(handle.id);
  assert.equal(again.id, handle.id);
});

test("runs.replay creates a new run with the same payload and tags", async () => {
  const tag = uniqueTag("replay");
  const original = await tasks.trigger(ECHO, { replay: 1 }, { tags: [tag], metadata: { m: 1 } });
  await waitFor(original.id, finished);
  const replayed = await runs.replay(original.id);
  assert.notEqual(replayed.id, original.id);
  const run = await waitFor(replayed.id, finished);
  assert.equal(run.status, "COMPLETED");
  assert.deepEqual(run.payload, { replay: 1 });
  assert.deepEqual(run.output, { replay: 1 });
  assert.deepEqual(run.tags, [tag]);
  assert.deepEqual(run.metadata, { m: 1 });
});

test("runs.replay applies its overrides: payload, tags and metadata", async () => {
  const [tag, newTag] = [uniqueTag("replay"), uniqueTag("replayed")];
  const original = await tasks.trigger(ECHO, { replay: 1 }, { tags: [tag], metadata: { m: 1 } });
  await waitFor(original.id, finished);
  const replayed = await runs.replay(original.id, {
    payload: { replay: 2, list: ["a", 1] },
    tags: [newTag, "second"],
    metadata: { m: 2, nested: { ok: true } },
  });
  assert.notEqual(replayed.id, original.id);
  const run = await waitFor(replayed.id, finished);
  assert.equal(run.status, "COMPLETED");
  // The SDK sent the payload as superjson text (payloadType application/super+json).
  assert.deepEqual(run.payload, { replay: 2, list: ["a", 1] });
  assert.deepEqual(run.output, { replay: 2, list: ["a", 1] });
  assert.deepEqual(run.tags, [newTag, "second"].sort());
  assert.deepEqual(run.metadata, { m: 2, nested: { ok: true } });
  // Only the payload: tags and metadata stay the original's.
  const payloadOnly = await runs.replay(original.id, { payload: { replay: 3 } });
  const second = await waitFor(payloadOnly.id, finished);
  assert.deepEqual(second.payload, { replay: 3 });
  assert.deepEqual(second.tags, [tag]);
  assert.deepEqual(second.metadata, { m: 1 });
  // A bad override is the server's 400, and names the field.
  await assert.rejects(runs.replay(original.id, { machine: "huge" }), (error) => {
    assert.ok(error instanceof BadRequestError, String(error));
    assert.match(error.message, /machine: must be one of/);
    return true;
  });
});

test("runs.reschedule moves a delayed run and refuses a run that is not delayed", async () => {
  const handle = await tasks.trigger(ECHO, {}, { delay: "1h" });
  const before = await runs.retrieve(handle.id);
  const moved = await runs.reschedule(handle.id, { delay: "2h" });
  assert.equal(moved.id, handle.id);
  assert.equal(moved.status, "DELAYED");
  assert.ok(moved.delayedUntil.getTime() > before.delayedUntil.getTime() + 50 * 60 * 1000);
  const now = await runs.reschedule(handle.id, { delay: new Date(Date.now() + 1000).toISOString() });
  assert.ok(now.delayedUntil.getTime() < before.delayedUntil.getTime());
  const run = await waitFor(handle.id, finished);
  assert.equal(run.status, "COMPLETED", "the rescheduled run ran at its new time");

  await assert.rejects(runs.reschedule(handle.id, { delay: "1h" }), (error) => {
    assert.ok(error instanceof BadRequestError, `got ${error}`);
    assert.equal(error.status, 400);
    return true;
  });
});

test("idempotencyKeys.reset lets the same key trigger a new run", async () => {
  const key = await idempotencyKeys.create(uniqueTag("reset"), { scope: "global" });
  const first = await tasks.trigger(UNSERVED, {}, { idempotencyKey: key });
  const cached = await tasks.trigger(UNSERVED, {}, { idempotencyKey: key });
  assert.equal(cached.id, first.id);
  await idempotencyKeys.reset(UNSERVED, key);
  const fresh = await tasks.trigger(UNSERVED, {}, { idempotencyKey: key });
  assert.notEqual(fresh.id, first.id);
  await runs.cancel(first.id);
  await runs.cancel(fresh.id);
});
