/**
 * The demo's data dir across restarts: connections persist in the SQLite file, sealed with the vault
 * key generated at first start (kept, mode 0600); a grant the in-memory sandbox forgot is shown for
 * reconnecting, and reconnecting keeps the same connection. A different vault key cannot open them.
 */
import { mkdtempSync, rmSync, statSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Vault } from "@latchkey/core"
import type { Browser } from "playwright-core"
import { afterAll, describe, expect, it } from "vitest"
import { type Demo, startDemo } from "../src/demo.ts"
import { Client, launchChromium, offlineContext, SCREENSHOTS } from "./support.ts"

let browser: Browser | undefined
/** The page as a visitor sees it in Chromium, with a screenshot. */
const visit = async (demo: Demo, shot: string) => {
  browser ??= await launchChromium()
  const context = await offlineContext(browser)
  const page = await context.newPage()
  await page.goto(demo.url)
  await page.screenshot({ path: join(SCREENSHOTS, `${shot}.png`), fullPage: true })
  return { page, close: () => context.close() }
}

const dataDir = mkdtempSync(join(tmpdir(), "latchkey-demo-restart-"))
const running: Array<Demo> = []
afterAll(async () => {
  await browser?.close().catch(() => {})
  await Promise.allSettled(running.map((d) => d.close()))
  rmSync(dataDir, { recursive: true, force: true })
})

const start = async (vaultKey?: string) => {
  const demo = await startDemo({
    port: 0,
    dataDir,
    accessTokenSeconds: 600,
    refresherIntervalMs: 60_000,
    workers: 0,
    refreshDelayMs: 0,
    vaultKey
  })
  running.push(demo)
  return demo
}

const stop = async (demo: Demo) => {
  running.splice(running.indexOf(demo), 1)
  await demo.close()
}

const linkHeyGen = async (demo: Demo, client: Client, account: string) => {
  const started = await client.post("/link/heygen", { _csrf: await client.csrf() })
  const callback = new URL(
    await demo.providers.sandboxes.heygen!.approve(started.headers.get("location")!, { account })
  )
  const done = await client.fetch(callback.pathname + callback.search)
  expect(done.status).toBe(303)
}

describe("restarting the demo on the same data dir", () => {
  it("keeps the connections, sealed with the kept vault key, and offers to reconnect forgotten sandbox grants", async () => {
    const first = await start()
    expect(first.vaultKey.source).toBe("generated")
    expect(statSync(join(dataDir, "vault-key.json")).mode & 0o777).toBe(0o600)
    await linkHeyGen(first, new Client(first.url), "jane_doe")
    const [linked] = await first.latchkey.connections("ada")
    expect(linked).toMatchObject({ accountId: "jane_doe", status: "active" })
    await stop(first)

    const second = await start()
    expect(second.vaultKey.source).toBe("file")
    const [kept] = await second.latchkey.connections("ada")
    expect(kept).toMatchObject({ id: linked!.id, accountId: "jane_doe", label: "jane@example.com" })
    // The sealed tokens open with the kept key.
    expect((await second.latchkey.accessToken(kept!.id)).length).toBeGreaterThan(10)

    // An event before any page was shown (the labels are not in memory yet) still names the account.
    await expect(second.latchkey.refresh(kept!.id)).rejects.toMatchObject({ _tag: "ReauthorizationRequired" })
    const client = new Client(second.url)
    const page = await (await client.fetch("/")).text()
    const feed = page.slice(page.indexOf('id="activity"'))
    expect(feed).toContain("HeyGen · jane@example.com: HeyGen no longer accepts the grant")
    expect(feed).not.toContain("an account")
    // The feed reads the store's durable log: the first run's events are still there, numbered.
    expect(feed).toMatch(
      /data-seq="1"><time[^>]*>[^<]*<\/time><span class="seq"[^>]*>#1<\/span><span>HeyGen · jane@example.com: linked<\/span>/
    )
    const seen = await visit(second, "30-after-restart")
    expect(await seen.page.locator("#activity li").first().textContent()).toContain(
      "HeyGen · jane@example.com: HeyGen no longer accepts the grant"
    )
    await seen.close()
    expect(page).toContain("forgot this one when the demo restarted")
    expect(page).toContain("forgot this one when the demo restarted")

    // The new sandbox does not know the grant: the refresh was refused and the card asks to reconnect.
    expect((await second.latchkey.connection(kept!.id)).status).toBe("needs_reauth")
    expect(page).toContain("Reconnect needed")

    // Reconnecting the same HeyGen user replaces the tokens of the same connection.
    await linkHeyGen(second, client, "jane_doe")
    const after = await second.latchkey.connection(kept!.id)
    expect(after.status).toBe("active")
    const page2 = await (await client.fetch("/")).text()
    expect(page2).toContain("HeyGen account reconnected")
    expect(page2).not.toContain("Linked before a restart")
    await stop(second)
  })

  it("with another vault key the stored tokens cannot be opened, and the page says so in plain words", async () => {
    const third = await start(Vault.generateKey())
    expect(third.vaultKey.source).toBe("env")
    const [kept] = await third.latchkey.connections("ada")
    expect(kept).toBeDefined()
    const client = new Client(third.url)
    // On the card at once, before any click: not "Active", and why.
    const page = await (await client.fetch("/")).text()
    const card = page.slice(
      page.indexOf(`id="conn-${kept!.id}"`),
      page.indexOf("</article>", page.indexOf(`id="conn-${kept!.id}"`))
    )
    expect(card).toContain('data-sealed="other-key"')
    expect(card).toContain("Tokens unreadable.")
    expect(card).toContain("sealed with another vault key")
    expect(card).not.toContain(">Active<")
    expect(card).toMatch(/<button type="submit" class="btn" disabled>Call the API/)
    const seen = await visit(third, "31-another-vault-key")
    const shown = seen.page.locator(`[data-connection-id="${kept!.id}"]`)
    expect(await shown.locator(".pill").textContent()).toBe("Unreadable")
    expect(await shown.locator(".notice").textContent()).toContain("sealed with another vault key")
    expect(await shown.getByRole("button", { name: "Reconnect" }).isVisible()).toBe(true)
    await seen.close()
    const response = await client.post(
      `/connections/${kept!.id}/call`,
      { _csrf: await client.csrf() },
      { accept: "application/json" }
    )
    expect(response.status).toBe(422)
    expect(((await response.json()) as { text: string }).text).toContain("vault key is not the one")
    // Reconnecting stores new tokens under the key the demo runs with: the card opens again.
    await linkHeyGen(third, client, "jane_doe")
    const again = await (await client.fetch("/")).text()
    expect(again).toContain(`id="conn-${kept!.id}"`)
    expect(again).not.toContain('data-sealed="other-key"')
    await stop(third)
  })
})
