/** Node's http: `toNodeListener` turns the handlers into a request listener. */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { toNodeListener } from "@latchkey/http/node"
import { createApp } from "./app.ts"

export const start = async (port = 0) => {
  const { latchkey, auth, connections } = createApp()
  const oauth = toNodeListener(auth.fetch)
  const list = toNodeListener(connections)
  const server = createServer((req, res) => {
    if (req.url?.startsWith("/oauth/")) return oauth(req, res)
    if (req.url === "/connections") return list(req, res)
    res.writeHead(404).end()
  })
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve))
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
