import { AbortTaskRunError, task, wait } from "@trigger.dev/sdk";

export const child = task({
  id: "fixture-child",
  run: async (payload: { n: number }) => {
    return { doubled: payload.n * 2 };
  },
});

/** Waits for a child and returns what the child returned. */
export const parent = task({
  id: "fixture-parent",
  run: async (payload: { n: number }) => {
    const result = await child.triggerAndWait({ n: payload.n });
    if (!result.ok) {
      throw new Error(`the child failed: ${String(result.error)}`);
    }
    return { childRunId: result.id, childOutput: result.output };
  },
});

/** A batch item: fails (without retrying) when asked to. */
export const batchItem = task({
  id: "fixture-batch-item",
  retry: { maxAttempts: 1 },
  run: async (payload: { n: number; fail?: boolean }) => {
    if (payload.fail) {
      throw new AbortTaskRunError(`item ${payload.n} failed on purpose`);
    }
    return { squared: payload.n * payload.n };
  },
});

/** Waits for a batch of three items, the second of which fails, and reports each. */
export const batchParent = task({
  id: "fixture-batch-parent",
  run: async () => {
    const batch = await batchItem.batchTriggerAndWait([
      { payload: { n: 1 } },
      { payload: { n: 2, fail: true } },
      { payload: { n: 3 } },
    ]);
    return {
      batchId: batch.id,
      items: batch.runs.map((run) =>
        run.ok
          ? { ok: true, id: run.id, output: run.output }
          : { ok: false, id: run.id, error: String(run.error) }
      ),
    };
  },
});

/** Waits (on the server) far longer than any test runs: only a cancel ends it. */
export const sleeper = task({
  id: "fixture-sleeper",
  run: async () => {
    await wait.for({ seconds: 100 });
    return { woke: true };
  },
});

/** Waits for a sleeper child: cancelling this run must cancel the child too. */
export const cancelParent = task({
  id: "fixture-cancel-parent",
  run: async () => {
    const result = await sleeper.triggerAndWait({});
    return { childFinished: result.ok };
  },
});
