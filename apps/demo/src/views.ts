/**
 * The pages, as HTML strings. Every value from a connection, a provider or the user is escaped. The
 * browser gets connection summaries (no token values) and API response bodies, nothing else.
 */
import type { Connection } from "@latchkey/core"
import { lastErrorText, type RefreshedBy, refreshedByText } from "./messages.ts"
import type { Fact, ProviderSetup } from "./providers.ts"
import { type Flash, type Session, USERS } from "./sessions.ts"

type Summary = Connection.ConnectionSummary

export const escapeHtml = (value: unknown): string =>
  String(value).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!
  )

const attr = escapeHtml

export interface CardView {
  readonly summary: Summary
  readonly setup: ProviderSetup
  readonly facts: ReadonlyArray<Fact>
  /** Live facts could not be read (plain words). */
  readonly factsError: string | undefined
  readonly refreshedBy: RefreshedBy | undefined
  /** Issued by a sandbox before this run of the demo: the sandbox has forgotten the grant. */
  readonly fromEarlierRun: boolean
}

export interface GroupView {
  readonly setup: ProviderSetup
  readonly cards: ReadonlyArray<CardView>
}

export interface ActivityEntry {
  readonly at: number
  readonly kind: "success" | "error" | "info"
  readonly text: string
}

export interface PageView {
  readonly session: Session
  readonly groups: ReadonlyArray<GroupView>
  readonly activity: ReadonlyArray<ActivityEntry>
  readonly flash: Flash | undefined
  readonly refreshAheadMs: number
  readonly sandboxMode: boolean
  readonly realProviders: ReadonlyArray<string>
  readonly now: number
}

const clock = (ms: number) => new Date(ms).toISOString().slice(11, 19)
const time = (ms: number, text = clock(ms)) =>
  `<time datetime="${new Date(ms).toISOString()}" data-at="${ms}">${escapeHtml(text)} UTC</time>`

const csrfField = (session: Session) => `<input type="hidden" name="_csrf" value="${attr(session.csrf)}">`

const initials = (label: string) => {
  const words = label
    .replace(/@.*/, "")
    .split(/[\s._-]+/)
    .filter((w) => w.length > 0)
  return ((words[0]?.[0] ?? "?") + (words[1]?.[0] ?? "")).toUpperCase()
}

const statusPill: Record<Summary["status"], string> = {
  active: `<span class="pill pill-active">Active</span>`,
  needs_reauth: `<span class="pill pill-warn">Needs reconnect</span>`,
  revoked: `<span class="pill pill-error">Revoked</span>`
}

/** Human duration: `45 s`, `3 min`, `5 h`, `364 days`. */
export const duration = (ms: number): string => {
  const s = Math.round(Math.abs(ms) / 1000)
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.round(s / 60)} min`
  if (s < 172_800) return `${Math.round(s / 3600)} h`
  return `${Math.round(s / 86_400)} days`
}

const remaining = (end: number, now: number) =>
  end > now ? `expires in ${duration(end - now)}` : `expired ${duration(now - end)} ago`

/** When the background Refresher refreshes: at most half the lifetime (or `refreshAheadMs`) early. */
export const refreshDue = (start: number, end: number, refreshAheadMs: number) =>
  end - Math.min(refreshAheadMs, Math.max(0, end - start) / 2)

const timeline = (
  kind: "access" | "refresh",
  name: string,
  start: number,
  end: number | undefined,
  now: number,
  note: string,
  due: number | undefined
) => {
  if (end === undefined) {
    return (
      `<div class="timeline timeline-open" data-kind="${kind}">` +
      `<div class="timeline-head"><span class="timeline-name">${escapeHtml(name)}</span>` +
      `<span class="timeline-left">${escapeHtml(note)}</span></div>` +
      `<div class="track"><div class="fill fill-open"></div></div></div>`
    )
  }
  return (
    `<div class="timeline" data-kind="${kind}" data-start="${start}" data-end="${end}"${due !== undefined ? ` data-due="${due}"` : ""}>` +
    `<div class="timeline-head"><span class="timeline-name">${escapeHtml(name)}</span>` +
    `<span class="timeline-left" data-countdown>${escapeHtml(remaining(end, now))}</span></div>` +
    `<div class="track" role="img" aria-label="${attr(`${name}: issued ${clock(start)}, ${remaining(end, now)}`)}">` +
    `<div class="fill"></div>${due !== undefined ? `<div class="due" title="The background Refresher refreshes from here"></div>` : ""}</div>` +
    `<div class="timeline-foot"><span>issued ${time(start)}</span>` +
    `<span>until ${end - start > 172_800_000 ? escapeHtml(new Date(end).toISOString().slice(0, 10)) : time(end)}</span></div>` +
    `${note ? `<p class="timeline-note">${escapeHtml(note)}</p>` : ""}</div>`
  )
}

const facts = (view: CardView) => {
  if (view.facts.length === 0 && view.factsError === undefined) return ""
  return (
    `<dl class="facts">${view.facts.map((f) => `<div><dt>${escapeHtml(f.label)}</dt><dd>${escapeHtml(f.value)}</dd></div>`).join("")}</dl>` +
    `${view.factsError ? `<p class="facts-error">${escapeHtml(view.factsError)}</p>` : ""}`
  )
}

const action = (session: Session, path: string, js: string, label: string, className = "btn", extra = "") =>
  `<form method="post" action="${attr(path)}" data-js="${js}">${csrfField(session)}` +
  `<button type="submit" class="${className}"${extra}>${escapeHtml(label)}</button></form>`

export const card = (view: CardView, session: Session, now: number, refreshAheadMs: number): string => {
  const c = view.summary
  const name = view.setup.name
  const base = `/connections/${encodeURIComponent(c.id)}`
  const active = c.status === "active"
  const accessStart = c.obtainedAt
  const due =
    active && c.hasRefreshToken && c.expiresAt !== undefined
      ? refreshDue(accessStart, c.expiresAt, refreshAheadMs)
      : undefined
  const refreshNote = !c.hasRefreshToken
    ? "no refresh token"
    : view.setup.provider.refreshTokenPolicy === "rotating"
      ? "single-use: replaced at every refresh"
      : "reusable"
  const forgotten = view.fromEarlierRun
    ? `The ${name} sandbox keeps its grants in memory and forgot this one when the demo restarted.`
    : undefined
  const problem = [lastErrorText(c, name), forgotten].filter((p) => p !== undefined).join(" ") || undefined
  const lastRefresh =
    c.lastRefreshAt === undefined
      ? `<p class="refresh-line">Not refreshed yet · linked ${time(c.createdAt)}</p>`
      : `<p class="refresh-line">Last refresh ${time(c.lastRefreshAt)}${view.refreshedBy ? ` <span class="by">${escapeHtml(refreshedByText[view.refreshedBy])}</span>` : ""}</p>`
  return (
    `<article class="card card-${attr(c.status)}" id="conn-${attr(c.id)}" data-connection-id="${attr(c.id)}" ` +
    `data-provider="${attr(c.providerId)}" data-account-id="${attr(c.accountId)}" data-status="${attr(c.status)}" ` +
    `data-version="${c.version}" data-last-refresh="${c.lastRefreshAt ?? ""}" data-expires="${c.expiresAt ?? ""}" ` +
    `data-refreshed-by="${view.refreshedBy ?? ""}">` +
    `<header class="card-head"><div class="avatar avatar-${attr(c.providerId)}" aria-hidden="true">${escapeHtml(initials(c.label))}</div>` +
    `<div class="card-title"><h3>${escapeHtml(c.label)}</h3><p>${escapeHtml(name)} · ${escapeHtml(c.accountId)}</p></div>` +
    `${statusPill[c.status]}</header>` +
    (!active
      ? `<div class="notice notice-warn" role="status"><p><strong>Reconnect needed.</strong> ${escapeHtml(problem ?? `${name} must be linked again.`)}</p>` +
        action(
          session,
          `/link/${encodeURIComponent(c.providerId)}`,
          "navigate",
          "Reconnect",
          "btn btn-primary"
        ) +
        `</div>`
      : forgotten
        ? `<div class="notice notice-warn" role="status"><p><strong>Linked before a restart.</strong> ${escapeHtml(forgotten)} Its next refresh will be refused; reconnect to link it again.</p>` +
          action(
            session,
            `/link/${encodeURIComponent(c.providerId)}`,
            "navigate",
            "Reconnect",
            "btn btn-primary"
          ) +
          `</div>`
        : problem
          ? `<div class="notice notice-info" role="status"><p>${escapeHtml(problem)}</p></div>`
          : "") +
    facts(view) +
    `<div class="timelines">` +
    timeline("access", "Access token", accessStart, c.expiresAt, now, "", due) +
    (c.hasRefreshToken
      ? timeline(
          "refresh",
          "Refresh token",
          accessStart,
          c.refreshExpiresAt,
          now,
          c.refreshExpiresAt === undefined ? "does not expire" : refreshNote,
          undefined
        )
      : `<div class="timeline timeline-open" data-kind="refresh"><div class="timeline-head"><span class="timeline-name">Refresh token</span><span class="timeline-left">none</span></div></div>`) +
    `</div>` +
    lastRefresh +
    `<div class="actions">` +
    action(session, `${base}/call`, "call", "Call the API", "btn", active ? "" : " disabled") +
    action(session, `${base}/refresh`, "refresh", "Refresh now", "btn", active ? "" : " disabled") +
    action(session, `${base}/unlink`, "unlink", "Unlink", "btn btn-danger") +
    `</div>` +
    `<section class="api-result" data-api-result hidden></section>` +
    (view.setup.revokeAtProvider && active
      ? `<details class="tools"><summary>Sandbox tools</summary>` +
        `<p>Make ${escapeHtml(name)} end this grant, as if the user removed the app there. The next refresh is refused.</p>` +
        action(session, `${base}/revoke-at-provider`, "revoke", `Revoke at ${name}`, "btn btn-small") +
        `</details>`
      : "") +
    `</article>`
  )
}

const group = (view: GroupView, session: Session, now: number, refreshAheadMs: number) => {
  const s = view.setup
  const count = view.cards.length
  return (
    `<section class="group group-${attr(s.id)}" id="group-${attr(s.id)}" data-provider="${attr(s.id)}" aria-labelledby="group-${attr(s.id)}-title">` +
    `<header class="group-head"><span class="mark mark-${attr(s.id)}" aria-hidden="true">${escapeHtml(s.monogram)}</span>` +
    `<div class="group-title"><h2 id="group-${attr(s.id)}-title">${escapeHtml(s.name)} <span class="count">${count}</span></h2>` +
    `<p>${escapeHtml(s.tagline)}</p></div>` +
    `<span class="badge badge-${s.mode}">${s.mode === "sandbox" ? "Sandbox" : "Live"}</span></header>` +
    `<p class="scopes" title="${attr(s.displayScopes.join(" "))}">` +
    (s.displayScopes.length > 0
      ? `Scopes ${s.displayScopes.map((x) => `<code>${escapeHtml(x)}</code>`).join(" ")}`
      : "No scopes requested") +
    `</p>` +
    `<div class="cards">` +
    (count === 0
      ? `<p class="empty">No ${escapeHtml(s.name)} account linked yet.</p>`
      : view.cards.map((c) => card(c, session, now, refreshAheadMs)).join("")) +
    `</div>` +
    `<form method="post" action="/link/${attr(s.id)}" class="link-form" data-js="navigate">${csrfField(session)}` +
    `<button type="submit" class="btn btn-link">${count === 0 ? "Link an account" : "Link another account"}</button></form>` +
    `</section>`
  )
}

export const accounts = (
  groups: ReadonlyArray<GroupView>,
  session: Session,
  now: number,
  refreshAheadMs: number
): string => groups.map((g) => group(g, session, now, refreshAheadMs)).join("")

export const activityItem = (entry: ActivityEntry) =>
  `<li class="activity-${entry.kind}">${time(entry.at)}<span>${escapeHtml(entry.text)}</span></li>`

const flashBanner = (flash: Flash | undefined) =>
  flash === undefined
    ? ""
    : `<div class="flash flash-${flash.kind}" role="${flash.kind === "error" ? "alert" : "status"}" data-flash="${flash.kind}">` +
      `<strong>${escapeHtml(flash.title)}</strong><p>${escapeHtml(flash.text)}</p>` +
      (flash.detail ? `<pre>${escapeHtml(flash.detail)}</pre>` : "") +
      `</div>`

const KEY_ICON =
  `<svg viewBox="0 0 24 24" width="22" height="22" aria-hidden="true"><circle cx="8" cy="12" r="4.2" fill="none" stroke="currentColor" stroke-width="2.2"/>` +
  `<path d="M12 12h9m-3 0v3.5m-3-3.5v2.5" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"/></svg>`

export const layout = (title: string, body: string, csrf?: string) =>
  `<!doctype html><html lang="en"><head><meta charset="utf-8">` +
  `<meta name="viewport" content="width=device-width, initial-scale=1">` +
  `<title>${escapeHtml(title)}</title>` +
  (csrf ? `<meta name="csrf-token" content="${attr(csrf)}">` : "") +
  `<link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script></head>` +
  `<body>${body}</body></html>`

export const page = (view: PageView): string => {
  const user = view.session.user
  const linked = view.groups.reduce((n, g) => n + g.cards.length, 0)
  const switcher =
    `<form method="post" action="/session/user" class="switcher" aria-label="Demo user">${csrfField(view.session)}` +
    `<span class="switcher-label">Signed in as</span>` +
    USERS.map(
      (u) =>
        `<button type="submit" name="user" value="${attr(u.id)}" class="seg${u.id === user.id ? " seg-on" : ""}"${u.id === user.id ? ' aria-pressed="true"' : ' aria-pressed="false"'}>${escapeHtml(u.name)}</button>`
    ).join("") +
    `</form>`
  const mode =
    view.realProviders.length === 0
      ? "Offline · local sandboxes"
      : `Live: ${view.realProviders.join(", ")}${view.sandboxMode ? " · others on sandboxes" : ""}`
  return layout(
    `${user.name}’s linked accounts · Latchkey demo`,
    `<header class="topbar"><div class="brand">${KEY_ICON}<span>Latchkey</span><span class="brand-sub">demo</span></div>` +
      `<span class="mode">${escapeHtml(mode)}</span>` +
      `<span class="live" data-live="connecting" title="Live updates">Connecting…</span>` +
      `${switcher}</header>` +
      `<main>` +
      `<section class="intro"><h1>${escapeHtml(user.name)}’s linked accounts <span class="total">${linked}</span></h1>` +
      `<p>Each card is one account at a provider. Latchkey keeps its tokens sealed server-side and refreshes them ahead of expiry; ` +
      `the timelines move as it does. Nothing here ever sees a token.</p></section>` +
      `<div id="flash">${flashBanner(view.flash)}</div>` +
      `<div id="accounts" class="board">${accounts(view.groups, view.session, view.now, view.refreshAheadMs)}</div>` +
      `<section class="activity" aria-labelledby="activity-title"><h2 id="activity-title">Live activity</h2>` +
      `<ol id="activity" data-empty="Events appear here as Latchkey links, refreshes and unlinks accounts.">${view.activity
        .slice()
        .reverse()
        .map(activityItem)
        .join("")}</ol></section>` +
      `</main><div id="toasts" class="toasts" aria-live="polite"></div>`,
    view.session.csrf
  )
}

export const messagePage = (title: string, text: string, status: "error" | "info" = "error") =>
  layout(
    title,
    `<header class="topbar"><div class="brand">${KEY_ICON}<span>Latchkey</span><span class="brand-sub">demo</span></div></header>` +
      `<main><div class="flash flash-${status}" role="alert"><strong>${escapeHtml(title)}</strong><p>${escapeHtml(text)}</p>` +
      `<p><a href="/">Back to your accounts</a></p></div></main>`
  )
