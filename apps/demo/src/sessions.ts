/**
 * Demo sign-in: two demo users, a server-side session per browser behind an HttpOnly, SameSite=Lax
 * cookie, and a CSRF token per session that every state-changing request must present.
 */
import { randomBytes, timingSafeEqual } from "node:crypto"

export interface DemoUser {
  readonly id: string
  readonly name: string
}

export const USERS: ReadonlyArray<DemoUser> = [
  { id: "ada", name: "Ada" },
  { id: "grace", name: "Grace" }
]

export const userById = (id: string): DemoUser | undefined => USERS.find((u) => u.id === id)

export interface Flash {
  readonly kind: "success" | "error" | "info"
  readonly title: string
  readonly text: string
  /** Preformatted detail (an API response body), shown collapsed. */
  readonly detail?: string | undefined
}

export interface Session {
  readonly id: string
  readonly user: DemoUser
  readonly csrf: string
  readonly createdAt: number
  lastSeen: number
  flash: Flash | undefined
}

export const COOKIE = "latchkey_demo_session"
const TTL_MS = 12 * 3600_000
const MAX_SESSIONS = 10_000

const token = () => randomBytes(32).toString("base64url")

export const parseCookies = (header: string | undefined): Map<string, string> => {
  const out = new Map<string, string>()
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=")
    if (eq <= 0) continue
    const name = part.slice(0, eq).trim()
    if (!out.has(name)) out.set(name, part.slice(eq + 1).trim())
  }
  return out
}

/** Constant-time comparison of two strings. */
export const sameSecret = (a: string | undefined, b: string): boolean => {
  if (a === undefined) return false
  const x = Buffer.from(a)
  const y = Buffer.from(b)
  return x.length === y.length && timingSafeEqual(x, y)
}

export class Sessions {
  private readonly byId = new Map<string, Session>()
  private readonly secure: boolean

  constructor(options: { readonly secure: boolean }) {
    this.secure = options.secure
  }

  create(user: DemoUser, now = Date.now()): Session {
    this.sweep(now)
    const session: Session = {
      id: token(),
      user,
      csrf: token(),
      createdAt: now,
      lastSeen: now,
      flash: undefined
    }
    this.byId.set(session.id, session)
    return session
  }

  /** The session a request's cookie names, if it exists and has not expired. */
  fromCookie(cookieHeader: string | undefined, now = Date.now()): Session | undefined {
    const id = parseCookies(cookieHeader).get(COOKIE)
    if (id === undefined || !/^[A-Za-z0-9_-]{43}$/.test(id)) return undefined
    const session = this.byId.get(id)
    if (session === undefined) return undefined
    if (now - session.lastSeen > TTL_MS) {
      this.byId.delete(id)
      return undefined
    }
    session.lastSeen = now
    return session
  }

  /** A new session (new id and CSRF token) for another user; the old one ends (no session fixation). */
  switchUser(old: Session | undefined, user: DemoUser): Session {
    if (old) this.byId.delete(old.id)
    return this.create(user)
  }

  cookie(session: Session): string {
    return `${COOKIE}=${session.id}; Path=/; HttpOnly; SameSite=Lax; Max-Age=${TTL_MS / 1000}${this.secure ? "; Secure" : ""}`
  }

  private sweep(now: number) {
    if (this.byId.size < MAX_SESSIONS) return
    for (const [id, s] of this.byId) if (now - s.lastSeen > TTL_MS) this.byId.delete(id)
    // Still full: drop the least recently created (Map keeps insertion order).
    while (this.byId.size >= MAX_SESSIONS) this.byId.delete(this.byId.keys().next().value!)
  }
}
