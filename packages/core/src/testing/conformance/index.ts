/**
 * The provider conformance suite, one module per check (in the manner of oauth4webapi's conformance
 * modules): `types.ts` (what a run is given), `harness.ts` (the Latchkey instance and the fetch every
 * check runs behind), and a file per check. This module lists them in order and registers them with
 * vitest (`providerConformance`) or runs one outside it (`runCheck`).
 */
import assert from "node:assert/strict"
import { afterAll, beforeAll, describe, it } from "vitest"
import { accounts } from "./accounts.ts"
import { apiUnauthorized } from "./api-401.ts"
import { badCode } from "./bad-code.ts"
import { definition } from "./definition.ts"
import { denied } from "./denied.ts"
import { expiry } from "./expiry.ts"
import { garbage } from "./garbage.ts"
import { linking } from "./link.ts"
import { lostResponse } from "./lost-response.ts"
import { refresh } from "./refresh.ts"
import { rejected } from "./rejected-refresh.ts"
import { revoke } from "./revoke.ts"
import { transient } from "./transient.ts"
import type { ConformanceCheck, ConformanceServer, ProviderConformanceOptions } from "./types.ts"
import { wrongSecret } from "./wrong-secret.ts"

export type {
  ConformanceAccount,
  ConformanceCheck,
  ConformanceServer,
  ProviderConformanceOptions
} from "./types.ts"

/** Every check, in the order the suite runs them. */
export const checks: ReadonlyArray<ConformanceCheck> = [
  definition,
  linking,
  accounts,
  denied,
  badCode,
  wrongSecret,
  refresh,
  expiry,
  rejected,
  transient,
  garbage,
  lostResponse,
  apiUnauthorized,
  revoke
]

/** Run one check by name outside vitest. Rejects with an AssertionError naming what failed. */
export const runCheck = async (
  name: string,
  server: ConformanceServer
): Promise<"passed" | "not_applicable"> => {
  const check = checks.find((c) => c.name === name)
  if (check === undefined) throw new Error(`No conformance check named "${name}"`)
  if (check.notApplicable(server) !== undefined) return "not_applicable"
  await check.run(server)
  return "passed"
}

/**
 * Register the suite with vitest: one `describe` with a test per check. Checks that do not apply to
 * the server (or are listed in `skip`) are reported as skipped, with the reason.
 */
export const providerConformance = (options: ProviderConformanceOptions): void => {
  describe(options.name ?? "provider conformance", () => {
    let server: ConformanceServer | undefined
    beforeAll(async () => {
      server = await options.server()
    })
    afterAll(async () => {
      await server?.close?.()
    })
    for (const check of checks) {
      const skipped = options.skip?.[check.name]
      if (skipped !== undefined) {
        it.skip(`${check.name}: ${check.title} (skipped: ${skipped})`, () => {})
        continue
      }
      it(`${check.name}: ${check.title}`, async (context) => {
        assert.ok(server, "the server did not start")
        const reason = check.notApplicable(server)
        if (reason !== undefined) context.skip(`not applicable: ${reason}`)
        await check.run(server)
      })
    }
  })
}
