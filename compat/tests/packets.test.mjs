// Large payloads and outputs (contract §4.6): the SDK uploads payloads of 128 KiB or more
// itself (PUT /api/v2/packets/… then the presigned URL) and triggers with
// payloadType application/store; runs.retrieve follows payloadPresignedUrl /
// outputPresignedUrl and parses the body by its content type. The runs go to a task no
// worker serves, so nothing but the server and the SDK touches them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs, batch } from "@trigger.dev/sdk";
import { UNSERVED, apiUrl, secretKey, uniqueTag, waitFor, finished } from "./helpers.mjs";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A payload whose superjson text is `bytes` long, give or take a few bytes. */
function payloadOf(bytes) {
  return { size: bytes, blob: "x".repeat(bytes - 40) };
}

for (const [name, bytes] of [
  ["127 KiB", 127 * KiB],
  ["129 KiB", 129 * KiB],
  ["2 MiB", 2 * MiB],
  ["10 MiB", 10 * MiB],
]) {
  test(`a ${name} payload triggers and retrieves as sent`, async () => {
    const payload = payloadOf(bytes);
    const handle = await tasks.trigger(UNSERVED, payload);
    assert.match(handle.id, /^run_[a-z0-9]+$/);
    const run = await runs.retrieve(handle.id);
    assert.equal(run.payload.size, bytes);
    assert.equal(run.payload.blob.length, payload.blob.length);
    assert.deepEqual(run.payload, payload);
  });
}

test("an offloaded superjson payload keeps its types (the content type travels with it)", async () => {
  const when = new Date("2026-01-02T03:04:05.000Z");
  const payload = { when, big: 123n, blob: "y".repeat(300 * KiB) };
  const handle = await tasks.trigger(UNSERVED, payload);
  const run = await runs.retrieve(handle.id);
  assert.ok(run.payload.when instanceof Date, `got ${typeof run.payload.when}`);
  assert.equal(run.payload.when.toISOString(), when.toISOString());
  assert.equal(run.payload.big, 123n);
  assert.equal(run.payload.blob, payload.blob);
});

test("batch items over 128 KiB are offloaded and retrieve as sent", async () => {
  const items = [0, 1].map((i) => ({ payload: { i, blob: String(i).repeat(200 * KiB) } }));
  const handle = await tasks.batchTrigger(UNSERVED, items);
  const retrieved = await batch.retrieve(handle.batchId);
  assert.equal(retrieved.runs.length, 2);
  const payloads = await Promise.all(retrieved.runs.map(async (id) => (await runs.retrieve(id)).payload));
  payloads.sort((a, b) => a.i - b.i);
  assert.deepEqual(payloads, items.map((item) => item.payload));
});

/** The worker protocol by hand: a worker of this file's own task. */
async function workerCall(path, body) {
  const response = await fetch(`${apiUrl}/api/v1/workers${path}`, {
    method: "POST",
    headers: { authorization: `Bearer ${secretKey}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, await response.clone().text());
  return response.json();
}

test("a 2 MiB output reads back through runs.retrieve", async () => {
  const task = uniqueTag("compat-big-output");
  const { workerId } = await workerCall("/register", { name: "compat-packets", tasks: [{ id: task }] });
  const handle = await tasks.trigger(task, { small: true });
  const { runs: leased } = await workerCall(`/${workerId}/dequeue`, { maxRuns: 1, waitMs: 5000 });
  assert.equal(leased[0].runId, handle.id);
  const attemptId = leased[0].attemptId;
  await workerCall(`/${workerId}/start`, { attemptIds: [attemptId] });
  const output = { result: "o".repeat(2 * MiB), n: 7 };
  const completed = await workerCall(`/${workerId}/complete`, {
    completions: [{ attemptId, outcome: "success", output }],
  });
  assert.equal(completed.results[0].runStatus, "COMPLETED");
  const run = await waitFor(handle.id, finished);
  assert.equal(run.status, "COMPLETED");
  assert.deepEqual(run.payload, { small: true });
  assert.deepEqual(run.output, output);
});
