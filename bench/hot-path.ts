/**
 * Hot path: `accessToken` on a connection whose token is valid, against a raw read of the same store.
 *
 * The pair compared (the fairest one a user sees): `latchkey.accessToken(id)` (Promise API: store
 * read, decode — cached while the record is unchanged, so no AES per call —, status and expiry
 * checks, Redacted unwrap) against `Effect.runPromise(store.get(id))` on the SAME
 * `ConnectionStore.makeMemory()` instance: the cheapest possible read of that row through the same
 * Effect runtime and the same Promise boundary, without any of Latchkey's checks. Both loops await
 * each call in turn and time each call the same way. They alternate in 10 rounds of 5,000 calls so
 * that drift (JIT, GC, the machine's other work) hits both sides alike; each side's ops/s is its
 * median round's rate (a round lasts milliseconds: one GC pause in a summed total decided the figure).
 *
 * Also reported, `effectLevel`: the same pair without the Promise boundary, N calls inside one
 * Effect (TokenManager.accessToken vs store.get), for Effect users.
 */
import { ConnectionStore, createLatchkey, TokenManager } from "@latchkey/core"
import { Effect } from "effect"
import { link, makeProvider, median, progress, quantile, round, runEffect, vaultOptions } from "./common.ts"
import type { BenchServer } from "./server.ts"

export interface HotPathResult {
  readonly iterations: number
  readonly opsPerSec: number
  readonly p50Us: number
  readonly p99Us: number
  readonly rawReadOpsPerSec: number
  readonly rawReadP50Us: number
  readonly rawReadP99Us: number
  readonly ratio: number
  readonly refreshesDuring: number
  readonly effectLevel: {
    readonly opsPerSec: number
    readonly rawReadOpsPerSec: number
    readonly ratio: number
  }
}

const ROUNDS = 10
const PER_ROUND = 5_000
const WARMUP = 20_000

export const benchHotPath = async (server: BenchServer): Promise<HotPathResult> => {
  const store = ConnectionStore.makeMemory()
  const lk = createLatchkey({ providers: [makeProvider(server)], store, vault: vaultOptions })
  try {
    const { id } = await link(lk, "hot-path")
    const first = await lk.accessToken(id)
    const stored = await runEffect(store.get(id))
    if (stored === undefined) throw new Error("hot path: the linked connection is not in the store")

    const latchkey = () => lk.accessToken(id)
    const raw = () => runEffect(store.get(id))
    for (let i = 0; i < WARMUP; i++) {
      await latchkey()
      await raw()
    }

    const refreshesBefore = (await server.grants()).refresh_token
    const total = ROUNDS * PER_ROUND
    const lkLatency = new Float64Array(total)
    const rawLatency = new Float64Array(total)
    // Each side's rate in each round: a round lasts milliseconds, so one GC pause in a summed total
    // would decide the figure; the median round does not depend on it.
    const lkRates: Array<number> = []
    const rawRates: Array<number> = []
    let same = true
    const timeLatchkey = async (offset: number) => {
      const start = performance.now()
      for (let i = 0; i < PER_ROUND; i++) {
        const t = performance.now()
        const token = await latchkey()
        lkLatency[offset + i] = performance.now() - t
        if (token !== first) same = false
      }
      lkRates.push(PER_ROUND / ((performance.now() - start) / 1000))
    }
    const timeRaw = async (offset: number) => {
      const start = performance.now()
      for (let i = 0; i < PER_ROUND; i++) {
        const t = performance.now()
        await raw()
        rawLatency[offset + i] = performance.now() - t
      }
      rawRates.push(PER_ROUND / ((performance.now() - start) / 1000))
    }
    for (let round = 0; round < ROUNDS; round++) {
      const offset = round * PER_ROUND
      if (round % 2 === 0) {
        await timeLatchkey(offset)
        await timeRaw(offset)
      } else {
        await timeRaw(offset)
        await timeLatchkey(offset)
      }
    }
    const refreshesDuring = (await server.grants()).refresh_token - refreshesBefore
    if (!same) throw new Error("hot path: accessToken returned a different token for a valid connection")
    lkLatency.sort()
    rawLatency.sort()
    const opsPerSec = median(lkRates)
    const rawReadOpsPerSec = median(rawRates)
    progress(
      "hotPath",
      `${Math.round(opsPerSec)} accessToken/s vs ${Math.round(rawReadOpsPerSec)} raw reads/s`
    )

    // Effect level: N calls inside one Effect, no Promise boundary per call.
    const manager = await lk.run(TokenManager.TokenManager.use(Effect.succeed))
    const lkLoop = Effect.gen(function* () {
      for (let i = 0; i < total; i++) yield* manager.accessToken(id)
    })
    const rawLoop = Effect.gen(function* () {
      for (let i = 0; i < total; i++) yield* store.get(id)
    })
    await lk.run(lkLoop)
    await runEffect(rawLoop)
    let effLk = 0
    let effRaw = 0
    for (let round = 0; round < 2; round++) {
      let t = performance.now()
      await lk.run(lkLoop)
      effLk += performance.now() - t
      t = performance.now()
      await runEffect(rawLoop)
      effRaw += performance.now() - t
    }
    const effOps = (2 * total) / (effLk / 1000)
    const effRawOps = (2 * total) / (effRaw / 1000)

    return {
      iterations: total,
      opsPerSec: Math.round(opsPerSec),
      p50Us: round(quantile(lkLatency, 0.5) * 1000, 1),
      p99Us: round(quantile(lkLatency, 0.99) * 1000, 1),
      rawReadOpsPerSec: Math.round(rawReadOpsPerSec),
      rawReadP50Us: round(quantile(rawLatency, 0.5) * 1000, 1),
      rawReadP99Us: round(quantile(rawLatency, 0.99) * 1000, 1),
      ratio: round(opsPerSec / rawReadOpsPerSec, 3),
      refreshesDuring,
      effectLevel: {
        opsPerSec: Math.round(effOps),
        rawReadOpsPerSec: Math.round(effRawOps),
        ratio: round(effOps / effRawOps, 3)
      }
    }
  } finally {
    await lk.close()
  }
}
