import { createLatchkey } from "@latchkey/core"
import { HighLevel } from "@latchkey/provider-highlevel"
import { startSandbox } from "@latchkey/provider-highlevel/sandbox"

// A local HighLevel on 127.0.0.1: the chooselocation page, the token endpoint and the API.
const sandbox = await startSandbox()

const latchkey = createLatchkey({
  providers: [
    HighLevel.provider({
      ...sandbox.providerOptions, // clientId, clientSecret, redirectUri, marketplaceUrl, apiUrl
      scopes: ["locations.readonly", "oauth.readonly"]
    })
  ],
  vault: { plaintext: true } // a sandbox: tokens in memory, no key (in production, give vault.keys)
})

// 1. Send the user to HighLevel's chooselocation page.
const { url } = await latchkey.startAuthorization({ providerId: "highlevel", ownerId: "user-1" })

// 2. The user picks a location and approves (the sandbox's driver plays the browser here).
const callback = await sandbox.approve(url, "sbxLocation001")

// 3. Your redirect URI receives the callback: the code is exchanged and the connection stored.
const { connection } = await latchkey.completeAuthorization({ callback, ownerId: "user-1" })
console.log(`linked ${connection.label} (location ${connection.accountId})`)

// 4. Call the API through the connection: Bearer token and Version header added, refreshed when due.
const response = await latchkey.fetch(connection.id, `/locations/${connection.accountId}`)
const { location } = (await response.json()) as { location: { name: string; timezone: string } }
console.log(
  `GET /locations/${connection.accountId} -> ${response.status} ${location.name} (${location.timezone})`
)

await latchkey.close()
await sandbox.close()
