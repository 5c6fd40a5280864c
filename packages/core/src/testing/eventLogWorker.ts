/**
 * A worker process of the event log's cross-process check (`storeEvents.ts`). `LK_EVENT_WORKER` is
 * JSON: `{ role, opener, storeSettings, connectionId? }`.
 * - `subscriber`: opens its own Latchkey instance on the store and prints every event of
 *   `latchkey.events.subscribe` as a JSON line (`{"event": …}`), after printing `ready`.
 * - `store-writer`: makes one state change by a store write that carries its event, prints
 *   `{"wrote": eventId}` and SIGKILLs itself at once: nothing of it runs after the write.
 * - `engine-writer`: links an account with an API key and marks it revoked through the Latchkey
 *   API, prints `{"wrote": connectionId}` and SIGKILLs itself at once. Its events reach the log only
 *   when the engine appends them with its writes.
 */
import { Effect } from "effect"
import { createLatchkey, markRevoked } from "../Latchkey.ts"
import * as LifecycleEvents from "../LifecycleEvents.ts"
import * as Provider from "../Provider.ts"
import { openWithOpener, type StoreOpener } from "./storeConformanceWorker.ts"

export interface EventWorkerSettings {
  readonly role: "subscriber" | "store-writer" | "engine-writer"
  readonly opener: StoreOpener
  readonly storeSettings: unknown
  readonly connectionId?: string | undefined
}

export const eventWorkerProvider = () =>
  Provider.make({
    id: "keys",
    name: "API key provider",
    apiKeys: true,
    endpoints: {
      issuer: "http://127.0.0.1:9",
      authorization: "http://127.0.0.1:9/a",
      token: "http://127.0.0.1:9/t"
    },
    clientId: "unused",
    clientAuth: "none",
    redirectUri: "http://127.0.0.1:9/callback",
    identify: async () => ({ accountId: "key-account", label: "Key account" })
  })

const print = (value: unknown) =>
  new Promise<void>((resolve) => process.stdout.write(`${JSON.stringify(value)}\n`, () => resolve()))

const main = async () => {
  const settings = JSON.parse(process.env.LK_EVENT_WORKER ?? "{}") as EventWorkerSettings
  const store = await openWithOpener(settings.opener, settings.storeSettings)
  if (settings.role === "subscriber") {
    const latchkey = createLatchkey({
      providers: [eventWorkerProvider()],
      store,
      vault: { plaintext: true }
    })
    latchkey.events.subscribe({
      after: 0,
      pollIntervalMs: 20,
      onEvent: (event) => print({ event })
    })
    process.stdout.write("ready\n")
    return
  }
  if (settings.role === "store-writer") {
    const id = settings.connectionId!
    const current = await Effect.runPromise(store.get(id))
    if (current === undefined) throw new Error(`no connection ${id}`)
    const event = LifecycleEvents.make(
      "needs_reauth",
      current,
      { reason: "invalid_grant", code: "invalid_grant" },
      Date.now()
    )
    await Effect.runPromise(
      store.update({ ...current, status: "needs_reauth", version: current.version + 1 }, current.version, [
        event
      ])
    )
    process.stdout.write(`${JSON.stringify({ wrote: event.id })}\n`)
    process.kill(process.pid, "SIGKILL")
    return
  }
  const latchkey = createLatchkey({ providers: [eventWorkerProvider()], store, vault: { plaintext: true } })
  const linked = await latchkey.linkApiKey({ providerId: "keys", ownerId: "crash-owner", apiKey: "k-123" })
  await latchkey.run(markRevoked(linked.connection.id))
  process.stdout.write(`${JSON.stringify({ wrote: linked.connection.id })}\n`)
  process.kill(process.pid, "SIGKILL")
}

if (process.env.LK_EVENT_WORKER !== undefined) {
  main().catch((error: unknown) => {
    process.stderr.write(`event log worker failed: ${String((error as Error)?.message ?? error)}\n`)
    process.exit(1)
  })
}
