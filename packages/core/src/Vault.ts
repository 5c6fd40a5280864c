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
  randomFillSync
} from "node:crypto"
import { Context, Effect, Layer, Redacted } from "effect"
import { VaultError } from "./Errors.ts"

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

  // IVs: 96 random bits each (CSPRNG), taken from a pool refilled 256 at a time: one system call per
  // 256 seals instead of one per seal. Every IV is still fresh randomness, used once.
  const ivPool = Buffer.allocUnsafe(12 * 256)
  let ivAt = ivPool.length
  const nextIv = (): Buffer => {
    if (ivAt + 12 > ivPool.length) {
      randomFillSync(ivPool)
      ivAt = 0
    }
    const iv = Buffer.from(ivPool.subarray(ivAt, ivAt + 12))
    ivAt += 12
    return iv
  }

  const seal = (plaintext: string, context: SealContext): string => {
    if (writeKey === undefined) return `plain.${plaintext}`
    const iv = nextIv()
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

  // The key id alone, without splitting the whole ciphertext (every write asks it of each sealed field).
  const keyIdOf = (sealed: string): string | undefined => {
    if (!sealed.startsWith("lk1.")) return undefined
    const end = sealed.indexOf(".", 4)
    return end === -1 ? sealed.slice(4) : sealed.slice(4, end)
  }

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
