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
import { ConnectionNotFound } from "./Errors.ts"
import { Events, type LatchkeyEvent } from "./Events.ts"
import * as OAuth from "./OAuth.ts"
import type { Provider } from "./Provider.ts"
import * as ProvidersModule from "./Providers.ts"
import { Providers } from "./Providers.ts"
import { Refresher, type RefresherOptions, type SweepReport } from "./Refresher.ts"
import { TokenManager } from "./TokenManager.ts"
import * as VaultModule from "./Vault.ts"
import { Vault, type VaultOptions } from "./Vault.ts"

export interface LatchkeyOptions {
  readonly providers: ReadonlyArray<Provider>
  /** The store: a service, or a Layer providing one. Default: in memory (one process, not durable). */
  readonly store?: ConnectionStoreShape | Layer.Layer<ConnectionStore, unknown> | undefined
  /** Vault keys; tokens are sealed at rest whenever a key is given. */
  readonly vault?: VaultOptions | undefined
  /** Engine settings (see `LatchkeyConfig` for defaults). */
  readonly config?: Partial<LatchkeyConfigShape> | undefined
  readonly refresher?: (RefresherOptions & { readonly autoStart?: boolean | undefined }) | undefined
  /**
   * This instance's wall clock (epoch ms); default the host's. Latchkey never trusts it across
   * processes (leases are judged by the store's clock): it exists to test exactly that.
   */
  readonly clock?: (() => number) | undefined
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
  vaultLayer: Layer.Layer<Vault, unknown>
): Layer.Layer<LatchkeyServices, unknown> => {
  const clock = options.clock
  const clockLayer = clock === undefined ? Layer.empty : Layer.succeed(Clock.Clock, clockOf(clock))
  const base = Layer.mergeAll(
    clockLayer,
    Providers.layer(options.providers),
    storeLayer(options.store),
    vaultLayer,
    Events.layer,
    Layer.succeed(LatchkeyConfig, { ...defaults(), ...options.config })
  )
  const writes = Connections.layer.pipe(Layer.provideMerge(base))
  const tokens = TokenManager.layer.pipe(Layer.provideMerge(writes))
  const services = Layer.mergeAll(
    AuthorizationFlow.layer,
    ApiClient.layer,
    Refresher.layer(options.refresher)
  ).pipe(Layer.provideMerge(tokens))
  if (options.refresher?.autoStart !== true) return services
  return Layer.effectDiscard(Refresher.use((r) => r.start)).pipe(Layer.provideMerge(services))
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
  /** Listen to events; returns a function that stops listening. */
  on(listener: (event: LatchkeyEvent) => void): () => void
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
   * (at most `config.drainTimeoutMs`) and release their leases, then everything is released. New
   * refreshes meanwhile fail with `RefreshError("draining")`. On SIGTERM:
   * `process.once("SIGTERM", () => latchkey.close().finally(() => process.exit(0)))`.
   */
  close(): Promise<void>
}

/** Unlink: revoke at the provider (best effort), then remove. Exposed for Effect users. */
export const unlink = Effect.fn("Latchkey.unlink")(function* (connectionId: string) {
  const store = yield* ConnectionStore
  const tokens = yield* TokenManager
  const providers = yield* Providers
  const events = yield* Events
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
  yield* store.remove(connectionId)
  yield* events.publish({
    type: "unlinked",
    at: yield* Clock.currentTimeMillis,
    connectionId,
    ownerId: connection.ownerId,
    providerId: connection.providerId,
    revokedAtProvider
  })
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
  const runtime = ManagedRuntime.make(build(options, Layer.succeed(Vault, vault)))
  const run = async <A, E>(effect: Effect.Effect<A, E, LatchkeyServices>): Promise<A> => {
    const exit = await runtime.runPromiseExit(effect)
    if (Exit.isSuccess(exit)) return exit.value
    throw Cause.squash(exit.cause)
  }
  let closing: Promise<void> | undefined
  const flow = <A>(f: (flow: AuthorizationFlowShape) => Effect.Effect<A, unknown>) =>
    run(AuthorizationFlow.use(f))
  let events: { subscribe: (l: (e: LatchkeyEvent) => void) => () => void } | undefined
  const eventsReady = run(Events.useSync((e) => e)).then((e) => {
    events = e
    return e
  })
  eventsReady.catch(() => {})

  return {
    providers: options.providers,
    startAuthorization: (input) => flow((f) => f.start(input)),
    completeAuthorization: (input) => flow((f) => f.complete(input)),
    completeProviderInitiated: (input) => flow((f) => f.completeProviderInitiated(input)),
    linkApiKey: (input) => flow((f) => f.linkApiKey(input)),
    linkClientCredentials: (input) => flow((f) => f.linkClientCredentials(input)),
    linkMinted: (input) => flow((f) => f.linkMinted(input)),
    accessToken: (id) => run(TokenManager.use((t) => Effect.map(t.accessToken(id), Redacted.value))),
    fetch: (id, input, init) => run(ApiClient.use((a) => a.fetch(id, input, init))),
    connection: (id) => run(TokenManager.use((t) => Effect.map(t.get(id), ConnectionModule.summary))),
    connections: (ownerId) =>
      run(
        ConnectionStore.use((s) =>
          Effect.map(s.listByOwner(ownerId), (rows) => rows.map(ConnectionModule.summaryOfRecord))
        )
      ),
    refresh: (id) => run(TokenManager.use((t) => Effect.map(t.refreshNow(id), ConnectionModule.summary))),
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
      closing ??= run(
        Effect.gen(function* () {
          yield* Refresher.use((r) => r.stop)
          yield* TokenManager.use((t) => t.drain)
        })
      )
        .catch(() => undefined)
        .then(() => runtime.dispose())
      return closing
    }
  }
}
