/**
 * The embedded SQLite store: the store contract, durability across reopen, tokens sealed at rest,
 * and the refresh lease across OS processes (4 processes x 50 callers on one expired connection at
 * a server with single-use refresh tokens; a process SIGKILLed while holding the lease).
 */
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import type { OidcServer } from "@latchkey/testkit-oidc"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { ConnectionRecord } from "../src/Connection.ts"
import { createLatchkey, SqliteStore, Vault } from "../src/index.ts"
import { exampleProvider, expire, link, startServer } from "./support.ts"

let server: OidcServer
let dir: string
beforeAll(async () => {
  server = await startServer()
  dir = mkdtempSync(join(tmpdir(), "latchkey-sqlite-"))
})
afterAll(async () => {
  await server.close()
  rmSync(dir, { recursive: true, force: true })
})

const vaultKey = Vault.generateKey()
let n = 0
const freshPath = () => join(dir, `store-${++n}.db`)
const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)

const record = (id: string, patch: Partial<ConnectionRecord> = {}): ConnectionRecord => ({
  id,
  ownerId: "owner",
  providerId: "p",
  accountId: `acct-${id}`,
  label: id,
  kind: "oauth",
  status: "active",
  version: 1,
  createdAt: 1,
  updatedAt: 1,
  lastRefreshAt: null,
  lastError: null,
  profile: null,
  accessToken: "plain.a",
  refreshToken: "plain.r",
  tokenType: "Bearer",
  obtainedAt: 1,
  expiresAt: 100,
  refreshExpiresAt: null,
  scopes: ["read"],
  extras: "plain.{}",
  refreshDueAt: 50,
  ...patch
})

describe("SQLite store contract", () => {
  it("inserts, reads, lists by owner, finds by account and refuses duplicates", async () => {
    const store = SqliteStore.make({ path: freshPath() })
    await run(store.insert(record("a")))
    await run(store.insert(record("b", { createdAt: 2 })))
    await run(store.insert(record("c", { ownerId: "other" })))
    expect((await run(store.get("a")))?.label).toBe("a")
    expect(await run(store.get("zzz"))).toBeUndefined()
    expect((await run(store.listByOwner("owner"))).map((r) => r.id)).toEqual(["a", "b"])
    expect((await run(store.findByAccount("owner", "p", "acct-b")))?.id).toBe("b")
    const dupId = await run(Effect.flip(store.insert(record("a", { accountId: "new" }))))
    expect(dupId).toMatchObject({ _tag: "StoreError", reason: "conflict" })
    const dupAccount = await run(Effect.flip(store.insert(record("d", { accountId: "acct-a" }))))
    expect(dupAccount).toMatchObject({ reason: "conflict" })
    expect(await run(store.remove("a"))).toBe(true)
    expect(await run(store.remove("a"))).toBe(false)
    await run(store.close())
  })

  it("updates only by compare-and-set on the version", async () => {
    const store = SqliteStore.make({ path: freshPath() })
    await run(store.insert(record("a")))
    await run(store.update(record("a", { version: 2, label: "two" }), 1))
    const stale = await run(Effect.flip(store.update(record("a", { version: 2, label: "stale" }), 1)))
    expect(stale).toMatchObject({ reason: "conflict" })
    const skip = await run(Effect.flip(store.update(record("a", { version: 4 }), 2)))
    expect(skip).toMatchObject({ reason: "conflict" })
    expect((await run(store.get("a")))?.label).toBe("two")
    await run(store.close())
  })

  it("lists due active connections soonest first", async () => {
    const store = SqliteStore.make({ path: freshPath() })
    await run(store.insert(record("late", { refreshDueAt: 90 })))
    await run(store.insert(record("soon", { refreshDueAt: 10 })))
    await run(store.insert(record("never", { refreshDueAt: null })))
    await run(store.insert(record("dead", { refreshDueAt: 5, status: "needs_reauth" })))
    expect((await run(store.listDue(100, 10))).map((r) => r.id)).toEqual(["soon", "late"])
    expect((await run(store.listDue(100, 1))).map((r) => r.id)).toEqual(["soon"])
    expect(await run(store.listDue(9, 10))).toEqual([])
    await run(store.close())
  })

  it("grants the lease to one holder at a time with increasing fences", async () => {
    const store = SqliteStore.make({ path: freshPath() })
    const first = await run(store.acquireLease("c1", "A", 1_000, 0))
    expect(first?.fence).toBe(1)
    expect(await run(store.acquireLease("c1", "B", 1_000, 500))).toBeUndefined()
    // Only the holder's own lease is released.
    await run(store.releaseLease({ ...first!, holder: "B" }))
    expect(await run(store.acquireLease("c1", "B", 1_000, 600))).toBeUndefined()
    await run(store.releaseLease(first!))
    const second = await run(store.acquireLease("c1", "B", 1_000, 700))
    expect(second?.fence).toBe(2)
    // An expired lease can be taken over.
    const third = await run(store.acquireLease("c1", "C", 1_000, 1_701))
    expect(third?.fence).toBe(3)
    await run(store.close())
  })

  it("hands a pending authorization out once", async () => {
    const store = SqliteStore.make({ path: freshPath() })
    const pending = {
      state: "s1",
      providerId: "p",
      ownerId: "o",
      redirectUri: "https://app.test/cb",
      codeVerifier: null,
      scopes: [],
      createdAt: 0,
      expiresAt: 600_000,
      metadata: { back: "/x" }
    }
    await run(store.putPending(pending))
    const results = await Promise.all([1, 2, 3].map(() => run(store.takePending("s1", 10))))
    expect(results.filter((r) => r._tag === "Found")).toHaveLength(1)
    expect(results.filter((r) => r._tag === "Consumed")).toHaveLength(2)
    expect(await run(store.takePending("nope", 10))).toEqual({ _tag: "Missing" })
    await run(store.close())
  })
})

describe("SQLite store with Latchkey", () => {
  it("keeps connections across a restart, with tokens sealed at rest", async () => {
    const path = freshPath()
    const vault = { keys: [{ id: "k1", key: vaultKey }] }
    const first = createLatchkey({
      providers: [exampleProvider(server)],
      store: SqliteStore.make({ path }),
      vault
    })
    const c = await link(first)
    const token = await first.accessToken(c.id)
    await first.close()
    const file =
      readFileSync(path).toString("latin1") + readFileSync(`${path}-wal`, { flag: "a+" }).toString("latin1")
    expect(file).not.toContain(token)
    const second = createLatchkey({
      providers: [exampleProvider(server)],
      store: SqliteStore.make({ path }),
      vault
    })
    expect((await second.connections("user-1")).map((x) => x.id)).toEqual([c.id])
    expect(await second.accessToken(c.id)).toBe(token)
    await second.close()
    // Without the key the tokens cannot be read, and the error names the connection.
    const keyless = createLatchkey({
      providers: [exampleProvider(server)],
      store: SqliteStore.make({ path })
    })
    await expect(keyless.accessToken(c.id)).rejects.toMatchObject({ _tag: "VaultError", connectionId: c.id })
    await keyless.close()
  })
})

interface Worker {
  readonly child: ChildProcessWithoutNullStreams
  readonly ready: Promise<void>
  readonly result: Promise<{ tokens: Array<string>; failures: Array<string> }>
}

const startWorker = (settings: Record<string, unknown>): Worker => {
  const child = spawn(process.execPath, [join(import.meta.dirname, "fixtures", "storm-worker.ts")], {
    env: { ...process.env, LK_WORKER: JSON.stringify(settings) },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (d) => {
    stderr += d
  })
  const lines = createInterface({ input: child.stdout })
  let onReady: () => void = () => {}
  const ready = new Promise<void>((resolve) => {
    onReady = resolve
  })
  const result = new Promise<{ tokens: Array<string>; failures: Array<string> }>((resolve, reject) => {
    lines.on("line", (line) => {
      if (line === "ready") onReady()
      else if (line.startsWith("{")) resolve(JSON.parse(line))
    })
    child.on("exit", (code, signal) =>
      reject(new Error(`worker exited (${code ?? signal}): ${stderr.slice(-500)}`))
    )
  })
  result.catch(() => {})
  return { child, ready, result }
}

describe("the refresh lease across OS processes (SQLite)", () => {
  const linkDurable = async (path: string) => {
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store: SqliteStore.make({ path }),
      vault: { keys: [{ id: "k1", key: vaultKey }] }
    })
    const c = await link(lk)
    await lk.close()
    const store = SqliteStore.make({ path })
    await expire(store, c.id)
    await run(store.close())
    return c.id
  }

  const settingsFor = (path: string, connectionId: string, extra: Record<string, unknown> = {}) => ({
    dbPath: path,
    endpoints: server.endpoints,
    clientSecret: server.clients[0]!.client_secret,
    connectionId,
    callers: 50,
    leaseTtlMs: 10_000,
    vaultKey,
    ...extra
  })

  it("4 processes x 50 callers on one expired connection: exactly one refresh, and the grant survives", async () => {
    const path = freshPath()
    const id = await linkDurable(path)
    const workers = Array.from({ length: 4 }, () => startWorker(settingsFor(path, id)))
    await Promise.all(workers.map((w) => w.ready))
    const before = server.grants.refresh_token
    for (const w of workers) w.child.stdin.write("go\n")
    const results = await Promise.all(workers.map((w) => w.result))
    expect(server.grants.refresh_token - before).toBe(1)
    expect(results.flatMap((r) => r.failures)).toEqual([])
    expect(new Set(results.flatMap((r) => r.tokens)).size).toBe(1)
    // The grant survived: the stored (rotated) refresh token still refreshes.
    const lk = createLatchkey({
      providers: [exampleProvider(server)],
      store: SqliteStore.make({ path }),
      vault: { keys: [{ id: "k1", key: vaultKey }] }
    })
    const refreshed = await lk.refresh(id)
    expect(refreshed.status).toBe("active")
    expect(server.grants.refresh_token - before).toBe(2)
    expect(server.grants.refreshErrors).toBe(0)
    await lk.close()
  })

  it("a process SIGKILLed while holding the lease: another completes the refresh after the lease lapses", async () => {
    const path = freshPath()
    const id = await linkDurable(path)
    const stuck = startWorker(settingsFor(path, id, { hang: true, callers: 5, leaseTtlMs: 1_500 }))
    await stuck.ready
    stuck.child.stdin.write("go\n")
    // Wait until the stuck process holds the lease, then kill it.
    const probe = SqliteStore.make({ path })
    for (let i = 0; i < 100; i++) {
      const held = await run(probe.acquireLease(id, "probe", 1, Date.now()))
      if (held === undefined) break
      await run(probe.releaseLease(held))
      await new Promise((r) => setTimeout(r, 20))
    }
    expect(await run(probe.acquireLease(id, "probe", 1, Date.now()))).toBeUndefined()
    await run(probe.close())
    stuck.child.kill("SIGKILL")
    const before = server.grants.refresh_token
    const next = startWorker(settingsFor(path, id, { callers: 20, leaseTtlMs: 1_500 }))
    await next.ready
    next.child.stdin.write("go\n")
    const result = await next.result
    expect(result.failures).toEqual([])
    expect(result.tokens).toHaveLength(1)
    expect(server.grants.refresh_token - before).toBe(1)
  })
})
