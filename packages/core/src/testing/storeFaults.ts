/**
 * The promise under faults, as part of the store conformance suite: every store (built-in or
 * third-party) shows that a linked account is never lost by Latchkey and that a refresh token is
 * never sent a second time while its first sender lives, when its writes are slow, when it is
 * unreachable right after the provider answered, when instances' clocks disagree, when an answer
 * is lost, and (stores shared by processes) when the holder is SIGKILLed or SIGTERMed in flight and
 * across a rolling restart under load.
 *
 * The token server is the core sandbox kit with single-use refresh tokens whose reuse REVOKES THE
 * GRANT (as oidc-provider does), optionally with a reuse grace period (as Cognito or Connect2id).
 * It counts every refresh request and every reuse of a spent token, so "sent twice" is measured
 * by the server, not inferred. Each check prints one `[faults]` line with its figures.
 */
import { randomUUID } from "node:crypto"
import { Effect, Redacted } from "effect"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import * as ConnectionModule from "../Connection.ts"
import type { ConnectionStoreShape } from "../ConnectionStore.ts"
import { StoreError } from "../Errors.ts"
import { createLatchkey, type LatchkeyClient } from "../Latchkey.ts"
import * as Provider from "../Provider.ts"
import { type OAuthSandbox, type SandboxAccount, startOAuthSandbox } from "../sandbox/oauth.ts"
import * as Vault from "../VaultNamespace.ts"
import { oauthConnection } from "./oauthConnection.ts"
import type { WorkerSettings } from "./storeConformanceWorker.ts"
import { openWithOpener } from "./storeConformanceWorker.ts"
import {
  type OpenedStore,
  type StoreConformanceOptions,
  startStoreWorker,
  type WorkerHandle
} from "./storeKit.ts"

const run = <A, E>(effect: Effect.Effect<A, E>) => Effect.runPromise(effect)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
/**
 * The refresh lease of the suite's instances: short, so that lapses happen within a test, and long
 * enough that a loaded CI machine's event-loop stalls do not lapse a renewed lease.
 */
const LEASE_MS = 3_000
const PROVIDER_ID = "faults"
const REDIRECT = "http://127.0.0.1:9/callback"
const ACCOUNTS: ReadonlyArray<SandboxAccount> = Array.from({ length: 12 }, (_, i) => ({
  id: `acct-${i + 1}`,
  label: `Account ${i + 1}`
}))

type Reuse = Provider.RefreshTokenReuse

/** Wait until `check` holds (polling), or fail after `ms`. */
const waitFor = async (what: string, check: () => Promise<boolean>, ms = 30_000) => {
  const until = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

/**
 * Call until it succeeds, or fails in a way that trying again cannot fix. Retryable failures on the
 * way (pending_write, in_doubt, lease_timeout, draining, a StoreError) are counted by tag.
 */
const untilSettled = async <A>(f: () => Promise<A>, ms: number) => {
  const until = Date.now() + ms
  const retried: Record<string, number> = {}
  for (;;) {
    try {
      return { ok: true as const, value: await f(), retried }
    } catch (e) {
      const error = e as { _tag?: string; reason?: string; isRetryable?: boolean; retryAfterMs?: number }
      if (error?.isRetryable !== true || Date.now() > until) return { ok: false as const, error, retried }
      const tag = `${error._tag}:${error.reason}`
      retried[tag] = (retried[tag] ?? 0) + 1
      await sleep(Math.min(250, Math.max(20, error.retryAfterMs ?? 50)))
    }
  }
}

export const storeFaults = (options: StoreConformanceOptions): void => {
  describe("the promise under faults", () => {
    const vaultKey = Vault.generateKey()
    const vaultOptions = { keys: [{ id: "k1", key: vaultKey }] }
    const vault = Vault.make(vaultOptions)
    let sandbox: OAuthSandbox<SandboxAccount>
    const settings = (reuse: Reuse) => ({
      clientId: "faults-client",
      clientSecret: "faults-secret",
      clientAuth: "client_secret_basic" as const,
      endpoints: {
        issuer: sandbox.endpoints.issuer,
        authorization: sandbox.endpoints.authorization,
        token: sandbox.endpoints.token
      },
      redirectUri: REDIRECT,
      refreshTokenReuse: reuse
    })
    const noGrace: Reuse = { graceSeconds: 0, revokesGrant: true }
    const grace: Reuse = { graceSeconds: 30, revokesGrant: true }
    const provider = (reuse: Reuse) =>
      Provider.make({
        id: PROVIDER_ID,
        name: "Faults sandbox",
        ...settings(reuse),
        identify: async () => ({ accountId: "unused", label: "unused" })
      })
    const latchkey = (
      store: ConnectionStoreShape,
      config: Record<string, number> = {},
      extra: { reuse?: Reuse; clock?: () => number } = {}
    ): LatchkeyClient =>
      createLatchkey({
        providers: [provider(extra.reuse ?? noGrace)],
        store,
        vault: vaultOptions,
        ...(extra.clock ? { clock: extra.clock } : {}),
        config: {
          leaseTtlMs: LEASE_MS,
          baseBackoffMs: 5,
          maxBackoffMs: 50,
          writeMaxBackoffMs: 100,
          ...config
        }
      })
    const refreshes = () => sandbox.countCalls({ endpoint: "token", grantType: "refresh_token" })
    const serverAccepts = (token: string) => sandbox.registry.checkAccessToken(token).ok
    let reuseBefore = 0
    let graceBefore = 0
    const spentTwice = () => sandbox.registry.reuseCount - reuseBefore
    const graceResends = () => sandbox.registry.graceReuseCount - graceBefore
    const report = (check: string, figures: Record<string, unknown>) =>
      console.log(
        `[faults] ${options.name} | ${check} | ${Object.entries(figures)
          .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
          .join(" ")}`
      )

    beforeAll(async () => {
      sandbox = await startOAuthSandbox({
        name: "Faults",
        accounts: ACCOUNTS,
        clients: [
          {
            clientId: "faults-client",
            clientSecret: "faults-secret",
            redirectUris: [REDIRECT],
            auth: "client_secret_basic"
          }
        ],
        paths: { authorize: "/authorize", token: "/token" },
        refreshTokens: { rotate: true, reuseRevokesGrant: true, reuseGraceSeconds: 0 }
      })
    })
    afterAll(async () => {
      await sandbox?.close()
    })
    afterEach(() => {
      sandbox.clearFaults()
      sandbox.registry.refreshTokens = {
        rotate: true,
        reuseRevokesGrant: true,
        reuseGraceSeconds: 0,
        issue: true
      }
      sandbox.setLifetimes({ accessTokenSeconds: 3600 })
    })
    const begin = () => {
      reuseBefore = sandbox.registry.reuseCount
      graceBefore = sandbox.registry.graceReuseCount
      return refreshes()
    }

    /** A linked account whose access token has expired, straight into the store. */
    const seed = async (store: ConnectionStoreShape, account = "acct-1") => {
      const { tokenResponse } = sandbox.issueGrant({ account, clientId: "faults-client" })
      const now = Date.now()
      const c = oauthConnection({
        providerId: PROVIDER_ID,
        accountId: `${account}-${randomUUID()}`,
        label: account,
        accessToken: String(tokenResponse.access_token),
        refreshToken: String(tokenResponse.refresh_token),
        obtainedAt: now - 3_600_000,
        expiresAt: now - 1_000,
        now
      })
      await run(store.insert(ConnectionModule.toRecord(vault, c, now - 1_000)))
      return c.id
    }
    const read = async (store: ConnectionStoreShape, id: string) =>
      run(ConnectionModule.fromRecord(vault, (await run(store.get(id)))!))
    const journalOf = async (store: ConnectionStoreShape, id: string) =>
      (await run(store.get(id)))?.journal ?? null
    /** The stored connection is active, its journal ended, its access token accepted and its grant alive. */
    const expectIntact = async (store: ConnectionStoreShape, id: string) => {
      const c = await read(store, id)
      expect(c.status, `connection ${id} is active`).toBe("active")
      expect(c.journal, `connection ${id} has no refresh in doubt`).toBeUndefined()
      const token = Redacted.value(c.tokens.accessToken)
      if ((c.tokens.expiresAt ?? Number.POSITIVE_INFINITY) > Date.now() + 200) {
        expect(serverAccepts(token), "the server accepts the stored access token").toBe(true)
      }
      // The grant is alive: the stored refresh token refreshes once more, accepted.
      const lk = latchkey(store)
      try {
        const before = sandbox.registry.reuseCount
        expect((await lk.refresh(id)).status).toBe("active")
        expect(sandbox.registry.reuseCount, "the stored refresh token was not a spent one").toBe(before)
        expect(serverAccepts(await lk.accessToken(id)), "the refreshed token is accepted").toBe(true)
      } finally {
        await lk.close()
      }
      return c
    }
    const withStore = async (f: (store: ConnectionStoreShape, opened: OpenedStore) => Promise<void>) => {
      const opened = await options.open()
      try {
        await f(opened.store, opened)
      } finally {
        await opened.close()
      }
    }

    /** A store whose connection writes (and, with `renewals`, lease renewals) are `ms` slow. */
    const slowWrites = (
      store: ConnectionStoreShape,
      ms: number,
      renewals: boolean
    ): ConnectionStoreShape => ({
      ...store,
      update: (record, expected, events) =>
        record.journal == null
          ? Effect.andThen(Effect.sleep(ms), store.update(record, expected, events))
          : store.update(record, expected, events),
      renewLease: renewals
        ? (lease, ttl) => Effect.andThen(Effect.sleep(ms), store.renewLease(lease, ttl))
        : store.renewLease
    })

    for (const renewals of [false, true]) {
      it(`a write slower than the lease${renewals ? " (renewals slow too, so the lease lapses)" : ""}: no second sender, the holder's tokens land`, async () => {
        await withStore(async (store) => {
          const id = await seed(store)
          const before = begin()
          const a = latchkey(slowWrites(store, LEASE_MS + 1_000, renewals))
          const b = latchkey(store, { inDoubtAfterMs: 20_000 })
          try {
            const fromA = untilSettled(() => a.accessToken(id), 40_000)
            await waitFor("A's journal", async () => (await journalOf(store, id)) !== null)
            const fromB = await untilSettled(() => b.accessToken(id), 40_000)
            const resultA = await fromA
            expect(resultA, JSON.stringify(resultA)).toMatchObject({ ok: true })
            expect(fromB, JSON.stringify(fromB)).toMatchObject({ ok: true })
            expect(resultA.ok && resultA.value).toBe(fromB.ok && fromB.value)
            expect(refreshes() - before).toBe(1)
            expect(spentTwice()).toBe(0)
            const stored = await read(store, id)
            expect(Redacted.value(stored.tokens.accessToken)).toBe(fromB.ok && fromB.value)
            await expectIntact(store, id)
            report(`slow write${renewals ? ", lease lapsed" : ""}`, {
              refreshes: 1,
              sentTwice: spentTwice(),
              retriedByB: fromB.retried
            })
          } finally {
            await Promise.all([a.close(), b.close()])
          }
        })
      }, 90_000)
    }

    const lockRow = options.lockRow
    if (lockRow !== undefined) {
      it("a real lock on the connection's row, held 4 s across the holder's write: no second sender, the tokens land", async () => {
        await withStore(async (store, opened) => {
          const id = await seed(store)
          const before = begin()
          sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "delay", ms: 500 })
          const a = latchkey(store)
          const b = latchkey(store, { inDoubtAfterMs: 20_000 })
          try {
            const fromA = untilSettled(() => a.accessToken(id), 20_000)
            await waitFor("A's journal", async () => (await journalOf(store, id)) !== null)
            const lock = await lockRow(opened, id)
            const fromB = untilSettled(() => b.accessToken(id), 20_000)
            await sleep(4_000)
            await lock.release()
            const [resultA, resultB] = await Promise.all([fromA, fromB])
            expect(resultA, JSON.stringify(resultA)).toMatchObject({ ok: true })
            expect(resultB, JSON.stringify(resultB)).toMatchObject({ ok: true })
            expect(resultA.ok && resultA.value).toBe(resultB.ok && resultB.value)
            expect(refreshes() - before).toBe(1)
            expect(spentTwice()).toBe(0)
            await expectIntact(store, id)
            report("row locked 4 s across the write", {
              refreshes: 1,
              sentTwice: spentTwice(),
              retriedByA: resultA.retried,
              retriedByB: resultB.retried
            })
          } finally {
            await Promise.all([a.close(), b.close()])
          }
        })
      }, 90_000)
    }

    for (const outageMs of [2_000, 30_000]) {
      it(
        `the store unreachable for ${outageMs / 1000} s right after the provider answered: the rotated tokens are kept, nobody else sends the old token`,
        async () => {
          await withStore(async (store) => {
            const id = await seed(store)
            const before = begin()
            let downUntil = 0
            const down = () =>
              Date.now() < downUntil
                ? Effect.fail(
                    new StoreError({ reason: "unavailable", message: "store unreachable (test outage)" })
                  )
                : Effect.void
            // Instance A loses the store the moment it writes the provider's answer (its lease renewals fail too).
            const cut: ConnectionStoreShape = {
              ...store,
              get: (i) => Effect.andThen(down(), store.get(i)),
              update: (record, expected, events) => {
                if (record.journal == null && downUntil === 0) downUntil = Date.now() + outageMs
                return Effect.andThen(down(), store.update(record, expected, events))
              },
              renewLease: (lease, ttl) => Effect.andThen(down(), store.renewLease(lease, ttl)),
              releaseLease: (lease) => Effect.andThen(down(), store.releaseLease(lease))
            }
            const a = latchkey(cut)
            const b = latchkey(store, { inDoubtAfterMs: outageMs + 10_000 })
            try {
              const first = await a.accessToken(id).then(
                () => undefined,
                (e: { _tag: string; reason: string; isRetryable: boolean }) => e
              )
              expect(first).toMatchObject({
                _tag: "RefreshError",
                reason: "pending_write",
                isRetryable: true
              })
              const fromB = await untilSettled(() => b.accessToken(id), outageMs + 15_000)
              expect(fromB.ok).toBe(true)
              expect(refreshes() - before).toBe(1)
              expect(spentTwice()).toBe(0)
              expect(Date.now()).toBeGreaterThanOrEqual(downUntil)
              const c = await read(store, id)
              expect(Redacted.value(c.tokens.accessToken)).toBe(fromB.ok && fromB.value)
              expect(await a.accessToken(id)).toBe(fromB.ok && fromB.value)
              await expectIntact(store, id)
              report(`store unreachable ${outageMs} ms after the answer`, {
                refreshes: 1,
                sentTwice: spentTwice(),
                retriedByB: fromB.retried
              })
            } finally {
              await Promise.all([a.close(), b.close()])
            }
          })
        },
        outageMs + 40_000
      )
    }

    for (const skewMs of [-1_500, 1_500, 30_000, -30_000]) {
      it(`two instances whose clocks differ by ${skewMs / 1000} s, with a refresh slower than the lease: one refresh`, async () => {
        await withStore(async (store) => {
          const id = await seed(store)
          const before = begin()
          sandbox.inject({
            endpoint: "token",
            grantType: "refresh_token",
            fault: "delay",
            ms: LEASE_MS + 500
          })
          const a = latchkey(store, {}, { clock: () => Date.now() + skewMs })
          const b = latchkey(store)
          try {
            const fromA = untilSettled(() => a.accessToken(id), 40_000)
            await waitFor("A's journal", async () => (await journalOf(store, id)) !== null)
            const fromB = await untilSettled(() => b.accessToken(id), 40_000)
            const resultA = await fromA
            expect(resultA, JSON.stringify(resultA)).toMatchObject({ ok: true })
            expect(fromB, JSON.stringify(fromB)).toMatchObject({ ok: true })
            expect(resultA.ok && resultA.value).toBe(fromB.ok && fromB.value)
            expect(refreshes() - before).toBe(1)
            expect(spentTwice()).toBe(0)
            await expectIntact(store, id)
            report(`clock skew ${skewMs} ms`, { refreshes: 1, sentTwice: spentTwice() })
          } finally {
            await Promise.all([a.close(), b.close()])
          }
        })
      }, 90_000)
    }

    const lostCases = [
      { name: "rotated, no grace period", fault: "drop_after_rotate", reuse: noGrace, recovers: false },
      { name: "not processed, no grace period", fault: "drop", reuse: noGrace, recovers: true },
      { name: "rotated, 30 s grace period", fault: "drop_after_rotate", reuse: grace, recovers: true }
    ] as const
    for (const lost of lostCases) {
      it(`a lost answer in a live process (${lost.name}): one resend, and ${lost.recovers ? "the account is kept" : "refresh_interrupted, saying what happened"}`, async () => {
        await withStore(async (store) => {
          const id = await seed(store)
          const before = begin()
          sandbox.registry.refreshTokens = {
            ...sandbox.registry.refreshTokens,
            reuseGraceSeconds: lost.reuse.graceSeconds ?? 0
          }
          sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: lost.fault })
          const lk = latchkey(store, {}, { reuse: lost.reuse })
          const events: Array<{ type: string; reason?: string; recovered?: boolean }> = []
          lk.on((e) => events.push(e as never))
          try {
            const outcome = await lk.accessToken(id).then(
              (token) => ({ token }),
              (e: { _tag: string; reason: string; message: string }) => ({ error: e })
            )
            const requests = refreshes() - before
            const resentInGrace = graceResends()
            expect(requests).toBe(2)
            if (lost.recovers) {
              expect(outcome).toHaveProperty("token")
              expect(events).toContainEqual(expect.objectContaining({ type: "refreshed", recovered: true }))
              expect(spentTwice()).toBe(0)
              await expectIntact(store, id)
            } else {
              expect("error" in outcome && outcome.error).toMatchObject({
                _tag: "ReauthorizationRequired",
                reason: "refresh_interrupted"
              })
              const message = "error" in outcome ? outcome.error.message : ""
              expect(message).toMatch(/answer was lost/)
              expect(message).toMatch(/the one resend was refused/)
              expect(message).not.toMatch(/already used/i)
              const c = await read(store, id)
              expect(c.status).toBe("needs_reauth")
              expect(c.lastError?.code).toBe("refresh_interrupted")
              expect(c.journal).toBeUndefined()
              expect(spentTwice()).toBe(1) // the one deliberate resend, after the first answer was lost
            }
            report(`lost answer, ${lost.name}`, {
              requests,
              resends: 1,
              graceResends: resentInGrace,
              outcome: lost.recovers ? "kept" : "refresh_interrupted"
            })
          } finally {
            await lk.close()
          }
        })
      })
    }

    it("close() with the refresh at the provider (a SIGTERM's drain, in process): the rotated tokens are written, the callers get them, the lease is released", async () => {
      await withStore(async (store) => {
        const id = await seed(store)
        const before = begin()
        sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "delay", ms: 1_500 })
        const lk = latchkey(store, {}, { reuse: noGrace })
        let closed = false
        try {
          const calls = Array.from({ length: 5 }, () =>
            lk.accessToken(id).then(
              (token) => ({ token }),
              (e: { _tag: string }) => ({ error: e._tag })
            )
          )
          await waitFor("the journal", async () => (await journalOf(store, id)) !== null)
          await sleep(200) // the request is at the provider now
          await lk.close()
          closed = true
          const outcomes = await Promise.all(calls)
          const tokens = new Set(outcomes.map((o) => ("token" in o ? o.token : o.error)))
          expect(tokens.size).toBe(1)
          expect(outcomes.every((o) => "token" in o)).toBe(true)
          expect(refreshes() - before).toBe(1)
          expect(spentTwice()).toBe(0)
          const c = await read(store, id)
          expect(Redacted.value(c.tokens.accessToken)).toBe([...tokens][0])
          expect(c.journal).toBeUndefined()
          // The lease was released: another instance refreshes at once.
          expect(await run(store.acquireLease(id, "probe", 1_000))).toBeDefined()
          await expectIntact(store, id)
          report("close() in flight", { refreshes: 1, sentTwice: spentTwice(), lost: 0 })
        } finally {
          if (!closed) await lk.close()
        }
      })
    }, 30_000)

    // SIGKILL, SIGTERM and rolling restarts need another process on the same data.
    const cross = options.crossProcess
    if (cross === undefined) return

    const workerSettings = (
      opened: OpenedStore,
      connectionId: string,
      reuse: Reuse,
      extra: Partial<WorkerSettings> = {}
    ): WorkerSettings => ({
      opener: cross.opener,
      storeSettings: opened.settings,
      providerId: PROVIDER_ID,
      provider: settings(reuse),
      connectionId,
      callers: 1,
      leaseTtlMs: LEASE_MS,
      vaultKey,
      ...extra
    })
    const start = async (s: WorkerSettings) => startStoreWorker(s)

    const killCases = [
      {
        name: "a 30 s grace period, the provider had rotated",
        fault: "hold_after_rotate",
        reuse: grace,
        recovers: true
      },
      {
        name: "no grace period, the provider had not processed it",
        fault: "hold",
        reuse: noGrace,
        recovers: true
      },
      {
        name: "no grace period, the provider had rotated",
        fault: "hold_after_rotate",
        reuse: noGrace,
        recovers: false
      }
    ] as const
    for (const kill of killCases) {
      it(`SIGKILL of the holder with the refresh at the provider (${kill.name}): at most one resend, ${kill.recovers ? "recovered" : "refresh_interrupted"}`, async () => {
        await withStore(async (store, opened) => {
          const id = await seed(store)
          const before = begin()
          sandbox.registry.refreshTokens = {
            ...sandbox.registry.refreshTokens,
            reuseGraceSeconds: kill.reuse.graceSeconds ?? 0
          }
          sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: kill.fault })
          const holder = await start(
            workerSettings(opened, id, kill.reuse, { config: { requestTimeoutMs: 30_000 } })
          )
          let lk: LatchkeyClient | undefined
          try {
            await holder.ready
            holder.child.stdin.write("go\n")
            await waitFor("the refresh at the provider", async () => refreshes() - before === 1)
            await sleep(50)
            holder.child.kill("SIGKILL")
            await holder.exited
            const journal = await journalOf(store, id)
            expect(journal).toMatchObject({ fence: expect.any(Number) })
            // Another process (this one) picks it up.
            lk = latchkey(store, { inDoubtAfterMs: 1_500 }, { reuse: kill.reuse })
            const outcome = await untilSettled(() => lk!.accessToken(id), 40_000)
            const requests = refreshes() - before
            const resentInGrace = graceResends()
            expect(requests).toBe(2) // the killed request, and one resend
            if (kill.recovers) {
              expect(outcome.ok).toBe(true)
              expect(spentTwice()).toBe(0)
              await expectIntact(store, id)
            } else {
              expect(outcome.ok).toBe(false)
              expect(!outcome.ok && outcome.error).toMatchObject({
                _tag: "ReauthorizationRequired",
                reason: "refresh_interrupted"
              })
              const message = String(!outcome.ok && (outcome.error as { message?: string }).message)
              expect(message).toContain(journal!.holder)
              expect(message).toMatch(/answer was lost/)
              expect(message).not.toMatch(/already used/i)
              expect(spentTwice()).toBe(1)
            }
            report(`SIGKILL in flight, ${kill.name}`, {
              requests,
              resends: 1,
              graceResends: resentInGrace,
              outcome: kill.recovers ? "recovered" : "refresh_interrupted",
              waitedOn: outcome.retried
            })
          } finally {
            holder.child.kill("SIGKILL")
            await lk?.close()
          }
        })
      }, 90_000)
    }

    it("two crashes in a row — the holder and then the process resending for it, both SIGKILLed at the provider: never a third send, refresh_interrupted", async () => {
      await withStore(async (store, opened) => {
        const id = await seed(store)
        const before = begin()
        sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "hold_after_rotate" })
        sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "hold" })
        const config = { requestTimeoutMs: 30_000, inDoubtAfterMs: 1_500 }
        const first = await start(workerSettings(opened, id, noGrace, { config }))
        let second: WorkerHandle | undefined
        let lk: LatchkeyClient | undefined
        try {
          await first.ready
          first.child.stdin.write("go\n")
          await waitFor("the first send", async () => refreshes() - before === 1)
          first.child.kill("SIGKILL")
          await first.exited
          // The second process keeps asking until it resends (after the in-doubt delay), and dies in that resend.
          second = await start(
            workerSettings(opened, id, noGrace, { config, mode: "load", connectionIds: [id] })
          )
          await second.ready
          second.child.stdin.write("go\n")
          await waitFor("the resend", async () => refreshes() - before === 2, 20_000)
          second.child.kill("SIGKILL")
          await second.exited
          expect((await journalOf(store, id))?.resend).toBeDefined()
          lk = latchkey(store, config)
          const outcome = await untilSettled(() => lk!.accessToken(id), 40_000)
          expect(outcome.ok).toBe(false)
          expect(!outcome.ok && outcome.error).toMatchObject({
            _tag: "ReauthorizationRequired",
            reason: "refresh_interrupted"
          })
          await sleep(200)
          expect(refreshes() - before).toBe(2)
          report("SIGKILL of the holder, then of the resender", {
            requests: refreshes() - before,
            resends: 1,
            outcome: "refresh_interrupted"
          })
        } finally {
          first.child.kill("SIGKILL")
          second?.child.kill("SIGKILL")
          await lk?.close()
        }
      })
    }, 120_000)

    it("SIGTERM of the holder in flight: it drains, writes the rotated tokens, releases the lease and exits 0", async () => {
      await withStore(async (store, opened) => {
        const id = await seed(store)
        const before = begin()
        sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "delay", ms: 1_500 })
        const holder = await start(workerSettings(opened, id, noGrace, { callers: 5, leaseTtlMs: 2_000 }))
        try {
          await holder.ready
          holder.child.stdin.write("go\n")
          await waitFor("the journal", async () => (await journalOf(store, id)) !== null)
          await sleep(200) // the request is at the provider now
          holder.child.kill("SIGTERM")
          const exit = await holder.exited
          expect(exit).toEqual({ code: 0, signal: null })
          expect(holder.lines).toContainEqual({ drained: true })
          const result = holder.lines.find((l) => "tokens" in l) as {
            tokens: Array<string>
            failures: Array<string>
          }
          expect(result.failures).toEqual([])
          expect(result.tokens).toHaveLength(1)
          expect(refreshes() - before).toBe(1)
          expect(spentTwice()).toBe(0)
          const c = await read(store, id)
          expect(Redacted.value(c.tokens.accessToken)).toBe(result.tokens[0])
          // The lease was released: another instance refreshes at once.
          expect(await run(store.acquireLease(id, "probe", 1_000))).toBeDefined()
          await expectIntact(store, id)
          report("SIGTERM in flight", { refreshes: 1, sentTwice: spentTwice(), lost: 0 })
        } finally {
          holder.child.kill("SIGKILL")
        }
      })
    }, 90_000)

    it("a rolling restart of 4 processes under a 4 x 50-caller load, tokens expiring every 2 s: 0 connections lost, 0 refresh tokens sent twice", async () => {
      await withStore(async (store, opened) => {
        sandbox.setLifetimes({ accessTokenSeconds: 2 })
        const ids: Array<string> = []
        for (let i = 0; i < 10; i++) ids.push(await seed(store, ACCOUNTS[i]!.id))
        const before = begin()
        const worker = async () => {
          const w = await start(
            workerSettings(opened, ids[0]!, noGrace, {
              mode: "load",
              connectionIds: ids,
              callers: 50,
              leaseTtlMs: 2_000
            })
          )
          await w.ready
          w.child.stdin.write("go\n")
          return w
        }
        const workers: Array<WorkerHandle> = []
        const finished: Array<WorkerHandle> = []
        try {
          for (let i = 0; i < 4; i++) workers.push(await worker())
          for (let round = 0; round < 4; round++) {
            await sleep(1_500)
            const old = workers[round]!
            old.child.kill("SIGTERM")
            const exit = await old.exited
            expect(exit).toEqual({ code: 0, signal: null })
            finished.push(old)
            workers[round] = await worker()
          }
          await sleep(2_000)
          for (const w of workers) w.child.kill("SIGTERM")
          for (const w of workers) expect(await w.exited).toEqual({ code: 0, signal: null })
          finished.push(...workers)
          const stats = finished.map(
            (w) =>
              w.lines.find((l) => "calls" in l) as {
                calls: number
                ok: number
                failures: Record<string, number>
              }
          )
          const calls = stats.reduce((n, s) => n + (s?.calls ?? 0), 0)
          const ok = stats.reduce((n, s) => n + (s?.ok ?? 0), 0)
          const failures: Record<string, number> = {}
          for (const s of stats)
            for (const [k, v] of Object.entries(s?.failures ?? {})) failures[k] = (failures[k] ?? 0) + v
          expect(spentTwice()).toBe(0)
          // A call under way at SIGTERM is let finish by close(), not interrupted.
          expect(failures["InstanceClosed:closed"] ?? 0).toBe(0)
          let lost = 0
          for (const id of ids) {
            const c = await read(store, id)
            if (c.status !== "active" || c.journal !== undefined) lost++
          }
          expect(lost).toBe(0)
          for (const id of ids) await expectIntact(store, id)
          expect(refreshes() - before).toBeGreaterThan(10)
          report("rolling restart", {
            processes: 8,
            connections: ids.length,
            refreshes: refreshes() - before,
            sentTwice: spentTwice(),
            lost,
            calls,
            ok,
            failures
          })
        } finally {
          for (const w of [...workers, ...finished]) w.child.kill("SIGKILL")
        }
      })
    }, 180_000)

    it("a reopened handle sees the same journal (it is part of the connection, durable)", async () => {
      await withStore(async (store, opened) => {
        const id = await seed(store)
        const c = await read(store, id)
        const journal = { holder: "h", fence: 3, startedAt: 1, fingerprint: "f".repeat(22) }
        await run(store.update(ConnectionModule.toRecord(vault, { ...c, version: 2, journal }, null), 1))
        const again = await openWithOpener(cross.opener, opened.settings)
        try {
          expect((await run(again.get(id)))?.journal).toEqual(journal)
        } finally {
          if (again.close) await run(again.close())
        }
      })
    })
  })
}
