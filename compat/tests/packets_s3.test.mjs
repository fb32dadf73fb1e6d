// Large payloads and outputs with the server's object storage on a real S3-compatible
// server (the harness starts it on loopback and `runnel serve --blob-url s3://…`; it
// checks request signatures). The SDK uploads a 2 MiB payload itself (PUT
// /api/v2/packets/… then the S3-presigned URL), the exec worker (`cat`) downloads it and
// uploads its 2 MiB output, and runs.retrieve reads that output through the
// S3-presigned outputPresignedUrl.
import { test } from "node:test";
import assert from "node:assert/strict";
import { tasks, runs } from "@trigger.dev/sdk";
import { ECHO, finished, rawGet, waitFor } from "./helpers.mjs";

const s3Endpoint = process.env.RUNNEL_COMPAT_S3_ENDPOINT;
assert.ok(s3Endpoint, "RUNNEL_COMPAT_S3_ENDPOINT must be set (the harness's S3 server)");

/** About `bytes` of JSON whose content varies all along. */
function bigPayload(bytes, seed) {
  const chunk = "abcdefghijklmnopqrstuvwxyz0123456789é\"\\ ";
  const parts = [];
  let length = 0;
  for (let i = 0; length < bytes; i++) {
    const piece = `${seed}:${i}:${chunk.slice(i % chunk.length)}${chunk.slice(0, i % chunk.length)}`;
    parts.push(piece);
    length += piece.length + 3;
  }
  return { seed, parts, tail: { n: 42, ok: true, none: null } };
}

test("a 2 MiB payload and a 2 MiB output round-trip through S3", async () => {
  const payload = bigPayload(2 * 1024 * 1024, "s3");
  const handle = await tasks.trigger(ECHO, payload);
  const run = await waitFor(handle.id, finished, 60_000);
  assert.equal(run.status, "COMPLETED", JSON.stringify(run.error ?? {}));
  assert.deepEqual(run.payload, payload, "retrieve reads the payload back through its URL");
  assert.deepEqual(run.output, payload, "retrieve reads the 2 MiB output through its URL");

  // Retrieve answered URLs, not values, and they are S3's own presigned URLs.
  const raw = await rawGet(`/api/v3/runs/${handle.id}`);
  assert.equal(raw.status, 200);
  assert.equal(raw.body.output, undefined);
  for (const field of ["payloadPresignedUrl", "outputPresignedUrl"]) {
    const url = raw.body[field];
    assert.ok(url?.startsWith(`${s3Endpoint}/`), `${field} points at S3: ${url}`);
    assert.match(url, /X-Amz-Signature=[0-9a-f]{64}/);
  }
  const fetched = await fetch(raw.body.outputPresignedUrl);
  assert.equal(fetched.status, 200);
  assert.deepEqual(await fetched.json(), payload);

  // One byte of the signature changed: S3 refuses it.
  const url = raw.body.outputPresignedUrl;
  const at = url.indexOf("X-Amz-Signature=") + "X-Amz-Signature=".length;
  const tampered = url.slice(0, at) + (url[at] === "0" ? "1" : "0") + url.slice(at + 1);
  const refused = await fetch(tampered);
  assert.equal(refused.status, 403);
});

test("payloads just over the SDK's and the server's thresholds round-trip through S3", async () => {
  for (const size of [129 * 1024, 600 * 1024]) {
    const payload = bigPayload(size, `size-${size}`);
    const handle = await tasks.trigger(ECHO, payload);
    const run = await waitFor(handle.id, finished, 60_000);
    assert.equal(run.status, "COMPLETED", JSON.stringify(run.error ?? {}));
    assert.deepEqual(run.payload, payload);
    assert.deepEqual(run.output, payload);
  }
  // Nothing of these went anywhere but the bucket: runs.retrieve still works by id.
  assert.ok((await runs.list({ limit: 5 })).data.length >= 2);
});
