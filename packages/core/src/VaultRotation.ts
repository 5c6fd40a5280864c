/**
 * `Vault.rotate`: re-seal every connection with the vault's write key, through the store, one
 * connection at a time under its refresh lease. Its own module so that the vault (which connections
 * depend on) does not depend on the store (which depends on connections).
 */
import { randomUUID } from "node:crypto"
import { Effect, Schedule } from "effect"
import type { ConnectionRecord } from "./Connection.ts"
import { ConnectionStore } from "./ConnectionStore.ts"
import { resealWith } from "./Connections.ts"
import { StoreError, VaultError } from "./Errors.ts"
import { Vault } from "./Vault.ts"

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

const sealedFields = ["accessToken", "refreshToken", "extras"] as const satisfies ReadonlyArray<
  keyof ConnectionRecord
>

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
  const reseal = resealWith(store, vault)
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

  /**
   * Re-seal one connection while holding its lease (`Connections.resealWith`, the one write path: open
   * every sealed field, seal it again, compare-and-set). A conflict is retried under a new lease.
   */
  const resealHolding = (id: string): Effect.Effect<Outcome, StoreError> =>
    reseal(id, stale, { retry: Schedule.recurs(0) }).pipe(
      Effect.map((resealed): Outcome => (resealed ? { _tag: "Resealed" } : { _tag: "Unchanged" })),
      Effect.catchTags({
        VaultError: (error) => Effect.succeed<Outcome>({ _tag: "Failed", error }),
        StoreError: (e) =>
          e.reason === "conflict" ? Effect.succeed<Outcome>({ _tag: "Retry" }) : Effect.fail(e)
      })
    )

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
