/**
 * A fetch-based stand-in for a person at a browser: loads an authorize page, fills its form the way a
 * browser would (hidden inputs, the checked radio, selected options, text inputs), picks an account
 * and presses Approve or Deny, and returns the URL the server redirects to (the app's callback). No
 * shortcut endpoints: whatever a real browser can submit, and nothing else.
 */

export class SandboxDriverError extends Error {
  /** HTTP status of the page that stopped the driver, when there was one. */
  readonly status: number | undefined
  constructor(message: string, status?: number) {
    super(message)
    this.name = "SandboxDriverError"
    this.status = status
  }
}

export interface ApproveOptions {
  /** The account to choose: the value of an `account` radio or option, or its visible label. */
  readonly account?: string | undefined
  /** Press Deny instead of Approve. */
  readonly deny?: boolean | undefined
  /** Other fields to set (e.g. `{ location: "loc_1" }`); names must exist in the form. */
  readonly fields?: Readonly<Record<string, string>> | undefined
  /** The fetch to use (default globalThis.fetch). */
  readonly fetch?: typeof fetch | undefined
  /** Redirects to follow inside the server before reaching the callback (default 5). */
  readonly maxRedirects?: number | undefined
}

const decode = (s: string): string =>
  s
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCodePoint(Number(n)))
    .replace(/&#x([0-9a-f]+);/gi, (_, n: string) => String.fromCodePoint(Number.parseInt(n, 16)))
    .replaceAll("&quot;", '"')
    .replaceAll("&#39;", "'")
    .replaceAll("&lt;", "<")
    .replaceAll("&gt;", ">")
    .replaceAll("&amp;", "&")

const attrs = (tag: string): Record<string, string> => {
  const out: Record<string, string> = {}
  const re = /([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g
  const inner = tag.replace(/^<\s*[a-zA-Z]+/, "").replace(/\/?>$/, "")
  for (const m of inner.matchAll(re)) out[m[1]!.toLowerCase()] = decode(m[2] ?? m[3] ?? m[4] ?? "")
  return out
}

const stripTags = (s: string) =>
  decode(s.replace(/<[^>]*>/g, " "))
    .replace(/\s+/g, " ")
    .trim()

/** A form as a browser would submit it. */
export interface ParsedForm {
  readonly action: string
  readonly method: string
  /** Fields a plain submission sends (hidden, text, checked radios and checkboxes, selected options). */
  readonly fields: Array<[string, string]>
  /** Radio and option choices per name: value and visible label. */
  readonly choices: Record<string, Array<{ readonly value: string; readonly label: string }>>
  /** Submit buttons: name, value, label. */
  readonly buttons: Array<{
    readonly name: string | undefined
    readonly value: string
    readonly label: string
  }>
}

/** Parse the forms of an HTML page (enough HTML for server-rendered forms; no scripts). */
export const parseForms = (page: string): Array<ParsedForm> => {
  const forms: Array<ParsedForm> = []
  for (const m of page.matchAll(/<form\b[^>]*>([\s\S]*?)<\/form>/gi)) {
    const formTag = m[0].match(/^<form\b[^>]*>/i)![0]
    const a = attrs(formTag)
    const body = m[1]!
    const fields: Array<[string, string]> = []
    const choices: ParsedForm["choices"] = {}
    const buttons: ParsedForm["buttons"] = []
    // Labels wrapping a radio give it its visible label.
    const radioLabels = new Map<string, string>()
    for (const l of body.matchAll(/<label\b[^>]*>([\s\S]*?)<\/label>/gi)) {
      const input = l[1]!.match(/<input\b[^>]*>/i)
      if (input) {
        const ia = attrs(input[0])
        if (ia.name !== undefined) radioLabels.set(`${ia.name}\u0000${ia.value ?? "on"}`, stripTags(l[1]!))
      }
    }
    for (const t of body.matchAll(/<input\b[^>]*>/gi)) {
      const ia = attrs(t[0])
      const type = (ia.type ?? "text").toLowerCase()
      const name = ia.name
      if ("disabled" in ia) continue
      if (type === "submit") {
        buttons.push({ name, value: ia.value ?? "", label: ia.value ?? "" })
        continue
      }
      if (name === undefined) continue
      const value = ia.value ?? (type === "checkbox" || type === "radio" ? "on" : "")
      if (type === "radio" || type === "checkbox") {
        const list = choices[name] ?? []
        choices[name] = list
        list.push({ value, label: radioLabels.get(`${name}\u0000${value}`) ?? value })
        if ("checked" in ia) fields.push([name, value])
        continue
      }
      if (type === "button" || type === "reset" || type === "file" || type === "image") continue
      fields.push([name, value])
    }
    for (const s of body.matchAll(/<select\b([^>]*)>([\s\S]*?)<\/select>/gi)) {
      const sa = attrs(`<select ${s[1]}>`)
      if (sa.name === undefined || "disabled" in sa) continue
      const options = [...s[2]!.matchAll(/<option\b([^>]*)>([\s\S]*?)(?=<option\b|$)/gi)].map((o) => {
        const oa = attrs(`<option ${o[1]}>`)
        const label = stripTags(o[2]!.replace(/<\/option>[\s\S]*$/i, ""))
        return { value: oa.value ?? label, label, selected: "selected" in oa }
      })
      choices[sa.name] = options.map(({ value, label }) => ({ value, label }))
      const chosen = options.find((o) => o.selected) ?? options[0]
      if (chosen) fields.push([sa.name, chosen.value])
    }
    for (const b of body.matchAll(/<button\b([^>]*)>([\s\S]*?)<\/button>/gi)) {
      const ba = attrs(`<button ${b[1]}>`)
      if ((ba.type ?? "submit").toLowerCase() !== "submit" || "disabled" in ba) continue
      buttons.push({ name: ba.name, value: ba.value ?? "", label: stripTags(b[2]!) })
    }
    forms.push({
      action: a.action ?? "",
      method: (a.method ?? "get").toUpperCase(),
      fields,
      choices,
      buttons
    })
  }
  return forms
}

const pageError = (page: string): string => {
  const marked = page.match(/<[^>]*id="error"[^>]*>([\s\S]*?)<\//i)
  return stripTags(marked ? marked[1]! : (page.match(/<body\b[^>]*>([\s\S]*)<\/body>/i)?.[1] ?? page)).slice(
    0,
    300
  )
}

/**
 * Walk an authorize page as a person would: load it, choose the account, press Approve (or Deny),
 * and resolve with the callback URL the server redirects to (`...?code=...&state=...` or
 * `...?error=access_denied&state=...`). A redirect straight from the first request (an error the
 * server reports to the app) resolves with that URL too. Rejects with `SandboxDriverError` when the
 * page shows an error or lacks what was asked for.
 */
export const approve = async (authorizeUrl: string | URL, options: ApproveOptions = {}): Promise<string> => {
  const doFetch = options.fetch ?? fetch
  const maxRedirects = options.maxRedirects ?? 5
  let url = new URL(authorizeUrl)
  const origin = url.origin
  let response = await doFetch(url, { redirect: "manual" })
  for (let hops = 0; ; hops++) {
    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get("location")
      await response.body?.cancel()
      if (!location) throw new SandboxDriverError("redirect without a Location header", response.status)
      const next = new URL(location, url)
      // Leaving the server: that is the app's callback.
      if (next.origin !== origin || hops >= maxRedirects) return next.toString()
      url = next
      response = await doFetch(url, { redirect: "manual" })
      continue
    }
    break
  }
  const body = await response.text()
  if (response.status !== 200) {
    throw new SandboxDriverError(
      `authorize page answered ${response.status}: ${pageError(body)}`,
      response.status
    )
  }
  const form = parseForms(body).find((f) => f.buttons.length > 0)
  if (form === undefined) throw new SandboxDriverError("the authorize page has no form to submit")
  const fields = new Map<string, string>(form.fields)
  if (options.account !== undefined) {
    const choices = form.choices.account ?? []
    const choice =
      choices.find((c) => c.value === options.account) ??
      choices.find((c) => c.label.includes(options.account!))
    if (choice === undefined) {
      throw new SandboxDriverError(`the authorize page offers no account "${options.account}"`)
    }
    fields.set("account", choice.value)
  }
  for (const [name, value] of Object.entries(options.fields ?? {})) {
    const known = fields.has(name) || name in form.choices
    if (!known) throw new SandboxDriverError(`the authorize page has no field "${name}"`)
    fields.set(name, value)
  }
  const wanted = options.deny ? /deny|cancel|reject|decline/i : /approve|allow|authorize|accept|continue/i
  const button = form.buttons.find((b) => wanted.test(b.label) || wanted.test(b.value))
  if (button === undefined) {
    throw new SandboxDriverError(`the authorize page has no ${options.deny ? "Deny" : "Approve"} button`)
  }
  const submission = new URLSearchParams([...fields])
  if (button.name !== undefined) submission.append(button.name, button.value)
  const action = new URL(form.action || url.toString(), url)
  let posted: Response
  if (form.method === "POST") {
    posted = await doFetch(action, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: submission.toString(),
      redirect: "manual"
    })
  } else {
    action.search = submission.toString()
    posted = await doFetch(action, { redirect: "manual" })
  }
  const location = posted.headers.get("location")
  if (posted.status >= 300 && posted.status < 400 && location) {
    await posted.body?.cancel()
    return new URL(location, action).toString()
  }
  const text = await posted.text()
  throw new SandboxDriverError(
    `submitting the authorize page answered ${posted.status}: ${pageError(text)}`,
    posted.status
  )
}
