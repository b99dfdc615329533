import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Tests start real processes and real SQLite files: keep them in separate forks,
    // with generous timeouts (these machines are noisy; no timing assertions in unit tests).
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
  },
});
