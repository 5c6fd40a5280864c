/**
 * The pages, as HTML strings. Every value from a connection, a provider or the user is escaped. The
 * browser gets connection summaries (no token values) and API response bodies, nothing else.
 */
import type { Connection } from "@latchkey/core"
import { type ChartView, chartFigure } from "./charts.ts"
import type { WorkerView } from "./fleet.ts"
import { type CardHealth, healthText } from "./health.ts"
import { lastErrorText, type RefreshedBy, refreshedByText } from "./messages.ts"
import type { Fact, ProviderSetup, RefreshTokenUse } from "./providers.ts"
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
  /** Active, degraded, needs reconnect or revoked, with a machine-readable reason. */
  readonly health: CardHealth
  readonly refreshedBy: RefreshedBy | undefined
  /** The process of the last refresh: `web` or a worker (`worker-2`). */
  readonly refreshedByProcess?: string | undefined
  /** The last refresh recovered one in doubt (its one resend was accepted). */
  readonly recovered?: boolean | undefined
  /** Issued by a sandbox before this run of the demo: the sandbox has forgotten the grant. */
  readonly fromEarlierRun: boolean
  /** The configured vault key cannot open this connection's tokens. */
  readonly sealedWithOtherKey?: boolean | undefined
  /** An unfinished refresh journal in the store: a refresh in flight, or in doubt when its holder died. */
  readonly flight?:
    | {
        /** The worker (`worker-2`) or holder id that sent the refresh token. */
        readonly holder: string
        readonly startedAt: number
        readonly holderAlive: boolean
        readonly suspectedAt: number | undefined
        readonly resent: boolean
      }
    | undefined
}

export interface FleetView {
  readonly workers: ReadonlyArray<WorkerView>
  readonly news: ReadonlyArray<ActivityEntry>
  readonly rows: ReadonlyArray<{
    readonly connectionId: string
    readonly label: string
    readonly providerName: string
    readonly status: Summary["status"]
    readonly last: string | undefined
    readonly counts: ReadonlyArray<readonly [string, number]>
    readonly use: RefreshTokenUse | undefined
  }>
}

export interface GroupView {
  readonly setup: ProviderSetup
  readonly cards: ReadonlyArray<CardView>
  /** Refreshes over time and their latency, from the engines' metrics. */
  readonly chart?: ChartView | undefined
}

export interface ActivityEntry {
  readonly at: number
  readonly kind: "success" | "error" | "info"
  readonly text: string
  /** The event's place in the store's durable log. */
  readonly seq?: number | undefined
  /** The process that did it, when known (`web`, `worker-2`). */
  readonly process?: string | undefined
}

export interface PageView {
  readonly session: Session
  readonly groups: ReadonlyArray<GroupView>
  readonly fleet?: FleetView | undefined
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

const healthPill: Record<CardHealth["state"], string> = {
  active: `<span class="pill pill-active">Active</span>`,
  degraded: `<span class="pill pill-warn">Degraded</span>`,
  needs_reauth: `<span class="pill pill-warn">Needs reconnect</span>`,
  revoked: `<span class="pill pill-error">Revoked</span>`
}

/** The health's machine-readable reason, for the notices. */
const reasonCode = (h: CardHealth) =>
  h.state === "active" ? "" : ` <span class="reason">Reason: <code>${escapeHtml(h.reason)}</code></span>`

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

/** 503 answers "Make … flaky" queues at the sandbox: the engine's attempts for one refresh (`maxAttempts`, 4). */
export const FLAKY_REFRESHES = 4

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
  const byText =
    view.refreshedBy === "worker" && view.refreshedByProcess
      ? `by ${view.refreshedByProcess}${view.recovered ? " (recovered an interrupted refresh)" : ""}`
      : view.refreshedBy
        ? refreshedByText[view.refreshedBy]
        : undefined
  const lastRefresh =
    c.lastRefreshAt === undefined
      ? `<p class="refresh-line">Not refreshed yet · linked ${time(c.createdAt)}</p>`
      : `<p class="refresh-line">Last refresh ${time(c.lastRefreshAt)}${byText ? ` <span class="by">${escapeHtml(byText)}</span>` : ""}</p>`
  const flight = view.flight
  const flightNotice =
    !active || flight === undefined
      ? ""
      : flight.holderAlive && flight.suspectedAt === undefined
        ? `<p class="in-flight" data-flight="in-flight">Refreshing now: ${escapeHtml(flight.holder)} sent the refresh token at ${time(flight.startedAt)}.</p>`
        : `<div class="notice notice-warn" role="status" data-flight="in-doubt"><p><strong>Refresh in doubt.</strong> ${escapeHtml(flight.holder)} sent the refresh token at ${time(flight.startedAt)} and stopped before its answer was stored. ` +
          `${escapeHtml(
            flight.resent
              ? "Latchkey made its one resend; the outcome is being written."
              : `${name} rotates refresh tokens, so Latchkey waits until the holder has been silent long enough, then another process resends it once: either the refresh completes, or the card asks for a reconnect.`
          )}</p></div>`
  const usable = active && !view.sealedWithOtherKey
  const health = view.health
  const degradedNotice =
    health.state === "degraded"
      ? `<div class="notice notice-warn" role="status" data-health-notice="degraded"><p><strong>Degraded.</strong> ${escapeHtml(healthText(health, name))}` +
        `${health.nextAttemptAt !== undefined ? ` Next attempt ${time(health.nextAttemptAt)}.` : ""}${reasonCode(health)}</p></div>`
      : ""
  return (
    `<article class="card card-${attr(c.status)}" id="conn-${attr(c.id)}" data-connection-id="${attr(c.id)}" ` +
    `data-provider="${attr(c.providerId)}" data-account-id="${attr(c.accountId)}" data-status="${attr(c.status)}" ` +
    `data-version="${c.version}" data-last-refresh="${c.lastRefreshAt ?? ""}" data-expires="${c.expiresAt ?? ""}" ` +
    `data-refreshed-by="${view.refreshedBy ?? ""}" data-refreshed-process="${attr(view.refreshedByProcess ?? "")}" ` +
    `data-sealed="${view.sealedWithOtherKey ? "other-key" : "ok"}" data-health="${attr(health.state)}" ` +
    `data-health-reason="${attr(health.state === "active" ? "" : health.reason)}">` +
    `<header class="card-head"><div class="avatar avatar-${attr(c.providerId)}" aria-hidden="true">${escapeHtml(initials(c.label))}</div>` +
    `<div class="card-title"><h3>${escapeHtml(c.label)}</h3><p>${escapeHtml(name)} · ${escapeHtml(c.accountId)}</p></div>` +
    `${view.sealedWithOtherKey && active ? `<span class="pill pill-error">Unreadable</span>` : healthPill[health.state]}</header>` +
    (view.sealedWithOtherKey
      ? `<div class="notice notice-error" role="status" data-sealed="other-key"><p><strong>Tokens unreadable.</strong> ` +
        `${escapeHtml(`This account’s tokens were sealed with another vault key than the one the demo runs with, so Latchkey cannot use them: no API call or refresh can work. Restart with the key they were sealed with, or reconnect ${name} to store new tokens.`)}</p>` +
        action(
          session,
          `/link/${encodeURIComponent(c.providerId)}`,
          "navigate",
          "Reconnect",
          "btn btn-primary"
        ) +
        `</div>`
      : !active
        ? `<div class="notice notice-warn" role="status"><p><strong>Reconnect needed.</strong> ${escapeHtml(problem ?? healthText(health, name))}${reasonCode(health)}</p>` +
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
          : degradedNotice
            ? degradedNotice
            : problem
              ? `<div class="notice notice-info" role="status"><p>${escapeHtml(problem)}</p></div>`
              : "") +
    flightNotice +
    facts(view) +
    `<div class="timelines">` +
    (usable
      ? timeline("access", "Access token", accessStart, c.expiresAt, now, "", due)
      : `<div class="timeline timeline-open" data-kind="access"><div class="timeline-head"><span class="timeline-name">Access token</span>` +
        `<span class="timeline-left">${active ? "unreadable" : "not usable"}</span></div>` +
        `<p class="timeline-note">${escapeHtml(active ? "Sealed with another vault key." : "Not usable until the account is linked again.")}</p></div>`) +
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
    action(session, `${base}/call`, "call", "Call the API", "btn", usable ? "" : " disabled") +
    action(session, `${base}/refresh`, "refresh", "Refresh now", "btn", usable ? "" : " disabled") +
    action(session, `${base}/unlink`, "unlink", "Unlink", "btn btn-danger") +
    `</div>` +
    `<section class="api-result" data-api-result${usable ? "" : ' data-stale="true"'} hidden></section>` +
    (view.setup.revokeAtProvider && usable
      ? `<details class="tools"><summary>Sandbox tools</summary>` +
        `<p>Make ${escapeHtml(name)} end this grant, as if the user removed the app there. The next refresh is refused.</p>` +
        action(session, `${base}/revoke-at-provider`, "revoke", `Revoke at ${name}`, "btn btn-small") +
        (view.setup.failNextRefreshes
          ? `<p>Make ${escapeHtml(name)} answer its next ${FLAKY_REFRESHES} refresh requests (any account’s) with 503 Service Unavailable: ` +
            `Latchkey tries a refresh ${FLAKY_REFRESHES} times, so the next one fails and the card turns Degraded; the one after succeeds.</p>` +
            action(session, `${base}/flaky`, "flaky", `Make ${name} flaky`, "btn btn-small")
          : "") +
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
    `<p class="scopes">` +
    (s.displayScopes.length > 0
      ? `Scopes ${s.displayScopes.map((x) => `<code>${escapeHtml(x)}</code>`).join(" ")}`
      : "No scopes requested") +
    `</p>` +
    (view.chart ? chartFigure(view.chart) : "") +
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

const workerTile = (w: WorkerView) =>
  `<li class="worker worker-${attr(w.state)}" data-worker="${attr(w.name)}" data-state="${attr(w.state)}" data-pid="${w.pid ?? ""}">` +
  `<strong>${escapeHtml(w.name)}</strong><span class="worker-state">${escapeHtml(
    w.state === "running"
      ? "running"
      : w.state === "draining"
        ? "draining…"
        : w.state === "starting"
          ? "starting…"
          : "stopped"
  )}</span>` +
  `<span class="worker-pid">pid ${w.pid ?? "–"}${w.generation > 1 ? ` · process ${w.generation}` : ""}</span>` +
  `<span class="worker-count"><span data-refreshes>${w.refreshes}</span> refreshes</span>` +
  (w.lastExit ? `<span class="worker-exit">before: ${escapeHtml(w.lastExit)}</span>` : "") +
  `</li>`

/** The fleet: the worker processes, the crash and restart buttons, and per account who refreshed it. */
export const fleetPanel = (view: FleetView, session: Session): string =>
  `<header class="fleet-head"><div><h2 id="fleet-title">Refresh fleet <span class="count">${view.workers.length}</span></h2>` +
  `<p>The background refresh runs in ${view.workers.length} worker processes, each its own Latchkey on the same SQLite file. ` +
  `Each expiry is refreshed once, by one of them; the provider counts every refresh token it receives.</p></div>` +
  `<div class="fleet-actions">` +
  `<form method="post" action="/fleet/crash" data-js="fleet">${csrfField(session)}<button type="submit" class="btn btn-danger">Crash a worker</button></form>` +
  `<form method="post" action="/fleet/restart" data-js="fleet">${csrfField(session)}<button type="submit" class="btn">Restart a worker</button></form>` +
  `</div></header>` +
  `<ul class="workers">${view.workers.map(workerTile).join("")}</ul>` +
  (view.news.length > 0
    ? `<ul class="fleet-news">${view.news.map((n) => `<li class="news activity-${n.kind}">${time(n.at)}<span>${escapeHtml(n.text)}</span></li>`).join("")}</ul>`
    : "") +
  (view.rows.length === 0
    ? `<p class="empty">Link an account to see the workers refresh it.</p>`
    : `<div class="fleet-table-wrap"><table class="fleet-table"><caption>Per account: who refreshed it, and what the provider received</caption>` +
      `<thead><tr><th scope="col">Account</th><th scope="col">Last refreshed by</th><th scope="col">Refreshes, by process</th>` +
      `<th scope="col">Refreshes per expiry</th><th scope="col">Refresh tokens sent twice</th></tr></thead><tbody>` +
      view.rows
        .map((r) => {
          const perExpiry =
            r.use === undefined ? "–" : r.use.requests === 0 ? "none yet" : String(r.use.maxPerToken)
          const twice = r.use === undefined ? "–" : String(r.use.sentTwice)
          return (
            `<tr data-fleet-row="${attr(r.connectionId)}" data-per-expiry="${r.use?.maxPerToken ?? ""}" data-sent-twice="${r.use?.sentTwice ?? ""}" data-last="${attr(r.last ?? "")}" data-refreshes="${r.counts.reduce((n, [, k]) => n + k, 0)}">` +
            `<th scope="row">${escapeHtml(r.providerName)} · ${escapeHtml(r.label)}</th>` +
            `<td>${escapeHtml(r.last ?? "not yet")}</td>` +
            `<td>${r.counts.length === 0 ? "–" : r.counts.map(([p, n]) => `${escapeHtml(p)} ×${n}`).join(", ")}</td>` +
            `<td class="${r.use !== undefined && r.use.maxPerToken > 1 ? "bad" : ""}">${escapeHtml(perExpiry)}</td>` +
            `<td class="${r.use !== undefined && r.use.sentTwice > 0 ? "bad" : ""}">${escapeHtml(twice)}</td></tr>`
          )
        })
        .join("") +
      `</tbody></table></div>` +
      `<p class="fleet-note">Counted by the providers’ sandboxes from the refresh tokens they received. After a crash, a token sent twice is the one resend Latchkey allows to recover a lost answer (recorded in the journal before it is sent).</p>`)

export const activityItem = (entry: ActivityEntry) =>
  `<li class="activity-${entry.kind}"${entry.seq !== undefined ? ` data-seq="${entry.seq}"` : ""}${entry.process ? ` data-process="${attr(entry.process)}"` : ""}>${time(entry.at)}` +
  `${entry.seq !== undefined ? `<span class="seq" title="Its place in the durable event log">#${entry.seq}</span>` : ""}<span>${escapeHtml(entry.text)}</span></li>`

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
  `<link rel="icon" href="/assets/icon.svg" type="image/svg+xml"><link rel="stylesheet" href="/assets/app.css"><script src="/assets/app.js" defer></script></head>` +
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
      (view.fleet
        ? `<section id="fleet" class="fleet" aria-labelledby="fleet-title">${fleetPanel(view.fleet, view.session)}</section>`
        : "") +
      `<div id="accounts" class="board">${accounts(view.groups, view.session, view.now, view.refreshAheadMs)}</div>` +
      `<section class="activity" aria-labelledby="activity-title"><h2 id="activity-title">Live activity</h2>` +
      `<p class="activity-note">From the store’s durable event log: every process’s events (this one’s and each refresh worker’s), numbered in log order, kept across restarts.</p>` +
      `<ol id="activity" tabindex="0" aria-labelledby="activity-title" data-empty="Events appear here as Latchkey links, refreshes and unlinks accounts.">${view.activity
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
