import { basename } from "node:path"
import { defineConfig } from "vitest/config"

/**
 * The vitest settings every package shares: tests in test/, generous timeouts for the real servers
 * they start, and a JSON report per package that `npm test` sums into one closing line.
 */
export const config = (packageDir: string) =>
  defineConfig({
    test: {
      include: ["test/**/*.test.ts"],
      testTimeout: 60_000,
      hookTimeout: 60_000,
      reporters: ["default", "json"],
      outputFile: { json: `${packageDir}/../../test-artifacts/vitest/${basename(packageDir)}.json` }
    }
  })
