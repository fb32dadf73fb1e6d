// envvars.create / list / retrieve / update / del / upload against the key's own
// environment, and a task run that sees a variable set through the SDK.
import { test } from "node:test";
import assert from "node:assert/strict";
import { envvars, tasks } from "@trigger.dev/sdk";
import { apiClientManager } from "@trigger.dev/core/v3";
import { ENV, finished, rawGet, waitFor } from "./helpers.mjs";

/** The project ref and environment slug of the harness's key (Runnel's whoami). */
async function whoami() {
  const { status, body } = await rawGet("/api/v1/auth/whoami");
  assert.equal(status, 200, JSON.stringify(body));
  return { ref: body.projectRef, env: body.environment.slug };
}

const compat = (list) => list.filter((v) => v.name.startsWith("COMPAT_"));

test("variables round-trip through the SDK, secrets redacted", async () => {
  const { ref, env } = await whoami();
  assert.equal(env, "prod");
  assert.deepEqual(await envvars.create(ref, env, { name: "COMPAT_PLAIN", value: "one" }), {
    success: true,
  });
  await envvars.create(ref, env, { name: "COMPAT_SECRET", value: "hidden", isSecret: true });
  assert.deepEqual(compat(await envvars.list(ref, env)), [
    { name: "COMPAT_PLAIN", value: "one", isSecret: false },
    { name: "COMPAT_SECRET", value: "<redacted>", isSecret: true },
  ]);
  assert.deepEqual(await envvars.retrieve(ref, env, "COMPAT_SECRET"), {
    name: "COMPAT_SECRET",
    value: "<redacted>",
    isSecret: true,
  });

  // `envvars.update` outside a task reads an undefined `name` in SDK 4.8.3, so the SDK's
  // own client makes the same call (PUT …/envvars/{env}/{name}).
  const client = apiClientManager.clientOrThrow();
  assert.deepEqual(await client.updateEnvVar(ref, env, "COMPAT_PLAIN", { value: "two" }), {
    success: true,
  });
  assert.equal((await envvars.retrieve(ref, env, "COMPAT_PLAIN")).value, "two");

  assert.deepEqual(await envvars.del(ref, env, "COMPAT_PLAIN"), { success: true });
  await assert.rejects(envvars.retrieve(ref, env, "COMPAT_PLAIN"), (error) => {
    assert.equal(error.status, 404);
    assert.match(error.message, /Environment variable not found/);
    return true;
  });
});

test("an upload is all or nothing", async () => {
  const { ref, env } = await whoami();
  await envvars.upload(ref, env, { variables: { COMPAT_A: "a", COMPAT_B: "b" }, override: false });
  await assert.rejects(
    envvars.upload(ref, env, { variables: { COMPAT_A: "x", COMPAT_C: "c" }, override: false }),
    (error) => {
      assert.equal(error.status, 400);
      assert.match(error.message, /already set/);
      return true;
    },
  );
  await assert.rejects(envvars.retrieve(ref, env, "COMPAT_C"), (error) => error.status === 404);
  await envvars.upload(ref, env, {
    variables: { COMPAT_A: "x", COMPAT_C: "c" },
    override: true,
    isSecret: true,
  });
  assert.deepEqual(
    compat(await envvars.list(ref, env)).filter((v) => ["COMPAT_A", "COMPAT_C"].includes(v.name)),
    [
      { name: "COMPAT_A", value: "<redacted>", isSecret: true },
      { name: "COMPAT_C", value: "<redacted>", isSecret: true },
    ],
  );
});

test("a task run sees its environment's variable", async () => {
  const { ref, env } = await whoami();
  const value = `hello-${Date.now()}`;
  await envvars.create(ref, env, { name: "COMPAT_GREETING", value });
  // The worker reads the variables again every few seconds at most.
  const deadline = Date.now() + 15_000;
  for (;;) {
    const handle = await tasks.trigger(ENV, {});
    const run = await waitFor(handle.id, finished);
    assert.equal(run.status, "COMPLETED", JSON.stringify(run));
    if (run.output === value) break;
    assert.ok(Date.now() < deadline, `the run never saw ${value}: ${JSON.stringify(run.output)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
});
