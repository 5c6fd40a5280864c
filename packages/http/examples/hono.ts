/** Hono speaks Web `Request` / `Response`: the handlers need no adapter. */
import type { AddressInfo } from "node:net"
import { serve } from "@hono/node-server"
import { Hono } from "hono"
import { createApp } from "./app.ts"

export const start = async (port = 0) => {
  const { latchkey, auth, connections } = createApp()
  const app = new Hono()
  app.all("/oauth/*", (c) => auth.fetch(c.req.raw))
  app.get("/connections", (c) => connections(c.req.raw))
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const s = serve({ fetch: app.fetch, port, hostname: "127.0.0.1" }, () => resolve(s))
  })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    latchkey,
    close: async () => {
      await new Promise((resolve) => server.close(resolve))
      await latchkey.close()
    }
  }
}

if (import.meta.main) console.log(`listening on ${(await start(Number(process.env.PORT ?? 3000))).url}`)
