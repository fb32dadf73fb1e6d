import { logger, metadata, task, wait } from "@trigger.dev/sdk";

/**
 * Waits `seconds` (10 by default) on the server (the SDK keeps waits of 5 s or less in
 * the task process), logging before and after, with metadata set on both sides.
 */
export const waiter = task({
  id: "fixture-wait",
  run: async (payload: { seconds?: number; marker: string }) => {
    const seconds = payload.seconds ?? 10;
    const started = Date.now();
    metadata.set("phase", "waiting");
    logger.info(`before the wait ${payload.marker}`, { marker: payload.marker });
    await wait.for({ seconds });
    const waitedMs = Date.now() - started;
    logger.info(`after the wait ${payload.marker}`, { marker: payload.marker, waitedMs });
    metadata.set("phase", "done");
    metadata.set("waitedMs", waitedMs);
    return { waitedMs };
  },
});

/**
 * Creates a token, shows its id and callback URL in the run's metadata (flushed before
 * the wait, so a retrieve sees them), waits for it and returns the outcome.
 */
export const tokenWaiter = task({
  id: "fixture-token",
  run: async (payload: { timeout?: string }) => {
    const token = await wait.createToken({ timeout: payload.timeout ?? "5m" });
    metadata.set("tokenId", token.id);
    metadata.set("tokenUrl", token.url);
    await metadata.flush();
    const result = await wait.forToken<{ approved: boolean; by: string }>(token);
    if (result.ok) {
      return { tokenId: token.id, ok: true, output: result.output };
    }
    return {
      tokenId: token.id,
      ok: false,
      error: String(result.error),
      timedOut: result.error.name === "WaitpointTimeoutError",
    };
  },
});
