/**
 * Connection health (issue 17, item 3) and the refresh span (item 4, engine half), against the kit
 * sandbox and a real SQLite store, on an injected clock (no sleeps):
 * - a refresh that fails transiently leaves the stored status `active` and makes the connection
 *   `degraded` (failure count, last error, next attempt; the Refresher backs off to it), and the
 *   next successful refresh makes it `active` again, with `degraded` and `recovered` events;
 * - retries inside one refresh do not degrade a connection;
 * - every non-active state has a machine-readable reason (also for rows written before it existed);
 * - relinking a needs_reauth connection keeps its id and `createdAt` and publishes `reconnected`;
 * - the `TokenManager.refresh` span carries provider, credential kind, outcome, attempt, lease wait
 *   and in-doubt attributes, and the link's spans (exchange, identify) exist; no token in any.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Effect, Tracer } from "effect"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import {
  AuthorizationFlow,
  type Connection,
  Connections,
  createLatchkey,
  type Events,
  Latchkey,
  type LatchkeyClient,
  Provider,
  SqliteStore,
  TokenManager
} from "../src/index.ts"
import {
  approve,
  json,
  type OAuthSandbox,
  type SandboxAccount,
  startOAuthSandbox
} from "../src/sandbox/index.ts"

const REDIRECT = "http://127.0.0.1:9/callback"
const HOUR = 3_600_000

let sandbox: OAuthSandbox<SandboxAccount>
let clock = Date.parse("2026-03-01T10:00:00Z")
const dir = mkdtempSync(join(tmpdir(), "latchkey-health-"))
let seq = 0

beforeAll(async () => {
  sandbox = await startOAuthSandbox<SandboxAccount>({
    name: "Acme",
    clients: [{ clientId: "public", redirectUris: [REDIRECT], auth: "none" }],
    accounts: [
      { id: "u1", label: "ada@example.com" },
      { id: "u2", label: "bob@example.com" },
      { id: "u3", label: "cy@example.com" }
    ],
    paths: { authorize: "/oauth/authorize", token: "/oauth/token", revoke: "/oauth/revoke" },
    pkce: "S256",
    now: () => clock,
    lifetimes: { accessTokenSeconds: 3600, refreshTokenSeconds: null }
  })
  sandbox.route("GET", "/me", "me", (req) => {
    const auth = sandbox.authenticate(req)
    return auth.ok ? json(200, { id: auth.account.id }) : json(401, { error: auth.reason })
  })
})
afterAll(async () => {
  await sandbox.close()
  rmSync(dir, { recursive: true, force: true })
})
afterEach(() => sandbox.clearFaults())

const provider = () =>
  Provider.make({
    id: "acme",
    name: "Acme",
    clientId: "public",
    clientAuth: "none",
    redirectUri: REDIRECT,
    endpoints: {
      issuer: sandbox.url,
      authorization: sandbox.endpoints.authorization,
      token: sandbox.endpoints.token,
      revocation: sandbox.endpoints.revocation
    },
    apiBaseUrl: sandbox.url,
    identify: async ({ fetch }) => {
      const body = (await (await fetch(`${sandbox.url}/me`)).json()) as { id: string }
      return { accountId: body.id, label: `account ${body.id}` }
    }
  })

interface Instance {
  readonly lk: LatchkeyClient
  readonly store: ReturnType<typeof SqliteStore.make>
  readonly events: Array<Events.LatchkeyEvent>
}

/** A Latchkey on a fresh SQLite file, on the test's clock; one request per refresh unless told. */
const open = (config: Record<string, number> = {}): Instance => {
  const store = SqliteStore.make({ path: join(dir, `health-${++seq}.db`) })
  const lk = createLatchkey({
    providers: [provider()],
    store,
    vault: { plaintext: true },
    clock: () => clock,
    config: { maxAttempts: 1, baseBackoffMs: 5, maxBackoffMs: 50, ...config }
  })
  const events: Array<Events.LatchkeyEvent> = []
  lk.on((e) => events.push(e))
  return { lk, store, events }
}

const link = async (lk: LatchkeyClient, account: string) => {
  const { url } = await lk.startAuthorization({ providerId: "acme", ownerId: "owner" })
  const callback = await approve(url, { account })
  return lk.completeAuthorization({ callback, ownerId: "owner" })
}

const refreshFaults = (spec: Record<string, unknown>) =>
  sandbox.inject({ endpoint: "token", grantType: "refresh_token", ...spec } as Parameters<
    OAuthSandbox<SandboxAccount>["inject"]
  >[0])

const typesOf = (events: ReadonlyArray<Events.LatchkeyEvent>, id: string) =>
  events.filter((e) => e.connectionId === id).map((e) => e.type)

/** Change a connection through the one write path of the instance. */
const change = (lk: LatchkeyClient, id: string, f: (c: Connection.Connection) => Connection.Connection) =>
  lk.run(Connections.Connections.use((c) => c.modify(id, (current) => Connections.write(f(current)))))

describe("connection health", () => {
  it("503, 503, then 200: degraded with 1, then 2 failures and the next attempt, then active; degraded and recovered events", async () => {
    const { lk, store, events } = open()
    try {
      const { connection } = await link(lk, "u1")
      expect(connection.health).toEqual({ state: "active" })
      // Two hours later the access token has expired: the Refresher finds it due.
      clock += 2 * HOUR
      const t1 = clock
      refreshFaults({ fault: "status", status: 503, times: 2 })
      const before = (await Effect.runPromise(store.get(connection.id)))!.version

      await expect(lk.refresh(connection.id)).rejects.toMatchObject({
        _tag: "RefreshError",
        reason: "transient"
      })
      // Two writes: the journal before the request, and one that ends it and records the failure.
      expect((await Effect.runPromise(store.get(connection.id)))!.version).toBe(before + 2)
      const first = await lk.connection(connection.id)
      expect(first.status).toBe("active")
      expect(first.health).toEqual({
        state: "degraded",
        reason: "transient",
        message: expect.stringContaining("503"),
        failures: 1,
        since: t1,
        lastFailureAt: t1,
        nextAttemptAt: t1 + 30_000
      })
      // The Refresher backs off to the next attempt: the stored due time moved, and nothing is due before it.
      expect((await Effect.runPromise(store.get(connection.id)))!.refreshDueAt).toBe(t1 + 30_000)
      clock = t1 + 1_000
      expect(await lk.refresher.sweep()).toEqual({ due: 0, refreshed: 0, failed: 0 })

      clock = t1 + 30_000
      expect(await lk.refresher.sweep()).toEqual({ due: 1, refreshed: 0, failed: 1 })
      const second = await lk.connection(connection.id)
      expect(second.status).toBe("active")
      expect(second.health).toMatchObject({
        state: "degraded",
        reason: "transient",
        failures: 2,
        since: t1,
        lastFailureAt: t1 + 30_000,
        nextAttemptAt: t1 + 30_000 + 60_000
      })

      clock = t1 + 90_000
      expect(await lk.refresher.sweep()).toEqual({ due: 1, refreshed: 1, failed: 0 })
      const healed = await lk.connection(connection.id)
      expect(healed.health).toEqual({ state: "active" })
      expect(healed.lastError).toBeUndefined()
      const row = (await Effect.runPromise(store.get(connection.id)))!
      expect(row.failures ?? undefined).toBeUndefined()
      expect(row.refreshDueAt).toBeGreaterThan(clock)

      expect(typesOf(events, connection.id)).toEqual([
        "linked",
        "refresh_failed",
        "degraded",
        "refresh_failed",
        "refreshed",
        "recovered"
      ])
      expect(events.find((e) => e.type === "degraded")).toMatchObject({
        reason: "transient",
        failures: 1,
        nextAttemptAt: t1 + 30_000,
        at: t1
      })
      expect(events.find((e) => e.type === "recovered")).toMatchObject({
        failures: 2,
        degradedMs: 90_000,
        at: t1 + 90_000
      })
    } finally {
      await lk.close()
    }
  })

  it("a failure retried inside one refresh does not degrade the connection", async () => {
    const { lk, events } = open({ maxAttempts: 4 })
    try {
      const { connection } = await link(lk, "u1")
      clock += 2 * HOUR
      refreshFaults({ fault: "status", status: 503, times: 1 })
      const after = await lk.refresh(connection.id)
      expect(after.health).toEqual({ state: "active" })
      expect(typesOf(events, connection.id)).toEqual(["linked", "refresh_failed", "refreshed"])
    } finally {
      await lk.close()
    }
  })

  it("a machine-readable reason for every non-active state", async () => {
    const { lk, store } = open()
    try {
      const reasonOf = async (id: string) => (await lk.connection(id)).health
      const expired = (c: Connection.Connection): Connection.Connection => ({
        ...c,
        tokens: { ...c.tokens, obtainedAt: clock - 2 * HOUR, expiresAt: clock - HOUR }
      })

      // degraded: rate_limited, the next attempt honouring a Retry-After longer than the backoff
      const a = (await link(lk, "u1")).connection
      await change(lk, a.id, expired)
      refreshFaults({ fault: "rate_limit", retryAfterSeconds: 120 })
      await expect(lk.refresh(a.id)).rejects.toMatchObject({ reason: "rate_limited" })
      expect(await reasonOf(a.id)).toMatchObject({
        state: "degraded",
        reason: "rate_limited",
        failures: 1,
        nextAttemptAt: clock + 120_000
      })
      // degraded: invalid_response (the streak goes on: one count, the last reason)
      refreshFaults({ fault: "malformed" })
      await expect(lk.refresh(a.id)).rejects.toMatchObject({ reason: "invalid_response" })
      expect(await reasonOf(a.id)).toMatchObject({
        state: "degraded",
        reason: "invalid_response",
        failures: 2
      })

      // needs_reauth: invalid_grant (the provider refused the refresh token)
      refreshFaults({
        fault: "status",
        status: 400,
        body: JSON.stringify({ error: "invalid_grant", error_description: "grant revoked" })
      })
      await expect(lk.refresh(a.id)).rejects.toMatchObject({ _tag: "ReauthorizationRequired" })
      expect(await reasonOf(a.id)).toEqual({ state: "needs_reauth", reason: "invalid_grant", since: clock })

      // needs_reauth: refresh_interrupted (the answer was lost and the one resend refused)
      const b = (await link(lk, "u2")).connection
      await change(lk, b.id, expired)
      refreshFaults({ fault: "drop_after_rotate" })
      await expect(lk.refresh(b.id)).rejects.toMatchObject({ reason: "refresh_interrupted" })
      expect(await reasonOf(b.id)).toMatchObject({ state: "needs_reauth", reason: "refresh_interrupted" })

      // needs_reauth: refresh_token_expired, then no_refresh_token
      const c = (await link(lk, "u3")).connection
      await change(lk, c.id, (x) => ({
        ...expired(x),
        tokens: { ...expired(x).tokens, refreshExpiresAt: clock - 1 }
      }))
      await expect(lk.refresh(c.id)).rejects.toMatchObject({ reason: "refresh_token_expired" })
      expect(await reasonOf(c.id)).toMatchObject({ state: "needs_reauth", reason: "refresh_token_expired" })
      await link(lk, "u3")
      await change(lk, c.id, (x) => ({
        ...expired(x),
        tokens: { ...expired(x).tokens, refreshToken: undefined }
      }))
      await expect(lk.refresh(c.id)).rejects.toMatchObject({ reason: "no_refresh_token" })
      expect(await reasonOf(c.id)).toMatchObject({ state: "needs_reauth", reason: "no_refresh_token" })

      // revoked: at the provider (markRevoked's default: an uninstall webhook), or by the user
      await lk.run(Latchkey.markRevoked(b.id))
      expect(await reasonOf(b.id)).toEqual({ state: "revoked", reason: "revoked_at_provider", since: clock })
      await lk.run(Latchkey.markRevoked(c.id, { reason: "revoked_by_user" }))
      expect(await reasonOf(c.id)).toMatchObject({ state: "revoked", reason: "revoked_by_user" })

      // Rows written before health existed (no statusReason, no failures) still get a reason; a
      // malformed streak reads as healthy.
      const legacy = async (id: string, patch: Record<string, unknown>) => {
        const row = (await Effect.runPromise(store.get(id)))!
        const { statusReason: _s, failures: _f, ...old } = row
        await Effect.runPromise(
          store.update({ ...old, ...patch, version: row.version + 1 } as typeof row, row.version)
        )
        return lk.connection(id)
      }
      expect(
        (
          await legacy(b.id, {
            status: "needs_reauth",
            lastError: { code: "refresh_interrupted", description: "lost", at: 5 }
          })
        ).health
      ).toEqual({ state: "needs_reauth", reason: "refresh_interrupted", since: 5 })
      expect(
        (await legacy(b.id, { status: "needs_reauth", lastError: { code: "invalid_token", at: 6 } })).health
      ).toEqual({ state: "needs_reauth", reason: "invalid_grant", since: 6 })
      expect((await legacy(c.id, { status: "revoked" })).health).toEqual({
        state: "revoked",
        reason: "revoked_at_provider",
        since: undefined
      })
      expect(
        (await legacy(a.id, { status: "active", lastError: null, failures: { count: "x" } })).health
      ).toEqual({
        state: "active"
      })
    } finally {
      await lk.close()
    }
  })

  it("relinking a needs_reauth connection keeps its id and createdAt and publishes reconnected", async () => {
    const { lk, events } = open()
    try {
      const first = (await link(lk, "u1")).connection
      clock += 2 * HOUR
      refreshFaults({ fault: "status", status: 400, body: JSON.stringify({ error: "invalid_grant" }) })
      await expect(lk.refresh(first.id)).rejects.toMatchObject({ _tag: "ReauthorizationRequired" })
      expect((await lk.connection(first.id)).status).toBe("needs_reauth")

      clock += 60_000
      const again = await link(lk, "u1")
      expect(again.relinked).toBe(true)
      expect(again.connection.id).toBe(first.id)
      expect(again.connection.createdAt).toBe(first.createdAt)
      expect(again.connection.health).toEqual({ state: "active" })
      expect(await lk.connections("owner")).toHaveLength(1)
      expect(typesOf(events, first.id)).toEqual(["linked", "needs_reauth", "linked", "reconnected"])
      expect(events.at(-1)).toEqual({
        type: "reconnected",
        at: clock,
        connectionId: first.id,
        ownerId: "owner",
        providerId: "acme",
        previous: { state: "needs_reauth", reason: "invalid_grant" }
      })
      // An active connection linked again is reconnected too, from `active`.
      await link(lk, "u1")
      expect(events.at(-1)).toMatchObject({ type: "reconnected", previous: { state: "active" } })
    } finally {
      await lk.close()
    }
  })
})

/** A tracer that keeps every span once it ends (Effect's own spans, in memory). */
const capturing = () => {
  const ended: Array<Tracer.Span> = []
  const tracer = Tracer.make({
    span: (options) => {
      const span = Tracer.nativeTracer.span(options) as Tracer.Span
      const end = span.end.bind(span)
      span.end = (endTime, exit) => {
        end(endTime, exit)
        ended.push(span)
      }
      return span
    }
  })
  return { tracer, ended }
}

describe("refresh span", () => {
  it("TokenManager.refresh has provider, credential kind, outcome, attempt, lease wait and in-doubt attributes; the link has exchange and identify spans; no token in any", async () => {
    const { lk, store } = open()
    const { tracer, ended } = capturing()
    try {
      const { url } = await lk.startAuthorization({ providerId: "acme", ownerId: "owner" })
      const callback = await approve(url, { account: "u2" })
      const linked = await lk.run(
        AuthorizationFlow.AuthorizationFlow.use((f) => f.complete({ callback, ownerId: "owner" })).pipe(
          Effect.withTracer(tracer)
        )
      )
      const id = linked.connection.id
      const names = ended.map((s) => s.name)
      expect(names).toEqual(
        expect.arrayContaining([
          "AuthorizationFlow.exchangeCode",
          "AuthorizationFlow.identify",
          "AuthorizationFlow.complete"
        ])
      )
      expect(
        Object.fromEntries(ended.find((s) => s.name === "AuthorizationFlow.complete")!.attributes)
      ).toMatchObject({
        "latchkey.provider": "acme",
        "latchkey.credential_kind": "oauth",
        "latchkey.relinked": false
      })

      clock += 2 * HOUR
      const refreshNow = TokenManager.TokenManager.use((t) => t.refreshNow(id)).pipe(
        Effect.withTracer(tracer)
      )
      await lk.run(refreshNow)
      refreshFaults({ fault: "status", status: 503 })
      clock += 1_000
      await expect(lk.run(refreshNow)).rejects.toMatchObject({ reason: "transient" })
      refreshFaults({ fault: "drop_after_rotate" })
      sandbox.registry.refreshTokens = { ...sandbox.registry.refreshTokens, reuseGraceSeconds: 60 }
      clock += 1_000
      await lk.run(refreshNow)
      sandbox.registry.refreshTokens = { ...sandbox.registry.refreshTokens, reuseGraceSeconds: 0 }

      const spans = ended
        .filter((s) => s.name === "TokenManager.refresh")
        .map((s) => Object.fromEntries(s.attributes))
      expect(spans).toHaveLength(3)
      expect(spans[0]).toEqual({
        "latchkey.connection_id": id,
        "latchkey.provider": "acme",
        "latchkey.credential_kind": "oauth",
        "latchkey.outcome": "refreshed",
        "latchkey.attempt": 1,
        "latchkey.lease_wait_ms": expect.any(Number),
        "latchkey.in_doubt": false
      })
      expect(spans[1]).toMatchObject({
        "latchkey.outcome": "failed",
        "latchkey.reason": "transient",
        "latchkey.error": "RefreshError",
        "latchkey.attempt": 1,
        "latchkey.in_doubt": false
      })
      // The answer was lost and the one resend accepted: two requests, in doubt, refreshed.
      expect(spans[2]).toMatchObject({
        "latchkey.outcome": "refreshed",
        "latchkey.attempt": 2,
        "latchkey.in_doubt": true
      })

      // No token, code or account e-mail in any attribute.
      const row = (await Effect.runPromise(store.get(id)))!
      const secrets = [
        row.accessToken,
        row.refreshToken ?? "",
        new URL(callback).searchParams.get("code")!,
        "bob@example.com"
      ]
        .map((v) => v.replace(/^plain\./, ""))
        .filter((v) => v.length > 0)
      const text = JSON.stringify(ended.map((s) => [...s.attributes]))
      for (const secret of secrets) expect(text).not.toContain(secret)
    } finally {
      await lk.close()
    }
  })
})
