/** Fastify: the plugin reads raw bodies in its own scope and serves every route below its prefix. */
import { latchkeyFastify } from "@latchkey/http/fastify"
import Fastify from "fastify"
import { createApp } from "./app.ts"

export const start = async (port = 0) => {
  const { latchkey, auth, connections } = createApp()
  const app = Fastify()
  await app.register(latchkeyFastify(auth.fetch), { prefix: "/oauth" })
  app.get("/connections", async (request, reply) => {
    const response = await connections(
      new Request(`http://${request.host}${request.url}`, { headers: request.headers as HeadersInit })
    )
    return reply
      .code(response.status)
      .type("application/json")
      .send(await response.text())
  })
  const url = await app.listen({ port, host: "127.0.0.1" })
  return {
    url,
    latchkey,
    close: async () => {
      await app.close()
      await latchkey.close()
    }
  }
}

if (import.meta.main) console.log(`listening on ${(await start(Number(process.env.PORT ?? 3000))).url}`)
