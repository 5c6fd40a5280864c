/**
 * Seals token fields before they reach a store: AES-256-GCM, a key id in every ciphertext, several
 * keys accepted for reading and one for writing. The connection id and field name are bound into
 * every ciphertext as additional authenticated data, so a sealed token cannot be moved to another
 * connection or field.
 *
 * Format: `lk1.<keyId>.<iv b64url>.<ciphertext+tag b64url>`. Without a key the vault stores
 * `plain.<value>` (tests and throwaway setups only; the demo always configures a key).
 */
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject, randomBytes } from "node:crypto"
import { Context, Effect, Layer, Redacted } from "effect"
import { ProviderDefinitionError, VaultError } from "./Errors.ts"

export interface VaultKey {
  /** Short id written into each ciphertext, e.g. `"2026-11"`. Letters, digits, `-` and `_`. */
  readonly id: string
  /** 32 bytes, given as base64/base64url (44/43 chars) or hex (64 chars). */
  readonly key: Redacted.Redacted<string> | string
}

export interface VaultOptions {
  /** Keys accepted for reading. */
  readonly keys: ReadonlyArray<VaultKey>
  /** The key id used for writing. Default: the first key. */
  readonly writeKeyId?: string | undefined
}

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

const decodeKey = (key: VaultKey): KeyObject => {
  const raw = Redacted.isRedacted(key.key) ? Redacted.value(key.key) : key.key
  const bytes = /^[0-9a-f]{64}$/i.test(raw) ? Buffer.from(raw, "hex") : Buffer.from(raw, "base64url")
  if (bytes.length !== 32) {
    throw new ProviderDefinitionError({
      providerId: "(vault)",
      field: `keys.${key.id}`,
      message: `Vault key "${key.id}" must be 32 bytes (base64 or hex); got ${bytes.length} bytes`
    })
  }
  // A KeyObject is imported once; passing raw bytes makes Node import the key on every call.
  return createSecretKey(bytes)
}

/** Generate a new random key, base64url-encoded. */
export const generateKey = (): string => randomBytes(32).toString("base64url")

export const make = (options?: VaultOptions | undefined): VaultShape => {
  const keys = new Map<string, KeyObject>()
  for (const k of options?.keys ?? []) {
    if (!/^[A-Za-z0-9_-]+$/.test(k.id)) {
      throw new ProviderDefinitionError({
        providerId: "(vault)",
        field: "keys.id",
        message: `Vault key id "${k.id}" must be letters, digits, '-' or '_'`
      })
    }
    keys.set(k.id, decodeKey(k))
  }
  const writeKeyId = options?.writeKeyId ?? options?.keys[0]?.id
  if (writeKeyId !== undefined && !keys.has(writeKeyId)) {
    throw new ProviderDefinitionError({
      providerId: "(vault)",
      field: "writeKeyId",
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
      if (writeKey !== undefined) {
        // Reading a value written before a key was configured is allowed (rotation re-seals it).
        return Effect.succeed(sealed.slice(6))
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
    if (iv.length !== 12 || body.length < 17) return fail("malformed", context, "ciphertext is truncated")
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
  static readonly layer = (options?: VaultOptions) => Layer.sync(Vault, () => make(options))
}
