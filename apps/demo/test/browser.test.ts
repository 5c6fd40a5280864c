/**
 * The demo in Debian's Chromium, driven by playwright-core: link HeyGen, two HighLevel locations and
 * Example Corp through the real consent pages, see four cards side by side, call an API, refresh
 * one, unlink one, reconnect one the provider stopped accepting, deny consent, and watch a token
 * with a lifetime of seconds refresh by itself while the page updates without a reload.
 * Screenshots go to test-artifacts/demo/.
 */
import { join } from "node:path"
import type { Browser, BrowserContext, Locator, Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { launchChromium, offlineContext, SCREENSHOTS, type Started, startTestDemo } from "./support.ts"

let started: Started
let browser: Browser
let context: BrowserContext
let page: Page
let navigations = 0

beforeAll(async () => {
  started = await startTestDemo()
  browser = await launchChromium()
  context = await offlineContext(browser)
  page = await context.newPage()
  page.on("framenavigated", (frame) => {
    if (frame === page.mainFrame()) navigations++
  })
})

afterAll(async () => {
  await context?.close().catch(() => {})
  await browser?.close().catch(() => {})
  await started?.close()
})

const shot = async (name: string) => {
  await page.evaluate(() => window.scrollTo(0, 0))
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage: true })
}
const cards = () => page.locator("[data-connection-id]")
const group = (providerId: string) => page.locator(`#group-${providerId}`)
const cardOf = (accountId: string) => page.locator(`[data-account-id="${accountId}"]`)
const sandboxes = () => started.demo.providers.sandboxes

/** Press "Link another account" and approve on the HeyGen or HighLevel sandbox page as `account`. */
const linkOnSandbox = async (providerId: "heygen" | "highlevel", account: string, decision = "approve") => {
  await group(providerId).locator(".link-form button").click()
  await page.waitForURL((url) => url.origin !== started.demo.url)
  await page.locator(`input[name="account"][value="${account}"]`).check()
  await page.locator(`button[value="${decision}"]`).click()
  await page.waitForURL(`${started.demo.url}/`)
}

/** Example Corp: oidc-provider's own login and consent pages. */
const linkExampleCorp = async (login: string) => {
  await group("example").locator(".link-form button").click()
  await page.locator('input[name="login"]').fill(login)
  await page.locator('input[name="password"]').fill("any password")
  await page.getByRole("button", { name: "Sign-in" }).click()
  await page.getByRole("button", { name: "Continue" }).click()
  await page.waitForURL(`${started.demo.url}/`)
}

const box = async (locator: Locator) => {
  const b = await locator.boundingBox()
  if (b === null) throw new Error("not visible")
  return b
}

describe("the demo in a real browser", () => {
  it("links HeyGen, two HighLevel locations and Example Corp, and shows four cards side by side", async () => {
    await page.goto(started.demo.url)
    await expect.poll(() => page.locator("[data-live]").getAttribute("data-live")).toBe("on")
    expect(await cards().count()).toBe(0)

    await linkOnSandbox("heygen", "jane_doe")
    await expect.poll(() => page.locator(".flash-success").textContent()).toContain("HeyGen account linked")
    await linkOnSandbox("highlevel", "sbxLocation001")
    await linkOnSandbox("highlevel", "sbxLocation002")
    await linkExampleCorp("alice")

    expect(await cards().count()).toBe(4)
    expect(await group("heygen").locator("[data-connection-id]").count()).toBe(1)
    expect(await group("highlevel").locator("[data-connection-id]").count()).toBe(2)
    expect(await group("example").locator("[data-connection-id]").count()).toBe(1)

    // The card content: labels, status, plan and credits from users/me, the timelines.
    const heygen = cardOf("jane_doe")
    expect(await heygen.locator("h3").textContent()).toBe("jane@example.com")
    expect(await heygen.locator(".pill").textContent()).toBe("Active")
    const facts = await heygen.locator(".facts").textContent()
    expect(facts).toContain("enterprise")
    expect(facts).toContain("300")
    expect(await cardOf("sbxLocation001").locator("h3").textContent()).toBe("Acme Plumbing")
    expect(await cardOf("sbxLocation002").locator("h3").textContent()).toBe("Bright Dental")
    expect(await cardOf("alice").locator("h3").textContent()).toBe("alice@example.com")
    expect(await cardOf("alice").locator(".facts").textContent()).toContain("read write admin")
    for (const kind of ["access", "refresh"]) {
      expect(await cards().locator(`.timeline[data-kind="${kind}"]`).count()).toBe(4)
    }
    expect(await heygen.locator('.timeline[data-kind="access"] [data-countdown]').textContent()).toMatch(
      /expires in \d+ (s|min)/
    )

    // Side by side: the three provider groups are columns on one row, left to right, and so are
    // the first card of each.
    const [gh, gl, ge] = [
      await box(group("heygen")),
      await box(group("highlevel")),
      await box(group("example"))
    ]
    expect(Math.abs(gh.y - gl.y)).toBeLessThan(2)
    expect(Math.abs(gl.y - ge.y)).toBeLessThan(2)
    const [h, l, e] = [await box(heygen), await box(cardOf("sbxLocation001")), await box(cardOf("alice"))]
    expect(h.x + h.width).toBeLessThanOrEqual(l.x)
    expect(l.x + l.width).toBeLessThanOrEqual(e.x)
    expect(Math.max(h.y, l.y, e.y) - Math.min(h.y, l.y, e.y)).toBeLessThan(h.height / 2)
    await shot("01-four-accounts")
  })

  it("calls a provider's API from a card and shows the response", async () => {
    const card = cardOf("sbxLocation001")
    await card.getByRole("button", { name: "Call the API" }).click()
    const result = card.locator("[data-api-result]")
    await expect.poll(() => result.isVisible()).toBe(true)
    expect(await result.locator("code").textContent()).toBe("GET /locations/{locationId}")
    expect(await result.locator("[data-status]").textContent()).toBe("200")
    const body = JSON.parse((await result.locator("pre").textContent()) ?? "{}")
    expect(body.location).toMatchObject({ id: "sbxLocation001", name: "Acme Plumbing" })
    await shot("02-api-response")
  })

  it("refreshes one account on request; the card updates in place", async () => {
    const card = cardOf("alice")
    const version = Number(await card.getAttribute("data-version"))
    const expires = Number(await card.getAttribute("data-expires"))
    const before = navigations
    await card.getByRole("button", { name: "Refresh now" }).click()
    await expect.poll(() => cardOf("alice").getAttribute("data-refreshed-by")).toBe("you")
    expect(Number(await cardOf("alice").getAttribute("data-version"))).toBeGreaterThan(version)
    expect(Number(await cardOf("alice").getAttribute("data-expires"))).toBeGreaterThanOrEqual(expires)
    expect(await cardOf("alice").locator(".refresh-line").textContent()).toContain("on request")
    await expect.poll(() => page.locator("#activity").textContent()).toContain("tokens refreshed on request")
    expect(navigations).toBe(before)
    await shot("03-refreshed")
  })

  it("unlinks one account and revokes it at the provider", async () => {
    const card = cardOf("jane_doe")
    const unlink = card.getByRole("button", { name: "Unlink" })
    await unlink.click()
    const confirm = card.getByRole("button", { name: "Confirm unlink" })
    await expect.poll(() => confirm.count()).toBe(1)
    // The page updates live while the unlink waits for its confirmation (here: another card is
    // refreshed, and every card is drawn again): the confirmation keeps waiting.
    const version = Number(await cardOf("alice").getAttribute("data-version"))
    await cardOf("alice").getByRole("button", { name: "Refresh now" }).click()
    await expect
      .poll(async () => Number(await cardOf("alice").getAttribute("data-version")))
      .toBeGreaterThan(version)
    expect(await confirm.count()).toBe(1)
    await confirm.click()
    await expect.poll(() => cards().count()).toBe(3)
    expect(await group("heygen").locator(".empty").textContent()).toContain("No HeyGen account linked yet")
    await expect.poll(() => page.locator(".toast").last().textContent()).toContain("HeyGen revoked the grant")
    const grants = sandboxes().heygen!.registry.grants({ accountId: "jane_doe" })
    expect(grants.length).toBeGreaterThan(0)
    expect(grants.every((g) => g.revoked)).toBe(true)
    await shot("04-unlinked")
  })

  it("shows needs_reauth with a Reconnect button when the provider stops accepting the grant", async () => {
    const card = cardOf("sbxLocation002")
    await card.locator("details.tools summary").click()
    await card.getByRole("button", { name: "Revoke at HighLevel" }).click()
    await expect
      .poll(() => page.locator(".toast").last().textContent())
      .toContain("HighLevel ended the grant")
    await cardOf("sbxLocation002").getByRole("button", { name: "Refresh now" }).click()
    await expect.poll(() => cardOf("sbxLocation002").getAttribute("data-status")).toBe("needs_reauth")
    const notice = await cardOf("sbxLocation002").locator(".notice").textContent()
    expect(notice).toContain("Reconnect needed")
    expect(notice).toContain("HighLevel rejected the refresh token")
    expect(await cardOf("sbxLocation002").locator(".pill").textContent()).toBe("Needs reconnect")
    await shot("05-needs-reconnect")

    await cardOf("sbxLocation002").getByRole("button", { name: "Reconnect" }).click()
    await page.locator('input[name="account"][value="sbxLocation002"]').check()
    await page.locator('button[value="approve"]').click()
    await page.waitForURL(`${started.demo.url}/`)
    expect(await page.locator(".flash-success").textContent()).toContain("HighLevel account reconnected")
    expect(await cardOf("sbxLocation002").getAttribute("data-status")).toBe("active")
    expect(await cards().count()).toBe(3)
  })

  it("explains a denied consent in plain words and links nothing", async () => {
    await linkOnSandbox("heygen", "walt_wallet", "deny")
    const flash = page.locator(".flash-error")
    expect(await flash.textContent()).toContain(
      "You declined on HeyGen’s consent page, so nothing was linked"
    )
    expect(await cards().count()).toBe(3)
    await shot("06-consent-denied")
  })

  it("a second demo user has their own accounts; a token living seconds refreshes by itself, live", async () => {
    await page.getByRole("button", { name: "Grace" }).click()
    await page.waitForURL(`${started.demo.url}/`)
    expect(await page.locator("h1").textContent()).toContain("Grace’s linked accounts")
    expect(await cards().count()).toBe(0)

    // HeyGen now issues access tokens that live 4 seconds.
    sandboxes().heygen!.setLifetimes({ accessTokenSeconds: 4 })
    await linkOnSandbox("heygen", "walt_wallet")
    const card = () => cardOf("walt_wallet")
    expect(await card().locator(".facts").textContent()).toContain("$42.50")
    await expect.poll(() => page.locator("[data-live]").getAttribute("data-live")).toBe("on")
    const expires = Number(await card().getAttribute("data-expires"))
    const before = navigations

    // No reload, no click: the Refresher refreshes it and the page shows it.
    await expect
      .poll(() => card().getAttribute("data-refreshed-by"), { timeout: 30_000, interval: 250 })
      .toBe("refresher")
    await expect
      .poll(async () => Number(await card().getAttribute("data-expires")), { timeout: 30_000 })
      .toBeGreaterThan(expires)
    expect(await card().locator(".refresh-line").textContent()).toContain("by the background Refresher")
    await expect
      .poll(() => page.locator("#activity").textContent())
      .toContain("tokens refreshed by the background Refresher")
    expect(navigations).toBe(before)
    expect(await card().getAttribute("data-status")).toBe("active")
    await shot("07-refreshed-by-itself")

    // Ada's accounts are not Grace's.
    const ada = await started.demo.latchkey.connections("ada")
    const grace = await started.demo.latchkey.connections("grace")
    expect(ada.map((c) => c.accountId).sort()).toEqual(["alice", "sbxLocation001", "sbxLocation002"])
    expect(grace.map((c) => c.accountId)).toEqual(["walt_wallet"])
  })
})
