import { schedules } from "@trigger.dev/sdk";

/**
 * A declarative schedule: the manifest says `cron: "* * * * *"`, so the server creates a
 * DECLARATIVE schedule for it and triggers a run every minute. The output shows what the
 * SDK made of the payload: `timestamp` revived as a `Date` (the payload is superjson).
 */
export const everyMinute = schedules.task({
  id: "fixture-every-minute",
  cron: "* * * * *",
  run: async (payload) => ({
    scheduleId: payload.scheduleId,
    type: payload.type,
    timestamp: payload.timestamp.toISOString(),
    isDate: payload.timestamp instanceof Date,
    upcoming: payload.upcoming.length,
    timezone: payload.timezone,
  }),
});

/** A scheduled task without a cron of its own: only imperative schedules trigger it. */
export const scheduled = schedules.task({
  id: "fixture-scheduled",
  run: async (payload) => ({
    scheduleId: payload.scheduleId,
    type: payload.type,
    externalId: payload.externalId ?? null,
    timezone: payload.timezone,
    timestamp: payload.timestamp.toISOString(),
  }),
});
