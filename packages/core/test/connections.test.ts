/**
 * `Connections`, the one write path: the compare-and-set re-reads and re-applies on a conflict, as
 * far as its Schedule allows and then fails (never silently); a write whose answer was lost counts as
 * written (not written twice); fields are derived (version, updatedAt, refreshDueAt by kind,
 * lastError); attached events are published once, after the write, and not when it fails.
 */
import { Effect, Layer, Redacted, Schedule } from "effect"
import { describe, expect, it } from "vitest"
import { defaults, LatchkeyConfig } from "../src/Config.ts"
import type { Connection, ConnectionRecord } from "../src/Connection.ts"
import * as ConnectionStore from "../src/ConnectionStore.ts"
import * as Connections from "../src/Connections.ts"
import { StoreError } from "../src/Errors.ts"
import { Events, type LatchkeyEvent } from "../src/Events.ts"
import { markRevoked } from "../src/Latchkey.ts"
import * as Vault from "../src/Vault.ts"

const HOUR = 3_600_000

const sample = (id: string, kind: Connection["kind"], now: number): Connections.NewConnection => ({
  id,
  ownerId: "owner",
  providerId: "example",
  accountId: `acct-${id}`,
  label: id,
  kind,
  status: "active",
  lastRefreshAt: undefined,
  lastError: undefined,
  profile: undefined,
  ...(kind === "minted" ? { parentId: "parent" } : {}),
  tokens: {
    accessToken: Redacted.make(`access-${id}`),
    refreshToken: kind === "oauth" ? Redacted.make(`refresh-${id}`) : undefined,
    tokenType: "Bearer",
    obtainedAt: now,
    expiresAt: now + HOUR,
    refreshExpiresAt: undefined,
    scopes: [],
    extras: {}
  }
})

/**
 * A store that lets a test act between a read and the next compare-and-set: `beforeUpdate` runs
 * before each update (e.g. another writer's update), and `afterUpdate` may fail an update that was
 * applied (an answer lost on the way back).
 */
const harness = (
  hooks: {
    beforeUpdate?: (
      inner: ConnectionStore.ConnectionStoreShape,
      attempt: number
    ) => Effect.Effect<void, StoreError>
    afterUpdate?: (attempt: number) => StoreError | undefined
  } = {},
  vault: Vault.VaultShape = Vault.make({ keys: [{ id: "k1", key: Vault.generateKey() }] })
) => {
  const inner = ConnectionStore.makeMemory()
  let updates = 0
  /** `options.quiet` of each update, in order. */
  const quiet: Array<boolean | undefined> = []
  const store: ConnectionStore.ConnectionStoreShape = {
    ...inner,
    update: (record, expected, appended, options) =>
      Effect.gen(function* () {
        const attempt = updates++
        quiet.push(options?.quiet)
        if (hooks.beforeUpdate) yield* hooks.beforeUpdate(inner, attempt)
        yield* inner.update(record, expected, appended, options)
        const lost = hooks.afterUpdate?.(attempt)
        if (lost) return yield* lost
      })
  }
  const events: Array<LatchkeyEvent> = []
  const layer = Connections.Connections.layer.pipe(
    Layer.provideMerge(
      Layer.mergeAll(
        Layer.succeed(ConnectionStore.ConnectionStore, store),
        Layer.succeed(Vault.Vault, vault),
        Events.layer,
        Layer.succeed(LatchkeyConfig, defaults())
      )
    )
  )
  const run = <A, E>(
    effect: Effect.Effect<A, E, Connections.Connections | Events | ConnectionStore.ConnectionStore>
  ) =>
    Effect.runPromise(
      Effect.gen(function* () {
        const bus = yield* Events
        bus.subscribe((e) => events.push(e))
        return yield* effect
      }).pipe(Effect.provide(layer))
    )
  return { inner, store, events, run, quiet, updates: () => updates }
}

const bumpElsewhere = (inner: ConnectionStore.ConnectionStoreShape, id: string) =>
  Effect.gen(function* () {
    const r = (yield* inner.get(id))!
    yield* inner.update({ ...r, label: `${r.label}+`, version: r.version + 1 }, r.version)
  }).pipe(Effect.orDie)

const conflict = new StoreError({ reason: "conflict", message: "test: lost a race" })

/** `change` written over a new connection `id` by `modify`, the answer of its first write lost (it landed). */
const modifyLosingFirstAnswer = async (id: string, change: (current: Connection) => Connection) => {
  const h = harness({
    afterUpdate: (attempt) =>
      attempt === 0
        ? new StoreError({ reason: "unavailable", message: "test: the answer was lost" })
        : undefined
  })
  let applied = 0
  const result = await h.run(
    Effect.gen(function* () {
      const c = yield* Connections.Connections
      yield* c.insert(sample(id, "oauth", Date.now()))
      return yield* c.modify(id, (cur) => {
        applied++
        return Connections.write(change(cur))
      })
    })
  )
  return { applied, updates: h.updates(), result }
}

describe("Connections", () => {
  it("insert derives version 1, createdAt/updatedAt and refreshDueAt by kind; modify bumps version and updatedAt", async () => {
    const h = harness()
    const now = Date.now()
    await h.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        for (const kind of ["oauth", "client_credentials", "minted", "api_key"] as const) {
          yield* c.insert(sample(kind, kind, now))
        }
        const dueOf = (id: string) => Effect.map(h.inner.get(id), (r) => r!.refreshDueAt)
        expect(yield* dueOf("oauth")).not.toBeNull()
        expect(yield* dueOf("client_credentials")).not.toBeNull()
        expect(yield* dueOf("minted")).not.toBeNull()
        expect(yield* dueOf("api_key")).toBeNull()
        expect((yield* h.inner.get("minted"))!.parentId).toBe("parent")
        const first = yield* c.get("oauth")
        expect(first.version).toBe(1)
        const m = yield* c.modify("oauth", (cur) =>
          Connections.write({ ...cur, status: "needs_reauth", lastError: { code: "x", at: 1 } })
        )
        expect(m).toMatchObject({ written: true, connection: { version: 2, status: "needs_reauth" } })
        expect((yield* h.inner.get("oauth"))!.refreshDueAt).toBeNull()
        // Active again: lastError is cleared by itself.
        const back = yield* c.modify("oauth", (cur) => Connections.write({ ...cur, status: "active" }))
        expect(back.connection.lastError).toBeUndefined()
        expect(back.connection.version).toBe(3)
        // Keep: nothing written.
        const kept = yield* c.modify("oauth", () => Connections.keep)
        expect(kept).toMatchObject({ written: false, connection: { version: 3 } })
      })
    )
    expect(h.updates()).toBe(2)
  })

  it("a write keeps the ciphertext of an unchanged refresh token and extras, and always seals the access token afresh", async () => {
    const h = harness()
    const now = Date.now()
    await h.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        yield* c.insert(sample("c1", "oauth", now))
        const first = (yield* h.inner.get("c1"))!
        // A change that leaves the tokens alone (as the journal's write does).
        yield* c.modify("c1", (cur) => Connections.write({ ...cur, label: "renamed" }))
        const second = (yield* h.inner.get("c1"))!
        expect(second.refreshToken).toBe(first.refreshToken)
        expect(second.extras).toBe(first.extras)
        expect(second.accessToken).not.toBe(first.accessToken)
        // The write that opens a refresh journal of its own keeps the access token's ciphertext (its
        // journal tells it apart); any other write seals it afresh, the one that ends the journal too.
        const journal = { holder: "h1", fence: 7, startedAt: now, fingerprint: "f" }
        yield* c.modify("c1", (cur) => Connections.write({ ...cur, journal }))
        const opened1 = (yield* h.inner.get("c1"))!
        expect(opened1.accessToken).toBe(second.accessToken)
        expect(opened1.journal).toEqual(journal)
        yield* c.modify("c1", (cur) =>
          Connections.write({ ...cur, journal: { ...journal, suspectedAt: now } })
        )
        const suspected = (yield* h.inner.get("c1"))!
        expect(suspected.accessToken).not.toBe(opened1.accessToken)
        yield* c.modify("c1", (cur) =>
          Connections.write({ ...cur, journal: { ...journal, holder: "h2", fence: 8 } })
        )
        const opened2 = (yield* h.inner.get("c1"))!
        expect(opened2.accessToken).toBe(suspected.accessToken)
        yield* c.modify("c1", (cur) => Connections.write({ ...cur, journal: undefined }))
        const ended = (yield* h.inner.get("c1"))!
        expect(ended.accessToken).not.toBe(opened2.accessToken)
        expect(Redacted.value((yield* c.decode(ended)).tokens.accessToken)).toBe("access-c1")
        // A refresh's answer builds new extras; when they hold the same values, their ciphertext stays.
        yield* c.modify("c1", (cur) =>
          Connections.write({ ...cur, tokens: { ...cur.tokens, extras: { ...cur.tokens.extras } } })
        )
        const same = (yield* h.inner.get("c1"))!
        expect(same.extras).toBe(second.extras)
        expect((yield* c.decode(same)).tokens.extras).toEqual((yield* c.decode(second)).tokens.extras)
        // New tokens (as a refresh's commit writes): sealed anew, and they open to the new values.
        yield* c.modify("c1", (cur) =>
          Connections.write({
            ...cur,
            tokens: {
              ...cur.tokens,
              refreshToken: Redacted.make("refresh-rotated"),
              extras: { id_token: "x" }
            }
          })
        )
        const third = (yield* h.inner.get("c1"))!
        expect(third.refreshToken).not.toBe(second.refreshToken)
        expect(third.extras).not.toBe(second.extras)
        // Different extras (a field more, or the same fields with another value) are sealed anew.
        yield* c.modify("c1", (cur) =>
          Connections.write({ ...cur, tokens: { ...cur.tokens, extras: { id_token: "y" } } })
        )
        const fourth = (yield* h.inner.get("c1"))!
        expect(fourth.extras).not.toBe(third.extras)
        expect((yield* c.decode(fourth)).tokens.extras).toEqual({ id_token: "y" })
        const opened = yield* c.decode(third)
        expect(Redacted.value(opened.tokens.refreshToken!)).toBe("refresh-rotated")
        expect(opened.tokens.extras).toEqual({ id_token: "x" })
        expect(Redacted.value(opened.tokens.accessToken)).toBe("access-c1")
      })
    )
  })

  it("a record changed elsewhere opens only the fields whose ciphertext changed; a changed field is opened (and checked) again", async () => {
    const inner = Vault.make({ keys: [{ id: "k1", key: Vault.generateKey() }] })
    const opened: Array<string> = []
    const vault: Vault.VaultShape = {
      ...inner,
      open: (sealed, context) => {
        opened.push(context.field)
        return inner.open(sealed, context)
      }
    }
    const h = harness({}, vault)
    const now = Date.now()
    await h.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        yield* c.insert(sample("c1", "oauth", now))
        yield* c.insert(sample("c2", "oauth", now))
        const elsewhere = (id: string, change: (r: ConnectionRecord) => object) =>
          Effect.gen(function* () {
            const r = (yield* h.inner.get(id))!
            yield* h.inner.update({ ...r, ...change(r), version: r.version + 1 }, r.version)
            return (yield* h.inner.get(id))!
          }).pipe(Effect.orDie)
        // Another instance moved the expiry (no token changed): nothing is opened.
        const moved = yield* elsewhere("c1", () => ({ expiresAt: now - HOUR }))
        opened.length = 0
        const a = yield* c.decode(moved)
        expect(opened).toEqual([])
        expect(a.tokens.expiresAt).toBe(now - HOUR)
        expect(Redacted.value(a.tokens.accessToken)).toBe("access-c1")
        expect(Redacted.value(a.tokens.refreshToken!)).toBe("refresh-c1")
        // It stored a new refresh token: that field alone is opened, to its new value.
        const rotated = yield* elsewhere("c1", () => ({
          refreshToken: inner.seal("refresh-elsewhere", { connectionId: "c1", field: "refreshToken" })
        }))
        opened.length = 0
        const b = yield* c.decode(rotated)
        expect(opened).toEqual(["refreshToken"])
        expect(Redacted.value(b.tokens.refreshToken!)).toBe("refresh-elsewhere")
        expect(Redacted.value(b.tokens.accessToken)).toBe("access-c1")
        // A changed field that does not open (tampered) fails as it always did: nothing is taken on trust.
        const tampered = yield* elsewhere("c1", (r) => ({
          accessToken: `${r.accessToken.slice(0, -4)}AAAA`
        }))
        const failed = yield* Effect.flip(c.decode(tampered))
        expect(failed).toMatchObject({ _tag: "VaultError", reason: "tampered" })
        // Another connection's ciphertext copied over this one's is not reused: it is opened, and
        // fails (the connection is bound into it).
        const c1 = (yield* h.inner.get("c1"))!
        const planted = yield* elsewhere("c2", () => ({ refreshToken: c1.refreshToken }))
        const refused = yield* Effect.flip(c.decode(planted))
        expect(refused).toMatchObject({ _tag: "VaultError", reason: "tampered" })
      })
    )
  })

  it("marks a write quiet when nothing a token cache holds changes (a journal, a streak), and only then", async () => {
    const h = harness()
    const now = Date.now()
    await h.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        yield* c.insert(sample("q1", "oauth", now))
        const write = (f: (cur: Connection) => Connection) =>
          c.modify("q1", (cur) => Connections.write(f(cur)))
        // The refresh journal, a failure streak, a label: quiet.
        yield* write((cur) => ({
          ...cur,
          journal: { holder: "h", fence: 1, startedAt: now, fingerprint: "f" }
        }))
        yield* write((cur) => ({
          ...cur,
          failures: {
            count: 1,
            since: now,
            reason: "transient",
            message: "m",
            at: now,
            nextAttemptAt: now + 1_000
          }
        }))
        yield* write((cur) => ({ ...cur, label: "renamed" }))
        // A new access token, a new expiry, another token type, another status: announced.
        yield* write((cur) => ({ ...cur, tokens: { ...cur.tokens, accessToken: Redacted.make("access-2") } }))
        yield* write((cur) => ({ ...cur, tokens: { ...cur.tokens, expiresAt: now + 2 * HOUR } }))
        yield* write((cur) => ({ ...cur, tokens: { ...cur.tokens, tokenType: "DPoP" } }))
        yield* write((cur) => ({ ...cur, status: "needs_reauth" }))
      })
    )
    expect(h.quiet).toEqual([true, true, true, false, false, false, false])
  })

  it("a conflict re-reads and re-applies f to the fresh copy; events are published once, after the write", async () => {
    const h = harness({
      beforeUpdate: (inner, attempt) => (attempt < 3 ? bumpElsewhere(inner, "c1") : Effect.void)
    })
    const seen: Array<number> = []
    const result = await h.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        yield* c.insert(sample("c1", "oauth", Date.now()))
        return yield* c.modify("c1", (cur, now) => {
          seen.push(cur.version)
          return Connections.write({ ...cur, status: "revoked" }, [
            {
              type: "revoked",
              at: now,
              connectionId: cur.id,
              ownerId: cur.ownerId,
              providerId: cur.providerId
            }
          ])
        })
      })
    )
    // Each attempt saw the copy another writer had just replaced.
    expect(seen).toEqual([1, 2, 3, 4])
    expect(result.connection).toMatchObject({ version: 5, status: "revoked", label: "c1+++" })
    expect(h.events.filter((e) => e.type === "revoked")).toHaveLength(1)
  })

  it("retries are bounded by the Schedule: endless conflicts fail with StoreError(conflict) and publish nothing", async () => {
    const h = harness({ beforeUpdate: (inner) => bumpElsewhere(inner, "c1") })
    const error = await h
      .run(
        Effect.gen(function* () {
          const c = yield* Connections.Connections
          yield* c.insert(sample("c1", "oauth", Date.now()))
          return yield* c.modify(
            "c1",
            (cur, now) =>
              Connections.write({ ...cur, status: "revoked" }, [
                {
                  type: "revoked",
                  at: now,
                  connectionId: cur.id,
                  ownerId: cur.ownerId,
                  providerId: cur.providerId
                }
              ]),
            { retry: Schedule.recurs(4) }
          )
        })
      )
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoreError)
    expect((error as StoreError).reason).toBe("conflict")
    expect(h.updates()).toBe(5)
    expect(h.events.filter((e) => e.type === "revoked")).toHaveLength(0)
  })

  it("markRevoked does not give up silently: under endless conflicts it fails with the StoreError", async () => {
    const h = harness({ beforeUpdate: (inner) => bumpElsewhere(inner, "c1") })
    const error = await h
      .run(
        Effect.gen(function* () {
          const c = yield* Connections.Connections
          yield* c.insert(sample("c1", "oauth", Date.now()))
          yield* markRevoked("c1")
        })
      )
      .catch((e: unknown) => e)
    expect(error).toBeInstanceOf(StoreError)
    // The default schedule: the first attempt and 8 retries.
    expect(h.updates()).toBe(9)
    expect(h.events.filter((e) => e.type === "revoked")).toHaveLength(0)
  })

  it("a write whose answer was lost is recognised on the next attempt: written once, f not applied twice", async () => {
    const { applied, updates, result } = await modifyLosingFirstAnswer("c1", (cur) => ({
      ...cur,
      label: "renamed"
    }))
    expect(applied).toBe(1)
    expect(updates).toBe(1)
    expect(result).toMatchObject({ written: true, connection: { version: 2, label: "renamed" } })
  })

  it("the write that opens a journal, whose answer was lost, is recognised by its journal; another holder's journal written over the same copy is not taken for it", async () => {
    const ours = { holder: "us", fence: 3, startedAt: 1, fingerprint: "f" }
    // The answer of the first write is lost: it landed.
    const lost = await modifyLosingFirstAnswer("j1", (cur) => ({ ...cur, journal: ours }))
    expect(lost.applied).toBe(1)
    expect(lost.updates).toBe(1)
    expect(lost.result).toMatchObject({ written: true, connection: { version: 2, journal: ours } })

    // Another process opened ITS journal over the same copy first (the same access token ciphertext,
    // the same version): our write lost the race and is applied again on the new copy, never taken
    // for landed.
    const raced = harness({
      beforeUpdate: (inner, attempt) =>
        attempt === 0
          ? Effect.flatMap(inner.get("j2"), (r) =>
              inner.update(
                {
                  ...r!,
                  version: r!.version + 1,
                  journal: { holder: "them", fence: 4, startedAt: 2, fingerprint: "f" }
                },
                r!.version
              )
            )
          : Effect.void
    })
    let applied = 0
    const result = await raced.run(
      Effect.gen(function* () {
        const c = yield* Connections.Connections
        yield* c.insert(sample("j2", "oauth", Date.now()))
        const written = yield* c.modify("j2", (cur) => {
          applied++
          return Connections.write({ ...cur, journal: ours })
        })
        return { written, row: (yield* raced.inner.get("j2"))! }
      })
    )
    expect(applied).toBe(2)
    expect(result.written).toMatchObject({ written: true, connection: { version: 3, journal: ours } })
    expect(result.row).toMatchObject({ version: 3, journal: ours })
  })

  it("a failure of f is not retried", async () => {
    const h = harness()
    let calls = 0
    const error = await h
      .run(
        Effect.gen(function* () {
          const c = yield* Connections.Connections
          yield* c.insert(sample("c1", "oauth", Date.now()))
          return yield* c.modify("c1", () => {
            calls++
            return Effect.fail(conflict)
          })
        })
      )
      .catch((e: unknown) => e)
    expect(error).toBe(conflict)
    expect(calls).toBe(1)
    expect(h.updates()).toBe(0)
  })
})
