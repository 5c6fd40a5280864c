/**
 * The token server for the benchmarks, in its own worker thread: oidc-provider (through
 * @latchkey/testkit-oidc) with rotating single-use refresh tokens. Running it off the main thread
 * keeps its CPU work (koa, client authentication, ID-token signatures) out of the event loop whose
 * client-side cost the benchmarks measure. Requests from the main thread: `grants` (the counters), `recordRefreshes` / `takeRefreshes`
 * (when each successful refresh was answered, between the two),
 * `mint` (grants with a refresh token and an access token, written straight into oidc-provider's
 * models: the consent forms would take minutes for thousands of grants) and `close`.
 */
import { parentPort, workerData } from "node:worker_threads"
import { startOidcServer } from "@latchkey/testkit-oidc"
import { unboundedMemoryAdapter } from "./oidc-adapter.ts"
import type { Minted, ServerInfo, WorkerRequest, WorkerResponse } from "./server.ts"

// oidc-provider prints its development notices with console.info (stdout): keep them off the table.
console.info = console.error
console.log = console.error

const port = parentPort
if (port === null) throw new Error("server-worker.ts runs as a worker thread (see server.ts)")
const { redirectUri } = workerData as { redirectUri: string }

const server = await startOidcServer({
  redirectUris: [redirectUri],
  rotateRefreshToken: true,
  accessTokenTtl: 3600,
  adapter: unboundedMemoryAdapter()
})
const { provider } = server
/** When each successful refresh was answered (ms since the epoch), kept while `recording`. */
let refreshTimes: Array<number> = []
let recording = false
provider.on("grant.success", (ctx) => {
  if (recording && (ctx.oidc?.params as { grant_type?: unknown } | undefined)?.grant_type === "refresh_token")
    refreshTimes.push(performance.timeOrigin + performance.now())
})

const mint = async (count: number, clientId: string, scope: string, prefix: string) => {
  const client = await provider.Client.find(clientId)
  if (client === undefined) throw new Error(`no client ${clientId}`)
  const out: Array<Minted> = []
  for (let i = 0; i < count; i++) {
    const accountId = `${prefix}-${i}`
    const grant = new provider.Grant({ accountId, clientId })
    grant.addOIDCScope(scope)
    const grantId = await grant.save()
    const base = { accountId, client, grantId, gty: "authorization_code", scope }
    const refreshToken = await new provider.RefreshToken({ ...base, rotations: 0 }).save()
    const accessToken = await new provider.AccessToken(base).save()
    out.push({ accountId, refreshToken, accessToken })
  }
  return out
}

const handle = async (request: WorkerRequest): Promise<unknown> => {
  switch (request.op) {
    case "grants":
      return { ...server.grants }
    case "mint":
      return mint(request.count, request.clientId, request.scope, request.prefix)
    case "recordRefreshes":
      recording = true
      refreshTimes = []
      return null
    case "takeRefreshes": {
      recording = false
      const times = refreshTimes
      refreshTimes = []
      return times
    }
    case "close":
      await server.close()
      setImmediate(() => port.close())
      return null
  }
}

port.on("message", (request: WorkerRequest) => {
  handle(request).then(
    (value) => port.postMessage({ id: request.id, ok: true, value } satisfies WorkerResponse),
    (error: unknown) =>
      port.postMessage({ id: request.id, ok: false, error: String(error) } satisfies WorkerResponse)
  )
})

port.postMessage({
  ready: true,
  info: { issuer: server.issuer, endpoints: server.endpoints, clients: server.clients }
} satisfies { ready: true; info: ServerInfo })
