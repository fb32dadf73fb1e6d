import { logger, metadata, task } from "@trigger.dev/sdk";

/** The simplest task: its return value is the run's output; it logs and sets metadata. */
export const hello = task({
  id: "fixture-hello",
  run: async (payload: { name: string }) => {
    logger.info(`greeting ${payload.name}`, { name: payload.name });
    metadata.set("greeted", payload.name);
    return { greeting: `hello ${payload.name}` };
  },
});

/**
 * Fails its first two attempts and succeeds on the third: the run completes only if
 * the server retries per these settings.
 */
export const flaky = task({
  id: "fixture-flaky",
  retry: { maxAttempts: 3, minTimeoutInMs: 100, maxTimeoutInMs: 200, factor: 1, randomize: false },
  run: async (_payload: unknown, { ctx }) => {
    if (ctx.attempt.number < 3) {
      throw new Error(`flaky attempt ${ctx.attempt.number}`);
    }
    return { attempts: ctx.attempt.number };
  },
});

/** Always fails: the run fails after exactly `maxAttempts` attempts. */
export const alwaysFails = task({
  id: "fixture-always-fails",
  retry: { maxAttempts: 2, minTimeoutInMs: 100, maxTimeoutInMs: 200, factor: 1, randomize: false },
  run: async (_payload: unknown, { ctx }) => {
    throw new Error(`always fails (attempt ${ctx.attempt.number})`);
  },
});
