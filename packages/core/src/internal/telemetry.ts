/**
 * What the engine's modules record for OpenTelemetry (`Telemetry.ts` exports it): the metrics, the
 * switch for W3C trace-context propagation into provider requests (off unless telemetry is on),
 * and the refresh span of the call sites (Refresher, `latchkey.refresh`). Attributes are ids,
 * statuses, counts and durations only: never a token, a code, a secret or an account's e-mail.
 */
import { Cause, Context, Effect, Exit, Metric, Option, Tracer } from "effect"

/**
 * The Promise API's token-cache counters (`createLatchkey` provides them; absent for Effect users,
 * whose `TokenManager.accessToken` is not cached).
 */
export const TokenCacheStats = Context.Reference<
  (() => { readonly hits: number; readonly misses: number }) | undefined
>("@latchkey/core/TokenCacheStats", { defaultValue: () => undefined })

/** True when telemetry is on: provider requests then carry `traceparent`. */
export const TracePropagation = Context.Reference<boolean>("@latchkey/core/TracePropagation", {
  defaultValue: () => false
})

/**
 * Whether a tracing backend is installed. Under Effect's default tracer (`Tracer.nativeTracer`) a span
 * is recorded nowhere and nothing can export it, yet entering one changes the fiber's context twice
 * and allocates the span: on the Refresher's path the two spans of a refresh were about 12 % of its
 * CPU. The engine's per-refresh spans are opened only when this is true (the telemetry option's OTLP
 * tracer, or any tracer an Effect user provides); comparing against `nativeTracer` is Effect's
 * documented way to tell.
 */
export const tracing: Effect.Effect<boolean> = Effect.map(
  Effect.service(Tracer.Tracer),
  (tracer) => tracer !== Tracer.nativeTracer
)

/**
 * A per-refresh span, opened by callers that found `tracing` true. No stack trace: it would be an
 * Error per refresh, for a span whose attributes say what it is.
 */
export const refreshSpanOf = (name: string, attributes: Record<string, unknown>) =>
  Effect.withSpan(name, { attributes }, { captureStackTrace: false })

const latencyBoundaries = Metric.exponentialBoundaries({ start: 5, factor: 2, count: 14 })

/**
 * Metrics with attributes, built once per attribute set (`tagged`): `Metric.withAttributes` makes a
 * new metric and a new attribute context on every update, and the registry then computes the
 * series key again (a sort and a JSON encoding). Per refresh that was about 90 µs of the engine's
 * CPU. A metric built with its attributes keeps its series key; the series are the same.
 */
type Attributes = Readonly<Record<string, string>>
const families = new WeakMap<object, { make: (a: Attributes) => unknown; built: Map<string, unknown> }>()
/** At most this many attribute sets per metric are built; past that, `withAttributes` (unbounded values). */
const MAX_BUILT = 1_000

const define = <M extends object>(make: (attributes: Attributes | undefined) => M): M => {
  const base = make(undefined)
  families.set(base, { make, built: new Map() })
  return base
}

/** `metric` with these attributes: the same series as `Metric.withAttributes(metric, attributes)`. */
export const tagged = <M extends Metric.Metric<any, any>>(metric: M, attributes: Attributes): M => {
  const family = families.get(metric)
  if (family === undefined) return Metric.withAttributes(metric, attributes) as unknown as M
  let key = ""
  for (const name in attributes) key += `${name}\u0001${attributes[name]}\u0002`
  let built = family.built.get(key) as M | undefined
  if (built === undefined) {
    if (family.built.size >= MAX_BUILT) return Metric.withAttributes(metric, attributes) as unknown as M
    built = family.make(attributes) as M
    family.built.set(key, built)
  }
  return built
}

export const metrics = {
  refreshes: define((attributes) =>
    Metric.counter("latchkey_refreshes_total", {
      description: "Refreshes by provider and outcome (success, failed, needs_reauth)",
      incremental: true,
      attributes
    })
  ),
  refreshDuration: define((attributes) =>
    Metric.histogram("latchkey_refresh_duration_ms", {
      description: "Refresh latency (ms), by provider and source (refresher, api)",
      boundaries: latencyBoundaries,
      attributes
    })
  ),
  refreshCommit: define((attributes) =>
    Metric.histogram("latchkey_refresh_commit_ms", {
      description: "From the provider's refresh answer to the durable write (ms): the in-doubt window",
      boundaries: latencyBoundaries,
      attributes
    })
  ),
  inDoubt: define((attributes) =>
    Metric.counter("latchkey_refresh_in_doubt_total", {
      description: "Refreshes that were in doubt (a lost answer, a holder that died), by outcome",
      incremental: true,
      attributes
    })
  ),
  events: define((attributes) =>
    Metric.counter("latchkey_lifecycle_events_total", {
      description: "Lifecycle events published by this instance, by type",
      incremental: true,
      attributes
    })
  ),
  connections: define((attributes) =>
    Metric.gauge("latchkey_connections", {
      description: "Connections in the store, by status",
      attributes
    })
  ),
  apiRequests: define((attributes) =>
    Metric.counter("latchkey_api_requests_total", {
      description: "API requests through the ApiClient, by provider and HTTP status (or error)",
      incremental: true,
      attributes
    })
  ),
  webhookDeliveries: define((attributes) =>
    Metric.counter("latchkey_webhook_deliveries_total", {
      description: "Webhook delivery attempts, by outcome (delivered, retry, dead_letter) and event type",
      incremental: true,
      attributes
    })
  ),
  leaseWait: define((attributes) =>
    Metric.histogram("latchkey_lease_wait_ms", {
      description:
        "From the start of a refresh to winning the store's lease, or to finding another process's result (ms), by provider and outcome",
      boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 16 }),
      attributes
    })
  ),
  tokenCache: define((attributes) =>
    Metric.counter("latchkey_token_cache_lookups_total", {
      description:
        "Promise API token-cache lookups, by result (hit: answered from the cache; miss: through the engine)",
      incremental: true,
      attributes
    })
  ),
  apiDuration: define((attributes) =>
    Metric.histogram("latchkey_api_request_duration_ms", {
      description: "API request latency through the ApiClient (ms), by provider",
      boundaries: latencyBoundaries,
      attributes
    })
  )
}

/** The W3C `traceparent` of the current span, when propagation is on and there is a span. */
export const traceparent: Effect.Effect<string | undefined> = Effect.gen(function* () {
  if (!(yield* TracePropagation)) return undefined
  const span = yield* Effect.option(Effect.currentSpan)
  if (span._tag === "None") return undefined
  return `00-${span.value.traceId}-${span.value.spanId}-${span.value.sampled ? "01" : "00"}`
})

/**
 * A refresh made by a call site (not the engine's own span, which needs TokenManager): span
 * `latchkey.refresh` with provider, source and outcome, and the latency histogram.
 */
export const refreshSpan = <A, E, R>(
  source: "refresher" | "api",
  connectionId: string,
  providerId: string | undefined,
  effect: Effect.Effect<A, E, R>,
  providerOf?: (a: A) => string
): Effect.Effect<A, E, R> =>
  Effect.flatMap(tracing, (traced) =>
    Effect.clockWith((clock) => {
      const started = clock.currentTimeMillisUnsafe()
      const measured = Effect.onExit(effect, (exit) => {
        const elapsed = clock.currentTimeMillisUnsafe() - started
        const provider =
          providerId ?? (Exit.isSuccess(exit) && providerOf ? providerOf(exit.value) : "unknown")
        const outcome = Exit.isSuccess(exit) ? "success" : "failure"
        const recorded = Metric.update(
          tagged(metrics.refreshDuration, { provider, source, outcome }),
          elapsed
        )
        if (!traced) return recorded
        const reason = Exit.isFailure(exit) ? failureReason(exit.cause) : undefined
        return Effect.andThen(
          Effect.annotateCurrentSpan({
            "latchkey.provider": provider,
            "latchkey.refresh.source": source,
            "latchkey.refresh.outcome": outcome,
            ...(reason !== undefined ? { "latchkey.refresh.reason": reason } : {})
          }),
          recorded
        )
      })
      return traced
        ? measured.pipe(refreshSpanOf("latchkey.refresh", { "latchkey.connection_id": connectionId }))
        : measured
    })
  )

/** The machine-readable reason of a Latchkey error (its `_tag` and `reason`), never its message. */
const failureReason = (cause: Cause.Cause<unknown>): string | undefined => {
  const found = Cause.findErrorOption(cause)
  if (Option.isNone(found)) return undefined
  const error = found.value as { _tag?: unknown; reason?: unknown } | null
  if (error === null || typeof error !== "object") return undefined
  const tag = typeof error._tag === "string" ? error._tag : "Error"
  return typeof error.reason === "string" ? `${tag}:${error.reason}` : tag
}
