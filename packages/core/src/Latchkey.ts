/**
 * The one entry point: `Latchkey.layer(options)` for Effect users, and `createLatchkey(options)`, a
 * plain Promise API over the same engine, for everyone else.
 */
import { Cause, Clock, Effect, Exit, Layer, ManagedRuntime, Redacted } from "effect"
import { ApiClient } from "./ApiClient.ts"
import {
  type ApiKeyInput,
  AuthorizationFlow,
  type AuthorizationFlowShape,
  type ClientCredentialsInput,
  type CompleteInput,
  type CompleteResult,
  type MintedInput,
  type MintedResult,
  type ProviderInitiatedInput,
  type StartInput,
  type StartResult
} from "./AuthorizationFlow.ts"
import { defaults, LatchkeyConfig, type LatchkeyConfigShape } from "./Config.ts"
import type { ConnectionSummary, RevokedReason } from "./Connection.ts"
import * as ConnectionModule from "./Connection.ts"
import { ConnectionStore, type ConnectionStoreShape } from "./ConnectionStore.ts"
import { Connections, keep, write } from "./Connections.ts"
import { ConnectionNotFound, InstanceClosed } from "./Errors.ts"
import {
  EventLog,
  type EventLogOptions,
  type SubscribeOptions,
  type Subscription,
  subscribeWith
} from "./EventLog.ts"
import { Events, type LatchkeyEvent } from "./Events.ts"
import { refreshSpan } from "./internal/telemetry.ts"
import { type Lookup, TokenCache, type TokenCacheOptions } from "./internal/tokenCache.ts"
import type { EventPage } from "./LifecycleEvents.ts"
import * as OAuth from "./OAuth.ts"
import type { Provider } from "./Provider.ts"
import * as ProvidersModule from "./Providers.ts"
import { Providers } from "./Providers.ts"
import { Refresher, type RefresherOptions, type SweepReport } from "./Refresher.ts"
import * as TelemetryModule from "./Telemetry.ts"
import { TokenManager } from "./TokenManager.ts"
import * as TokenSet from "./TokenSet.ts"
import * as VaultModule from "./Vault.ts"
import { Vault, type VaultOptions } from "./Vault.ts"
import * as WebhooksModule from "./Webhooks.ts"

export interface LatchkeyOptions {
  readonly providers: ReadonlyArray<Provider>
  /** The store: a service, or a Layer providing one. Default: in memory (one process, not durable). */
  readonly store?: ConnectionStoreShape | Layer.Layer<ConnectionStore, unknown> | undefined
  /** Vault keys; tokens are sealed at rest whenever a key is given. */
  readonly vault?: VaultOptions | undefined
  /** Engine settings (see `LatchkeyConfig` for defaults). */
  readonly config?: Partial<LatchkeyConfigShape> | undefined
  readonly refresher?: (RefresherOptions & { readonly autoStart?: boolean | undefined }) | undefined
  /** The durable lifecycle event log: retention (default: kept until you prune). */
  readonly events?: EventLogOptions | undefined
  /**
   * Post the lifecycle events to your app (signed, retried, one worker across the fleet): the worker
   * starts with the instance and stops with `close()`. Off by default.
   */
  readonly webhooks?: WebhooksModule.WebhookOptions | undefined
  /**
   * OpenTelemetry traces and metrics (effect's OTLP exporter, Prometheus text): off by default, e.g.
   * `{ otlp: { url: "http://127.0.0.1:4318" }, prometheus: true }`. See docs/observability.md.
   */
  readonly telemetry?: TelemetryModule.TelemetryOptions | undefined
  /**
   * This instance's wall clock (epoch ms); default the host's. Latchkey never trusts it across
   * processes (leases are judged by the store's clock): it exists to test exactly that.
   */
  readonly clock?: (() => number) | undefined
  /**
   * The Promise API's cache of valid access tokens (`accessToken` answers from it without entering
   * the Effect runtime; concurrent callers of one id share one lookup). It serves a token only while
   * it is fresh by its expiry minus `config.skewMs` on this instance's clock, and drops it on every
   * write the store announces (`ConnectionStore.watch`: writes through this store object at once,
   * other processes' through PostgreSQL LISTEN/NOTIFY, Redis pub/sub or SQLite's data_version), on a
   * 401 seen by `fetch`, and everything when the store's channel (re)connects. While the channel is
   * not live (a store without `watch`, or its channel down) an entry is trusted only `maxStaleMs`
   * (default 1 s). It subscribes to the store on the first `accessToken` call: an instance that never makes
   * one holds no LISTEN connection. `false` turns it off. Default on.
   */
  readonly tokenCache?: false | TokenCacheOptions | undefined
}

/** A Clock whose wall time is `now` and whose sleeps and monotonic time are the host's. */
const clockOf = (now: () => number): Clock.Clock => {
  const host = Clock.Clock.defaultValue()
  return {
    currentTimeMillisUnsafe: now,
    currentTimeMillis: Effect.sync(now),
    currentTimeNanosUnsafe: () => BigInt(Math.floor(now())) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(Math.floor(now())) * 1_000_000n),
    monotonicTimeNanosUnsafe: () => host.monotonicTimeNanosUnsafe(),
    monotonicTimeNanos: host.monotonicTimeNanos,
    sleep: (duration) => host.sleep(duration)
  }
}

export type LatchkeyServices =
  | Providers
  | ConnectionStore
  | Connections
  | Vault
  | Events
  | LatchkeyConfig
  | TokenManager
  | AuthorizationFlow
  | ApiClient
  | Refresher
  | EventLog

const storeLayer = (store: LatchkeyOptions["store"]): Layer.Layer<ConnectionStore, unknown> =>
  store === undefined
    ? ConnectionStore.layerMemory
    : Layer.isLayer(store)
      ? (store as Layer.Layer<ConnectionStore, unknown>)
      : Layer.succeed(ConnectionStore, store as ConnectionStoreShape)

/**
 * Every Latchkey service, ready to provide. Building it fails with `VaultError` when a vault key is
 * unset or invalid (or missing in production without `vault.plaintext`).
 */
export const layer = (options: LatchkeyOptions): Layer.Layer<LatchkeyServices, unknown> =>
  build(options, Vault.layer(options.vault))

const build = (
  options: LatchkeyOptions,
  vaultLayer: Layer.Layer<Vault, unknown>,
  extra: Layer.Layer<never> = Layer.empty
): Layer.Layer<LatchkeyServices, unknown> => {
  const clock = options.clock
  const clockLayer = clock === undefined ? Layer.empty : Layer.succeed(Clock.Clock, clockOf(clock))
  const base = Layer.mergeAll(
    extra,
    clockLayer,
    Providers.layer(options.providers),
    storeLayer(options.store),
    vaultLayer,
    Events.layer,
    Layer.succeed(LatchkeyConfig, { ...defaults(), ...options.config })
  )
  const observed =
    options.telemetry === undefined
      ? base
      : TelemetryModule.layer(options.telemetry).pipe(Layer.provideMerge(base))
  const writes = Connections.layer.pipe(Layer.provideMerge(observed))
  const tokens = TokenManager.layer.pipe(Layer.provideMerge(writes))
  const services = Layer.mergeAll(
    AuthorizationFlow.layer,
    ApiClient.layer,
    Refresher.layer(options.refresher),
    EventLog.layer(options.events)
  ).pipe(Layer.provideMerge(tokens))
  const hooks = options.webhooks
  const withHooks =
    hooks === undefined
      ? services
      : Layer.effectDiscard(Effect.asVoid(WebhooksModule.Webhooks.use(() => Effect.void))).pipe(
          Layer.provide(WebhooksModule.Webhooks.layer(hooks)),
          Layer.provideMerge(services)
        )
  if (options.refresher?.autoStart !== true) return withHooks
  return Layer.effectDiscard(Refresher.use((r) => r.start)).pipe(Layer.provideMerge(withHooks))
}

/** The Promise API. Every method rejects with the same typed errors as the Effect API. */
export interface LatchkeyClient {
  readonly providers: ReadonlyArray<Provider>
  startAuthorization(input: StartInput): Promise<StartResult>
  completeAuthorization(input: CompleteInput): Promise<CompleteResult>
  completeProviderInitiated(input: ProviderInitiatedInput): Promise<CompleteResult>
  linkApiKey(input: ApiKeyInput): Promise<CompleteResult>
  /** Link the client's own token (client-credentials grant) for a provider with `clientCredentials`. */
  linkClientCredentials(input: ClientCredentialsInput): Promise<CompleteResult>
  /** Link an account with a token minted from a parent connection (a provider with `mint`). */
  linkMinted(input: MintedInput): Promise<MintedResult>
  /** A valid access token, as a plain string. */
  accessToken(connectionId: string): Promise<string>
  /** `fetch` through the connection: auth headers added, one refresh-and-retry on 401, 429 waited out. */
  fetch(connectionId: string, input: string | URL, init?: RequestInit): Promise<Response>
  connection(connectionId: string): Promise<ConnectionSummary>
  connections(ownerId: string): Promise<ReadonlyArray<ConnectionSummary>>
  /** Refresh now (shares an in-flight refresh); returns the updated summary. */
  refresh(connectionId: string): Promise<ConnectionSummary>
  /** Revoke at the provider where it can (best effort), then remove the connection. */
  unlink(connectionId: string): Promise<{ readonly revokedAtProvider: boolean }>
  /** Listen to this process's events; returns a function that stops listening. */
  on(listener: (event: LatchkeyEvent) => void): () => void
  /** The metrics of this process in the Prometheus text format (with `telemetry.prometheus`). */
  metrics(): Promise<string>
  /**
   * The durable lifecycle event log in the store, the same for every instance: `subscribe` calls
   * `onEvent` at least once per event, in order, from the cursor `after`; `read` reads one page.
   */
  readonly events: {
    subscribe(options: SubscribeOptions): Subscription
    read(after: number, limit: number): Promise<EventPage>
  }
  readonly refresher: {
    start(): Promise<void>
    stop(): Promise<void>
    sweep(): Promise<SweepReport>
    isRunning(): Promise<boolean>
  }
  /** Run an Effect that needs Latchkey services on this instance's runtime. */
  run<A, E>(effect: Effect.Effect<A, E, LatchkeyServices>): Promise<A>
  /**
   * Shut down gracefully: the Refresher takes no new work, refreshes in flight finish their write
   * and release their leases, the other calls under way (a store read, an API call, a webhook being
   * handled) finish too, all within `config.drainTimeoutMs` from the call to `close()`; then
   * everything is released. New refreshes meanwhile fail with `RefreshError("draining")`; once it
   * has drained, every call (and one still running when the bound is reached and the runtime is
   * disposed) fails with `InstanceClosed`.
   * On SIGTERM: `process.once("SIGTERM", () => latchkey.close().finally(() => process.exit(0)))`.
   */
  close(): Promise<void>
}

/** Unlink: revoke at the provider (best effort), then remove. Exposed for Effect users. */
export const unlink = Effect.fn("Latchkey.unlink")(function* (connectionId: string) {
  const writes = yield* Connections
  const tokens = yield* TokenManager
  const providers = yield* Providers
  const config = yield* LatchkeyConfig
  const connection = yield* tokens.get(connectionId)
  const provider = providers.find(connection.providerId)
  let revokedAtProvider = false
  if (provider !== undefined && connection.kind === "oauth" && connection.status !== "revoked") {
    const options = { timeoutMs: config.requestTimeoutMs, fetch: config.fetch }
    revokedAtProvider = yield* OAuth.revokeTokens(provider, options, connection.tokens).pipe(
      Effect.orElseSucceed(() => false)
    )
  }
  yield* writes.remove(connectionId, [
    {
      type: "unlinked",
      at: yield* Clock.currentTimeMillis,
      connectionId,
      ownerId: connection.ownerId,
      providerId: connection.providerId,
      revokedAtProvider
    }
  ])
  return { revokedAtProvider }
})

/** The summaries of an owner's connections: the Effect form of `latchkey.connections(ownerId)`. */
export const connections = Effect.fn("Latchkey.connections")(function* (ownerId: string) {
  const store = yield* ConnectionStore
  return (yield* store.listByOwner(ownerId)).map(ConnectionModule.summaryOfRecord)
})

/** A connection's summary (no token value): the Effect form of `latchkey.connection(id)`. */
export const connection = Effect.fn("Latchkey.connection")(function* (connectionId: string) {
  const store = yield* ConnectionStore
  const record = yield* store.get(connectionId)
  if (record === undefined) {
    return yield* new ConnectionNotFound({ connectionId, message: `No connection ${connectionId}` })
  }
  return ConnectionModule.summaryOfRecord(record)
})

/**
 * Mark a connection revoked (e.g. on a provider's uninstall webhook): compare-and-set through
 * `Connections.modify`, retried on conflicts as its schedule allows; fails with the `StoreError`
 * when the write cannot be made (never gives up silently). `reason` (the summary's `health.reason`)
 * defaults to `revoked_at_provider`; `revoked_by_user` records that the app's user withdrew access.
 */
export const markRevoked = Effect.fn("Latchkey.markRevoked")(function* (
  connectionId: string,
  options?: { readonly reason?: RevokedReason | undefined }
) {
  const connections = yield* Connections
  const reason = options?.reason ?? "revoked_at_provider"
  yield* connections.modify(connectionId, (c, now) =>
    c.status === "revoked"
      ? keep
      : write({ ...c, status: "revoked", statusReason: { reason, at: now } }, [
          { type: "revoked", at: now, connectionId, ownerId: c.ownerId, providerId: c.providerId, reason }
        ])
  )
})

/**
 * The Promise API. Throws at once, before anything runs: `ProviderDefinitionError` for providers that
 * cannot be registered together (same id, a shared redirect URI without `requireIss`), `VaultError`
 * for a vault key that is unset or invalid, or no key in production without `vault.plaintext`.
 */
export const createLatchkey = (options: LatchkeyOptions): LatchkeyClient => {
  ProvidersModule.make(options.providers)
  const vault = VaultModule.make(options.vault)
  // The token cache's counters for telemetry (the cache is made below, before the runtime is built).
  const cacheStats = Layer.succeed(TelemetryModule.TokenCacheStats, () => ({
    hits: cache?.hits ?? 0,
    misses: cache?.misses ?? 0
  })) as Layer.Layer<never>
  const runtime = ManagedRuntime.make(build(options, Layer.succeed(Vault, vault), cacheStats))
  let closing: Promise<void> | undefined
  /** Set once `close()` has drained: from then on the runtime is being disposed, or is. */
  let disposing = false
  const closed = () =>
    new InstanceClosed({
      message: "This Latchkey instance was closed (close()); make the call on another instance"
    })
  /**
   * The calls under way on the runtime (the Promise API's, and `run`'s): `close()` lets them finish
   * (a store read, a webhook being handled, an API call), within `config.drainTimeoutMs`, before it
   * disposes the runtime, so that a rolling restart does not fail the app's calls that were running.
   */
  const running = new Set<Promise<unknown>>()
  const run = async <A, E>(effect: Effect.Effect<A, E, LatchkeyServices>): Promise<A> => {
    // A disposed runtime would answer with a defect ("ManagedRuntime disposed"): say why instead.
    if (disposing) throw closed()
    const pending = runtime.runPromiseExit(effect)
    running.add(pending)
    let exit: Awaited<typeof pending>
    try {
      exit = await pending
    } finally {
      running.delete(pending)
    }
    if (Exit.isSuccess(exit)) return exit.value
    // A call still running when the runtime was disposed is interrupted: say why, with a typed error.
    if (disposing && Cause.hasInterruptsOnly(exit.cause)) throw closed()
    throw Cause.squash(exit.cause)
  }

  const drainTimeoutMs = options.config?.drainTimeoutMs ?? defaults().drainTimeoutMs
  /**
   * Wait for the calls under way now to settle, until `deadline` at most. Calls started after this
   * point are not waited for (an app still calling during its shutdown cannot hold it open); they
   * fail with `InstanceClosed` when the runtime is disposed.
   */
  const settleRunning = async (deadline: number): Promise<void> => {
    const pending = [...running]
    const left = deadline - performance.now()
    if (pending.length === 0 || left <= 0) return
    let timer: ReturnType<typeof setTimeout> | undefined
    const timedOut = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, left)
    })
    await Promise.race([Promise.allSettled(pending), timedOut])
    clearTimeout(timer)
  }

  // ---- the token cache of the Promise API (see `LatchkeyOptions.tokenCache`) ----
  const now = options.clock ?? Date.now
  const skewMs = options.config?.skewMs ?? defaults().skewMs
  const cache = options.tokenCache === false ? undefined : new TokenCache(now, options.tokenCache ?? {})
  let unwatch: (() => void) | undefined
  /** Until the store is subscribed to, nothing is cached (a change could go unseen). */
  let cacheReady = false
  /**
   * The store is subscribed to on the first `accessToken` call, not before: an instance that never
   * serves one (a Refresher worker, an app on the Effect API) holds no LISTEN connection and hears
   * no other instance's writes. Until then the cache is empty, so there is nothing to keep true.
   * (`subscribing` rejects only if the runtime cannot be built; callers then read uncached.)
   */
  let subscribing: Promise<void> | undefined
  const subscribe = (tokens: TokenCache) => {
    subscribing = run(ConnectionStore.use((s) => Effect.succeed(s))).then((store) => {
      if (closing !== undefined) return
      if (store.watch !== undefined) unwatch = store.watch(tokens.onChange)
      cacheReady = true
    })
    subscribing.catch(() => {})
  }
  const expiredNeed = (c: ConnectionModule.Connection, at: number) => !TokenSet.isFresh(c.tokens, at, skewMs)
  /** One lookup through the engine: the token, and until when it may be cached. */
  const lookup = (id: string): Promise<Lookup> =>
    run(
      TokenManager.use((t) =>
        Effect.flatMap(t.get(id), (c): Effect.Effect<Lookup, unknown> => {
          const fresh = (conn: ConnectionModule.Connection): Lookup => ({
            token: Redacted.value(conn.tokens.accessToken),
            freshUntil:
              conn.tokens.expiresAt === undefined
                ? Number.POSITIVE_INFINITY
                : conn.tokens.expiresAt - TokenSet.effectiveSkew(conn.tokens, skewMs)
          })
          if (c.status !== "active") {
            return Effect.map(t.accessToken(id), (token) => ({
              token: Redacted.value(token),
              freshUntil: undefined
            }))
          }
          return Effect.flatMap(Clock.currentTimeMillis, (at) =>
            c.kind === "api_key" || !expiredNeed(c, at)
              ? Effect.succeed(fresh(c))
              : Effect.map(t.refreshIf(id, expiredNeed), fresh)
          )
        })
      )
    )
  const accessToken = (id: string): Promise<string> => {
    if (cache === undefined)
      return run(TokenManager.use((t) => Effect.map(t.accessToken(id), Redacted.value)))
    if (cacheReady) return cache.accessToken(id, () => lookup(id))
    if (subscribing === undefined) subscribe(cache)
    // The first callers wait for the subscription (no store round trip: `watch` registers at once),
    // then share one lookup like every later caller.
    return (subscribing as Promise<void>).then(
      () => (cacheReady ? cache.accessToken(id, () => lookup(id)) : lookup(id).then((found) => found.token)),
      () => lookup(id).then((found) => found.token)
    )
  }

  const flow = <A>(f: (flow: AuthorizationFlowShape) => Effect.Effect<A, unknown>) =>
    run(AuthorizationFlow.use(f))
  let events: { subscribe: (l: (e: LatchkeyEvent) => void) => () => void } | undefined
  const eventsReady = run(Events.useSync((e) => e)).then((e) => {
    events = e
    return e
  })
  eventsReady.catch(() => {})
  const subscriptions = new Set<Subscription>()

  return {
    providers: options.providers,
    startAuthorization: (input) => flow((f) => f.start(input)),
    completeAuthorization: (input) => flow((f) => f.complete(input)),
    completeProviderInitiated: (input) => flow((f) => f.completeProviderInitiated(input)),
    linkApiKey: (input) => flow((f) => f.linkApiKey(input)),
    linkClientCredentials: (input) => flow((f) => f.linkClientCredentials(input)),
    linkMinted: (input) => flow((f) => f.linkMinted(input)),
    accessToken,
    fetch: (id, input, init) =>
      run(ApiClient.use((a) => a.fetch(id, input, init))).then((response) => {
        // The API refused the token even after the client's refresh-and-retry: never serve it again from the cache.
        if (response.status === 401) cache?.invalidate(id)
        return response
      }),
    connection: (id) => run(TokenManager.use((t) => Effect.map(t.get(id), ConnectionModule.summary))),
    connections: (ownerId) =>
      run(
        ConnectionStore.use((s) =>
          Effect.map(s.listByOwner(ownerId), (rows) => rows.map(ConnectionModule.summaryOfRecord))
        )
      ),
    refresh: (id) =>
      run(
        refreshSpan(
          "api",
          id,
          undefined,
          TokenManager.use((t) => Effect.map(t.refreshNow(id), ConnectionModule.summary)),
          (c) => c.providerId
        )
      ),
    metrics: () => run(TelemetryModule.prometheusText),
    unlink: (id) => run(unlink(id)),
    on: (listener) => {
      if (events) return events.subscribe(listener)
      let stop: (() => void) | undefined
      let stopped = false
      void eventsReady.then((e) => {
        if (!stopped) stop = e.subscribe(listener)
      })
      return () => {
        stopped = true
        stop?.()
      }
    },
    events: {
      subscribe: (subscribeOptions) => {
        const subscription = subscribeWith((effect) => runtime.runFork(effect), subscribeOptions)
        const handle: Subscription = {
          cursor: subscription.cursor,
          stop: () => {
            subscriptions.delete(handle)
            return subscription.stop()
          }
        }
        subscriptions.add(handle)
        return handle
      },
      read: (after, limit) => run(EventLog.use((log) => log.read(after, limit)))
    },
    refresher: {
      start: () => run(Refresher.use((r) => r.start)),
      stop: () => run(Refresher.use((r) => r.stop)),
      sweep: () => run(Refresher.use((r) => r.sweep)),
      isRunning: () => run(Refresher.use((r) => r.isRunning))
    },
    run,
    close: () => {
      // Drain before disposing: disposal interrupts the callers' fibers, so let the refreshes in
      // flight write their tokens (and their callers get them) first.
      unwatch?.()
      unwatch = undefined
      cache?.flush()
      if (closing === undefined) {
        const deadline = performance.now() + drainTimeoutMs
        closing = run(
          Effect.gen(function* () {
            yield* Effect.promise(() => Promise.all([...subscriptions].map((s) => s.stop())))
            yield* Refresher.use((r) => r.stop)
            yield* TokenManager.use((t) => t.drain)
          })
        )
          .catch(() => undefined)
          .then(() => settleRunning(deadline))
          .then(() => {
            disposing = true
            return runtime.dispose()
          })
      }
      return closing
    }
  }
}
