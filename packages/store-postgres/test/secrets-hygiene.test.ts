/**
 * The security conformance suite and the permanent secrets-hygiene suite
 * (`securityConformance` of `@latchkey/core/testing`) for the PostgreSQL store, against the real
 * oidc-provider. A CHECK constraint refuses a write whose failing row (tokens included) PostgreSQL
 * puts in the error's `detail`: the store's error must not carry it. Each test has its own schema.
 */
import { randomUUID } from "node:crypto"
import { securityConformance } from "@latchkey/core/testing"
import { conformanceTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import pg from "pg"
import { afterAll } from "vitest"
import { PostgresStore } from "../src/index.ts"

const URL_ = process.env.LATCHKEY_TEST_POSTGRES_URL ?? "postgres://postgres@127.0.0.1:5432/test"
const admin = new pg.Pool({ connectionString: URL_, max: 2 })
admin.on("error", () => {})
afterAll(() => admin.end())

securityConformance({
  name: "PostgreSQL",
  open: async () => {
    const settings = {
      connectionString: URL_,
      schema: `lk_test_${randomUUID().replaceAll("-", "").slice(0, 20)}`,
      maxConnections: 4
    }
    const store = await PostgresStore.make(settings)
    return {
      store,
      settings,
      close: async () => {
        await Effect.runPromise(store.close())
        await admin.query(`DROP SCHEMA IF EXISTS "${settings.schema}" CASCADE`)
      }
    }
  },
  tokenServer: conformanceTokenServer,
  sabotage: async (opened, ownerId) => {
    const { schema } = opened.settings as { schema: string }
    await admin.query(
      `ALTER TABLE "${schema}".latchkey_connections ADD CONSTRAINT sabotage CHECK (owner_id <> ${pg.escapeLiteral(ownerId)}) NOT VALID`
    )
  }
})
