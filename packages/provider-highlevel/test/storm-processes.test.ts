/**
 * The refresh storm across OS processes: 4 processes x 50 callers, each process its own Latchkey
 * instance on one shared SQLite file, on a HighLevel connection whose access token has expired.
 * HighLevel refresh tokens are single use: every expiry must cost exactly one refresh, every caller
 * must get the same new token, and the grant must survive, round after round. A location token minted
 * from the agency token (no refresh token) goes through the same engine: one mint per expiry.
 */
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { createLatchkey, SqliteStore, Vault } from "@latchkey/core"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { HighLevel } from "../src/index.ts"
import { type HighLevelSandbox, startSandbox } from "../src/sandbox.ts"
import { expireAccess, link, providerFor, refreshCalls, SCOPES } from "./support.ts"

const PROCESSES = 4
const CALLERS = 50
let sandbox: HighLevelSandbox
let dir: string
const vaultKey = Vault.generateKey()

beforeAll(async () => {
  sandbox = await startSandbox()
  dir = mkdtempSync(join(tmpdir(), "latchkey-hl-storm-"))
})
afterAll(async () => {
  await sandbox.close()
  rmSync(dir, { recursive: true, force: true })
})

const worker = (settings: Record<string, unknown>) => {
  const child = spawn(process.execPath, [join(import.meta.dirname, "fixtures", "storm-worker.ts")], {
    env: { ...process.env, LK_WORKER: JSON.stringify(settings) },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let stderr = ""
  child.stderr.on("data", (d) => {
    stderr += d
  })
  let onReady: () => void = () => {}
  const ready = new Promise<void>((resolve) => {
    onReady = resolve
  })
  const result = new Promise<{ tokens: Array<string>; failures: Array<string> }>((resolve, reject) => {
    createInterface({ input: child.stdout }).on("line", (line) => {
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

describe("refresh storm across OS processes (SQLite)", () => {
  it(`${PROCESSES} processes x ${CALLERS} callers: one refresh per expiry, one token for all, the grant survives`, async () => {
    const path = join(dir, "storm.db")
    const vault = { keys: [{ id: "k1", key: vaultKey }] }
    const parent = createLatchkey({
      providers: [providerFor(sandbox)],
      store: SqliteStore.make({ path }),
      vault
    })
    const c = await link(parent, sandbox, "sbxLocation001")
    await parent.close()
    const grant = () => sandbox.oauth.registry.grants({ accountId: "sbxLocation001" }).at(-1)!
    let previous = ""
    for (let round = 1; round <= 2; round++) {
      const store = SqliteStore.make({ path })
      await expireAccess(store, c.id, undefined, vault)
      await Effect.runPromise(store.close())
      const workers = Array.from({ length: PROCESSES }, () =>
        worker({
          dbPath: path,
          providerOptions: { ...sandbox.providerOptions, scopes: SCOPES },
          connectionId: c.id,
          callers: CALLERS,
          vaultKey
        })
      )
      await Promise.all(workers.map((w) => w.ready))
      const before = refreshCalls(sandbox)
      for (const w of workers) w.child.stdin.write("go\n")
      const results = await Promise.all(workers.map((w) => w.result))
      expect(refreshCalls(sandbox) - before).toBe(1)
      expect(results.flatMap((r) => r.failures)).toEqual([])
      const tokens = new Set(results.flatMap((r) => r.tokens))
      expect(tokens.size).toBe(1)
      expect([...tokens][0]).not.toBe(previous)
      previous = [...tokens][0]!
      expect(grant().refreshes).toBe(round)
      expect(grant().revoked).toBe(false)
    }
    // The grant is alive: the API accepts the last token.
    const check = createLatchkey({
      providers: [providerFor(sandbox)],
      store: SqliteStore.make({ path }),
      vault
    })
    const res = await check.fetch(c.id, "/locations/sbxLocation001")
    expect(res.status).toBe(200)
    await res.body?.cancel()
    await check.close()
  })

  it(`${PROCESSES} processes x ${CALLERS} callers on a location token minted from the agency: one mint per expiry, one token for all`, async () => {
    const path = join(dir, "storm-minted.db")
    const vault = { keys: [{ id: "k1", key: vaultKey }] }
    const parent = createLatchkey({
      providers: [providerFor(sandbox, { userType: "Company" })],
      store: SqliteStore.make({ path }),
      vault
    })
    const agency = await link(parent, sandbox, "sbxCompany0001", "agency-storm")
    const [linked] = await HighLevel.Locations.client(parent).linkAll(agency.id, ["sbxLocation002"])
    const location = linked!.connection
    expect(location).toMatchObject({ kind: "minted", parentId: agency.id })
    await parent.close()
    const mints = () => sandbox.calls.location_token ?? 0
    const rounds: Array<{ mints: number; refreshes: number; callers: number; tokens: number }> = []
    let previous = ""
    for (let round = 1; round <= 2; round++) {
      const store = SqliteStore.make({ path })
      await expireAccess(store, location.id, undefined, vault)
      await Effect.runPromise(store.close())
      const workers = Array.from({ length: PROCESSES }, () =>
        worker({
          dbPath: path,
          providerOptions: { ...sandbox.providerOptions, scopes: SCOPES, userType: "Company" },
          connectionId: location.id,
          callers: CALLERS,
          vaultKey
        })
      )
      await Promise.all(workers.map((w) => w.ready))
      const before = { mints: mints(), refreshes: refreshCalls(sandbox) }
      for (const w of workers) w.child.stdin.write("go\n")
      const results = await Promise.all(workers.map((w) => w.result))
      const tokens = new Set(results.flatMap((r) => r.tokens))
      rounds.push({
        mints: mints() - before.mints,
        refreshes: refreshCalls(sandbox) - before.refreshes,
        callers: PROCESSES * CALLERS,
        tokens: tokens.size
      })
      expect(results.flatMap((r) => r.failures)).toEqual([])
      expect(mints() - before.mints).toBe(1)
      // The agency's token was fresh: nothing was sent to the token endpoint.
      expect(refreshCalls(sandbox) - before.refreshes).toBe(0)
      expect(tokens.size).toBe(1)
      expect([...tokens][0]).not.toBe(previous)
      previous = [...tokens][0]!
    }
    console.log(`[storm] minted location | ${JSON.stringify(rounds)}`)
    const check = createLatchkey({
      providers: [providerFor(sandbox, { userType: "Company" })],
      store: SqliteStore.make({ path }),
      vault
    })
    const res = await check.fetch(location.id, "/locations/sbxLocation002")
    expect(res.status).toBe(200)
    await res.body?.cancel()
    await check.close()
  })
})
