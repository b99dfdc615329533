import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests start real processes and real SQLite files: keep them in separate forks,
    // with generous timeouts (these machines are noisy; no timing assertions in unit tests).
    pool: 'forks',
    // The soak tests compare heap sizes after a real garbage collection.
    poolOptions: { forks: { execArgv: ['--expose-gc'] } },
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
