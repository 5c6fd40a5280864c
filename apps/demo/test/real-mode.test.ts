/**
 * Real mode without the network: with client settings in the environment, the demo sends users to
 * the real HeyGen and HighLevel authorize pages with the right parameters, allows those origins as
 * form targets, and serves the callbacks at the paths of the configured redirect URIs.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { readConfig } from "../src/config.ts"
import { Client, type Started, startTestDemo } from "./support.ts"

let started: Started
beforeAll(async () => {
  const config = readConfig({
    HEYGEN_CLIENT_ID: "heygen-real-client",
    HEYGEN_REDIRECT_URI: "http://127.0.0.1:3000/oauth/heygen/callback",
    HIGHLEVEL_CLIENT_ID: "66c0ffee-real",
    HIGHLEVEL_CLIENT_SECRET: "highlevel-real-secret",
    HIGHLEVEL_REDIRECT_URI: "http://127.0.0.1:3000/connect/hl"
  })
  started = await startTestDemo({ heygen: config.heygen, highlevel: config.highlevel })
})
afterAll(() => started?.close())

describe("real HeyGen and HighLevel", () => {
  it("runs only Example Corp locally and labels the others live", async () => {
    const { sandboxes } = started.demo.providers
    expect(sandboxes.heygen).toBeUndefined()
    expect(sandboxes.highlevel).toBeUndefined()
    expect(started.demo.providers.setups.map((s) => [s.id, s.mode])).toEqual([
      ["heygen", "real"],
      ["highlevel", "real"],
      ["example", "sandbox"]
    ])
    const response = await fetch(`${started.demo.url}/`)
    const page = await response.text()
    expect(page).toContain("Live: HeyGen, HighLevel")
    expect(page).not.toContain("Revoke at")
    const csp = response.headers.get("content-security-policy")!
    expect(csp).toContain("https://app.heygen.com")
    expect(csp).toContain("https://marketplace.gohighlevel.com")
  })

  it("sends users to HeyGen's and HighLevel's own authorize pages", async () => {
    const client = new Client(started.demo.url)
    const heygen = new URL(
      (await client.post("/link/heygen", { _csrf: await client.csrf() })).headers.get("location")!
    )
    expect(`${heygen.origin}${heygen.pathname}`).toBe("https://app.heygen.com/oauth/authorize")
    expect(heygen.searchParams.get("client_id")).toBe("heygen-real-client")
    expect(heygen.searchParams.get("redirect_uri")).toBe("http://127.0.0.1:3000/oauth/heygen/callback")
    expect(heygen.searchParams.get("code_challenge_method")).toBe("S256")

    const highlevel = new URL(
      (await client.post("/link/highlevel", { _csrf: await client.csrf() })).headers.get("location")!
    )
    expect(`${highlevel.origin}${highlevel.pathname}`).toBe(
      "https://marketplace.gohighlevel.com/oauth/chooselocation"
    )
    expect(highlevel.searchParams.get("client_id")).toBe("66c0ffee-real")
    expect(highlevel.searchParams.get("redirect_uri")).toBe("http://127.0.0.1:3000/connect/hl")
    expect(highlevel.searchParams.get("scope")).toBe(
      "locations.readonly users.readonly companies.readonly oauth.readonly oauth.write"
    )
    expect(highlevel.toString()).not.toContain("highlevel-real-secret")

    // HighLevel's answer arrives at the configured path.
    const denied = await client.fetch(
      `/connect/hl?error=access_denied&state=${highlevel.searchParams.get("state")}`
    )
    expect(denied.status).toBe(303)
    expect(denied.headers.get("referrer-policy")).toBe("no-referrer")
    expect(await (await client.fetch("/")).text()).toContain("You declined on HighLevel’s consent page")
  })
})
