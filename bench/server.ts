/**
 * The main-thread handle on the benchmark token server (server-worker.ts): its endpoints and
 * clients, its grant counters, minting, and helpers every section shares (an openid-client
 * configuration for raw calls, introspection, and the "does this grant still work" check).
 */
import { Worker } from "node:worker_threads"
import type { OidcClient, OidcServer } from "@latchkey/testkit-oidc"
import * as oidc from "openid-client"

export interface Minted {
  readonly accountId: string
  readonly refreshToken: string
  readonly accessToken: string
}

export interface ServerInfo {
  readonly issuer: string
  readonly endpoints: OidcServer["endpoints"]
  readonly clients: ReadonlyArray<OidcClient>
}

export type WorkerOp =
  | { readonly op: "grants" }
  | {
      readonly op: "mint"
      readonly count: number
      readonly clientId: string
      readonly scope: string
      readonly prefix: string
    }
  | { readonly op: "recordRefreshes" }
  | { readonly op: "takeRefreshes" }
  | { readonly op: "close" }

export type WorkerRequest = { readonly id: number } & WorkerOp

export type WorkerResponse =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: string }

export type GrantCounts = OidcServer["grants"]

/** The confidential client every section uses (client_secret_basic). */
export const CLIENT_ID = "basic-client"
/** Scopes of every grant in the benchmarks (the linked connection asks for the same). */
export const SCOPES = ["openid", "offline_access", "email", "read"] as const

export interface BenchServer extends ServerInfo {
  readonly clientSecret: string
  grants(): Promise<GrantCounts>
  /** Start noting when each successful refresh is answered (forgetting earlier ones). */
  recordRefreshes(): Promise<void>
  /** The times noted since `recordRefreshes` (ms, one clock), and stop noting. */
  takeRefreshes(): Promise<ReadonlyArray<number>>
  /** `count` fresh grants, each with an unused refresh token and a valid access token. */
  mint(count: number, prefix: string): Promise<ReadonlyArray<Minted>>
  /** An openid-client configuration for this server (what a user of openid-client alone writes). */
  openidConfig(): oidc.Configuration
  /** RFC 7662 introspection: is this token active? */
  introspect(token: string): Promise<boolean>
  /**
   * Whether the grant behind a refresh token is still alive: introspection says the token is active
   * AND one refresh with it succeeds (that refresh rotates it; the caller gets the new token).
   */
  grantAlive(refreshToken: string): Promise<{ alive: boolean; next: string | undefined }>
  close(): Promise<void>
}

export const startBenchServer = async (redirectUri: string): Promise<BenchServer> => {
  const worker = new Worker(new URL("./server-worker.ts", import.meta.url), { workerData: { redirectUri } })
  const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>()
  let nextId = 0
  const info = await new Promise<ServerInfo>((resolve, reject) => {
    worker.once("error", reject)
    worker.on("message", (message: WorkerResponse | { ready: true; info: ServerInfo }) => {
      if ("ready" in message) {
        resolve(message.info)
        return
      }
      const waiter = pending.get(message.id)
      pending.delete(message.id)
      if (message.ok) waiter?.resolve(message.value)
      else waiter?.reject(new Error(`token server: ${message.error}`))
    })
  })
  worker.on("error", (error) => {
    for (const waiter of pending.values()) waiter.reject(error)
    pending.clear()
  })
  const call = <A>(request: WorkerOp): Promise<A> =>
    new Promise<A>((resolve, reject) => {
      const id = nextId++
      pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      worker.postMessage({ ...request, id })
    })

  const clientSecret = info.clients.find((c) => c.client_id === CLIENT_ID)?.client_secret
  if (clientSecret === undefined) throw new Error(`the token server has no ${CLIENT_ID}`)
  const basic = `Basic ${Buffer.from(`${CLIENT_ID}:${clientSecret}`).toString("base64")}`

  const openidConfig = () => {
    const config = new oidc.Configuration(
      {
        issuer: info.endpoints.issuer,
        authorization_endpoint: info.endpoints.authorization,
        token_endpoint: info.endpoints.token,
        revocation_endpoint: info.endpoints.revocation,
        userinfo_endpoint: info.endpoints.userinfo
      },
      CLIENT_ID,
      undefined,
      oidc.ClientSecretBasic(clientSecret)
    )
    oidc.allowInsecureRequests(config)
    return config
  }
  const checkConfig = openidConfig()

  const introspect = async (token: string) => {
    const response = await fetch(info.endpoints.introspection, {
      method: "POST",
      headers: { authorization: basic, "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ token })
    })
    return ((await response.json()) as { active?: boolean }).active === true
  }

  return {
    ...info,
    clientSecret,
    grants: () => call<GrantCounts>({ op: "grants" }),
    recordRefreshes: () => call<void>({ op: "recordRefreshes" }),
    takeRefreshes: () => call<ReadonlyArray<number>>({ op: "takeRefreshes" }),
    mint: (count, prefix) =>
      call<ReadonlyArray<Minted>>({
        op: "mint",
        count,
        clientId: CLIENT_ID,
        scope: SCOPES.join(" "),
        prefix
      }),
    openidConfig,
    introspect,
    grantAlive: async (refreshToken) => {
      if (!(await introspect(refreshToken))) return { alive: false, next: undefined }
      try {
        const response = await oidc.refreshTokenGrant(checkConfig, refreshToken)
        return { alive: true, next: response.refresh_token }
      } catch {
        return { alive: false, next: undefined }
      }
    },
    close: async () => {
      await call({ op: "close" })
      await worker.terminate()
    }
  }
}
