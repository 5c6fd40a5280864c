/** Express 5: the node listener is a middleware; mount it before any body parser. */
import type { AddressInfo } from "node:net"
import { toNodeListener } from "@latchkey/http/node"
import express from "express"
import { createApp } from "./app.ts"

export const start = async (port = 0) => {
  const { latchkey, auth, connections } = createApp()
  const app = express()
  app.use("/oauth", toNodeListener(auth.fetch)) // before express.json(): webhooks need the raw body
  app.use(express.json())
  app.get("/connections", toNodeListener(connections))
  const server = app.listen(port, "127.0.0.1")
  await new Promise<void>((resolve) => server.once("listening", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    latchkey,
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
      await latchkey.close()
    }
  }
}

if (import.meta.main) console.log(`listening on ${(await start(Number(process.env.PORT ?? 3000))).url}`)
