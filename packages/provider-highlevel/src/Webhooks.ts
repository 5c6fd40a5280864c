/**
 * HighLevel app webhooks (INSTALL, UNINSTALL and the rest) are verified before anything is read:
 * `x-ghl-signature`, a base64 Ed25519 signature over the raw body, is preferred; the legacy
 * `x-wh-signature`, base64 RSA-SHA256 over the raw body, is accepted when no Ed25519 signature came.
 * Then a stale `timestamp` and an already seen `webhookId` are refused. A refused delivery is a
 * `WebhookError` and changes nothing, not even the record of seen ids. An UNINSTALL marks the
 * matching connections revoked.
 */
import { createPublicKey, verify as cryptoVerify, type KeyObject } from "node:crypto"
import {
  ConnectionStore,
  type LatchkeyClient,
  type LatchkeyServices,
  markRevoked,
  type StoreError,
  type VaultError
} from "@latchkey/core/provider"
import { Cause, Clock, Effect, Exit, Schema } from "effect"

export const WebhookErrorReason = Schema.Literals([
  "missing_signature",
  "bad_signature",
  "no_key",
  "malformed",
  "stale",
  "duplicate",
  "foreign_app",
  "unavailable"
])
export type WebhookErrorReason = typeof WebhookErrorReason.Type

/** A webhook delivery was refused. Nothing was changed. */
export class WebhookError extends Schema.TaggedError<WebhookError>()("WebhookError", {
  reason: WebhookErrorReason,
  message: Schema.String
}) {
  get isRetryable(): boolean {
    return this.reason === "unavailable"
  }
  /**
   * The HTTP status to answer with: a duplicate was already handled (200), the replay record could
   * not be written (503: HighLevel delivers again), anything else is refused.
   */
  get status(): number {
    return this.reason === "duplicate"
      ? 200
      : this.reason === "no_key"
        ? 500
        : this.reason === "unavailable"
          ? 503
          : 401
  }
}

/** Remembers webhook ids; `claim` is true only for the first caller of an id. Share one across processes. */
export interface ReplayGuard {
  readonly claim: (webhookId: string, rememberUntil: number, now: number) => boolean | Promise<boolean>
}

/** An in-process ReplayGuard (one process; use a shared one, e.g. Redis SET NX PX, for several). */
export const memoryReplayGuard = (): ReplayGuard => {
  const seen = new Map<string, number>()
  return {
    claim: (id, until, now) => {
      for (const [k, expiry] of seen) if (expiry <= now) seen.delete(k)
      if (seen.has(id)) return false
      seen.set(id, until)
      return true
    }
  }
}

export type PublicKeyInput = string | KeyObject

export interface WebhookOptions {
  /** HighLevel's Ed25519 public key (PEM/SPKI, or a KeyObject) for `x-ghl-signature`. */
  readonly ed25519PublicKey?: PublicKeyInput
  /** HighLevel's RSA public key (PEM) for the legacy `x-wh-signature`. */
  readonly rsaPublicKey?: PublicKeyInput
  /** Refuse deliveries whose `timestamp` is further than this from now (default 5 minutes). */
  readonly maxAgeMs?: number
  /**
   * Accept deliveries without `timestamp` or `webhookId` (older payloads have neither). Default
   * false: such a delivery cannot be told from a replay of itself, so it is refused.
   */
  readonly acceptLegacy?: boolean
  /** Refuse deliveries without `timestamp` / `webhookId`. Default: true unless `acceptLegacy`. */
  readonly requireTimestamp?: boolean
  readonly requireWebhookId?: boolean
  /** How long ids of deliveries without a timestamp are remembered (default 24 hours). */
  readonly rememberMs?: number
  /** When given, deliveries for another app id are refused. */
  readonly appId?: string
  /**
   * Where seen webhook ids are remembered. Default: `handle` records them in the Latchkey store
   * (`claimOnce`, shared by every instance on that store, expiring with the delivery's window);
   * `verify`, which has no store, in this process's memory.
   */
  readonly replay?: ReplayGuard
}

/** A ReplayGuard on a Latchkey store's `claimOnce`: ids seen by any instance sharing the store. */
export const storeReplayGuard = (store: ConnectionStore.ConnectionStoreShape): ReplayGuard | undefined => {
  const claimOnce = store.claimOnce
  if (claimOnce === undefined) return undefined
  return {
    claim: (id, until, now) => Effect.runPromise(claimOnce(`highlevel-webhook:${id}`, until, now))
  }
}

export interface WebhookEvent {
  readonly type: string
  readonly appId: string | undefined
  readonly locationId: string | undefined
  readonly companyId: string | undefined
  readonly webhookId: string | undefined
  /** Epoch ms of the payload's `timestamp`, when it has one. */
  readonly timestamp: number | undefined
  readonly signature: "ed25519" | "rsa-sha256"
  /** The whole verified payload. */
  readonly payload: Readonly<Record<string, unknown>>
}

export type HeadersInput = Headers | Readonly<Record<string, string | ReadonlyArray<string> | undefined>>

export interface HandleInput {
  /** The raw request body, exactly as received (a re-serialized object does not verify). */
  readonly body: string | Uint8Array
  readonly headers: HeadersInput
  /**
   * The app's users a location or company belongs to (the store is searched per owner). For an
   * UNINSTALL, every connection of these owners for that location (or company, with the location
   * connections minted from it) is marked revoked.
   */
  readonly owners: (event: WebhookEvent) => ReadonlyArray<string> | Promise<ReadonlyArray<string>>
  /** Default `"highlevel"`. */
  readonly providerId?: string
}

export interface HandleResult {
  readonly event: WebhookEvent
  /** Connections marked revoked by this delivery. */
  readonly revoked: ReadonlyArray<string>
}

export interface Webhooks {
  readonly verify: (
    body: string | Uint8Array,
    headers: HeadersInput
  ) => Effect.Effect<WebhookEvent, WebhookError>
  readonly handle: (
    input: HandleInput
  ) => Effect.Effect<HandleResult, WebhookError | StoreError | VaultError, LatchkeyServices>
}

const header = (headers: HeadersInput, name: string): string | undefined => {
  if (headers instanceof Headers) return headers.get(name) ?? undefined
  for (const [k, v] of Object.entries(headers)) {
    if (k.toLowerCase() !== name || v === undefined) continue
    return typeof v === "string" ? v : v[0]
  }
  return undefined
}

const keyOf = (key: PublicKeyInput, kind: string): KeyObject => {
  const object = typeof key === "string" ? createPublicKey(key) : key
  const expected = kind === "ed25519" ? "ed25519" : "rsa"
  if (object.type !== "public" || object.asymmetricKeyType !== expected) {
    throw new TypeError(`HighLevel webhooks: the ${kind} key must be an ${expected} public key`)
  }
  return object
}

const fail = (reason: WebhookErrorReason, message: string) =>
  Effect.fail(new WebhookError({ reason, message }))

const parseTimestamp = (value: unknown): number | undefined | null => {
  if (value === undefined || value === null) return undefined
  if (typeof value === "number" && Number.isFinite(value)) return value < 1e12 ? value * 1000 : value
  if (typeof value === "string") {
    const t = Date.parse(value)
    return Number.isNaN(t) ? null : t
  }
  return null
}

const str = (v: unknown): string | undefined => (typeof v === "string" && v.length > 0 ? v : undefined)

export const make = (options: WebhookOptions): Webhooks => {
  const ed25519 = options.ed25519PublicKey ? keyOf(options.ed25519PublicKey, "ed25519") : undefined
  const rsa = options.rsaPublicKey ? keyOf(options.rsaPublicKey, "rsa") : undefined
  if (ed25519 === undefined && rsa === undefined) {
    throw new TypeError("HighLevel webhooks: give ed25519PublicKey, rsaPublicKey or both")
  }
  const maxAgeMs = options.maxAgeMs ?? 5 * 60_000
  const rememberMs = options.rememberMs ?? 24 * 3600_000
  const localReplay = options.replay ?? memoryReplayGuard()
  const requireTimestamp = options.requireTimestamp ?? options.acceptLegacy !== true
  const requireWebhookId = options.requireWebhookId ?? options.acceptLegacy !== true

  const check = (body: string | Uint8Array, headers: HeadersInput, replay: ReplayGuard) =>
    Effect.gen(function* () {
      const raw = typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body)
      const ghl = header(headers, "x-ghl-signature")
      const wh = header(headers, "x-wh-signature")
      let signature: WebhookEvent["signature"]
      if (ghl !== undefined && ed25519 !== undefined) {
        if (!cryptoVerify(null, raw, ed25519, Buffer.from(ghl, "base64"))) {
          return yield* fail("bad_signature", "HighLevel webhook: the x-ghl-signature does not verify")
        }
        signature = "ed25519"
      } else if (wh !== undefined && rsa !== undefined) {
        if (!cryptoVerify("sha256", raw, rsa, Buffer.from(wh, "base64"))) {
          return yield* fail("bad_signature", "HighLevel webhook: the x-wh-signature does not verify")
        }
        signature = "rsa-sha256"
      } else if (ghl === undefined && wh === undefined) {
        return yield* fail("missing_signature", "HighLevel webhook: no x-ghl-signature or x-wh-signature")
      } else {
        return yield* fail(
          "no_key",
          `HighLevel webhook: signed with ${ghl !== undefined ? "x-ghl-signature (Ed25519)" : "x-wh-signature (RSA)"} but no such key is configured`
        )
      }
      let payload: unknown
      try {
        payload = JSON.parse(raw.toString("utf8"))
      } catch {
        return yield* fail("malformed", "HighLevel webhook: the body is not JSON")
      }
      if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
        return yield* fail("malformed", "HighLevel webhook: the body is not a JSON object")
      }
      const p = payload as Record<string, unknown>
      const type = str(p.type)
      if (type === undefined) return yield* fail("malformed", "HighLevel webhook: the payload has no type")
      const appId = str(p.appId)
      if (options.appId !== undefined && appId !== options.appId) {
        return yield* fail("foreign_app", "HighLevel webhook: the delivery is for another app")
      }
      const now = yield* Clock.currentTimeMillis
      const timestamp = parseTimestamp(p.timestamp)
      if (timestamp === null) return yield* fail("malformed", "HighLevel webhook: the timestamp is invalid")
      if (timestamp === undefined && requireTimestamp) {
        return yield* fail("stale", "HighLevel webhook: the delivery has no timestamp")
      }
      if (timestamp !== undefined && Math.abs(now - timestamp) > maxAgeMs) {
        return yield* fail(
          "stale",
          `HighLevel webhook: the timestamp is ${Math.round((now - timestamp) / 1000)} s from now (at most ${maxAgeMs / 1000} s allowed)`
        )
      }
      const webhookId = str(p.webhookId)
      if (webhookId === undefined && requireWebhookId) {
        return yield* fail("malformed", "HighLevel webhook: the delivery has no webhookId")
      }
      if (webhookId !== undefined) {
        const until = timestamp !== undefined ? Math.max(now, timestamp) + maxAgeMs : now + rememberMs
        const first = yield* Effect.tryPromise({
          try: async () => replay.claim(webhookId, until, now),
          catch: () =>
            new WebhookError({
              reason: "unavailable",
              message: "HighLevel webhook: the replay record could not be written; try again"
            })
        })
        if (!first)
          return yield* fail("duplicate", `HighLevel webhook: delivery ${webhookId} was already received`)
      }
      const event: WebhookEvent = {
        type,
        appId,
        locationId: str(p.locationId),
        companyId: str(p.companyId),
        webhookId,
        timestamp,
        signature,
        payload: p
      }
      return event
    })

  const verify = (body: string | Uint8Array, headers: HeadersInput) => check(body, headers, localReplay)

  const handle = (input: HandleInput) =>
    Effect.gen(function* () {
      const store = yield* ConnectionStore.ConnectionStore
      const replay = options.replay ?? storeReplayGuard(store) ?? localReplay
      const event = yield* check(input.body, input.headers, replay)
      if (event.type !== "UNINSTALL") return { event, revoked: [] }
      const providerId = input.providerId ?? "highlevel"
      const owners = yield* Effect.promise(async () => input.owners(event))
      const matches: Array<string> = []
      for (const owner of new Set(owners)) {
        const records = (yield* store.listByOwner(owner)).filter((r) => r.providerId === providerId)
        // An agency's uninstall takes the location tokens minted from it along.
        const agencies = new Set(
          records
            .filter((r) => event.companyId !== undefined && r.accountId === event.companyId)
            .map((r) => r.id)
        )
        for (const record of records) {
          if (record.status === "revoked") continue
          const hit =
            event.locationId !== undefined
              ? record.accountId === event.locationId
              : agencies.has(record.id) ||
                (record.kind === "minted" &&
                  typeof record.parentId === "string" &&
                  agencies.has(record.parentId))
          if (hit) matches.push(record.id)
        }
      }
      for (const id of matches) {
        yield* markRevoked(id).pipe(Effect.catchTag("ConnectionNotFound", () => Effect.void))
      }
      return { event, revoked: matches }
    })

  return { verify, handle } as Webhooks
}

const runPromise = async <A>(effect: Effect.Effect<A, unknown>): Promise<A> => {
  const exit = await Effect.runPromiseExit(effect)
  if (Exit.isSuccess(exit)) return exit.value
  throw Cause.squash(exit.cause)
}

/** Verify a delivery with the Promise API; rejects with a `WebhookError`. */
export const verifyWebhook = (
  webhooks: Webhooks,
  body: string | Uint8Array,
  headers: HeadersInput
): Promise<WebhookEvent> => runPromise(webhooks.verify(body, headers))

/** Verify a delivery and apply it (UNINSTALL → revoked) on a Latchkey instance. */
export const handleWebhook = (
  latchkey: LatchkeyClient,
  webhooks: Webhooks,
  input: HandleInput
): Promise<HandleResult> => latchkey.run(webhooks.handle(input))
