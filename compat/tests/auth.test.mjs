// Public access tokens the SDK signs itself (auth.createPublicToken,
// auth.createTriggerPublicToken): the server verifies them against the secret keys it
// keeps sealed. Besides helpers.mjs's variables, the harness passes
//   RUNNEL_COMPAT_REVOCABLE_KEY  a second prod key, which this file revokes
//   RUNNEL_COMPAT_BIN            the runnel binary
//   RUNNEL_COMPAT_STORE_ARGS     JSON array: the store flags of `runnel keys revoke`
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { auth, runs, tasks } from "@trigger.dev/sdk";
import { ECHO, UNSERVED, uniqueTag } from "./helpers.mjs";

for (const name of ["RUNNEL_COMPAT_REVOCABLE_KEY", "RUNNEL_COMPAT_BIN", "RUNNEL_COMPAT_STORE_ARGS"]) {
  assert.ok(process.env[name], `${name} must be set (run through cargo test -p runnel-cli --test compat)`);
}

const status = (expected) => (error) => {
  assert.equal(error?.status, expected, String(error));
  return true;
};

test("a token from auth.createPublicToken reads its run and no other", async () => {
  const tag = uniqueTag("pat");
  const mine = await tasks.trigger(UNSERVED, { n: 1 }, { tags: [tag] });
  const other = await tasks.trigger(UNSERVED, { n: 2 }, { tags: [tag] });
  const token = await auth.createPublicToken({ scopes: { read: { runs: [mine.id] } } });

  const run = await auth.withAuth({ accessToken: token }, () => runs.retrieve(mine.id));
  assert.equal(run.id, mine.id);
  assert.deepEqual(run.payload, { n: 1 });
  await assert.rejects(
    auth.withAuth({ accessToken: token }, () => runs.retrieve(other.id)),
    status(403),
  );

  // One character of the signature changed: 401.
  const last = token.at(-2) === "A" ? "B" : "A";
  const tampered = token.slice(0, -2) + last + token.slice(-1);
  await assert.rejects(
    auth.withAuth({ accessToken: tampered }, () => runs.retrieve(mine.id)),
    status(401),
  );
});

test("a token signed by a key that is then revoked is refused", async () => {
  const key = process.env.RUNNEL_COMPAT_REVOCABLE_KEY;
  const { id } = await auth.withAuth({ accessToken: key }, () => tasks.trigger(UNSERVED, {}));
  const token = await auth.withAuth({ accessToken: key }, () =>
    auth.createPublicToken({ scopes: { read: { runs: true } } }),
  );
  const run = await auth.withAuth({ accessToken: token }, () => runs.retrieve(id));
  assert.equal(run.id, id);

  const prefix = key.slice(0, key.length - 24 + 6);
  const storeArgs = JSON.parse(process.env.RUNNEL_COMPAT_STORE_ARGS);
  execFileSync(process.env.RUNNEL_COMPAT_BIN, ["keys", "revoke", prefix, ...storeArgs]);

  await assert.rejects(
    auth.withAuth({ accessToken: token }, () => runs.retrieve(id)),
    status(401),
  );
});

test("a token from auth.createTriggerPublicToken triggers the task once", async () => {
  const token = await auth.createTriggerPublicToken(ECHO);
  const tag = uniqueTag("otu");
  const handle = await auth.withAuth({ accessToken: token }, () =>
    tasks.trigger(ECHO, { via: "token" }, { tags: [tag] }),
  );
  assert.match(handle.id, /^run_/);
  const run = await runs.retrieve(handle.id);
  assert.deepEqual(run.payload, { via: "token" });
  // A one-time token: the second trigger is refused.
  await assert.rejects(
    auth.withAuth({ accessToken: token }, () => tasks.trigger(ECHO, { via: "again" })),
    status(401),
  );
  // A token for another task does not trigger this one.
  const otherTask = await auth.createTriggerPublicToken(UNSERVED, { multipleUse: true });
  await assert.rejects(
    auth.withAuth({ accessToken: otherTask }, () => tasks.trigger(ECHO, {})),
    status(403),
  );
});
