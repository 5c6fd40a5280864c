/**
 * A small OTLP/HTTP receiver on 127.0.0.1 for tests: it keeps every body posted to it, by path
 * (`/v1/traces`, `/v1/metrics`, `/v1/logs`), and answers `{}`.
 */
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"

export interface OtlpReceiver {
  /** The base URL to give the exporter (`telemetry.otlp.url`). */
  readonly url: string
  /** Every body received, by request path. */
  readonly bodies: Map<string, Array<string>>
  /** Everything received, as one text (for secret scans). */
  readonly text: () => string
  readonly close: () => Promise<void>
}

export const startOtlpReceiver = async (): Promise<OtlpReceiver> => {
  const bodies = new Map<string, Array<string>>()
  const server: Server = createServer((req, res) => {
    let body = ""
    req.setEncoding("utf8")
    req.on("data", (c) => {
      body += c
    })
    req.on("end", () => {
      const list = bodies.get(req.url ?? "") ?? []
      list.push(body)
      bodies.set(req.url ?? "", list)
      res.setHeader("content-type", "application/json")
      res.end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    bodies,
    text: () => [...bodies.values()].flat().join("\n"),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
