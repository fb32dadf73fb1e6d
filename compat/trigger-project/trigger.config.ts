import { defineConfig } from "@trigger.dev/sdk";

// The project ref is the Runnel project's id, given by the test (the CLI reads the same
// variable); the fallback only lets the file load outside the test.
export default defineConfig({
  project: process.env.TRIGGER_PROJECT_REF ?? "proj_fixture",
  dirs: ["./src/trigger"],
  // Every task may run at most this long (seconds); none of them comes close.
  maxDuration: 120,
  retries: {
    enabledInDev: true,
    // Tasks without retry settings of their own: one retry, soon.
    default: {
      maxAttempts: 2,
      minTimeoutInMs: 100,
      maxTimeoutInMs: 500,
      factor: 2,
      randomize: false,
    },
  },
});
