/**
 * The security conformance suite and the permanent secrets-hygiene suite
 * (`securityConformance` of `@latchkey/core/testing`) for the built-in memory and SQLite stores,
 * against the real oidc-provider. The PostgreSQL and Redis stores run the same suite in their packages.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { conformanceTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { afterAll } from "vitest"
import { ConnectionStore, SqliteStore } from "../src/index.ts"
import { securityConformance } from "../src/testing/index.ts"

const dir = mkdtempSync(join(tmpdir(), "latchkey-hygiene-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
let n = 0

securityConformance({
  name: "memory",
  open: async () => ({ store: ConnectionStore.makeMemory(), close: async () => {} }),
  tokenServer: conformanceTokenServer
})

securityConformance({
  name: "SQLite",
  open: async () => {
    const path = join(dir, `store-${++n}.db`)
    const store = SqliteStore.make({ path })
    return {
      store,
      settings: { path },
      close: async () => {
        await Effect.runPromise(store.close())
        for (const p of [path, `${path}-wal`, `${path}-shm`]) rmSync(p, { force: true })
      }
    }
  },
  tokenServer: conformanceTokenServer,
  // A trigger refuses every later write of the owner's connections, as a failing disk or a
  // constraint would: the store's error is then checked for the tokens it was writing.
  sabotage: async (opened, ownerId) => {
    const db = new DatabaseSync((opened.settings as { path: string }).path)
    db.exec(`CREATE TRIGGER sabotage BEFORE UPDATE ON latchkey_connections
             WHEN NEW.owner_id = '${ownerId.replaceAll("'", "''")}'
             BEGIN SELECT RAISE(ABORT, 'sabotaged write'); END`)
    db.close()
  }
})
