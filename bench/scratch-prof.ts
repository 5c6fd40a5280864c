import { Connection, ConnectionStore, createLatchkey, Vault } from "@latchkey/core"
import { Generic } from "@latchkey/provider-generic"
import { Effect } from "effect"
import * as oidc from "openid-client"
import { connectionOf } from "./background.ts"
import { cpuMeter, median, PROVIDER_ID, pool, progress, round, runEffect, vaultOptions } from "./common.ts"
import { SCOPES } from "./server.ts"


import { Session } from "node:inspector/promises"
import { writeFileSync } from "node:fs"
const session = new Session(); session.connect()
const post = (m: string, p?: object) => session.post(m as never, p as never) as Promise<any>
await post("Profiler.enable"); await post("Profiler.setSamplingInterval", { interval: 50 })
const ORIGIN = "http://127.0.0.1:9"
const endpoints = {
  issuer: ORIGIN,
  authorization: `${ORIGIN}/authorize`,
  token: `${ORIGIN}/token`,
  userinfo: `${ORIGIN}/me`
}
const CLIENT_ID = "engine-client"
const CLIENT_SECRET = "engine-secret"

/** The token endpoint in process: a rotating server's answer, on the next turn of the event loop. */
const answering = () => {
  let n = 0
  return (async () => {
    await new Promise<void>((resolve) => setImmediate(resolve))
    n++
    return new Response(
      JSON.stringify({
        access_token: `engine-at-${n}`,
        refresh_token: `engine-rt-${n}`,
        token_type: "Bearer",
        expires_in: 3600,
        scope: SCOPES.join(" ")
      }),
      { status: 200, headers: { "content-type": "application/json", "cache-control": "no-store" } }
    )
  }) as unknown as typeof fetch
}

/** A due connection of the engine's rounds (the background section's shape, the engine's own tokens). */
const dueConnection = (i: number, now: number): Connection.Connection =>
  connectionOf(
    { accountId: `engine-${i}`, accessToken: `engine-old-at-${i}`, refreshToken: `engine-old-rt-${i}` },
    i,
    now
  )

/**
 * One Refresher round on `connections` due connections of a fresh memory store, answered in process:
 * its main-thread CPU per refresh. Also how a fleet process warms the engine's code before its
 * real warm-up (bench/fleet-worker.ts).
 */
const profRound = async (concurrency: number, connections: number, prof = false) => {
  const store = ConnectionStore.makeMemory()
  const vault = Vault.make(vaultOptions)
  const now = Date.now()
  await runEffect(
    Effect.forEach(
      Array.from({ length: connections }, (_, i) => i),
      (i) => store.insert(Connection.toRecord(vault, dueConnection(i, now), now - 3600_000)),
      { discard: true }
    )
  )
  const lk = createLatchkey({
    providers: [
      Generic.provider({
        id: PROVIDER_ID,
        name: "Engine",
        clientId: CLIENT_ID,
        clientSecret: CLIENT_SECRET,
        auth: "client_secret_basic",
        redirectUri: `${ORIGIN}/callback`,
        endpoints,
        scopes: [...SCOPES]
      })
    ],
    store,
    vault: vaultOptions,
    config: { fetch: answering() },
    refresher: { concurrency, ratePerSecond: Number.POSITIVE_INFINITY, batchSize: connections }
  })
  try {
    let refreshed = 0
    let failed = 0
    if (prof) await post("Profiler.start")
    const meter = cpuMeter()
    for (let sweeps = 0; sweeps < 5; sweeps++) {
      const report = await lk.refresher.sweep()
      refreshed += report.refreshed
      failed += report.failed
      if (report.due === 0 || report.refreshed === 0) break
    }
    const used = meter()
    if (prof) { const { profile } = await post("Profiler.stop"); writeFileSync(`/tmp/sweep.cpuprofile`, JSON.stringify(profile)) }
    return { usPerRefresh: used.threadUs / Math.max(1, refreshed), failed: failed + connections - refreshed }
  } finally {
    await lk.close()
  }
}


const c = Number(process.argv[2] ?? 128)
await profRound(c, 500)
for (let i = 0; i < 3; i++) console.log(Math.round((await profRound(c, 5000)).usPerRefresh))
console.log("prof", Math.round((await profRound(c, 5000, true)).usPerRefresh))
