/**
 * What a visitor trips on (issue 18, items 1–10), in Debian's Chromium: a long account name at 1280
 * and 420 px, an e-mail login at Example Corp, HeyGen's reset date, revoking at HeyGen, HighLevel's
 * location-only page, the favicon and the look of every authorize, login and consent page (no
 * request leaves 127.0.0.1), contrast and nothing readable only through a tooltip, and Cancel on the
 * Example Corp login page. axe-core runs on the board and on every page of the flows: no serious or
 * critical violation. Screenshots go to test-artifacts/demo/.
 */
import { join } from "node:path"
import AxeBuilder from "@axe-core/playwright"
import type { Browser, BrowserContext, Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { launchChromium, offlineContext, SCREENSHOTS, type Started, startTestDemo } from "./support.ts"

let started: Started
let browser: Browser
let context: BrowserContext
let page: Page
/** Every request the pages made that did not go to 127.0.0.1, and every answer of 400 or more. */
const foreign: Array<string> = []
const failed: Array<string> = []

beforeAll(async () => {
  started = await startTestDemo()
  browser = await launchChromium()
  context = await offlineContext(browser)
  context.on("request", (request) => {
    const url = new URL(request.url())
    if (url.protocol !== "data:" && url.hostname !== "127.0.0.1") foreign.push(request.url())
  })
  context.on("response", (response) => {
    if (response.status() >= 400) failed.push(`${response.status()} ${response.url()}`)
  })
  page = await context.newPage()
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
const group = (providerId: string) => page.locator(`#group-${providerId}`)
const cardOf = (accountId: string) => page.locator(`[data-account-id="${accountId}"]`)

/** axe-core on the current page: no serious or critical violation (named in the failure). */
const expectAccessible = async (what: string) => {
  const results = await new AxeBuilder({ page }).analyze()
  const bad = results.violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${what}: ${v.id} (${v.impact}) on ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`)
  expect(bad).toEqual([])
}

/** The page does not scroll sideways, and nothing in a card reaches past the card. */
const expectNoSidewaysScroll = async () => {
  const widths = await page.evaluate(() => ({
    scroll: document.scrollingElement!.scrollWidth,
    viewport: document.documentElement.clientWidth
  }))
  expect(widths.scroll).toBeLessThanOrEqual(widths.viewport)
  const outside = await page.locator("[data-connection-id]").evaluateAll((cards) =>
    cards.flatMap((card) => {
      const box = card.getBoundingClientRect()
      return [...card.querySelectorAll(".pill, [data-countdown], h3, .facts dd, .card-title p")]
        .filter((el) => {
          const r = el.getBoundingClientRect()
          return r.left < box.left - 0.5 || r.right > box.right + 0.5
        })
        .map((el) => `${card.getAttribute("data-account-id")}: ${el.textContent}`)
    })
  )
  expect(outside).toEqual([])
}

/** No text cut with an ellipsis (readable only through a tooltip). */
const expectNothingTruncated = async () => {
  const cut = await page.evaluate(() =>
    [...document.querySelectorAll("main *")]
      .filter((el) => {
        const style = getComputedStyle(el)
        return style.textOverflow === "ellipsis" && el.scrollWidth > el.clientWidth
      })
      .map((el) => el.textContent)
  )
  expect(cut).toEqual([])
  expect(await page.locator(".scopes[title], .facts [title]").count()).toBe(0)
}

const LONG_LOGIN = "ada.lovelace.analytical-engine@example-corporation.co.uk"

describe("what a visitor trips on", () => {
  it("the board, and HeyGen's authorize page: styled, no request beyond 127.0.0.1, a favicon, accessible", async () => {
    await page.goto(started.demo.url)
    const icon = await page.request.get(`${started.demo.url}/favicon.ico`)
    expect(icon.status()).toBe(200)
    expect(icon.headers()["content-type"]).toContain("image/svg+xml")
    await expectAccessible("empty board")

    await group("heygen").locator(".link-form button").click()
    await page.waitForURL((url) => url.origin !== started.demo.url)
    // The demo's look (a white panel with rounded corners, system fonts), not browser defaults.
    const look = await page.evaluate(() => {
      const main = getComputedStyle(document.querySelector("main")!)
      return {
        radius: main.borderRadius,
        background: main.backgroundColor,
        font: getComputedStyle(document.body).fontFamily
      }
    })
    expect(look).toMatchObject({ radius: "16px", background: "rgb(255, 255, 255)" })
    expect(look.font).toContain("system-ui")
    await expectAccessible("HeyGen authorize page")
    await shot("10-heygen-authorize")
    await page.locator('input[name="account"][value="jane_doe"]').check()
    await page.locator('button[value="approve"]').click()
    await page.waitForURL(`${started.demo.url}/`)
  })

  it("HeyGen's credits reset at a date still to come (the sandbox follows the clock)", async () => {
    const facts = cardOf("jane_doe").locator(".facts")
    await expect.poll(() => facts.textContent()).toContain("Resets")
    const text = await facts.locator("div", { hasText: "Resets" }).locator("dd").textContent()
    const resets = Date.parse(`${text} UTC`)
    expect(Number.isNaN(resets)).toBe(false)
    expect(resets).toBeGreaterThan(Date.now())
    expect(resets - Date.now()).toBeLessThan(32 * 86_400_000)
  })

  it("HighLevel's page offers only locations, the app's distribution (no agency that ends in an error)", async () => {
    await group("highlevel").locator(".link-form button").click()
    await page.waitForURL((url) => url.origin !== started.demo.url)
    const offered = await page
      .locator('input[name="account"]')
      .evaluateAll((inputs) => inputs.map((i) => (i as HTMLInputElement).value))
    expect(offered).toEqual(["sbxLocation001", "sbxLocation002", "sbxLocation003"])
    expect(await page.locator("main").textContent()).not.toContain("Agency")
    await expectAccessible("HighLevel authorize page")
    await shot("11-highlevel-authorize")
    // The page refuses an account it did not offer, too.
    const refused = await page.evaluate(async () => {
      const form = document.querySelector("form")!
      const data = new URLSearchParams(new FormData(form) as unknown as Record<string, string>)
      data.set("account", "sbxCompany0001")
      data.set("decision", "approve")
      const r = await fetch(form.action, { method: "POST", body: data, redirect: "manual" })
      return { status: r.status, body: await r.text() }
    })
    expect(refused.status).toBe(400)
    expect(refused.body).toContain("Choose an account")
  })

  it("Cancel on the Example Corp login page says so (not 'declined on the consent page')", async () => {
    await page.goto(started.demo.url)
    await group("example").locator(".link-form button").click()
    await page.locator('input[name="login"]').waitFor()
    await expectAccessible("Example Corp login page")
    await shot("12-example-login")
    await page.getByRole("link", { name: "Cancel" }).click()
    await page.waitForURL(`${started.demo.url}/`)
    const flash = await page.locator(".flash-error").textContent()
    expect(flash).toContain("You cancelled signing in at Example Corp, so nothing was linked")
    expect(flash).not.toContain("consent page")
    expect(await group("example").locator("[data-connection-id]").count()).toBe(0)
  })

  it("an e-mail login at Example Corp is its own address; a long one fits its card at 1280 and 420 px", async () => {
    await group("example").locator(".link-form button").click()
    await page.locator('input[name="login"]').fill(LONG_LOGIN)
    await page.locator('input[name="password"]').fill("any password")
    await page.getByRole("button", { name: "Sign-in" }).click()
    await page.getByRole("button", { name: "Continue" }).waitFor()
    await expectAccessible("Example Corp consent page")
    await shot("13-example-consent")
    await page.getByRole("button", { name: "Continue" }).click()
    await page.waitForURL(`${started.demo.url}/`)
    const card = cardOf(LONG_LOGIN)
    expect(await card.locator("h3").textContent()).toBe(LONG_LOGIN)
    expect(await page.locator(".flash-success").textContent()).not.toContain("@example.com@")

    await page.setViewportSize({ width: 1280, height: 900 })
    await expectNoSidewaysScroll()
    await expectNothingTruncated()
    await expectAccessible("board at 1280 px")
    await shot("14-board-1280")
    await page.setViewportSize({ width: 420, height: 900 })
    await expectNoSidewaysScroll()
    await expectNothingTruncated()
    await expectAccessible("board at 420 px")
    await shot("15-board-420")
    await page.setViewportSize({ width: 1280, height: 900 })
  })

  it("a real transient fault at the HeyGen sandbox: the card turns Degraded with its reason, then Active again", async () => {
    const card = () => cardOf("jane_doe")
    const heygen = started.demo.providers.sandboxes.heygen!
    const refused = () => heygen.countCalls({ endpoint: "refresh", status: 503 })
    expect(refused()).toBe(0)
    expect(await card().getAttribute("data-health")).toBe("active")
    await card().locator("details.tools summary").click()
    await card().getByRole("button", { name: "Make HeyGen flaky" }).click()
    await expect.poll(() => page.locator(".toast").last().textContent()).toContain("HeyGen is flaky")

    await card().getByRole("button", { name: "Refresh now" }).click()
    await expect
      .poll(() => page.locator(".toast").last().textContent(), { timeout: 15_000 })
      .toContain("Refresh failed")
    // Every attempt of that refresh met the sandbox's 503: the log says so, and the card shows it.
    expect(refused()).toBe(4)
    await expect.poll(() => card().getAttribute("data-health"), { timeout: 5_000 }).toBe("degraded")
    expect(await card().getAttribute("data-health-reason")).toBe("transient")
    expect(await card().getAttribute("data-status")).toBe("active")
    expect(await card().locator(".pill").textContent()).toBe("Degraded")
    const notice = (await card().locator('[data-health-notice="degraded"]').textContent()) ?? ""
    expect(notice).toContain("HeyGen could not be reached or answered with a server error")
    expect(notice).toMatch(/\d+ refresh attempts? failed/)
    expect(notice).toContain("Reason: transient")
    expect(await page.locator("#activity").textContent()).toContain(
      "HeyGen · jane@example.com: refresh attempt failed (transient)"
    )
    // The chart counts the failed refreshes from the web process's metrics.
    await expect
      .poll(() => page.locator("#chart-heygen .bar-failed").count(), { timeout: 5_000 })
      .toBeGreaterThan(0)
    await expectAccessible("board with a degraded card")
    await page.setViewportSize({ width: 420, height: 900 })
    await expectNoSidewaysScroll()
    await page.setViewportSize({ width: 1280, height: 900 })
    await shot("17-degraded-heygen")

    // The sandbox answers again: the next refresh succeeds and the card is Active.
    await card().getByRole("button", { name: "Refresh now" }).click()
    await expect.poll(() => card().getAttribute("data-health"), { timeout: 5_000 }).toBe("active")
    expect(await card().locator(".pill").textContent()).toBe("Active")
    expect(await card().locator("[data-health-notice]").count()).toBe(0)
    expect(refused()).toBe(4)
    // The engine's own `recovered` event, in the same write as the new tokens: one failed refresh
    // (its 4 attempts, each a 503) before.
    await expect
      .poll(() => page.locator("#activity li").first().textContent(), { timeout: 5_000 })
      .toContain("HeyGen · jane@example.com: healthy again after 1 failed refresh")
    expect(await page.locator("#activity").textContent()).toContain(
      "HeyGen · jane@example.com: tokens refreshed on request (Refresh now)"
    )
    // The chart follows the metrics (read every second here): the successful refresh is counted.
    await expect
      .poll(async () => Number(await page.locator("#chart-heygen").getAttribute("data-refreshes")), {
        timeout: 5_000
      })
      .toBeGreaterThan(0)
    await shot("18-recovered-heygen")
    await card().locator("details.tools summary").click()
  })

  it("after 'Revoke at HeyGen' the card and the toast agree; no old API response or live countdown stays", async () => {
    const card = () => cardOf("jane_doe")
    await card().getByRole("button", { name: "Call the API" }).click()
    await expect.poll(() => card().locator("[data-api-result]").isVisible()).toBe(true)
    await card().locator("details.tools summary").click()
    await card().getByRole("button", { name: "Revoke at HeyGen" }).click()
    await expect.poll(() => page.locator(".toast").last().textContent()).toContain("HeyGen ended the grant")
    await expect.poll(() => card().getAttribute("data-status")).toBe("needs_reauth")
    const toast = await page.locator(".toast").last().textContent()
    // The card says reconnect (Refresh disabled): so does the toast.
    expect(toast).toContain("Reconnect")
    expect(toast).not.toContain("Refresh now")
    expect(await card().getByRole("button", { name: "Refresh now" }).isDisabled()).toBe(true)
    expect(await card().getByRole("button", { name: "Reconnect" }).isVisible()).toBe(true)
    expect(await card().locator("[data-api-result]").isVisible()).toBe(false)
    expect(await card().locator('.timeline[data-kind="access"] [data-countdown]').count()).toBe(0)
    expect(await card().locator('.timeline[data-kind="access"]').textContent()).toContain("not usable")
    await expectAccessible("board with a card to reconnect")
    await shot("16-revoked-at-heygen")
  })

  it("no page of the flows asked for anything beyond 127.0.0.1 (fonts, icons) or got an error", async () => {
    expect(foreign).toEqual([])
    // The 400 of the refused agency approval and the 422 of the refresh that met the sandbox's 503s
    // are the only expected errors.
    expect(
      failed.filter((f) => !f.includes("/oauth/chooselocation") && !/^422 .*\/refresh$/.test(f))
    ).toEqual([])
  })
})
