/**
 * HeyGen's `GET /v3/users/me`: the user and their billing (a union on `billing_type`: wallet,
 * subscription or usage-based), parsed with zod; a credit summary for display; and the call itself,
 * through a connection (`account`) or the fetch `identify` is given. Its errors are `HeyGenApiError`,
 * which never contains a token.
 */
import { z } from "zod"

const Pool = z.object({
  remaining: z.number(),
  resets_at: z.string().nullable().optional().default(null)
})

const Wallet = z.object({
  currency: z.enum(["usd", "credits"]).or(z.string()),
  remaining_balance: z.number(),
  auto_reload: z
    .object({
      enabled: z.boolean(),
      amount_usd: z.number().nullable().optional().default(null),
      threshold_usd: z.number().nullable().optional().default(null)
    })
    .nullable()
    .optional()
    .default(null)
})

const Subscription = z.object({
  plan: z.string(),
  credits: z.object({
    premium_credits: Pool.nullable().optional().default(null),
    add_on_credits: Pool.nullable().optional().default(null)
  })
})

const UsageBased = z.object({
  included_credits: z.number().nullable().optional().default(null),
  remaining_credits: z.number(),
  spending_cap_usd: z.number().nullable().optional().default(null),
  spending_current_usd: z.number().nullable().optional().default(null)
})

const UserData = z.object({
  username: z.string().min(1),
  email: z.string().nullable().optional().default(null),
  first_name: z.string().nullable().optional().default(null),
  last_name: z.string().nullable().optional().default(null),
  billing_type: z.string().nullable().optional().default(null),
  wallet: Wallet.nullable().optional().default(null),
  subscription: Subscription.nullable().optional().default(null),
  usage_based: UsageBased.nullable().optional().default(null)
})

const Envelope = z.object({ data: UserData })

export type HeyGenWallet = z.infer<typeof Wallet>
export type HeyGenSubscription = z.infer<typeof Subscription>
export type HeyGenUsageBased = z.infer<typeof UsageBased>
export type HeyGenCreditPool = z.infer<typeof Pool>

interface UserBase {
  readonly username: string
  readonly email: string | null
  readonly first_name: string | null
  readonly last_name: string | null
}

/**
 * The user of `GET /v3/users/me`, a union on `billing_type`: exactly the matching billing object is
 * populated and the others are null. `billing_type: null` when HeyGen reports none (or a type this
 * version does not know, or names a type whose object is missing).
 */
export type HeyGenUser = UserBase &
  (
    | {
        readonly billing_type: "wallet"
        readonly wallet: HeyGenWallet
        readonly subscription: null
        readonly usage_based: null
      }
    | {
        readonly billing_type: "subscription"
        readonly wallet: null
        readonly subscription: HeyGenSubscription
        readonly usage_based: null
      }
    | {
        readonly billing_type: "usage_based"
        readonly wallet: null
        readonly subscription: null
        readonly usage_based: HeyGenUsageBased
      }
    | {
        readonly billing_type: null
        readonly wallet: null
        readonly subscription: null
        readonly usage_based: null
      }
  )

/** A HeyGen API answer that is not what was expected. Never contains a token. */
export class HeyGenApiError extends Error {
  readonly status: number
  /** HeyGen's error code (`unauthorized`, `401056`, ...) when the body had one. */
  readonly code: string | undefined
  constructor(message: string, status: number, code?: string) {
    super(message)
    this.name = "HeyGenApiError"
    this.status = status
    this.code = code
  }
}

/**
 * Parse a `GET /v3/users/me` body (`{"code":100,"data":{...},"message":null}`) into a `HeyGenUser`.
 * Throws `HeyGenApiError` when it is not one.
 */
export const parseUser = (body: unknown): HeyGenUser => {
  const parsed = Envelope.safeParse(body)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new HeyGenApiError(
      `HeyGen: unexpected /v3/users/me body (${issue ? `${issue.path.join(".") || "body"}: ${issue.message}` : "invalid"})`,
      200
    )
  }
  const d = parsed.data.data
  const base: UserBase = {
    username: d.username,
    email: d.email,
    first_name: d.first_name,
    last_name: d.last_name
  }
  const none = { wallet: null, subscription: null, usage_based: null } as const
  if (d.billing_type === "wallet" && d.wallet !== null)
    return { ...base, ...none, billing_type: "wallet", wallet: d.wallet }
  if (d.billing_type === "subscription" && d.subscription !== null) {
    return { ...base, ...none, billing_type: "subscription", subscription: d.subscription }
  }
  if (d.billing_type === "usage_based" && d.usage_based !== null) {
    return { ...base, ...none, billing_type: "usage_based", usage_based: d.usage_based }
  }
  return { ...base, ...none, billing_type: null }
}

/** What an app shows: plan, what is left and when it resets. */
export interface CreditSummary {
  readonly billingType: HeyGenUser["billing_type"]
  /** The subscription plan, else null. */
  readonly plan: string | null
  /** Credits left: both pools of a subscription, a usage-based account's remaining credits, or a wallet's balance. */
  readonly remaining: number | null
  /** `credits`, or `usd` for a wallet held in dollars. */
  readonly unit: "credits" | "usd" | null
  /** The earliest reset date among pools that reset (ISO 8601), else null. */
  readonly resetsAt: string | null
}

/** Summarize a user's billing into remaining credits (or wallet balance) and the next reset. */
export const credits = (user: HeyGenUser): CreditSummary => {
  switch (user.billing_type) {
    case "subscription": {
      const pools = [
        user.subscription.credits.premium_credits,
        user.subscription.credits.add_on_credits
      ].filter((p): p is HeyGenCreditPool => p !== null)
      const resets = pools
        .map((p) => p.resets_at)
        .filter((r): r is string => r !== null)
        .sort((a, b) => Date.parse(a) - Date.parse(b))
      return {
        billingType: "subscription",
        plan: user.subscription.plan,
        remaining: pools.reduce((sum, p) => sum + p.remaining, 0),
        unit: "credits",
        resetsAt: resets[0] ?? null
      }
    }
    case "wallet":
      return {
        billingType: "wallet",
        plan: null,
        remaining: user.wallet.remaining_balance,
        unit: user.wallet.currency === "usd" ? "usd" : "credits",
        resetsAt: null
      }
    case "usage_based":
      return {
        billingType: "usage_based",
        plan: null,
        remaining: user.usage_based.remaining_credits,
        unit: "credits",
        resetsAt: null
      }
    case null:
      return { billingType: null, plan: null, remaining: null, unit: null, resetsAt: null }
  }
}

/** HeyGen's error code of a body: v3 `{"error":{"code":"unauthorized"}}` or the older `{"code":401056}`. */
export const errorCode = (body: unknown): string | undefined => {
  if (typeof body !== "object" || body === null) return undefined
  const b = body as { error?: unknown; code?: unknown }
  if (typeof b.error === "object" && b.error !== null) {
    const code = (b.error as { code?: unknown }).code
    if (typeof code === "string" || typeof code === "number") return String(code)
  }
  if (typeof b.code === "string" || typeof b.code === "number") return String(b.code)
  return undefined
}

const errorMessage = (body: unknown): string | undefined => {
  if (typeof body !== "object" || body === null) return undefined
  const b = body as { error?: unknown; message?: unknown }
  const m =
    typeof b.error === "object" && b.error !== null ? (b.error as { message?: unknown }).message : b.message
  return typeof m === "string" && m.length > 0 ? m.slice(0, 200) : undefined
}

/** `GET /v3/users/me` with `doFetch` (which adds the credential). Throws `HeyGenApiError` on an error answer. */
export const fetchUser = async (
  doFetch: (input: string) => Promise<Response>,
  url: string
): Promise<HeyGenUser> => {
  const response = await doFetch(url)
  let body: unknown
  try {
    body = await response.json()
  } catch {
    body = undefined
  }
  if (!response.ok) {
    const code = errorCode(body)
    const said = errorMessage(body)
    throw new HeyGenApiError(
      `HeyGen: GET /v3/users/me answered ${response.status}${code ? ` (${code}${said ? `: ${said}` : ""})` : ""}`,
      response.status,
      code
    )
  }
  return parseUser(body)
}

/** Anything with Latchkey's connection-bound fetch: a `LatchkeyClient`, or your own wrapper. */
export interface ConnectionFetcher {
  fetch(connectionId: string, input: string | URL, init?: RequestInit): Promise<Response>
}

/**
 * The linked HeyGen user, with plan and credits (`GET /v3/users/me` through the connection: auth
 * header added, refreshed on an expired token, 429 waited out). Works for OAuth and API-key
 * connections. Throws `HeyGenApiError` on an error answer.
 */
export const account = (latchkey: ConnectionFetcher, connectionId: string): Promise<HeyGenUser> =>
  fetchUser((url) => latchkey.fetch(connectionId, url), "/v3/users/me")
