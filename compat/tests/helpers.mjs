// Shared by the compatibility tests. The Rust harness (crates/runnel-cli/tests/compat.rs)
// starts a Runnel server and a `runnel worker`, then runs these files with:
//   TRIGGER_API_URL     the server
//   TRIGGER_SECRET_KEY  a prod key; the worker serves the tasks below with it
//   RUNNEL_COMPAT_WORKER_VERSION  the version that worker registered
// The SDK reads the first two itself, exactly as a user's code would.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { runs } from "@trigger.dev/sdk";

for (const name of ["TRIGGER_API_URL", "TRIGGER_SECRET_KEY", "RUNNEL_COMPAT_WORKER_VERSION"]) {
  assert.ok(process.env[name], `${name} must be set (run through cargo test -p runnel-cli --test compat)`);
}

export const apiUrl = process.env.TRIGGER_API_URL;
export const secretKey = process.env.TRIGGER_SECRET_KEY;
export const workerVersion = process.env.RUNNEL_COMPAT_WORKER_VERSION;

/** Tasks the harness's worker serves. */
export const ECHO = "compat-echo"; // prints its payload back
export const ENV = "compat-env"; // prints the environment variable COMPAT_GREETING
export const SCHEDULED = "compat-scheduled"; // a scheduled task (`--scheduled`) that prints its payload back
export const SLOW = "compat-slow"; // sleeps 1.5 s, then prints its payload back
export const UNSERVED = "compat-nobody-serves-this";

/** A tag no other test uses, so lists can be narrowed to one test's runs. */
export function uniqueTag(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** Retrieves `id` until `done(run)` holds (at most `timeoutMs`). */
export async function waitFor(id, done, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  let run;
  while (Date.now() < deadline) {
    run = await runs.retrieve(id);
    if (done(run)) return run;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`run ${id} did not get there in ${timeoutMs} ms; last seen: ${JSON.stringify(run)}`);
}

export const finished = (run) => run.isCompleted || ["EXPIRED", "TIMED_OUT"].includes(run.status);

/** A raw request to the server, for what the SDK does not expose (the legacy status set). */
export async function rawGet(path, headers = {}) {
  const response = await fetch(`${apiUrl}${path}`, {
    headers: { authorization: `Bearer ${secretKey}`, ...headers },
  });
  return { status: response.status, body: await response.json() };
}
