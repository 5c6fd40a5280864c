/**
 * `pnpm bench`: every Latchkey benchmark in one run against a real token server (oidc-provider with
 * rotating single-use refresh tokens, in a worker thread). Progress goes to stderr, a table to
 * stdout, and the figures to bench/results.json. Exits non-zero only when an invariant fails: the
 * storm must make exactly one refresh call and the grant must survive it.
 *
 * `--quick`: CI-sized runs (fewer connections, trials and sizes; every figure still present, each
 * section says its sizes). Environment: BENCH_CONCURRENCY (a comma-separated list of background
 * refresh concurrencies, default 8,32,128), BENCH_STORMS (storms in the storm section, default 31).
 *
 * `--only <sections>`: run only these sections (comma-separated, e.g. `--only storm,background`),
 * for profiling and quick comparisons; the figures go to bench/results.only.json (results.json
 * always holds a complete run).
 */
import { existsSync } from "node:fs"
import { writeFile } from "node:fs/promises"
import { availableParallelism, cpus } from "node:os"
import { type BackgroundResult, benchBackground } from "./background.ts"
import { progress, REDIRECT, round } from "./common.ts"
import { benchEngine, type EngineResult } from "./engine.ts"
import { benchFleet, type FleetResult } from "./fleet.ts"
import { benchHotPath, type HotPathResult } from "./hot-path.ts"
import { benchInDoubtWindow, type InDoubtResult } from "./in-doubt.ts"
import { benchNaiveOpenidClient, benchNaiveSimpleOauth2, type NaiveResult } from "./naive.ts"
import { benchScale, type ScaleResult } from "./scale.ts"
import { type BenchServer, startBenchServer } from "./server.ts"
import { benchStaleness, type StalenessResult } from "./staleness.ts"
import { benchStorm, type StormResult } from "./storm.ts"

const startedAt = performance.now()
const quick = process.argv.includes("--quick")
const SECTIONS = [
  "hotPath",
  "storm",
  "naive",
  "background",
  "fleet",
  "stores",
  "staleness",
  "inDoubtWindow",
  "scale"
] as const
type Section = (typeof SECTIONS)[number]
const onlyAt = process.argv.indexOf("--only")
const only: ReadonlySet<string> | undefined =
  onlyAt === -1 ? undefined : new Set((process.argv[onlyAt + 1] ?? "").split(",").filter((s) => s !== ""))
if (only !== undefined) {
  const unknown = [...only].filter((s) => !(SECTIONS as ReadonlyArray<string>).includes(s))
  if (only.size === 0 || unknown.length > 0)
    throw new Error(`--only takes a comma-separated list of sections among ${SECTIONS.join(", ")}`)
}
const want = (section: Section) => only === undefined || only.has(section)
/** Storms in the storm section (BENCH_STORMS; quick: 5): one lasts a few ms, so the figure is a median of many. */
const stormCount = Number(process.env.BENCH_STORMS ?? 31)
if (!Number.isInteger(stormCount) || stormCount < 1)
  throw new Error("BENCH_STORMS must be a positive integer")
const concurrencies = (process.env.BENCH_CONCURRENCY ?? "8,32,128").split(",").map(Number)
if (concurrencies.some((c) => !Number.isInteger(c) || c < 1)) {
  throw new Error("BENCH_CONCURRENCY must be a comma-separated list of positive integers")
}
const backgroundConnections = quick ? 1_000 : 5_000
/** Alternating rounds of each side in the background section. */
const backgroundRounds = quick ? 2 : 4

interface Results {
  readonly meta: Record<string, unknown>
  // Every section is present in a full run; `--only` leaves the others out.
  readonly hotPath?: HotPathResult & {
    /** Per store: accessToken vs the raw driver read of the same row (from the `stores` section). */
    readonly perStore?: Record<
      string,
      { ratio: number; opsPerSec: number; rawReadOpsPerSec: number } | { error: string }
    >
  }
  readonly storm?: StormResult
  readonly naive?: { readonly openidClient: NaiveResult; readonly simpleOauth2: NaiveResult }
  readonly background?: {
    readonly connections: number
    readonly rounds: number
    readonly ratios: Record<string, number>
    readonly byConcurrency: Record<string, BackgroundResult>
    /** The engine's own CPU per refresh, without a token server (bench/engine.ts). */
    readonly engine: EngineResult
  }
  readonly stores?: unknown
  readonly staleness?: StalenessResult
  readonly fleet?: FleetResult
  readonly scale?: ScaleResult
  readonly inDoubtWindow?: InDoubtResult
}

let results: Results = {
  meta: {
    date: new Date().toISOString(),
    node: process.version,
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model ?? "unknown",
    server: "oidc-provider (rotateRefreshToken: true) in a worker thread, 127.0.0.1",
    quick,
    ...(only !== undefined ? { only: [...only] } : {})
  }
}
/**
 * A fresh token server for each measurement that uses one: oidc-provider keeps every grant and every
 * token it issued (consumed refresh tokens included, so that a replay is caught), so a server that
 * served the sections before holds tens of thousands of them, and its heap and collections grow with
 * them. Its thread shares the two cores with the side being measured: on a server grown by the
 * sections before it, the 4-process fleet on PostgreSQL took 1.005 x one process where a fresh
 * server gave 0.866 (one run each, same commit). Each figure is a comparison within one section,
 * on one server; no section inherits another's.
 */
const withServer = async <A>(f: (server: BenchServer) => Promise<A>): Promise<A> => {
  const server = await startBenchServer(REDIRECT)
  try {
    return await f(server)
  } finally {
    await server.close()
  }
}
if (want("hotPath")) {
  progress("hotPath", "accessToken on a valid token vs a raw read of the same store")
  results = { ...results, hotPath: await withServer(benchHotPath) }
}
if (want("storm")) {
  progress("storm", "1,000 concurrent callers on one expired connection")
  results = { ...results, storm: await withServer((server) => benchStorm(server, quick ? 5 : stormCount)) }
}
if (want("naive")) {
  progress("naive", "the same storm with openid-client alone and with simple-oauth2")
  const naive = await withServer(async (server) => ({
    openidClient: await benchNaiveOpenidClient(server),
    simpleOauth2: await benchNaiveSimpleOauth2(server)
  }))
  results = { ...results, naive }
}
if (want("background")) {
  const byConcurrency: Record<string, BackgroundResult> = {}
  for (const c of concurrencies) {
    progress(
      "background",
      `the Refresher on ${backgroundConnections} due connections vs a raw refresh loop, concurrency ${c}`
    )
    byConcurrency[c] = await withServer((server) =>
      benchBackground(server, c, backgroundConnections, backgroundRounds)
    )
  }
  const engineConcurrency = Math.max(...concurrencies)
  progress(
    "background",
    `the engine alone: the Refresher vs raw openid-client on an in-process answer, concurrency ${engineConcurrency}`
  )
  const engine = await benchEngine(engineConcurrency, backgroundConnections, backgroundRounds)
  progress(
    "background",
    `engine: ${engine.refresherUsPerRefresh} µs vs ${engine.rawUsPerRefresh} µs CPU per refresh: the engine adds ${engine.overheadUsPerRefresh} µs (of which the vault's floor, 1 open and 2 seals: ${engine.vaultFloorUsPerRefresh} µs)`
  )
  const background = {
    connections: backgroundConnections,
    rounds: backgroundRounds,
    ratios: Object.fromEntries(Object.entries(byConcurrency).map(([c, r]) => [c, r.throughputRatio])),
    byConcurrency,
    engine
  }
  results = { ...results, background }
}
if (want("fleet")) {
  progress("fleet", "1, 2 and 4 processes sweeping one PostgreSQL / Redis store")
  results = {
    ...results,
    fleet: await withServer((server) => benchFleet(server, quick, availableParallelism()))
  }
}

let stores: unknown
if (!want("stores")) {
  // left out by --only
} else if (existsSync(new URL("./stores.ts", import.meta.url))) {
  progress("stores", "running bench/stores.ts")
  try {
    const module = (await import("./stores.ts" as string)) as { benchStores: () => Promise<unknown> }
    stores = await module.benchStores()
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error)
    progress("stores", `failed: ${message}`)
    stores = { error: message }
  }
} else {
  progress("stores", "bench/stores.ts is not there yet: skipped")
}
if (stores !== undefined) {
  const perStore: Record<
    string,
    { ratio: number; opsPerSec: number; rawReadOpsPerSec: number } | { error: string }
  > = {}
  for (const [name, r] of Object.entries(stores as Record<string, Record<string, unknown>>)) {
    perStore[name] =
      "error" in r
        ? { error: String(r.error) }
        : {
            ratio: Number(r.ratio),
            opsPerSec: Number(r.readOpsPerSec),
            rawReadOpsPerSec: Number(r.rawReadOpsPerSec)
          }
  }
  results =
    results.hotPath === undefined
      ? { ...results, stores }
      : { ...results, stores, hotPath: { ...results.hotPath, perStore } }
}

if (want("staleness")) {
  progress("staleness", "another instance replaces / revokes a token: how long this one serves the old one")
  results = { ...results, staleness: await benchStaleness(quick) }
}
// The in-doubt window before the scale section: after its bulk writes of a million rows, PostgreSQL
// checkpoints and vacuums for a while, and the window measured that (a p50 of 67 ms once, 3 ms before).
if (want("inDoubtWindow")) {
  progress(
    "inDoubtWindow",
    "provider answer -> durable write, per store, 500 callers x 100 connections x 5 rounds"
  )
  results = { ...results, inDoubtWindow: await benchInDoubtWindow() }
}
if (want("scale")) {
  progress("scale", quick ? "10k and 100k connections (quick)" : "10k, 100k and 1M connections")
  results = { ...results, scale: await benchScale(quick) }
}

const totalSeconds = round((performance.now() - startedAt) / 1000, 1)
results = { ...results, meta: { ...results.meta, totalSeconds } }
await writeFile(
  new URL(only === undefined ? "./results.json" : "./results.only.json", import.meta.url),
  `${JSON.stringify(results, null, 2)}\n`
)

// ---- the table ----
const rows: Array<[string, string, string]> = []
const fmt = (v: unknown): string =>
  typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString("en-US") : String(v)) : String(v)
const add = (section: string, metric: string, value: unknown) => rows.push([section, metric, fmt(value)])
const { hotPath, storm, naive, background } = results
if (hotPath !== undefined) {
  add("hotPath", "accessToken ops/s", hotPath.opsPerSec)
  add("hotPath", "accessToken p50 / p99 (µs)", `${hotPath.p50Us} / ${hotPath.p99Us}`)
  add("hotPath", "raw store.get ops/s", hotPath.rawReadOpsPerSec)
  add("hotPath", "raw store.get p50 / p99 (µs)", `${hotPath.rawReadP50Us} / ${hotPath.rawReadP99Us}`)
  add("hotPath", "ratio (accessToken / raw read)", hotPath.ratio)
  add(
    "hotPath",
    "Effect level: ops/s vs raw (ratio)",
    `${fmt(hotPath.effectLevel.opsPerSec)} vs ${fmt(hotPath.effectLevel.rawReadOpsPerSec)} (${hotPath.effectLevel.ratio})`
  )
}
if (storm !== undefined) {
  add("storm", "callers (x storms)", `${fmt(storm.callers)} x ${storm.storms}`)
  add("storm", "refresh calls at the server, per storm", storm.refreshCallsPerStorm.join(", "))
  add("storm", "grant survived", storm.grantSurvived)
  add("storm", "wall (ms), median storm (each)", `${storm.wallMs} (${storm.wallsMs.join(", ")})`)
  add("storm", "one raw refresh round trip (ms), median, a linked grant", storm.oneRefreshMs)
  add("storm", "one raw refresh of a minted grant (ms), for comparison", storm.mintedRefreshMs)
  add("storm", "wall / one refresh", storm.wallRatio)
  add("storm", "callers failed / distinct tokens", `${storm.callersFailed} / ${storm.distinctTokens}`)
}
if (naive !== undefined) {
  for (const [name, r] of [
    ["openid-client alone", naive.openidClient],
    ["simple-oauth2", naive.simpleOauth2]
  ] as const) {
    add("naive", `${name}: refresh calls`, r.refreshCalls)
    add("naive", `${name}: grant survived`, r.grantSurvived)
    add("naive", `${name}: callers failed`, r.callersFailed)
  }
}
if (background !== undefined) {
  add("background", "connections (all due)", background.connections)
  for (const [c, b] of Object.entries(background.byConcurrency)) {
    add(
      "background",
      `C=${c}: Refresher s (refreshes/s) vs raw s (refreshes/s)`,
      `${b.seconds} (${fmt(b.refreshesPerSec)}) vs ${b.raw.seconds} (${fmt(b.raw.refreshesPerSec)})`
    )
    add(
      "background",
      `C=${c}: refreshed / failed / still due`,
      `${b.refreshed} / ${b.failed} / ${b.stillDue}`
    )
    add(
      "background",
      `C=${c}: main-thread CPU per refresh, µs (Refresher / raw)`,
      `${b.cpuUsPerRefresh} / ${b.raw.cpuUsPerRefresh}`
    )
    add(
      "background",
      `C=${c}: other threads' CPU per refresh, µs (Refresher / raw)`,
      `${b.otherUsPerRefresh} / ${b.raw.otherUsPerRefresh}`
    )
    add(
      "background",
      `C=${c}: cores busy (Refresher / raw rounds)`,
      `${fmt(b.machineBusy)} / ${fmt(b.raw.machineBusy)}`
    )
    add(
      "background",
      `C=${c}: throughput ratio per pair of rounds (Refresher / raw)`,
      b.roundRatios.join(" / ")
    )
    add("background", `C=${c}: throughput ratio, all rounds (Refresher / raw)`, b.throughputRatio)
    add("background", `C=${c}: CPU ratio, all threads (raw / Refresher)`, b.cpuRatio)
  }
  const e = background.engine
  add(
    "background",
    `engine alone, C=${e.concurrency}: CPU per refresh, µs (Refresher / raw)`,
    `${e.refresherUsPerRefresh} / ${e.rawUsPerRefresh}`
  )
  add("background", `engine alone, C=${e.concurrency}: what the engine adds, µs`, e.overheadUsPerRefresh)
  add("background", "vault work a refresh cannot skip (1 open, 2 seals), µs", e.vaultFloorUsPerRefresh)
}
for (const [name, r] of Object.entries(results.hotPath?.perStore ?? {})) {
  add(
    "hotPath",
    `${name}: ratio (accessToken / raw driver read)`,
    "error" in r ? `error: ${r.error}` : r.ratio
  )
}
/** Nested figures as one row each (`fleet.postgres.runs[2].wallMs`); arrays of plain values on one row. */
const flatten = (section: string, value: unknown, path: string) => {
  if (Array.isArray(value) && value.some((v) => v !== null && typeof v === "object")) {
    for (const [i, v] of value.entries()) flatten(section, v, `${path}[${i}]`)
  } else if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(section, v, path === "" ? k : `${path}.${k}`)
  } else {
    add(section, path, Array.isArray(value) ? value.map(fmt).join(" / ") : value)
  }
}
if (results.stores !== undefined) flatten("stores", results.stores, "")
if (results.staleness !== undefined) flatten("staleness", results.staleness, "")
if (results.fleet !== undefined) flatten("fleet", results.fleet, "")
if (results.scale !== undefined) flatten("scale", results.scale, "")
for (const [store, w] of Object.entries(results.inDoubtWindow ?? {})) {
  if ("error" in w) {
    add("inDoubtWindow", store, `error: ${w.error}`)
    continue
  }
  add(
    "inDoubtWindow",
    `${store}: p50 / p99 / max ms (samples)`,
    `${w.p50Ms} / ${w.p99Ms} / ${w.maxMs} (${w.samples})`
  )
  add(
    "inDoubtWindow",
    `${store}: raw write p50 / p99 ms; window/raw p50`,
    `${w.rawWriteP50Ms} / ${w.rawWriteP99Ms}; ${w.ratioP50}`
  )
  add("inDoubtWindow", `${store}: refreshes, sent twice`, `${w.refreshes}, ${w.sentTwice}`)
}
add("total", "bench seconds", totalSeconds)

const widths = [0, 1, 2].map((i) =>
  Math.max(...rows.map((r) => r[i]!.length), ["section", "metric", "value"][i]!.length)
)
const line = (cells: ReadonlyArray<string>) =>
  cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ")
const out = [line(["section", "metric", "value"]), widths.map((w) => "-".repeat(w)).join("  ")]
let previous = ""
for (const r of rows) {
  out.push(line([r[0] === previous ? "" : r[0], r[1], r[2]]))
  previous = r[0]
}
process.stdout.write(
  `\n${out.join("\n")}\n\nresults written to bench/${only === undefined ? "results.json" : "results.only.json"}\n`
)

const failures: Array<string> = []
if (storm !== undefined && storm.refreshCalls !== 1)
  failures.push(`storm made ${storm.refreshCalls} refresh calls (expected exactly 1)`)
if (storm !== undefined && !storm.grantSurvived) failures.push("the grant did not survive the storm")
for (const [store, w] of Object.entries(results.inDoubtWindow ?? {})) {
  if (!("error" in w) && w.sentTwice !== 0)
    failures.push(`inDoubtWindow ${store}: ${w.sentTwice} refresh tokens sent twice`)
}
if (failures.length > 0) {
  process.stderr.write(`INVARIANT FAILED: ${failures.join("; ")}\n`)
  process.exitCode = 1
}
