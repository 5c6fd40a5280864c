/**
 * The demo's HTTP app on node:http: pages, card actions, OAuth callbacks and a Server-Sent Events
 * stream fed by the store's durable event log (`latchkey.events.subscribe`: every process's events,
 * kept across restarts); `latchkey.on(...)` and the workers' reports only say which process did a
 * refresh. Cards show each connection's health; charts per provider come from the engines' metrics. Its own security: an HttpOnly SameSite=Lax session cookie, a
 * CSRF token checked on every POST (and the Origin header when a browser sends one), redirects only
 * to our own paths or to authorize URLs Latchkey built, `Referrer-Policy: no-referrer` on callbacks,
 * a strict Content-Security-Policy, and nothing but connection summaries and API bodies in responses.
 */
import { readFileSync, writeFileSync } from "node:fs"
import type { IncomingMessage, ServerResponse } from "node:http"
import { join } from "node:path"
import {
  type Connection,
  type ConnectionStore,
  type Events,
  type LatchkeyClient,
  type LifecycleEvents,
  Vault
} from "@latchkey/core"
import { Effect, Exit, Option } from "effect"
import { type ProcessMetrics, RefreshChart } from "./charts.ts"
import { type Attribution, logEventText } from "./feed.ts"
import type { Fleet, FleetEvent, InFlight } from "./fleet.ts"
import type { CardHealth } from "./health.ts"
import {
  apiStatus,
  authorizationFailure,
  operationFailure,
  type Plain,
  type RefreshedBy
} from "./messages.ts"
import type { Fact, ProviderSetup } from "./providers.ts"
import { type Session, Sessions, sameSecret, USERS, userById } from "./sessions.ts"
import * as Views from "./views.ts"

type Summary = Connection.ConnectionSummary

export interface AppOptions {
  readonly latchkey: LatchkeyClient
  /** The refresh workers, when the background refresh runs in other processes. */
  readonly fleet?: Fleet | undefined
  /** The store, to read refresh journals and check that the vault key opens each connection. */
  readonly store?: ConnectionStore.ConnectionStoreShape | undefined
  readonly vaultKey?: Vault.VaultKey | undefined
  readonly setups: ReadonlyArray<ProviderSetup>
  /** Where browsers reach the app, e.g. `http://127.0.0.1:3000`. */
  readonly origin: string
  /** The engine's `refreshAheadMs`, to draw where the Refresher steps in. */
  readonly refreshAheadMs: number
  /** When this run started: sandbox grants issued before it are gone (sandboxes keep them in memory). */
  readonly startedAt: number
  /** Log a line (never a token, code or secret). */
  readonly log?: ((line: string) => void) | undefined
  /** A JSON file keeping account names by connection id, so the feed names unlinked accounts after a restart. */
  readonly labelsPath?: string | undefined
  /** How often the durable event log is read (default 250 ms). */
  readonly eventPollMs?: number | undefined
  /** The charts' bucket width (default 30 s) and how often the metrics are read without a page asking (default 5 s). */
  readonly chartBucketMs?: number | undefined
  readonly metricsSampleMs?: number | undefined
}

export interface App {
  readonly handle: (req: IncomingMessage, res: ServerResponse) => void
  /** End the event streams (before the server closes). */
  readonly close: () => void
  readonly sessions: Sessions
}

const FAVICON =
  `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><rect width="24" height="24" rx="6" fill="#4338ca"/>` +
  `<circle cx="8.5" cy="12" r="3.6" fill="none" stroke="#fff" stroke-width="2"/>` +
  `<path d="M12 12h7.5m-2.5 0v3m-2.5-3v2" fill="none" stroke="#fff" stroke-width="2" stroke-linecap="round"/></svg>`

const ASSETS = {
  "/favicon.ico": { type: "image/svg+xml", body: Buffer.from(FAVICON) },
  "/assets/icon.svg": { type: "image/svg+xml", body: Buffer.from(FAVICON) },
  "/assets/app.css": {
    type: "text/css; charset=utf-8",
    body: readFileSync(join(import.meta.dirname, "assets", "app.css"))
  },
  "/assets/app.js": {
    type: "text/javascript; charset=utf-8",
    body: readFileSync(join(import.meta.dirname, "assets", "app.js"))
  }
} as const

const MAX_BODY = 16 * 1024
const LIVE_FACTS_TTL_MS = 30_000
const ACTIVITY_LIMIT = 40
const API_BODY_LIMIT = 64 * 1024

/** A path on this site (`/x`), never `//host`, `/\host` or an absolute URL. */
export const safeLocalPath = (value: string | null | undefined): string => {
  if (typeof value !== "string" || !value.startsWith("/") || value.startsWith("//")) return "/"
  // Backslashes (browsers read `/\\host` as `//host`) and control characters (header splitting).
  if ([...value].some((ch) => ch === "\\" || ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) return "/"
  try {
    const parsed = new URL(value, "http://local.invalid")
    if (parsed.origin !== "http://local.invalid") return "/"
    const path = `${parsed.pathname}${parsed.search}${parsed.hash}`
    // Dot segments are resolved above: "/.//evil.example" becomes "//evil.example", which a
    // browser reads as another host. Checked again on the result.
    if (path.startsWith("//") || path.startsWith("/\\")) return "/"
    return path
  } catch {
    return "/"
  }
}

/** `text` on one line: C0/C1 control characters and U+2028/U+2029 shown as `\uXXXX`. */
export const oneLine = (text: string): string => {
  let out = ""
  for (const ch of text) {
    const code = ch.charCodeAt(0)
    const breaks = code < 0x20 || (code >= 0x7f && code <= 0x9f) || code === 0x2028 || code === 0x2029
    out += breaks ? `\\u${code.toString(16).padStart(4, "0")}` : ch
  }
  return out
}

class HttpError extends Error {
  readonly status: number
  constructor(status: number, message: string) {
    super(message)
    this.status = status
  }
}

const readForm = (req: IncomingMessage): Promise<URLSearchParams> =>
  new Promise((resolve, reject) => {
    const type = (req.headers["content-type"] ?? "").split(";")[0]!.trim().toLowerCase()
    const chunks: Array<Buffer> = []
    let size = 0
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > MAX_BODY) {
        reject(new HttpError(413, "Request body too large"))
        req.destroy()
        return
      }
      chunks.push(chunk)
    })
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8")
      if (text.length > 0 && type !== "application/x-www-form-urlencoded") {
        reject(new HttpError(415, "Send a form (application/x-www-form-urlencoded)"))
        return
      }
      resolve(new URLSearchParams(text))
    })
    req.on("error", reject)
  })

/** The account names kept in `path` (none when it is missing or unreadable). */
const readLabels = (path: string | undefined): Array<[string, string]> => {
  if (path === undefined) return []
  try {
    const kept = JSON.parse(readFileSync(path, "utf8")) as unknown
    if (typeof kept !== "object" || kept === null) return []
    return Object.entries(kept).filter((e): e is [string, string] => typeof e[1] === "string")
  } catch {
    return []
  }
}

export const createApp = (options: AppOptions): App => {
  const { latchkey, setups, origin } = options
  const sink = options.log ?? (() => {})
  // One call, one line: control characters (CR, LF, ...) and Unicode line breaks in anything that
  // reaches the log (a provider's error_description, say) are escaped, so no line can be forged.
  const log = (line: string) => sink(oneLine(line))
  const publicUrl = new URL(origin)
  const sessions = new Sessions({ secure: publicUrl.protocol === "https:" })
  const setupById = new Map(setups.map((s) => [s.id, s]))
  const callbacks = new Map(setups.map((s) => [s.callbackPath, s]))
  const formOrigins = [...new Set(setups.map((s) => s.authorizationOrigin))]
  const csp = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    // The link forms redirect to the providers' authorize pages.
    `form-action 'self' ${formOrigins.join(" ")}`,
    "frame-ancestors 'none'",
    "base-uri 'none'"
  ].join("; ")

  // ---- state: activity feed, live facts, who refreshed, event streams --------------------------
  const activity = new Map<string, Array<Views.ActivityEntry>>()
  const labels = new Map<string, string>(readLabels(options.labelsPath))
  const refreshedBy = new Map<string, RefreshedBy>()
  const manualRefresh = new Set<string>()
  const apiInFlight = new Map<string, number>()
  const liveFacts = new Map<string, { at: number; facts: ReadonlyArray<Fact>; error: string | undefined }>()
  const streams = new Map<string, Set<ServerResponse>>()

  /**
   * One log line per failure: the error's tag, reason and message. Latchkey's errors never carry a
   * token, secret or code (its invariant 5); request URLs are logged without their query.
   */
  const logFailure = (what: string, error: unknown) => {
    const e = (error ?? {}) as { _tag?: unknown; reason?: unknown; message?: unknown; name?: unknown }
    const tag = typeof e._tag === "string" ? e._tag : typeof e.name === "string" ? e.name : "Error"
    const reason = typeof e.reason === "string" ? ` (${e.reason})` : ""
    const message = typeof e.message === "string" ? `: ${e.message.slice(0, 300)}` : ""
    log(`${what} failed: ${tag}${reason}${message}`)
  }

  const nameOf = (providerId: string) => setupById.get(providerId)?.name ?? providerId

  const broadcast = (ownerId: string, payload: unknown) => {
    const clients = streams.get(ownerId)
    if (!clients) return
    const frame = `event: latchkey\ndata: ${JSON.stringify(payload)}\n\n`
    for (const res of clients) res.write(frame)
  }

  /** Remember an account's name (kept in `labelsPath`: the feed names it even once it is unlinked). */
  const rememberLabel = (connectionId: string, label: string) => {
    if (labels.get(connectionId) === label) return
    labels.set(connectionId, label)
    if (options.labelsPath === undefined) return
    try {
      writeFileSync(options.labelsPath, JSON.stringify(Object.fromEntries(labels)), { mode: 0o600 })
    } catch (error) {
      logFailure("keeping account names", error)
    }
  }

  /** The account's name for the feed: joined on the connection summaries by id (the log's payloads carry none). */
  const labelOf = async (ownerId: string, connectionId: string): Promise<string> => {
    const known = labels.get(connectionId)
    if (known !== undefined) return known
    const c = (await latchkey.connections(ownerId).catch(() => [])).find((x) => x.id === connectionId)
    if (c !== undefined) rememberLabel(c.id, c.label)
    return c?.label ?? `unlinked ${connectionId.slice(0, 13)}…`
  }

  /** Which process did each refresh: the web process (`web`) or a worker (`worker-2`). */
  const refreshCounts = new Map<string, Map<string, number>>()
  const lastRefresher = new Map<string, string>()
  const recovered = new Set<string>()
  /** Who did a refresh, by `connectionId@at` (the durable event has the same `at` as the in-process one). */
  const attributions = new Map<string, Attribution>()

  /**
   * The engines' in-process events (this process's, and each worker's over IPC): which process
   * refreshed which account, and why (a click, an API call, the Refresher). The feed itself comes
   * from the durable log.
   */
  const onEvent = (event: Events.LatchkeyEvent, worker?: string) => {
    const e = event as { type: string; connectionId: string; at: number; recovered?: boolean }
    if (event.type === "linked") {
      rememberLabel(event.connection.id, event.connection.label)
      liveFacts.delete(event.connection.id)
      refreshedBy.delete(event.connection.id)
      lastRefresher.delete(event.connection.id)
      recovered.delete(event.connection.id)
      return
    }
    const connectionId = e.connectionId
    if (e.type === "refreshed") {
      const by: RefreshedBy =
        worker !== undefined
          ? "worker"
          : manualRefresh.has(connectionId)
            ? "you"
            : apiInFlight.has(connectionId)
              ? "api"
              : "refresher"
      refreshedBy.set(connectionId, by)
      const process_ = worker ?? "web"
      lastRefresher.set(connectionId, process_)
      attributions.set(`${connectionId}@${e.at}`, { process: process_, by })
      if (attributions.size > 1000) attributions.delete(attributions.keys().next().value!)
      const counts = refreshCounts.get(connectionId) ?? new Map<string, number>()
      counts.set(process_, (counts.get(process_) ?? 0) + 1)
      refreshCounts.set(connectionId, counts)
      if (e.recovered) recovered.add(connectionId)
      else recovered.delete(connectionId)
    }
    if (e.type === "unlinked") {
      refreshedBy.delete(connectionId)
      liveFacts.delete(connectionId)
      refreshCounts.delete(connectionId)
      lastRefresher.delete(connectionId)
    }
    if (e.type === "needs_reauth" || e.type === "revoked") liveFacts.delete(connectionId)
  }
  const stopListening = latchkey.on((event) => onEvent(event))

  // ---- the durable event log: the feed and the health of every connection --------------------
  /** A card's health: the engine's own (`ConnectionSummary.health`, recorded in the connection). */
  const healthOf = (c: Summary): CardHealth => c.health
  let cursor = 0
  let queue: Promise<unknown> = Promise.resolve()
  /** One log reader at a time (the subscription and a page catching up), in `seq` order. */
  const serial = <A>(f: () => Promise<A>): Promise<A> => {
    const run = queue.then(f)
    queue = run.catch(() => {})
    return run
  }

  const onLogEvent = async (event: LifecycleEvents.StoredLifecycleEvent) => {
    if (event.seq <= cursor) return
    let attribution: Attribution | undefined
    if (event.type === "refreshed") {
      const key = `${event.connectionId}@${event.at}`
      attribution = attributions.get(key)
      // A worker's report may trail its write by a moment.
      if (attribution === undefined && Date.now() - event.at < 2_000) {
        await new Promise((r) => setTimeout(r, 150))
        attribution = attributions.get(key)
      }
    }
    const label = await labelOf(event.ownerId, event.connectionId)
    const text = logEventText(event, label, nameOf(event.providerId), attribution)
    const entry: Views.ActivityEntry = {
      at: event.at,
      seq: event.seq,
      process: attribution?.process,
      ...text
    }
    const list = activity.get(event.ownerId) ?? []
    list.push(entry)
    if (list.length > ACTIVITY_LIMIT) list.splice(0, list.length - ACTIVITY_LIMIT)
    activity.set(event.ownerId, list)
    cursor = event.seq
    broadcast(event.ownerId, {
      type: event.type,
      connectionId: event.connectionId,
      providerId: event.providerId,
      entry
    })
  }

  /** Read the log up to its end now (before a page is drawn, so that it shows every event so far). */
  const catchUp = () =>
    serial(async () => {
      for (;;) {
        const page = await latchkey.events.read(cursor, 200)
        for (const event of page.events) await onLogEvent(event)
        if (page.events.length < 200) return
      }
    }).catch((error: unknown) => logFailure("reading the event log", error))

  const subscription = latchkey.events.subscribe({
    after: 0,
    pollIntervalMs: options.eventPollMs ?? 250,
    onEvent: (event) => serial(() => onLogEvent(event)),
    onError: (error) => logFailure("reading the event log", error)
  })

  // ---- the charts: every process's refresh metrics, summed ------------------------------------
  const chart = new RefreshChart({ bucketMs: options.chartBucketMs })
  let lastSample = 0
  let sampling: Promise<void> | undefined
  /** Read every process's metrics; with `notify`, pages whose charts changed reload them. */
  const sampleMetrics = (notify = false): Promise<void> => {
    sampling ??= (async () => {
      try {
        const samples: Array<ProcessMetrics> = [
          { process: "web", text: await latchkey.metrics() },
          ...((await options.fleet?.metrics()) ?? [])
        ]
        const changed = chart.record(samples, Date.now())
        lastSample = Date.now()
        if (changed && notify) for (const owner of streams.keys()) broadcast(owner, { type: "metrics" })
      } catch (error) {
        logFailure("reading the metrics", error)
      } finally {
        sampling = undefined
      }
    })()
    return sampling
  }
  const sampler = setInterval(() => void sampleMetrics(true), options.metricsSampleMs ?? 5_000)
  sampler.unref()

  /** Fleet news (a worker killed, drained, restarted) goes to every signed-in page. */
  const fleetNews: Array<Views.ActivityEntry> = []
  const onFleet = (event: FleetEvent) => {
    if (event.type === "event") {
      onEvent(event.event, event.worker)
      return
    }
    const entry: Views.ActivityEntry = { at: Date.now(), kind: event.kind, text: event.text }
    fleetNews.push(entry)
    if (fleetNews.length > ACTIVITY_LIMIT) fleetNews.splice(0, fleetNews.length - ACTIVITY_LIMIT)
    for (const owner of streams.keys()) broadcast(owner, { type: "fleet", entry })
  }
  const stopFleet = options.fleet?.on(onFleet) ?? (() => {})

  // ---- the vault key: can it open each connection? (checked once per version, shown on the card) ----
  const vault = options.vaultKey ? Vault.make({ keys: [options.vaultKey] }) : undefined
  const sealChecks = new Map<string, { version: number; opens: boolean }>()
  const opensWithKey = async (c: Summary): Promise<boolean> => {
    if (vault === undefined || options.store === undefined) return true
    const cached = sealChecks.get(c.id)
    if (cached !== undefined && cached.version === c.version) return cached.opens
    const exit = await Effect.runPromiseExit(
      options.store
        .get(c.id)
        .pipe(
          Effect.flatMap((r) =>
            r === undefined
              ? Effect.succeed("")
              : vault.open(r.accessToken, { connectionId: r.id, field: "accessToken" })
          )
        )
    )
    const failure = Exit.isFailure(exit) ? Option.getOrUndefined(Exit.findErrorOption(exit)) : undefined
    // Only a VaultError says "another key"; a store hiccup is not the key's fault.
    const opens = (failure as { _tag?: unknown } | undefined)?._tag !== "VaultError"
    sealChecks.set(c.id, { version: c.version, opens })
    return opens
  }

  /** Refreshes in flight or in doubt, by connection (from the journals in the store). */
  const flightsOf = async (): Promise<Map<string, InFlight>> => {
    if (options.fleet === undefined) return new Map()
    const flights = await options.fleet.inFlight().catch(() => [])
    return new Map(flights.map((f) => [f.connectionId, f]))
  }

  /** Run `f` marked as an API call of this connection (a refresh it triggers is "on demand"). */
  const asApiCall = async <A>(connectionId: string, f: () => Promise<A>): Promise<A> => {
    apiInFlight.set(connectionId, (apiInFlight.get(connectionId) ?? 0) + 1)
    try {
      return await f()
    } finally {
      const n = (apiInFlight.get(connectionId) ?? 1) - 1
      if (n <= 0) apiInFlight.delete(connectionId)
      else apiInFlight.set(connectionId, n)
    }
  }

  const factsOf = async (setup: ProviderSetup, c: Summary, opens = true) => {
    const stored = setup.storedFacts(c)
    if (
      setup.liveFacts === undefined ||
      c.status !== "active" ||
      !opens ||
      (setup.mode === "sandbox" && c.obtainedAt < options.startedAt)
    )
      return { facts: stored, error: undefined }
    const now = Date.now()
    let cached = liveFacts.get(c.id)
    if (cached === undefined || now - cached.at > LIVE_FACTS_TTL_MS) {
      try {
        const facts = await asApiCall(c.id, () => setup.liveFacts!(latchkey, c))
        cached = { at: now, facts, error: undefined }
      } catch (error) {
        const plain = operationFailure(error, setup.name, "Reading the account")
        const status = (error as { status?: unknown }).status
        cached = {
          at: now,
          facts: [],
          error:
            typeof status === "number"
              ? `Plan and credits unavailable: ${apiStatus(status, setup.name)}`
              : `Plan and credits unavailable: ${plain.text}`
        }
      }
      liveFacts.set(c.id, cached)
    }
    return { facts: [...cached.facts, ...stored], error: cached.error }
  }

  const groupsFor = async (ownerId: string): Promise<ReadonlyArray<Views.GroupView>> => {
    await catchUp()
    if (Date.now() - lastSample >= 1_000) await sampleMetrics()
    const all = await latchkey.connections(ownerId)
    for (const c of all) rememberLabel(c.id, c.label)
    const now = Date.now()
    const flights = await flightsOf()
    const workers = options.fleet?.workers() ?? []
    return Promise.all(
      setups.map(async (setup) => ({
        setup,
        chart: {
          providerId: setup.id,
          providerName: setup.name,
          points: chart.points(setup.id, now),
          bucketMs: chart.bucketMs,
          processes: chart.processes
        },
        cards: await Promise.all(
          all
            .filter((c) => c.providerId === setup.id)
            .sort((a, b) => a.createdAt - b.createdAt || a.id.localeCompare(b.id))
            .map(async (summary): Promise<Views.CardView> => {
              const opens = await opensWithKey(summary)
              const { facts, error } = await factsOf(setup, summary, opens)
              const flight = flights.get(summary.id)
              const holderWorker = flight ? options.fleet?.workerOf(flight.holder) : undefined
              return {
                summary,
                setup,
                facts,
                factsError: error,
                health: healthOf(summary),
                refreshedBy: refreshedBy.get(summary.id),
                refreshedByProcess: lastRefresher.get(summary.id),
                recovered: recovered.has(summary.id),
                fromEarlierRun: setup.mode === "sandbox" && summary.obtainedAt < options.startedAt,
                sealedWithOtherKey: !opens,
                flight:
                  flight === undefined
                    ? undefined
                    : {
                        holder: holderWorker ?? flight.holder,
                        startedAt: flight.startedAt,
                        // A worker's process that is gone (killed): the refresh is in doubt. Another
                        // holder (this web process) is alive unless the engine marked it suspected.
                        holderAlive:
                          holderWorker === undefined ||
                          workers.some((w) => w.holderId === flight.holder && w.state !== "stopped"),
                        suspectedAt: flight.suspectedAt,
                        resent: flight.resent
                      }
              }
            })
        )
      }))
    )
  }

  // ---- responses ------------------------------------------------------------------------------

  const baseHeaders = (extra: Record<string, string> = {}): Record<string, string> => ({
    "content-security-policy": csp,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
    ...extra
  })

  const send = (
    res: ServerResponse,
    status: number,
    body: string | Buffer,
    type: string,
    extra: Record<string, string> = {},
    cookie?: string
  ) => {
    const headers: Record<string, string | Array<string>> = baseHeaders({ "content-type": type, ...extra })
    if (cookie) headers["set-cookie"] = cookie
    res.writeHead(status, headers)
    res.end(body)
  }
  const html = (
    res: ServerResponse,
    status: number,
    body: string,
    extra?: Record<string, string>,
    cookie?: string
  ) => send(res, status, body, "text/html; charset=utf-8", extra, cookie)
  const json = (res: ServerResponse, status: number, body: unknown) =>
    send(res, status, JSON.stringify(body), "application/json; charset=utf-8")
  /** Only ever to a path of ours, or to an authorize URL Latchkey built. */
  const redirect = (res: ServerResponse, location: string, extra?: Record<string, string>, cookie?: string) =>
    send(res, 303, "", "text/plain; charset=utf-8", { location, ...extra }, cookie)

  const wantsJson = (req: IncomingMessage) => (req.headers.accept ?? "").includes("application/json")

  /** Answer an action: JSON for the page's script, else a flash message and back to the page. */
  const reply = (
    req: IncomingMessage,
    res: ServerResponse,
    session: Session,
    ok: boolean,
    plain: Plain,
    extra: { api?: unknown; detail?: string } = {}
  ) => {
    if (wantsJson(req)) {
      json(res, ok ? 200 : 422, { ok, ...plain, ...(extra.api ? { api: extra.api } : {}) })
      return
    }
    session.flash = { kind: ok ? "success" : "error", ...plain, detail: extra.detail }
    redirect(res, "/")
  }

  // ---- handlers -------------------------------------------------------------------------------

  const home = async (req: IncomingMessage, res: ServerResponse) => {
    let session = sessions.fromCookie(req.headers.cookie)
    let cookie: string | undefined
    if (session === undefined) {
      session = sessions.create(USERS[0]!)
      cookie = sessions.cookie(session)
    }
    const flash = session.flash
    session.flash = undefined
    const groups = await groupsFor(session.user.id)
    const body = Views.page({
      session,
      groups,
      fleet: fleetView(groups),
      activity: activity.get(session.user.id) ?? [],
      flash,
      refreshAheadMs: options.refreshAheadMs,
      sandboxMode: setups.some((s) => s.mode === "sandbox"),
      realProviders: setups.filter((s) => s.mode === "real").map((s) => s.name),
      now: Date.now()
    })
    html(res, 200, body, {}, cookie)
  }

  /** The fleet panel: the workers, and per account who refreshed it and what the provider saw. */
  const fleetView = (groups: ReadonlyArray<Views.GroupView>): Views.FleetView | undefined => {
    const fleet = options.fleet
    if (fleet === undefined) return undefined
    return {
      workers: fleet.workers(),
      news: fleetNews.slice(-3).reverse(),
      rows: groups.flatMap((g) =>
        g.cards.map((card) => ({
          connectionId: card.summary.id,
          label: card.summary.label,
          providerName: g.setup.name,
          status: card.summary.status,
          last: lastRefresher.get(card.summary.id),
          counts: [...(refreshCounts.get(card.summary.id) ?? new Map<string, number>())].sort(([a], [b]) =>
            a.localeCompare(b)
          ),
          use: g.setup.refreshTokenUse?.(card.summary)
        }))
      )
    }
  }

  const partialFleet = async (req: IncomingMessage, res: ServerResponse) => {
    const session = sessions.fromCookie(req.headers.cookie)
    if (session === undefined)
      return send(res, 401, "Sign in again: reload the page", "text/plain; charset=utf-8")
    const view = fleetView(await groupsFor(session.user.id))
    html(res, 200, view ? Views.fleetPanel(view, session) : "")
  }

  /** "Crash a worker" (SIGKILL) and "Restart a worker" (SIGTERM, it drains): the engines do the rest. */
  const fleetAction = async (
    req: IncomingMessage,
    res: ServerResponse,
    session: Session,
    kind: "crash" | "restart"
  ) => {
    const fleet = options.fleet
    if (fleet === undefined) throw new HttpError(404, "This demo runs without refresh workers.")
    const label = (f: InFlight) => `${nameOf(f.providerId)} · ${f.label}`
    if (kind === "crash") {
      const report = await fleet.crash()
      reply(req, res, session, true, {
        title: `${report.worker} killed (SIGKILL)`,
        text:
          report.inFlight.length > 0
            ? `It was refreshing ${report.inFlight.map(label).join(", ")} and died without a word. Another worker finds the unfinished refresh journal once the lease lapses, and Latchkey recovers it by the provider's rules; the card shows the outcome.`
            : "No refresh was in flight, so nothing was at stake. The fleet restarts the worker."
      })
      return
    }
    const report = await fleet.restart()
    reply(req, res, session, report.exitCode === 0, {
      title: `${report.worker} restarted (SIGTERM)`,
      text:
        report.exitCode === 0
          ? `It drained in ${report.drainMs ?? "?"} ms: ${report.inFlight.length > 0 ? `its refresh of ${report.inFlight.map(label).join(", ")} finished its write first` : "no refresh was in flight"}, then it exited and the fleet started it again.`
          : `It exited with code ${report.exitCode}.`
    })
  }

  const partialAccounts = async (req: IncomingMessage, res: ServerResponse) => {
    const session = sessions.fromCookie(req.headers.cookie)
    if (session === undefined)
      return send(res, 401, "Sign in again: reload the page", "text/plain; charset=utf-8")
    const groups = await groupsFor(session.user.id)
    html(res, 200, Views.accounts(groups, session, Date.now(), options.refreshAheadMs))
  }

  const events = (req: IncomingMessage, res: ServerResponse) => {
    const session = sessions.fromCookie(req.headers.cookie)
    if (session === undefined)
      return send(res, 401, "Sign in again: reload the page", "text/plain; charset=utf-8")
    res.writeHead(
      200,
      baseHeaders({ "content-type": "text/event-stream; charset=utf-8", connection: "keep-alive" })
    )
    res.write("retry: 2000\n: connected\n\n")
    const ownerId = session.user.id
    const set = streams.get(ownerId) ?? new Set()
    set.add(res)
    streams.set(ownerId, set)
    const ping = setInterval(() => res.write(": ping\n\n"), 15_000)
    const done = () => {
      clearInterval(ping)
      set.delete(res)
      if (set.size === 0) streams.delete(ownerId)
    }
    req.on("close", done)
    res.on("close", done)
  }

  /** The session of a state-changing request, after the CSRF checks; 403 otherwise. */
  const checkPost = (req: IncomingMessage, form: URLSearchParams): Session => {
    const session = sessions.fromCookie(req.headers.cookie)
    if (session === undefined)
      throw new HttpError(403, "Your session has ended. Reload the page and try again.")
    const requestOrigin = req.headers.origin
    if (requestOrigin !== undefined && requestOrigin !== "null" && requestOrigin !== publicUrl.origin) {
      throw new HttpError(403, "Cross-site request refused.")
    }
    const site = req.headers["sec-fetch-site"]
    if (site !== undefined && site !== "same-origin" && site !== "none") {
      throw new HttpError(403, "Cross-site request refused.")
    }
    const presented = (req.headers["x-csrf-token"] as string | undefined) ?? form.get("_csrf") ?? undefined
    if (!sameSecret(presented, session.csrf)) {
      throw new HttpError(403, "This form has expired (CSRF check failed). Reload the page and try again.")
    }
    return session
  }

  const switchUser = (res: ServerResponse, form: URLSearchParams, session: Session) => {
    const user = userById(form.get("user") ?? "")
    if (user === undefined) throw new HttpError(400, "Unknown demo user.")
    const next = sessions.switchUser(session, user)
    redirect(res, safeLocalPath(form.get("next")), {}, sessions.cookie(next))
  }

  const link = async (res: ServerResponse, providerId: string, session: Session) => {
    const setup = setupById.get(providerId)
    if (setup === undefined) throw new HttpError(404, "No such provider.")
    const { url } = await latchkey.startAuthorization({ providerId, ownerId: session.user.id })
    redirect(res, url)
  }

  /** The connection, when it belongs to the signed-in user (404 otherwise: no probing of others' ids). */
  const ownConnection = async (id: string, session: Session): Promise<Summary> => {
    // Listed by owner: only the user's own, and read without opening any sealed field.
    const c = (await latchkey.connections(session.user.id)).find((x) => x.id === id)
    if (c === undefined) throw new HttpError(404, "No such linked account.")
    return c
  }

  const callApi = async (req: IncomingMessage, res: ServerResponse, c: Summary, session: Session) => {
    const setup = setupById.get(c.providerId)!
    const { url, label } = setup.apiRequest(c)
    try {
      const response = await asApiCall(c.id, () =>
        latchkey.fetch(c.id, url, { headers: { accept: "application/json" } })
      )
      let text = await response.text()
      if (text.length > API_BODY_LIMIT) text = `${text.slice(0, API_BODY_LIMIT)}\n… (cut at 64 KB)`
      // Defence in depth: an API that echoes the token never gets it to the browser.
      const token = await asApiCall(c.id, () => latchkey.accessToken(c.id)).catch(() => undefined)
      if (token) text = text.replaceAll(token, "[access token removed]")
      let body = text
      try {
        body = JSON.stringify(JSON.parse(text), null, 2)
      } catch {
        // not JSON: shown as it is
      }
      if (response.ok && c.providerId === "heygen") liveFacts.delete(c.id)
      const api = {
        label,
        status: response.status,
        ok: response.ok,
        body,
        message: apiStatus(response.status, setup.name)
      }
      reply(
        req,
        res,
        session,
        response.ok,
        { title: `${label} → ${response.status}`, text: apiStatus(response.status, setup.name) },
        { api, detail: body }
      )
    } catch (error) {
      logFailure(`API call of ${c.id}`, error)
      reply(req, res, session, false, operationFailure(error, setup.name, "Calling the API"))
    }
  }

  const refresh = async (req: IncomingMessage, res: ServerResponse, c: Summary, session: Session) => {
    const name = nameOf(c.providerId)
    manualRefresh.add(c.id)
    try {
      const next = await latchkey.refresh(c.id)
      const expires =
        next.expiresAt === undefined
          ? ""
          : ` The new access token expires in ${Views.duration(next.expiresAt - Date.now())}.`
      reply(req, res, session, true, {
        title: "Refreshed",
        text: `${name} issued new tokens for ${c.label}.${expires}`
      })
    } catch (error) {
      logFailure(`refresh of ${c.id}`, error)
      reply(req, res, session, false, operationFailure(error, name, "Refresh"))
    } finally {
      manualRefresh.delete(c.id)
    }
  }

  const unlink = async (req: IncomingMessage, res: ServerResponse, c: Summary, session: Session) => {
    const name = nameOf(c.providerId)
    try {
      const { revokedAtProvider } = await latchkey.unlink(c.id)
      const provider = setupById.get(c.providerId)?.provider
      const canRevoke = provider?.endpoints?.revocation !== undefined || provider?.revoke !== undefined
      reply(req, res, session, true, {
        title: "Unlinked",
        text: revokedAtProvider
          ? `${c.label} is unlinked, and ${name} revoked the grant.`
          : canRevoke
            ? `${c.label} is unlinked here. ${name} did not confirm the revocation, so the grant may stay valid there until it expires.`
            : `${c.label} is unlinked here. ${name} offers no way to revoke a token, so the grant ends when the app is removed there.`
      })
    } catch (error) {
      logFailure(`unlink of ${c.id}`, error)
      reply(req, res, session, false, operationFailure(error, name, "Unlink"))
    }
  }

  const revokeAtProvider = async (
    req: IncomingMessage,
    res: ServerResponse,
    c: Summary,
    session: Session
  ) => {
    const setup = setupById.get(c.providerId)!
    if (setup.revokeAtProvider === undefined) throw new HttpError(404, "Only the sandboxes can do this.")
    await setup.revokeAtProvider(c)
    liveFacts.delete(c.id)
    // A card that reads live facts (HeyGen's plan) calls the API at once: Latchkey may learn it now.
    if (setup.liveFacts !== undefined) await factsOf(setup, c)
    const after = (await latchkey.connections(session.user.id)).find((x) => x.id === c.id)
    reply(req, res, session, true, {
      title: `${setup.name} ended the grant`,
      text:
        after?.status === "needs_reauth"
          ? `The ${setup.name} sandbox no longer accepts ${c.label}’s tokens. Reading the account needed a refresh, ${setup.name} refused it, and Latchkey marked the account for reconnecting: choose “Reconnect” on the card.`
          : `The ${setup.name} sandbox no longer accepts ${c.label}’s tokens. Latchkey learns it at the next refresh or API call: choose “Refresh now” (or wait for the Refresher) to see the card ask for a reconnect.`
    })
  }

  /** "Make HeyGen flaky": the sandbox's own fault switch answers the next refresh requests with 503. */
  const flaky = (req: IncomingMessage, res: ServerResponse, c: Summary, session: Session) => {
    const setup = setupById.get(c.providerId)!
    if (setup.failNextRefreshes === undefined) throw new HttpError(404, "Only the sandboxes can do this.")
    setup.failNextRefreshes(Views.FLAKY_REFRESHES)
    reply(req, res, session, true, {
      title: `${setup.name} is flaky`,
      text: `The ${setup.name} sandbox answers its next ${Views.FLAKY_REFRESHES} refresh requests with 503 Service Unavailable. Choose “Refresh now” (or wait for the Refresher): every attempt of that refresh fails, the card turns Degraded, and the next refresh makes it Active again.`
    })
  }

  const callback = async (req: IncomingMessage, res: ServerResponse, setup: ProviderSetup) => {
    // The URL carries an authorization code: it must not leak through a Referer, a cache or a log.
    const headers = { "referrer-policy": "no-referrer" }
    const session = sessions.fromCookie(req.headers.cookie)
    if (session === undefined) {
      return html(
        res,
        400,
        Views.messagePage(
          `${setup.name} account not linked`,
          "Your demo session ended before linking finished (or cookies are blocked). Nothing was linked; start again from the accounts page."
        ),
        headers
      )
    }
    try {
      const result = await latchkey.completeAuthorization({
        callback: new URL(req.url ?? "/", origin).searchParams,
        providerId: setup.id,
        ownerId: session.user.id
      })
      session.flash = {
        kind: "success",
        title: result.relinked ? `${setup.name} account reconnected` : `${setup.name} account linked`,
        text: `${result.connection.label} is ${result.relinked ? "linked again, with new tokens" : `now linked to ${session.user.name}’s demo account`}.`
      }
    } catch (error) {
      session.flash = { kind: "error", ...authorizationFailure(error, setup.name) }
      logFailure(`linking ${setup.id}`, error)
    }
    redirect(res, "/", headers)
  }

  // ---- routing --------------------------------------------------------------------------------

  const route = async (req: IncomingMessage, res: ServerResponse) => {
    const method = req.method ?? "GET"
    const url = new URL(req.url ?? "/", origin)
    const path = url.pathname

    // Requests for another host name (DNS rebinding, or localhost vs 127.0.0.1) go to ours.
    if (req.headers.host !== publicUrl.host) {
      // (The URL may be a callback carrying a code: no Referer for it.)
      if (method === "GET" || method === "HEAD")
        return redirect(res, `${publicUrl.origin}${path}${url.search}`, { "referrer-policy": "no-referrer" })
      throw new HttpError(421, "Wrong host.")
    }

    if (method === "GET" || method === "HEAD") {
      if (path === "/") return home(req, res)
      if (path === "/partials/accounts") return partialAccounts(req, res)
      if (path === "/partials/fleet") return partialFleet(req, res)
      if (path === "/events") return events(req, res)
      if (path === "/healthz") return send(res, 200, "ok", "text/plain; charset=utf-8")
      const asset = ASSETS[path as keyof typeof ASSETS]
      if (asset) return send(res, 200, asset.body, asset.type, { "cache-control": "no-cache" })
      const setup = callbacks.get(path)
      if (setup) return callback(req, res, setup)
      throw new HttpError(404, "Not found.")
    }
    if (method !== "POST") throw new HttpError(405, "Method not allowed.")

    const form = await readForm(req)
    const session = checkPost(req, form)
    if (path === "/session/user") return switchUser(res, form, session)
    if (path === "/fleet/crash") return fleetAction(req, res, session, "crash")
    if (path === "/fleet/restart") return fleetAction(req, res, session, "restart")
    const linkMatch = /^\/link\/([a-z0-9_-]+)$/.exec(path)
    if (linkMatch) return link(res, linkMatch[1]!, session)
    const action = /^\/connections\/([^/]+)\/(call|refresh|unlink|revoke-at-provider|flaky)$/.exec(path)
    if (action) {
      const c = await ownConnection(decodeURIComponent(action[1]!), session)
      switch (action[2]) {
        case "call":
          return callApi(req, res, c, session)
        case "refresh":
          return refresh(req, res, c, session)
        case "unlink":
          return unlink(req, res, c, session)
        case "flaky":
          return flaky(req, res, c, session)
        default:
          return revokeAtProvider(req, res, c, session)
      }
    }
    throw new HttpError(404, "Not found.")
  }

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    route(req, res).catch((error: unknown) => {
      const status = error instanceof HttpError ? error.status : 500
      const message =
        error instanceof HttpError ? error.message : "Something went wrong. The server log has details."
      if (!(error instanceof HttpError))
        logFailure(`${req.method} ${new URL(req.url ?? "/", origin).pathname}`, error)
      if (res.headersSent) {
        res.end()
        return
      }
      if (wantsJson(req)) json(res, status, { ok: false, title: "Request refused", text: message })
      else html(res, status, Views.messagePage(status === 404 ? "Not found" : "Request refused", message))
    })
  }

  const close = () => {
    stopListening()
    stopFleet()
    clearInterval(sampler)
    void subscription.stop().catch(() => {})
    for (const set of streams.values()) for (const res of set) res.end()
    streams.clear()
  }

  return { handle, close, sessions }
}
