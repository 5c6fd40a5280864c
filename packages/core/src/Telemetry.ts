/**
 * OpenTelemetry for Latchkey, on effect's own observability modules (`effect/observability`): off by
 * default, on with one option, `createLatchkey({ telemetry: { otlp: { url }, prometheus: true } })`
 * (or `Telemetry.layer(options)` for Effect users).
 *
 * - Traces (OTLP/HTTP JSON to `<url>/v1/traces`): the spans of the engine (`ApiClient.fetch`,
 *   `Refresher.sweep`, `latchkey.refresh`, `AuthorizationFlow.*`, `Latchkey.unlink`, …); provider API
 *   requests made through the ApiClient carry the W3C `traceparent` of their span.
 * - Metrics (OTLP to `<url>/v1/metrics`, and/or Prometheus text): `latchkey_refreshes_total`
 *   {provider, outcome, reason}, `latchkey_refresh_duration_ms` {provider, source, outcome},
 *   `latchkey_refresh_commit_ms` {provider}, `latchkey_refresh_in_doubt_total` {provider, outcome},
 *   `latchkey_lifecycle_events_total` {type}, `latchkey_connections` {status},
 *   `latchkey_api_requests_total` {provider, status}, `latchkey_api_request_duration_ms` {provider},
 *   `latchkey_webhook_deliveries_total` {outcome, status}, `latchkey_lease_wait_ms` {provider, outcome},
 *   `latchkey_token_cache_lookups_total` {result}
 *   (hit or miss: the Promise API's token cache).
 *
 * No attribute carries a token, a code, a secret or an account's e-mail: ids, statuses, reasons,
 * counts and durations only (the secrets-hygiene suite checks what is exported).
 */
import { createServer, type Server } from "node:http"
import { Effect, Layer, Metric } from "effect"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as OtlpMetrics from "effect/observability/OtlpMetrics"
import * as OtlpSerialization from "effect/observability/OtlpSerialization"
import * as OtlpTracer from "effect/observability/OtlpTracer"
import * as PrometheusMetrics from "effect/observability/PrometheusMetrics"
import { ConnectionStore } from "./ConnectionStore.ts"
import { Events, type LatchkeyEvent } from "./Events.ts"
import { metrics, TokenCacheStats, TracePropagation, tagged } from "./internal/telemetry.ts"

export { metrics, TokenCacheStats, TracePropagation } from "./internal/telemetry.ts"

export interface TelemetryOptions {
  /** Export traces and metrics to an OpenTelemetry collector (OTLP over HTTP, JSON). */
  readonly otlp?:
    | {
        /** The collector's base URL, e.g. `http://127.0.0.1:4318` (`/v1/traces`, `/v1/metrics` are added). */
        readonly url: string
        /** `service.name` of the resource (default `"latchkey"`). */
        readonly serviceName?: string | undefined
        readonly serviceVersion?: string | undefined
        /** Extra request headers (e.g. a vendor's API key). */
        readonly headers?: Readonly<Record<string, string>> | undefined
        /** How often spans and metrics are sent (default 5 s); whatever is left is sent on close. */
        readonly exportIntervalMs?: number | undefined
      }
    | undefined
  /**
   * Prometheus text of the metrics: `true` for `latchkey.metrics()` only; `{ port }` also serves it
   * at `http://<host>:<port><path>` (default host 127.0.0.1, path `/metrics`).
   */
  readonly prometheus?:
    | boolean
    | {
        readonly port: number
        readonly host?: string | undefined
        readonly path?: string | undefined
        /** Called with the endpoint's URL once it listens (port 0 picks a free one). */
        readonly onListening?: ((url: string) => void) | undefined
      }
    | undefined
  /** How often the `latchkey_connections` gauge is counted from the store (default 60 s; 0: never). */
  readonly statusIntervalMs?: number | undefined
}

/** What the token-cache counter has been told so far, per cache (the counter takes increments). */
const told = new WeakMap<object, { hits: number; misses: number }>()

/**
 * Bring `latchkey_token_cache_lookups_total` {result: hit | miss} up to the cache's own counts (the
 * cache answers outside the Effect runtime, so it only counts; this records). The hit ratio is
 * hit / (hit + miss).
 */
export const syncTokenCache: Effect.Effect<void> = Effect.gen(function* () {
  const stats = yield* TokenCacheStats
  if (stats === undefined) return
  const { hits, misses } = stats()
  let synced = told.get(stats)
  if (synced === undefined) {
    synced = { hits: 0, misses: 0 }
    told.set(stats, synced)
  }
  const newHits = hits - synced.hits
  const newMisses = misses - synced.misses
  synced.hits = hits
  synced.misses = misses
  if (newHits > 0) yield* Metric.update(tagged(metrics.tokenCache, { result: "hit" }), newHits)
  if (newMisses > 0) {
    yield* Metric.update(tagged(metrics.tokenCache, { result: "miss" }), newMisses)
  }
})

/** The metrics of this process in the Prometheus text format. */
export const prometheusText: Effect.Effect<string> = Effect.andThen(
  syncTokenCache,
  PrometheusMetrics.format()
)

const record = (event: LatchkeyEvent): Effect.Effect<void> =>
  Effect.gen(function* () {
    const provider = event.providerId
    yield* Metric.update(tagged(metrics.events, { type: event.type }), 1)
    switch (event.type) {
      case "refreshed": {
        yield* Metric.update(tagged(metrics.refreshes, { provider, outcome: "success" }), 1)
        if (event.commitMs !== undefined) {
          yield* Metric.update(tagged(metrics.refreshCommit, { provider }), event.commitMs)
        }
        if (event.recovered === true) {
          yield* Metric.update(tagged(metrics.inDoubt, { provider, outcome: "recovered" }), 1)
        }
        return
      }
      case "refresh_failed":
        return yield* Metric.update(
          tagged(metrics.refreshes, { provider, outcome: "failed", reason: event.reason }),
          1
        )
      case "needs_reauth": {
        yield* Metric.update(
          tagged(metrics.refreshes, {
            provider,
            outcome: "needs_reauth",
            reason: event.reason
          }),
          1
        )
        if (event.reason === "refresh_interrupted") {
          yield* Metric.update(tagged(metrics.inDoubt, { provider, outcome: "interrupted" }), 1)
        }
        return
      }
      default:
        return
    }
  })

/** Count the store's connections by status (pages of `scan`), into the gauge. */
const countStatuses = Effect.gen(function* () {
  const store = yield* ConnectionStore
  if (store.scan === undefined) return
  const counts = new Map<string, number>([
    ["active", 0],
    ["needs_reauth", 0],
    ["revoked", 0]
  ])
  let after: string | undefined
  for (;;) {
    const page = yield* store.scan(after, 500)
    for (const r of page.records) counts.set(r.status, (counts.get(r.status) ?? 0) + 1)
    if (page.next === undefined || page.records.length === 0) break
    after = page.next
  }
  for (const [status, n] of counts) {
    yield* Metric.update(tagged(metrics.connections, { status }), n)
  }
})

const serve = (options: {
  port: number
  host?: string | undefined
  path?: string | undefined
  onListening?: ((url: string) => void) | undefined
}) =>
  Effect.gen(function* () {
    const context = yield* Effect.context<never>()
    const host = options.host ?? "127.0.0.1"
    const path = options.path ?? "/metrics"
    yield* Effect.acquireRelease(
      Effect.callback<Server>((resume) => {
        const server = createServer((req, res) => {
          if ((req.url ?? "").split("?")[0] !== path || req.method !== "GET") {
            res.statusCode = 404
            res.end()
            return
          }
          res.setHeader("content-type", "text/plain; version=0.0.4; charset=utf-8")
          res.end(PrometheusMetrics.formatUnsafe(context))
        })
        server.listen(options.port, host, () => {
          const address = server.address()
          const port = typeof address === "object" && address !== null ? address.port : options.port
          options.onListening?.(`http://${host}:${port}${path}`)
          resume(Effect.succeed(server))
        })
      }),
      (server) =>
        Effect.callback<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    )
  })

/**
 * Telemetry on: the OTLP tracer and metrics exporter (when `otlp`), trace-context propagation into
 * provider requests, the metrics derived from the events, the connection-status gauge and the
 * Prometheus endpoint (when `prometheus.port`).
 */
export const layer = (options: TelemetryOptions): Layer.Layer<never, never, Events | ConnectionStore> => {
  const otlp = options.otlp
  const exporters =
    otlp === undefined
      ? Layer.empty
      : (() => {
          const base = otlp.url.replace(/\/+$/, "")
          const resource = {
            serviceName: otlp.serviceName ?? "latchkey",
            serviceVersion: otlp.serviceVersion
          }
          const every = otlp.exportIntervalMs ?? 5_000
          return Layer.mergeAll(
            OtlpTracer.layer({
              url: `${base}/v1/traces`,
              resource,
              headers: otlp.headers,
              exportInterval: every
            }),
            OtlpMetrics.layer({
              url: `${base}/v1/metrics`,
              resource,
              headers: otlp.headers,
              exportInterval: every
            })
          ).pipe(Layer.provide(Layer.mergeAll(OtlpSerialization.layerJson, FetchHttpClient.layer)))
        })()
  const derived = Layer.effectDiscard(
    Effect.gen(function* () {
      const events = yield* Events
      const context = yield* Effect.context<never>()
      const stop = events.subscribe((event) => {
        Effect.runSyncWith(context)(record(event))
      })
      yield* Effect.addFinalizer(() => Effect.sync(stop))
      const every = options.statusIntervalMs ?? 60_000
      if (every > 0) {
        yield* Effect.forkScoped(
          Effect.forever(Effect.andThen(Effect.ignore(countStatuses), Effect.sleep(every)))
        )
      }
      if ((yield* TokenCacheStats) !== undefined) {
        yield* Effect.forkScoped(Effect.forever(Effect.andThen(syncTokenCache, Effect.sleep("1 second"))))
      }
      const prometheus = options.prometheus
      if (typeof prometheus === "object") yield* serve(prometheus)
    })
  )
  return Layer.mergeAll(exporters, derived, Layer.succeed(TracePropagation, true)) as Layer.Layer<
    never,
    never,
    Events | ConnectionStore
  >
}

/** The switch for Effect users who install their own tracer: propagate `traceparent` into provider requests. */
export const layerPropagation: Layer.Layer<never> = Layer.succeed(
  TracePropagation,
  true
) as Layer.Layer<never>
