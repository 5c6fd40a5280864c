/**
 * `describe()` of the built-in in-process stores (PostgreSQL and Redis are covered by the CLI's
 * doctor tests against the real servers): the kind, the store's own clock, the schema version.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { ConnectionStore, SqliteStore } from "../src/index.ts"

const dir = mkdtempSync(join(tmpdir(), "latchkey-describe-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

describe("store describe()", () => {
  it("memory: its kind and this process's clock", () => {
    const d = Effect.runSync(ConnectionStore.makeMemory().describe!())
    expect(d.kind).toBe("memory")
    expect(Math.abs(d.serverTime - Date.now())).toBeLessThan(1_000)
  })

  it("SQLite: its kind, the clock SQLite reads, the schema version and the journal mode", async () => {
    const path = join(dir, "describe.db")
    const store = SqliteStore.make({ path })
    const d = await Effect.runPromise(store.describe!())
    await Effect.runPromise(store.close())
    expect(d).toMatchObject({ kind: "sqlite", schemaVersion: 2, settings: { path, journal_mode: "wal" } })
    expect(Math.abs(d.serverTime - Date.now())).toBeLessThan(1_000)
  })
})
