// The demo page's behaviour: card actions over fetch (with the session's CSRF token), live updates
// from the server's event stream, and token timelines that move every second. The page works without
// it too: every action is a plain form.
const csrf = document.querySelector('meta[name="csrf-token"]')?.getAttribute("content") ?? ""
const accountsEl = document.getElementById("accounts")
const activityEl = document.getElementById("activity")
const toastsEl = document.getElementById("toasts")
const liveEl = document.querySelector("[data-live]")
const fleetEl = document.getElementById("fleet")

const duration = (ms) => {
  const s = Math.round(Math.abs(ms) / 1000)
  if (s < 120) return `${s} s`
  if (s < 7200) return `${Math.round(s / 60)} min`
  if (s < 172800) return `${Math.round(s / 3600)} h`
  return `${Math.round(s / 86400)} days`
}

const localizeTimes = (root) => {
  for (const t of root.querySelectorAll("time[data-at]")) {
    const at = Number(t.dataset.at)
    if (!Number.isFinite(at)) continue
    const d = new Date(at)
    t.textContent =
      at - Date.now() > 86400000 * 2
        ? d.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" })
        : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    t.title = d.toString()
  }
}

const tick = () => {
  const now = Date.now()
  for (const el of document.querySelectorAll(".timeline[data-end]")) {
    const start = Number(el.dataset.start)
    const end = Number(el.dataset.end)
    const span = Math.max(1, end - start)
    const frac = Math.min(1, Math.max(0, (now - start) / span))
    const fill = el.querySelector(".fill")
    if (fill) fill.style.width = `${(frac * 100).toFixed(2)}%`
    const due = el.dataset.due ? Number(el.dataset.due) : undefined
    const marker = el.querySelector(".due")
    if (marker && due !== undefined)
      marker.style.left = `${Math.min(100, Math.max(0, ((due - start) / span) * 100)).toFixed(2)}%`
    const phase = now >= end ? "expired" : due !== undefined && now >= due ? "due" : "ok"
    el.dataset.phase = phase
    const countdown = el.querySelector("[data-countdown]")
    if (countdown) {
      countdown.textContent =
        phase === "expired"
          ? `expired ${duration(now - end)} ago`
          : phase === "due"
            ? `refresh due · expires in ${duration(end - now)}`
            : `expires in ${duration(end - now)}`
    }
  }
}

const toast = (kind, title, text) => {
  const el = document.createElement("div")
  el.className = `toast toast-${kind}`
  el.setAttribute("role", kind === "error" ? "alert" : "status")
  const strong = document.createElement("strong")
  strong.textContent = title
  el.append(strong)
  if (text) el.append(document.createTextNode(text))
  toastsEl?.append(el)
  while ((toastsEl?.children.length ?? 0) > 3) toastsEl?.firstElementChild?.remove()
  setTimeout(() => el.remove(), kind === "error" ? 9000 : 5000)
}

// "Unlink" asks once more: the button turns into "Confirm unlink" for 5 s.
const CONFIRM_MS = 5000
const confirmTimers = new WeakMap()
const askToConfirm = (button, ms = CONFIRM_MS) => {
  button.classList.add("confirming")
  button.textContent = "Confirm unlink"
  button.dataset.confirmUntil = String(Date.now() + ms)
  clearTimeout(confirmTimers.get(button))
  confirmTimers.set(
    button,
    setTimeout(() => {
      button.classList.remove("confirming")
      button.textContent = "Unlink"
      delete button.dataset.confirmUntil
    }, ms)
  )
}

let reloading = Promise.resolve()
let reloadQueued = false

/** Replace the cards with the server's current view, keeping open API results and tool panels. */
const reloadAccounts = (highlight) => {
  if (reloadQueued) return reloading
  reloadQueued = true
  reloading = reloading.then(async () => {
    reloadQueued = false
    try {
      const [response, fleet] = await Promise.all([
        fetch("/partials/accounts", { headers: { accept: "text/html" } }),
        fleetEl ? fetch("/partials/fleet", { headers: { accept: "text/html" } }) : undefined
      ])
      if (response.status === 401) return location.reload()
      if (!response.ok) return
      const html = await response.text()
      if (fleetEl && fleet?.ok) {
        fleetEl.innerHTML = await fleet.text()
        localizeTimes(fleetEl)
      }
      const kept = new Map()
      for (const card of accountsEl.querySelectorAll("[data-connection-id]")) {
        const result = card.querySelector("[data-api-result]")
        const confirming = card.querySelector('form[data-js="unlink"] button.confirming')
        kept.set(card.dataset.connectionId, {
          result: result && !result.hidden ? result : undefined,
          tools: card.querySelector("details.tools")?.open === true,
          // An unlink waiting for its confirmation keeps waiting: a live update does not take it back.
          confirmLeft: confirming ? Number(confirming.dataset.confirmUntil) - Date.now() : 0
        })
      }
      accountsEl.innerHTML = html
      for (const card of accountsEl.querySelectorAll("[data-connection-id]")) {
        const old = kept.get(card.dataset.connectionId)
        // A card that can no longer call its API drops the old response.
        const fresh = card.querySelector("[data-api-result]")
        if (old?.result && !fresh?.dataset.stale)
          card.querySelector("[data-api-result]")?.replaceWith(old.result)
        if (old?.tools) card.querySelector("details.tools")?.setAttribute("open", "")
        const unlink = card.querySelector('form[data-js="unlink"] button')
        if (unlink && old?.confirmLeft > 0) askToConfirm(unlink, old.confirmLeft)
        if (highlight && card.dataset.connectionId === highlight) {
          card.classList.add("flash-update")
          setTimeout(() => card.classList.remove("flash-update"), 1200)
        }
      }
      const total = document.querySelector(".intro .total")
      if (total) total.textContent = String(accountsEl.querySelectorAll("[data-connection-id]").length)
      localizeTimes(accountsEl)
      tick()
    } catch {
      // the stream reconnects and reloads again
    }
  })
  return reloading
}

const showApiResult = (form, api) => {
  const card = form.closest("[data-connection-id]")
  const section = card?.querySelector("[data-api-result]")
  if (!section) return
  section.replaceChildren()
  const header = document.createElement("header")
  const label = document.createElement("code")
  label.textContent = api.label
  const status = document.createElement("span")
  status.className = api.ok ? "status-ok" : "status-bad"
  status.textContent = `${api.status}`
  status.dataset.status = String(api.status)
  header.append(label, status)
  section.append(header)
  if (!api.ok) {
    const p = document.createElement("p")
    p.textContent = api.message
    section.append(p)
  }
  const pre = document.createElement("pre")
  pre.textContent = api.body
  section.append(pre)
  section.hidden = false
}

document.addEventListener("submit", async (event) => {
  const form = event.target
  if (!(form instanceof HTMLFormElement)) return
  const kind = form.dataset.js
  if (!kind || kind === "navigate") return
  event.preventDefault()
  const button = form.querySelector("button")
  if (kind === "unlink" && button && !button.classList.contains("confirming")) {
    askToConfirm(button)
    return
  }
  button?.setAttribute("aria-busy", "true")
  if (button) button.disabled = true
  try {
    const response = await fetch(form.action, {
      method: "POST",
      headers: {
        accept: "application/json",
        "content-type": "application/x-www-form-urlencoded",
        "x-csrf-token": csrf
      },
      body: new URLSearchParams(new FormData(form))
    })
    const result = await response.json().catch(() => ({ ok: false, title: "Unexpected answer", text: "" }))
    if (result.api) showApiResult(form, result.api)
    if (!result.api || !result.ok)
      toast(result.ok ? "success" : "error", result.title, result.text ? ` ${result.text}` : "")
  } catch {
    toast("error", "The demo server could not be reached", " Is it still running?")
  } finally {
    if (button?.isConnected) {
      button.removeAttribute("aria-busy")
      button.disabled = false
    }
  }
  const card = form.closest("[data-connection-id]")
  await reloadAccounts(card?.dataset.connectionId)
})

const addActivity = (entry) => {
  if (!activityEl || !entry) return
  // The log is read at least once per event: an entry already shown is not added again.
  if (entry.seq !== undefined && activityEl.querySelector(`[data-seq="${entry.seq}"]`)) return
  const li = document.createElement("li")
  li.className = `activity-${entry.kind}`
  const t = document.createElement("time")
  t.dataset.at = String(entry.at)
  t.dateTime = new Date(entry.at).toISOString()
  li.append(t)
  if (entry.seq !== undefined) {
    li.dataset.seq = String(entry.seq)
    const seq = document.createElement("span")
    seq.className = "seq"
    seq.title = "Its place in the durable event log"
    seq.textContent = `#${entry.seq}`
    li.append(seq)
  }
  if (entry.process) li.dataset.process = entry.process
  const span = document.createElement("span")
  span.textContent = entry.text
  li.append(span)
  activityEl.prepend(li)
  localizeTimes(li)
  while (activityEl.children.length > 40) activityEl.lastElementChild?.remove()
}

const connect = () => {
  if (!accountsEl || typeof EventSource === "undefined") return
  const source = new EventSource("/events")
  let opened = false
  source.addEventListener("open", () => {
    if (liveEl) {
      liveEl.dataset.live = "on"
      liveEl.textContent = "Live"
    }
    // Catch up on anything missed while disconnected.
    if (opened) reloadAccounts()
    opened = true
  })
  source.addEventListener("error", () => {
    if (liveEl) {
      liveEl.dataset.live = "off"
      liveEl.textContent = "Reconnecting…"
    }
    // The browser gives up on a refused stream (e.g. the server restarted and the session is gone):
    // try again a little later; the reload sends the user to a fresh session when needed.
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => {
        reloadAccounts()
        connect()
      }, 3000)
    }
  })
  source.addEventListener("latchkey", (message) => {
    let data
    try {
      data = JSON.parse(message.data)
    } catch {
      return
    }
    // The feed shows the durable log's events; the fleet's news go to the fleet panel (reloaded here).
    if (data.type !== "fleet") addActivity(data.entry)
    reloadAccounts(data.connectionId)
  })
}

// A refresh in flight or in doubt, and a worker starting or stopping, change without an event: look
// again every second while the page shows one.
setInterval(() => {
  if (
    document.querySelector(
      '[data-flight],[data-state="draining"],[data-state="starting"],[data-state="stopped"]'
    )
  )
    reloadAccounts()
}, 1000)

localizeTimes(document)
tick()
setInterval(tick, 1000)
connect()
