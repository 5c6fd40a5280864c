/**
 * The embedded SQLite store: the store conformance suite (contract, Vault rotation, durability across
 * reopen with tokens sealed at rest, the refresh lease across OS processes: 4 processes x 50 callers
 * on one expired connection at a server with single-use refresh tokens, and a process SIGKILLed
 * while holding the lease), plus what is SQLite's own: the file and its scoped layer.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { DatabaseSync } from "node:sqlite"
import { conformanceTokenServer as oidcTokenServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { afterAll, describe, expect, it } from "vitest"
import { ConnectionStore, SqliteStore } from "../src/index.ts"
import { sampleRecord, storeConformance } from "../src/testing/index.ts"

const dir = mkdtempSync(join(tmpdir(), "latchkey-sqlite-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
let n = 0
const freshPath = () => join(dir, `store-${++n}.db`)
const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

/** The database file and its write-ahead log, as the bytes an attacker with the disk would see. */
const fileContents = (path: string) =>
  [path, `${path}-wal`]
    .filter((p) => existsSync(p))
    .map((p) => readFileSync(p).toString("latin1"))
    .join("\n")

storeConformance({
  name: "SQLite",
  open: async () => {
    const path = freshPath()
    const store = SqliteStore.make({ path })
    return {
      store,
      settings: { path },
      raw: async () => fileContents(path),
      close: async () => {
        await run(store.close())
        for (const p of [path, `${path}-wal`, `${path}-shm`]) rmSync(p, { force: true })
      }
    }
  },
  plantRecord: async (opened, connectionId, text) => {
    const raw = new DatabaseSync((opened.settings as { path: string }).path)
    try {
      raw.prepare("UPDATE latchkey_connections SET record = ? WHERE id = ?").run(text, connectionId)
    } finally {
      raw.close()
    }
  },
  crossProcess: {
    opener: { module: new URL("../src/index.ts", import.meta.url).href, export: "SqliteStore.make" },
    tokenServer: oidcTokenServer
  }
})

describe("SQLite store: the file", () => {
  it("creates the file and its folder, and reopens it with the data (migrations are idempotent)", async () => {
    const path = join(dir, "nested", "deeper", "store.db")
    const first = SqliteStore.make({ path })
    await run(first.insert(sampleRecord("a")))
    await run(first.close())
    const second = SqliteStore.make({ path })
    expect(await run(second.get("a"))).toEqual(sampleRecord("a"))
    await run(second.close())
  })

  it("adds the claim index to a file that lacks it, and claims in its order", async () => {
    const path = freshPath()
    const first = SqliteStore.make({ path })
    const now = Date.now()
    for (const id of ["c", "a", "b"]) await run(first.insert(sampleRecord(id, { refreshDueAt: now - 1_000 })))
    await run(first.close())
    const raw = new DatabaseSync(path)
    raw.exec("DROP INDEX IF EXISTS latchkey_connections_claim")
    raw.close()
    const again = SqliteStore.make({ path })
    const check = new DatabaseSync(path)
    const index = check
      .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'latchkey_connections_claim'")
      .all()
    check.close()
    expect(index).toEqual([{ name: "latchkey_connections_claim" }])
    // Equal due times: claimed by id.
    expect((await run(again.claimDue!(now, 2, "h", 10_000))).map((r) => r.id)).toEqual(["a", "b"])
    await run(again.close())
  })

  it("as a scoped layer: opened when built, closed when released", async () => {
    const path = freshPath()
    const leaked = await run(
      Effect.scoped(
        Effect.gen(function* () {
          const store = yield* ConnectionStore.ConnectionStore
          yield* store.insert(sampleRecord("a"))
          expect((yield* store.get("a"))?.id).toBe("a")
          return store
        }).pipe(Effect.provide(SqliteStore.layer({ path })))
      )
    )
    // Released: the handle is closed, and its operations fail with a typed StoreError.
    expect(await run(Effect.flip(leaked.get("a")))).toMatchObject({
      _tag: "StoreError",
      reason: "unavailable"
    })
    const reopened = SqliteStore.make({ path })
    expect((await run(reopened.get("a")))?.id).toBe("a")
    await run(reopened.close())
  })
})
