/**
 * OpenTelemetry end to end: a Latchkey instance on the real oidc-provider with
 * `telemetry: { otlp: { url }, prometheus: { port: 0 } }`, exporting to a small OTLP/HTTP receiver
 * started by the test. What arrived is asserted (span names and attributes, metric names and
 * attributes), the provider's API request carries the `traceparent` of the exported ApiClient span,
 * the Prometheus endpoint is scraped, and nothing exported holds a token, a code, the client secret
 * or the account's e-mail.
 */
import type { OidcServer } from "@latchkey/testkit-oidc"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ConnectionStore, createLatchkey } from "../src/index.ts"
import { type OtlpReceiver, startOtlpReceiver } from "../src/testing/index.ts"
import { exampleProvider, expire, link, plain, startServer, stored } from "./support.ts"

type Attr = { key: string; value: Record<string, unknown> }
const attrs = (list: ReadonlyArray<Attr> | undefined) =>
  Object.fromEntries((list ?? []).map((a) => [a.key, Object.values(a.value)[0]]))

interface Span {
  name: string
  traceId: string
  spanId: string
  attributes: Record<string, unknown>
}

const spansOf = (bodies: ReadonlyArray<string>): Array<Span> =>
  bodies.flatMap((b) =>
    (
      JSON.parse(b) as {
        resourceSpans: Array<{
          scopeSpans: Array<{
            spans: Array<{ name: string; traceId: string; spanId: string; attributes?: Array<Attr> }>
          }>
        }>
      }
    ).resourceSpans.flatMap((r) =>
      r.scopeSpans.flatMap((s) =>
        s.spans.map((x) => ({
          name: x.name,
          traceId: x.traceId,
          spanId: x.spanId,
          attributes: attrs(x.attributes)
        }))
      )
    )
  )

interface Point {
  metric: string
  attributes: Record<string, unknown>
  value: unknown
}

const pointsOf = (bodies: ReadonlyArray<string>): Array<Point> =>
  bodies.flatMap((b) =>
    (
      JSON.parse(b) as {
        resourceMetrics: Array<{ scopeMetrics: Array<{ metrics: Array<Record<string, unknown>> }> }>
      }
    ).resourceMetrics.flatMap((r) =>
      r.scopeMetrics.flatMap((s) =>
        s.metrics.flatMap((m) => {
          const data = (m.sum ?? m.gauge ?? m.histogram) as
            | {
                dataPoints: Array<{
                  attributes?: Array<Attr>
                  asInt?: unknown
                  asDouble?: unknown
                  count?: unknown
                }>
              }
            | undefined
          return (data?.dataPoints ?? []).map((p) => ({
            metric: String(m.name),
            attributes: attrs(p.attributes),
            value: p.asInt ?? p.asDouble ?? p.count
          }))
        })
      )
    )
  )

describe("telemetry (OTLP and Prometheus)", () => {
  let server: OidcServer
  let receiver: OtlpReceiver
  beforeAll(async () => {
    server = await startServer()
    receiver = await startOtlpReceiver()
  })
  afterAll(async () => {
    await receiver?.close()
    await server?.close()
  })

  it("exports the refresh, API and sweep spans with their attributes, the metrics, and trace context into provider requests", async () => {
    const store = ConnectionStore.makeMemory()
    const apiHeaders: Array<Headers> = []
    const secrets = new Set<string>()
    const userinfo = server.endpoints.userinfo
    const capturing: typeof fetch = async (input, init) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
      if (url === userinfo) apiHeaders.push(new Headers(init?.headers))
      if (typeof init?.body === "string" || init?.body instanceof URLSearchParams) {
        const params = new URLSearchParams(init.body as string)
        for (const key of ["code", "code_verifier", "refresh_token", "client_secret"]) {
          const v = params.get(key)
          if (v) secrets.add(v)
        }
      }
      return fetch(input, init)
    }
    let prometheusUrl = ""
    const latchkey = createLatchkey({
      providers: [exampleProvider(server)],
      store,
      vault: { plaintext: true },
      config: { fetch: capturing },
      telemetry: {
        otlp: { url: receiver.url, serviceName: "telemetry-test", exportIntervalMs: 100 },
        prometheus: { port: 0, onListening: (url) => (prometheusUrl = url) },
        statusIntervalMs: 20
      }
    })
    let scraped = ""
    try {
      const connection = await link(latchkey, "alice")
      secrets.add(connection.label) // the account's e-mail
      expect(connection.label).toContain("@")
      apiHeaders.length = 0 // identify called the user-info endpoint while linking
      await latchkey.refresh(connection.id)
      const response = await latchkey.fetch(connection.id, userinfo)
      expect(response.status).toBe(200)
      await expire(store, connection.id)
      expect(await latchkey.refresher.sweep()).toMatchObject({ due: 1, refreshed: 1 })
      const record = await stored(store, connection.id)
      secrets.add(plain(record.accessToken))
      secrets.add(plain(record.refreshToken))
      secrets.add(await latchkey.accessToken(connection.id))
      await new Promise((r) => setTimeout(r, 60)) // one more status count
      expect(prometheusUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/)
      const scrape = await fetch(prometheusUrl)
      expect(scrape.headers.get("content-type")).toContain("text/plain")
      scraped = await scrape.text()
      const text = await latchkey.metrics()
      expect(text).toContain("latchkey_refreshes_total")
      // The engine's lease wait of each refresh, by provider and outcome.
      expect(text).toMatch(/^latchkey_lease_wait_ms_count\{provider="example",outcome="refreshed"\} [1-9]/m)
    } finally {
      await latchkey.close() // flushes the exporters
    }

    const spans = spansOf(receiver.bodies.get("/v1/traces") ?? [])
    const names = new Set(spans.map((s) => s.name))
    for (const name of [
      "AuthorizationFlow.start",
      "AuthorizationFlow.complete",
      "latchkey.refresh",
      "ApiClient.fetch",
      "Refresher.sweep"
    ]) {
      expect(names.has(name), `span ${name}`).toBe(true)
    }
    const refreshes = spans.filter((s) => s.name === "latchkey.refresh")
    expect(refreshes.map((s) => s.attributes["latchkey.refresh.source"]).sort()).toEqual(["api", "refresher"])
    for (const s of refreshes) {
      expect(s.attributes).toMatchObject({
        "latchkey.provider": "example",
        "latchkey.refresh.outcome": "success"
      })
    }
    const api = spans.find((s) => s.name === "ApiClient.fetch")!
    expect(api.attributes).toMatchObject({
      "latchkey.provider": "example",
      "latchkey.credential_kind": "oauth",
      "http.request.method": "GET",
      "http.response.status_code": 200,
      "url.path": "/me"
    })
    const sweep = spans.find((s) => s.name === "Refresher.sweep")!
    expect(sweep.attributes).toMatchObject({ "latchkey.sweep.due": 1, "latchkey.sweep.refreshed": 1 })
    // The provider request carried the trace context of the exported ApiClient span.
    expect(apiHeaders).toHaveLength(1)
    expect(apiHeaders[0]!.get("traceparent")).toBe(`00-${api.traceId}-${api.spanId}-01`)

    const points = pointsOf(receiver.bodies.get("/v1/metrics") ?? [])
    const has = (metric: string, attributes: Record<string, unknown>) =>
      points.some(
        (p) => p.metric === metric && Object.entries(attributes).every(([k, v]) => p.attributes[k] === v)
      )
    expect(has("latchkey_refreshes_total", { provider: "example", outcome: "success" })).toBe(true)
    expect(has("latchkey_refresh_duration_ms", { provider: "example", source: "refresher" })).toBe(true)
    expect(has("latchkey_refresh_commit_ms", { provider: "example" })).toBe(true)
    expect(has("latchkey_api_requests_total", { provider: "example", status: "200" })).toBe(true)
    expect(has("latchkey_lifecycle_events_total", { type: "linked" })).toBe(true)
    expect(
      points.some(
        (p) => p.metric === "latchkey_connections" && p.attributes.status === "active" && p.value === 1
      )
    ).toBe(true)
    expect(scraped).toMatch(/^latchkey_refreshes_total\{.*provider="example".*\} \d+/m)
    expect(scraped).toMatch(/^latchkey_api_requests_total\{.*status="200".*\} 1/m)
    expect(scraped).toContain("latchkey_refresh_duration_ms_bucket")

    // Secrets hygiene of what left the process: no token, code, secret or e-mail anywhere.
    secrets.add(server.clients.find((c) => c.client_id === "basic-client")!.client_secret!)
    const exported = [...receiver.bodies.values()].flat().join("\n") + scraped
    expect(secrets.size).toBeGreaterThanOrEqual(6)
    expect(
      [...secrets].filter((s) => s.length >= 6 && exported.includes(s)).map((s) => s.slice(0, 4))
    ).toEqual([])
  }, 30_000)

  it("the token cache's hit ratio: lookups by result in the metrics", async () => {
    const latchkey = createLatchkey({
      providers: [exampleProvider(server)],
      vault: { plaintext: true },
      telemetry: { prometheus: true }
    })
    try {
      const connection = await link(latchkey, "carol")
      const count = (text: string, result: string) =>
        Number(
          new RegExp(
            `^latchkey_token_cache_lookups_total\\{[^}]*result="${result}"[^}]*\\} (\\d+)`,
            "m"
          ).exec(text)?.[1] ?? 0
        )
      const before = await latchkey.metrics()
      const token = await latchkey.accessToken(connection.id) // through the engine: a miss, then cached
      for (let i = 0; i < 5; i++) expect(await latchkey.accessToken(connection.id)).toBe(token)
      const after = await latchkey.metrics()
      expect(count(after, "miss") - count(before, "miss")).toBe(1)
      expect(count(after, "hit") - count(before, "hit")).toBe(5)
    } finally {
      await latchkey.close()
    }
  })

  it("off by default: no traceparent in provider requests", async () => {
    const apiHeaders: Array<Headers> = []
    const latchkey = createLatchkey({
      providers: [exampleProvider(server)],
      vault: { plaintext: true },
      config: {
        fetch: async (input, init) => {
          const url = typeof input === "string" ? input : input instanceof URL ? input.href : input.url
          if (url === server.endpoints.userinfo) apiHeaders.push(new Headers(init?.headers))
          return fetch(input, init)
        }
      }
    })
    try {
      const connection = await link(latchkey, "bob")
      apiHeaders.length = 0
      await latchkey.fetch(connection.id, server.endpoints.userinfo)
      expect(apiHeaders).toHaveLength(1)
      expect(apiHeaders[0]!.has("traceparent")).toBe(false)
    } finally {
      await latchkey.close()
    }
  })
})
