/**
 * Seals token fields before they reach a store: AES-256-GCM, a key id in every ciphertext, several
 * keys accepted for reading and one for writing. The connection id and field name are bound into
 * every ciphertext as additional authenticated data, so a sealed token cannot be moved to another
 * connection or field.
 *
 * Format: `lk1.<keyId>.<iv b64url>.<ciphertext+tag b64url>`. Without a key the vault stores
 * `plain.<value>` (tests and throwaway setups only; the demo always configures a key): refused when
 * `NODE_ENV` is `production` unless `plaintext: true`, one process warning otherwise. With keys, a
 * `plain.` value is refused (`acceptPlaintext` for a migration; `rotate()` seals them).
 *
 * Rotation: add the new key, make it the write key and keep the old one for reading. Every write
 * seals with the write key, so connections move to it as they refresh; `rotate()` re-seals the rest
 * now (every connection not sealed with the write key, under the connection's refresh lease and by
 * compare-and-set) and reports progress. Once it reports no failures, the old key can be removed
 * from `keys` — after `pendingTtlMs` (pending authorizations keep their PKCE verifier sealed with the
 * key that was the write key when they started; they are not re-sealed).
 */
import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  type KeyObject,
  randomBytes,
  randomUUID
} from "node:crypto"
import { Context, Effect, Layer, Redacted } from "effect"
import type { ConnectionRecord } from "./Connection.ts"
import { ConnectionStore } from "./ConnectionStore.ts"
import { StoreError, VaultError } from "./Errors.ts"

export interface VaultKey {
  /** Short id written into each ciphertext, e.g. `"2026-11"`. Letters, digits, `-` and `_`. */
  readonly id: string
  /**
   * 32 bytes, given as base64/base64url (44/43 chars) or hex (64 chars). `undefined` (an unset
   * environment variable) is refused with a `VaultError` naming `variable`.
   */
  readonly key: Redacted.Redacted<string> | string | undefined
  /** The environment variable the key comes from, named in errors (e.g. `"LATCHKEY_KEY"`). */
  readonly variable?: string | undefined
}

export interface VaultOptions {
  /** Keys accepted for reading. None: tokens are stored in plain (see `plaintext`). */
  readonly keys?: ReadonlyArray<VaultKey> | undefined
  /** The key id used for writing. Default: the first key. */
  readonly writeKeyId?: string | undefined
  /**
   * Store tokens unencrypted, on purpose. Without a key this must be set when `NODE_ENV` is
   * `production` (else `VaultError("no_key")` at construction); elsewhere it silences the warning.
   */
  readonly plaintext?: boolean | undefined
  /**
   * With keys configured, still use `plain.` values (written before a key was configured) until
   * `rotate()` seals them. Default false: such a value is refused (`VaultError("plaintext_refused")`),
   * so that a token planted in the store in plain is never used; `rotate()` seals them either way.
   */
  readonly acceptPlaintext?: boolean | undefined
}

/** A vault key read from an environment variable, named in errors when it is unset or invalid. */
export const keyFromEnv = (id: string, variable: string, env: NodeJS.ProcessEnv = process.env): VaultKey => ({
  id,
  key: env[variable] === undefined ? undefined : Redacted.make(env[variable]!),
  variable
})

export interface VaultShape {
  /** Whether tokens are sealed (a key is configured). */
  readonly encrypts: boolean
  /** The key id new ciphertexts are written with. */
  readonly writeKeyId: string | undefined
  seal(plaintext: string, context: SealContext): string
  open(sealed: string, context: SealContext): Effect.Effect<string, VaultError>
  /** The key id a sealed value was written with (`undefined` for plain values). */
  keyIdOf(sealed: string): string | undefined
}

export interface SealContext {
  readonly connectionId: string
  readonly field: string
}

const invalidKey = (key: VaultKey, problem: string) =>
  new VaultError({
    reason: "invalid_key",
    keyId: String(key.id),
    ...(key.variable !== undefined ? { variable: key.variable } : {}),
    message: `Vault key "${String(key.id)}"${key.variable !== undefined ? ` (environment variable ${key.variable})` : ""} ${problem}`
  })

const decodeKey = (key: VaultKey): KeyObject => {
  const raw = Redacted.isRedacted(key.key) ? Redacted.value(key.key) : key.key
  if (raw === undefined || raw === null) throw invalidKey(key, "is not set")
  if (typeof raw !== "string") throw invalidKey(key, `must be a string, not ${typeof raw}`)
  const text = raw.trim()
  if (text.length === 0) throw invalidKey(key, "is empty")
  if (!/^[0-9a-f]{64}$/i.test(text) && !/^[A-Za-z0-9+/_-]{43}={0,1}$/.test(text)) {
    throw invalidKey(
      key,
      `must be 32 bytes given as base64/base64url (43 or 44 characters) or hex (64); got ${text.length} characters (generate one with Vault.generateKey())`
    )
  }
  const bytes = /^[0-9a-f]{64}$/i.test(text) ? Buffer.from(text, "hex") : Buffer.from(text, "base64url")
  if (bytes.length !== 32) {
    throw invalidKey(key, `must be 32 bytes (base64 or hex); got ${bytes.length} bytes`)
  }
  // A KeyObject is imported once; passing raw bytes makes Node import the key on every call.
  return createSecretKey(bytes)
}

/** Generate a new random key, base64url-encoded. */
export const generateKey = (): string => randomBytes(32).toString("base64url")

let warnedPlaintext = false

/**
 * Refuse, or warn once per process, when tokens would be stored unencrypted: without a key and
 * without `plaintext: true`, construction fails when `NODE_ENV` is `production`, else one warning.
 */
const checkPlaintext = (options: VaultOptions | undefined, env: NodeJS.ProcessEnv) => {
  if ((options?.keys?.length ?? 0) > 0 || options?.plaintext === true) return
  if (env.NODE_ENV === "production") {
    throw new VaultError({
      reason: "no_key",
      message:
        'No vault key is configured and NODE_ENV is production: tokens would be stored unencrypted. Configure vault.keys (e.g. Vault.keyFromEnv("2026-11", "LATCHKEY_KEY")), or set vault.plaintext: true to accept that'
    })
  }
  if (!warnedPlaintext) {
    warnedPlaintext = true
    process.emitWarning(
      "Latchkey: no vault key is configured; tokens are stored unencrypted (set vault.keys, or vault.plaintext: true to silence this)",
      { code: "LATCHKEY_PLAINTEXT" }
    )
  }
}

/**
 * Build the vault. Throws `VaultError("invalid_key")` for a key that is unset, empty or not 32
 * bytes (naming the key id and its environment variable), and `VaultError("no_key")` when no key
 * is configured in production without `plaintext: true`.
 */
export const make = (
  options?: VaultOptions | undefined,
  env: NodeJS.ProcessEnv = process.env
): VaultShape => {
  const keys = new Map<string, KeyObject>()
  for (const k of options?.keys ?? []) {
    if (typeof k?.id !== "string" || !/^[A-Za-z0-9_-]+$/.test(k.id)) {
      throw new VaultError({
        reason: "invalid_key",
        keyId: String(k?.id),
        message: `Vault key id "${String(k?.id)}" must be letters, digits, '-' or '_'`
      })
    }
    keys.set(k.id, decodeKey(k))
  }
  checkPlaintext(options, env)
  const writeKeyId = options?.writeKeyId ?? options?.keys?.[0]?.id
  if (writeKeyId !== undefined && !keys.has(writeKeyId)) {
    throw new VaultError({
      reason: "invalid_key",
      keyId: writeKeyId,
      message: `Vault writeKeyId "${writeKeyId}" is not among the configured keys`
    })
  }
  const writeKey = writeKeyId === undefined ? undefined : keys.get(writeKeyId)

  const aad = (context: SealContext) => Buffer.from(`${context.connectionId}\u0000${context.field}`)

  const seal = (plaintext: string, context: SealContext): string => {
    if (writeKey === undefined) return `plain.${plaintext}`
    const iv = randomBytes(12)
    const cipher = createCipheriv("aes-256-gcm", writeKey, iv)
    cipher.setAAD(aad(context))
    const body = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()])
    return `lk1.${writeKeyId}.${iv.toString("base64url")}.${body.toString("base64url")}`
  }

  const fail = (reason: VaultError["reason"], context: SealContext, what: string) =>
    Effect.fail(
      new VaultError({
        reason,
        connectionId: context.connectionId,
        message: `Cannot open ${context.field} of connection ${context.connectionId}: ${what}`
      })
    )

  const open = (sealed: string, context: SealContext): Effect.Effect<string, VaultError> => {
    if (sealed.startsWith("plain.")) {
      if (writeKey !== undefined && options?.acceptPlaintext !== true) {
        // A value in plain where every value is sealed was not written by this vault: it may have
        // been planted in the store. Only a migration (acceptPlaintext, then rotate) reads it.
        return fail(
          "plaintext_refused",
          context,
          "it is stored unencrypted while vault keys are configured (set vault.acceptPlaintext and run Vault.rotate to seal values written before the key)"
        )
      }
      return Effect.succeed(sealed.slice(6))
    }
    const parts = sealed.split(".")
    if (parts.length !== 4 || parts[0] !== "lk1")
      return fail("malformed", context, "not a Latchkey ciphertext")
    const [, keyId, ivText, bodyText] = parts as [string, string, string, string]
    const key = keys.get(keyId)
    if (key === undefined) {
      return fail(
        keys.size === 0 ? "no_key" : "unknown_key",
        context,
        `sealed with key "${keyId}", which is not configured`
      )
    }
    const iv = Buffer.from(ivText, "base64url")
    const body = Buffer.from(bodyText, "base64url")
    // An empty value seals to the 16-byte tag alone.
    if (iv.length !== 12 || body.length < 16) return fail("malformed", context, "ciphertext is truncated")
    try {
      const decipher = createDecipheriv("aes-256-gcm", key, iv)
      decipher.setAAD(aad(context))
      decipher.setAuthTag(body.subarray(body.length - 16))
      const plain = Buffer.concat([decipher.update(body.subarray(0, body.length - 16)), decipher.final()])
      return Effect.succeed(plain.toString("utf8"))
    } catch {
      return fail("tampered", context, "authentication failed (wrong key, tampered or truncated ciphertext)")
    }
  }

  const keyIdOf = (sealed: string): string | undefined =>
    sealed.startsWith("lk1.") ? sealed.split(".")[1] : undefined

  return { encrypts: writeKey !== undefined, writeKeyId, seal, open, keyIdOf }
}

export class Vault extends Context.Service<Vault, VaultShape>()("@latchkey/core/Vault") {
  /** Fails with the `VaultError` of `make` when the keys are invalid (or missing in production). */
  static readonly layer = (options?: VaultOptions) =>
    Layer.effect(
      Vault,
      Effect.try({
        try: () => make(options),
        catch: (e) =>
          e instanceof VaultError
            ? e
            : new VaultError({ reason: "invalid_key", message: "The vault options are invalid" })
      })
    )
}

export interface RotateProgress {
  /** Connections looked at so far. */
  readonly done: number
  /** Connections in the store (counted when the rotation starts; grows if more are seen). */
  readonly total: number
  /** Connections re-sealed with the write key so far. */
  readonly resealed: number
}

export interface RotateFailure {
  readonly connectionId: string
  /** `VaultError`: no configured key opens it (wrong key, tampered or truncated); `StoreError`: it stayed busy. */
  readonly error: VaultError | StoreError
}

export interface RotateReport extends RotateProgress {
  /** Connections left as they were. The old key must stay configured until this is empty. */
  readonly failed: ReadonlyArray<RotateFailure>
}

export interface RotateOptions {
  /** Called after each connection. */
  readonly onProgress?: ((progress: RotateProgress) => void) | undefined
  /** Connections read per page (default 100). */
  readonly pageSize?: number | undefined
  /** How long the refresh lease is held while a connection is re-sealed (default 30 s). */
  readonly leaseTtlMs?: number | undefined
  /** Attempts per connection while its lease is held elsewhere or a write races (default 10). */
  readonly maxAttempts?: number | undefined
}

type Outcome =
  | { readonly _tag: "Resealed" }
  | { readonly _tag: "Unchanged" }
  | { readonly _tag: "Retry" }
  | { readonly _tag: "Failed"; readonly error: VaultError }

const sealedFields = ["accessToken", "refreshToken", "extras"] as const

/**
 * Re-seal every connection whose token fields are not sealed with the vault's write key (values
 * sealed with another configured key, or stored in plain before a key was configured). Each one is
 * re-sealed while holding its refresh lease — so no refresh of it is in flight anywhere — and written
 * by compare-and-set, retried on a conflict. A connection no configured key opens is reported in
 * `failed` with a `VaultError` naming it, and left untouched; the rotation goes on.
 *
 * Needs a store with `scan` (every built-in store has it). From the Promise API:
 * `await latchkey.run(Vault.rotate({ onProgress: (p) => console.log(p) }))`.
 */
export const rotate = Effect.fn("Vault.rotate")(function* (options: RotateOptions = {}) {
  const vault = yield* Vault
  const store = yield* ConnectionStore
  if (!vault.encrypts || vault.writeKeyId === undefined) {
    return yield* new VaultError({
      reason: "no_key",
      message: "Vault.rotate needs a write key: configure the new key and make it writeKeyId"
    })
  }
  const scan = store.scan
  if (scan === undefined) {
    return yield* new StoreError({
      reason: "unavailable",
      message: "This store cannot list its connections (it has no scan); Vault.rotate needs it"
    })
  }
  const writeKeyId = vault.writeKeyId
  const pageSize = Math.max(1, options.pageSize ?? 100)
  const leaseTtlMs = options.leaseTtlMs ?? 30_000
  const maxAttempts = Math.max(1, options.maxAttempts ?? 10)
  const holder = `vault-rotation-${randomUUID()}`

  const stale = (r: ConnectionRecord) =>
    sealedFields.some((field) => {
      const value = r[field]
      return value !== null && vault.keyIdOf(value) !== writeKeyId
    })

  /** Re-seal one connection while holding its lease: open every sealed field, seal it again, write. */
  const resealHolding = (id: string): Effect.Effect<Outcome, StoreError> =>
    Effect.gen(function* () {
      const r = yield* store.get(id)
      if (r === undefined || !stale(r)) return { _tag: "Unchanged" } as const
      const reseal = (field: (typeof sealedFields)[number]) =>
        Effect.gen(function* () {
          const value = r[field]
          if (value === null) return null
          const context = { connectionId: r.id, field }
          // The rotation is the migration path for values written before a key was configured: it
          // seals them. Everywhere else a `plain.` value is refused once keys are configured.
          const opened = value.startsWith("plain.") ? value.slice(6) : yield* vault.open(value, context)
          return vault.seal(opened, context)
        })
      const opened = yield* Effect.all({
        accessToken: reseal("accessToken"),
        refreshToken: reseal("refreshToken"),
        extras: reseal("extras")
      }).pipe(Effect.result)
      if (opened._tag === "Failure") return { _tag: "Failed", error: opened.failure } as const
      const { accessToken, refreshToken, extras } = opened.success
      const next: ConnectionRecord = {
        ...r,
        accessToken: accessToken ?? r.accessToken,
        refreshToken,
        extras: extras ?? r.extras,
        version: r.version + 1
      }
      return yield* store.update(next, r.version).pipe(
        Effect.as({ _tag: "Resealed" } as const),
        Effect.catchTag("StoreError", (e) =>
          e.reason === "conflict" ? Effect.succeed({ _tag: "Retry" } as const) : Effect.fail(e)
        )
      )
    })

  const resealOne = (id: string): Effect.Effect<Outcome, StoreError> =>
    Effect.gen(function* () {
      for (let attempt = 0; attempt < maxAttempts; attempt++) {
        if (attempt > 0) yield* Effect.sleep(Math.min(1_000, 20 * 2 ** attempt))
        const lease = yield* store.acquireLease(id, holder, leaseTtlMs)
        if (lease === undefined) continue
        const outcome = yield* resealHolding(id).pipe(
          Effect.ensuring(store.releaseLease(lease).pipe(Effect.ignore))
        )
        if (outcome._tag !== "Retry") return outcome
      }
      return yield* new StoreError({
        reason: "timeout",
        message: `Connection ${id} stayed busy (refreshing or being written) during the rotation; run it again`
      })
    })

  let total = store.count === undefined ? 0 : yield* store.count()
  let done = 0
  let resealed = 0
  const failed: Array<RotateFailure> = []
  let after: string | undefined
  for (;;) {
    const page = yield* scan(after, pageSize)
    for (const record of page.records) {
      if (stale(record)) {
        const outcome = yield* resealOne(record.id).pipe(
          Effect.catchTag("StoreError", (error) =>
            error.reason === "timeout" || error.reason === "conflict"
              ? Effect.sync(() => {
                  failed.push({ connectionId: record.id, error })
                  return { _tag: "Unchanged" } as const
                })
              : Effect.fail(error)
          )
        )
        if (outcome._tag === "Resealed") resealed++
        else if (outcome._tag === "Failed") failed.push({ connectionId: record.id, error: outcome.error })
      }
      done++
      total = Math.max(total, done)
      options.onProgress?.({ done, total, resealed })
    }
    if (page.next === undefined || page.records.length === 0) break
    after = page.next
  }
  return { done, total, resealed, failed } satisfies RotateReport
})
