// The SDK's own error classes for what the server refuses.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  tasks,
  runs,
  auth,
  AuthenticationError,
  NotFoundError,
  UnprocessableEntityError,
} from "@trigger.dev/sdk";
import { ECHO, apiUrl } from "./helpers.mjs";

test("an unknown secret key is an AuthenticationError (401)", async () => {
  await auth.withAuth({ baseURL: apiUrl, accessToken: "tr_prod_000000000000000000000000" }, async () => {
    await assert.rejects(runs.retrieve("run_doesnotexist0000000000"), (error) => {
      assert.ok(error instanceof AuthenticationError, `got ${error}`);
      assert.equal(error.status, 401);
      return true;
    });
  });
});

test("a missing run is a NotFoundError (404)", async () => {
  await assert.rejects(runs.retrieve("run_doesnotexist0000000000"), (error) => {
    assert.ok(error instanceof NotFoundError, `got ${error}`);
    assert.equal(error.status, 404);
    return true;
  });
});

test("more than ten tags is an UnprocessableEntityError (422)", async () => {
  const tags = Array.from({ length: 11 }, (_, i) => `t${i}`);
  await assert.rejects(tasks.trigger(ECHO, {}, { tags }), (error) => {
    assert.ok(error instanceof UnprocessableEntityError, `got ${error}`);
    assert.equal(error.status, 422);
    assert.match(error.message, /10 tags/);
    return true;
  });
});
