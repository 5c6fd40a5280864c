/**
 * Declarative providers: a provider described in a JSON or YAML file, loaded at runtime and turned into
 * the same `Provider` that `Provider.make` returns. The file names the endpoints, the client
 * authentication, scopes and their separator, extra parameters, lifetimes, the refresh-token policy,
 * how to identify the account (a user-info URL and JSON paths into its answer) and the headers that
 * authorize an API request (with a `{token}` placeholder).
 *
 * Secrets need not sit in the file: any string may refer to the environment with `${env:NAME}`.
 * Everything is validated with zod; an error names the file, the provider and the field, and never
 * contains a value read from the environment.
 *
 * ```yaml
 * id: acme
 * name: Acme
 * clientId: ${env:ACME_CLIENT_ID}
 * clientSecret: ${env:ACME_CLIENT_SECRET}
 * clientAuth: client_secret_basic
 * endpoints:
 *   issuer: https://auth.acme.test
 *   authorization: https://auth.acme.test/oauth/authorize
 *   token: https://auth.acme.test/oauth/token
 * redirectUri: https://app.example.com/oauth/callback
 * scopes: [read, write]
 * lifetimes: { accessTokenSeconds: 3600, refreshTokenSeconds: 2592000 }
 * identity:
 *   url: https://api.acme.test/v1/me
 *   accountIdPath: data.id
 *   labelPath: [data.email, data.name]
 * api:
 *   baseUrl: https://api.acme.test
 *   headers: { Authorization: "Bearer {token}" }
 * ```
 */
import { readFileSync } from "node:fs"
import { extname } from "node:path"
import { Schema } from "effect"
import { parseDocument } from "yaml"
import { z } from "zod"
import { ProviderDefinitionError } from "./Errors.ts"
import * as Provider from "./Provider.ts"

export const DeclarativeErrorReason = Schema.Literals(["unreadable", "syntax", "invalid", "missing_env"])
export type DeclarativeErrorReason = typeof DeclarativeErrorReason.Type

/** A provider file stays unreadable, malformed or invalid until it is fixed. */
export const DeclarativeErrorRetryable: Readonly<Record<DeclarativeErrorReason, boolean>> = {
  unreadable: false,
  syntax: false,
  invalid: false,
  missing_env: false
}

/** A provider file could not be read, parsed or validated. Thrown synchronously by `load` / `parse`. */
export class DeclarativeError extends Schema.TaggedError<DeclarativeError>()("DeclarativeError", {
  reason: DeclarativeErrorReason,
  /** The file as it was given (or `"(inline)"` for `parse` without a file name). */
  file: Schema.String,
  /** The provider's id when the file got far enough to name one, else `"(unnamed)"`. */
  providerId: Schema.String,
  /** The field at fault, as a dotted path (`identity.accountIdPath`); `"(file)"` for the file itself. */
  field: Schema.String,
  message: Schema.String
}) {
  get isRetryable(): boolean {
    return DeclarativeErrorRetryable[this.reason]
  }
}

export interface LoadOptions {
  /** Where `${env:NAME}` references are read. Default: `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>> | undefined
  /**
   * Values merged over the file's (objects deeply, everything else replaced) before validation, e.g.
   * endpoints that point at a sandbox in tests. `${env:NAME}` references in them are resolved too.
   */
  readonly overrides?: Readonly<Record<string, unknown>> | undefined
}

export interface ParseOptions extends LoadOptions {
  /** The file name used in error messages. Default `"(inline)"`. */
  readonly file?: string | undefined
  /** Default: `json` when the file name ends in `.json`, else `yaml` (which also reads JSON). */
  readonly format?: "json" | "yaml" | undefined
}

// ---------------------------------------------------------------------------------------------
// JSON paths: `data.user.id`, `emails[0].value`, `$.sub`, `[0].id`
// ---------------------------------------------------------------------------------------------

const SEGMENT = /^([^.[\]\s]+)?((?:\[\d+\])*)$/

/** Parse a JSON path into keys and indexes; undefined when it is not a valid path. */
export const parsePath = (path: string): ReadonlyArray<string | number> | undefined => {
  const body = path.startsWith("$.") ? path.slice(2) : path === "$" ? "" : path
  if (body === "") return undefined
  const out: Array<string | number> = []
  for (const part of body.split(".")) {
    const m = SEGMENT.exec(part)
    if (m === null || (m[1] === undefined && m[2] === "")) return undefined
    if (m[1] !== undefined) out.push(m[1])
    for (const index of m[2]!.matchAll(/\[(\d+)\]/g)) out.push(Number(index[1]))
  }
  return out
}

/** The value at a JSON path, or undefined. */
export const valueAt = (value: unknown, path: string): unknown => {
  const steps = parsePath(path)
  if (steps === undefined) return undefined
  let current: unknown = value
  for (const step of steps) {
    if (current === null || typeof current !== "object") return undefined
    if (typeof step === "number") {
      if (!Array.isArray(current)) return undefined
      current = current[step]
    } else {
      if (Array.isArray(current) || !Object.hasOwn(current, step)) return undefined
      current = (current as Record<string, unknown>)[step]
    }
  }
  return current
}

// ---------------------------------------------------------------------------------------------
// The file schema
// ---------------------------------------------------------------------------------------------

const jsonPath = z
  .string()
  .refine((p) => parsePath(p) !== undefined, "must be a JSON path like data.user.id or emails[0].value")

const urlLike = (what: string) =>
  z.string().superRefine((value, ctx) => {
    let parsed: URL
    try {
      parsed = new URL(value)
    } catch {
      ctx.addIssue({ code: "custom", message: `must be an absolute URL (${what})` })
      return
    }
    if (parsed.protocol === "https:") return
    if (parsed.protocol === "http:" && Provider.isLoopbackHost(parsed.hostname)) return
    ctx.addIssue({
      code: "custom",
      message: "must use https (plain http is allowed only for loopback hosts)"
    })
  })

const scalar = z.union([z.string(), z.number(), z.boolean()]).transform(String)
const params = z.record(z.string().min(1), scalar)
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const headers = z.record(z.string().regex(HEADER_NAME, "is not a valid header name"), scalar)
const lifetime = z.number().int().positive().nullable().optional()
const statuses = z.array(z.number().int().min(400).max(599)).min(1)

const placeholders = (allowed: ReadonlyArray<string>, required: string) =>
  headers.superRefine((hs, ctx) => {
    let uses = false
    for (const [name, value] of Object.entries(hs)) {
      for (const m of value.matchAll(/\{([^{}]*)\}/g)) {
        if (!allowed.includes(m[1]!)) {
          ctx.addIssue({
            code: "custom",
            path: [name],
            message: `uses an unknown placeholder {${m[1]}}; use ${allowed.map((a) => `{${a}}`).join(" or ")}`
          })
        }
        if (m[1] === required) uses = true
      }
    }
    if (!uses) {
      ctx.addIssue({ code: "custom", message: `must put {${required}} in at least one header` })
    }
  })

const FileSchema = z.strictObject({
  $schema: z.string().optional(),
  id: z.string(),
  name: z.string(),
  clientId: z.string(),
  clientSecret: z.string().optional(),
  clientAuth: z.enum(["none", "client_secret_basic", "client_secret_post"]),
  pkce: z.enum(["S256", "none"]).optional(),
  endpoints: z
    .strictObject({
      issuer: z.string(),
      authorization: z.string(),
      token: z.string(),
      refresh: z.string().optional(),
      revocation: z.string().optional(),
      userinfo: z.string().optional()
    })
    .optional(),
  discovery: z.strictObject({ issuer: z.string() }).optional(),
  redirectUri: z.string(),
  requireIss: z.boolean().optional(),
  dpop: z.boolean().optional(),
  scopes: z.array(z.string()).optional(),
  scopeSeparator: z.string().optional(),
  authorizationParams: params.optional(),
  tokenParams: params.optional(),
  refreshParams: params.optional(),
  lifetimes: z.strictObject({ accessTokenSeconds: lifetime, refreshTokenSeconds: lifetime }).optional(),
  refreshTokenPolicy: z.enum(["rotating", "reusable"]).optional(),
  refreshTokenReuse: z
    .strictObject({ graceSeconds: z.number().optional(), revokesGrant: z.boolean().optional() })
    .optional(),
  tokenErrorCodes: z.record(z.string().min(1), Provider.TokenErrorCodeSchema).optional(),
  identity: z.strictObject({
    /** Absolute, or relative to `api.baseUrl`. Default: `endpoints.userinfo`. */
    url: z.string().optional(),
    method: z.enum(["GET", "POST"]).optional(),
    /** Extra headers for the identity request (the API auth headers are added). */
    headers: headers.optional(),
    accountIdPath: jsonPath,
    /** One path, or several tried in order; the first non-empty value is the label. Default: the account id. */
    labelPath: z.union([jsonPath, z.array(jsonPath).min(1)]).optional(),
    /** Profile fields to keep with the connection, by name → JSON path. */
    profile: z.record(z.string().min(1), jsonPath).optional()
  }),
  api: z
    .strictObject({
      baseUrl: z.string().optional(),
      /** More origins that may receive the credentials (those of baseUrl and the identity URL always may). */
      origins: z.array(z.string()).optional(),
      /** Headers on every API request; `{token}` is the access token, `{tokenType}` its type. */
      headers: placeholders(["token", "tokenType"], "token").optional(),
      /** Statuses that mean the access token was refused (refresh once and retry). Default [401]. */
      tokenInvalidStatuses: statuses.optional(),
      /** Statuses that mean "slow down" (wait for Retry-After and retry). Default [429]. */
      rateLimitedStatuses: statuses.optional()
    })
    .optional(),
  apiKey: z.strictObject({ headers: placeholders(["apiKey"], "apiKey") }).optional(),
  providerInitiated: z.boolean().optional()
})

export type ProviderFile = z.input<typeof FileSchema>
type Parsed = z.output<typeof FileSchema>

const KNOWN_KEYS: Readonly<Record<string, ReadonlyArray<string>>> = {
  "": Object.keys(FileSchema.shape),
  endpoints: ["issuer", "authorization", "token", "refresh", "revocation", "userinfo"],
  discovery: ["issuer"],
  lifetimes: ["accessTokenSeconds", "refreshTokenSeconds"],
  identity: ["url", "method", "headers", "accountIdPath", "labelPath", "profile"],
  api: ["baseUrl", "origins", "headers", "tokenInvalidStatuses", "rateLimitedStatuses"],
  apiKey: ["headers"]
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

const fail = (
  reason: DeclarativeErrorReason,
  file: string,
  providerId: string,
  field: string,
  detail: string
): never => {
  const who = providerId === "(unnamed)" ? "" : ` provider "${providerId}":`
  throw new DeclarativeError({
    reason,
    file,
    providerId,
    field,
    message: `${file}:${who} ${field === "(file)" ? "" : `${field} `}${detail}`
  })
}

const distance = (a: string, b: string): number => {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)])
  for (let j = 1; j <= b.length; j++) d[0]![j] = j
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i]![j] = Math.min(
        d[i - 1]![j]! + 1,
        d[i]![j - 1]! + 1,
        d[i - 1]![j - 1]! + (a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1)
      )
    }
  }
  return d[a.length]![b.length]!
}

const suggestion = (parent: string, key: string): string => {
  const known = KNOWN_KEYS[parent] ?? []
  const best = known
    .map((k) => [k, distance(key, k)] as const)
    .filter(([, dist]) => dist <= Math.max(2, Math.floor(key.length / 3)))
    .sort((a, b) => a[1] - b[1])[0]
  return best ? ` (did you mean ${best[0]}?)` : ""
}

const describeIssue = (issue: z.core.$ZodIssue): { field: string; detail: string } => {
  const path = issue.path.map(String)
  const field = path.join(".")
  switch (issue.code) {
    case "unrecognized_keys": {
      const key = issue.keys[0]!
      return {
        field: [...path, key].join("."),
        detail: `is not a known field${suggestion(field, key)}`
      }
    }
    case "invalid_type":
      return {
        field: field || "(file)",
        detail: /received undefined/.test(issue.message)
          ? "is required"
          : field === ""
            ? "must hold a provider object"
            : `must be ${issue.expected === "int" ? "an integer" : issue.expected === "object" ? "an object" : issue.expected === "array" ? "a list" : `a ${issue.expected}`}`
      }
    case "invalid_value":
      return {
        field,
        detail: `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(", ")}`
      }
    case "invalid_union":
      return { field, detail: "must be one JSON path or a list of JSON paths" }
    case "too_small":
      return {
        field,
        detail:
          issue.origin === "array"
            ? `must have at least ${issue.minimum} item${issue.minimum === 1 ? "" : "s"}`
            : issue.origin === "string"
              ? "must not be empty"
              : `must be at least ${issue.minimum}`
      }
    case "too_big":
      return { field, detail: `must be at most ${issue.maximum}` }
    default:
      return { field, detail: issue.message }
  }
}

// ---------------------------------------------------------------------------------------------
// Environment references and overrides
// ---------------------------------------------------------------------------------------------

const REFERENCE = /\$\{([^}]*)\}/g
const ENV_NAME = /^env:([A-Za-z_][A-Za-z0-9_]*)$/

const resolveEnv = (
  value: unknown,
  env: Readonly<Record<string, string | undefined>>,
  path: ReadonlyArray<string>,
  file: string,
  providerId: string
): unknown => {
  if (typeof value === "string") {
    return value.replace(REFERENCE, (_, inner: string) => {
      const field = path.join(".") || "(file)"
      const m = ENV_NAME.exec(inner)
      if (m === null) {
        return fail(
          "invalid",
          file,
          providerId,
          field,
          `has an unsupported reference \${${inner}}; only \${env:NAME} is supported`
        )
      }
      const resolved = env[m[1]!]
      if (resolved === undefined || resolved === "") {
        return fail(
          "missing_env",
          file,
          providerId,
          field,
          `refers to the environment variable ${m[1]}, which is not set`
        )
      }
      return resolved
    })
  }
  if (Array.isArray(value))
    return value.map((v, i) => resolveEnv(v, env, [...path, String(i)], file, providerId))
  if (isPlainObject(value)) {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = resolveEnv(v, env, [...path, k], file, providerId)
    return out
  }
  return value
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value)

const merge = (base: unknown, over: unknown): unknown => {
  if (!isPlainObject(base) || !isPlainObject(over)) return over === undefined ? base : over
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) out[k] = merge(base[k], v)
  return out
}

// ---------------------------------------------------------------------------------------------
// From a validated file to a Provider
// ---------------------------------------------------------------------------------------------

const fill = (template: string, values: Readonly<Record<string, string>>): string =>
  template.replace(/\{([^{}]*)\}/g, (whole, name: string) => values[name] ?? whole)

const fillAll = (
  templates: Readonly<Record<string, string>>,
  values: Readonly<Record<string, string>>
): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [k, v] of Object.entries(templates)) out[k] = fill(v, values)
  return out
}

const textOf = (value: unknown): string | undefined =>
  typeof value === "string" && value.length > 0
    ? value
    : typeof value === "number" && Number.isFinite(value)
      ? String(value)
      : undefined

const identifyWith =
  (identity: Parsed["identity"], url: string): Provider.ProviderDefinition["identify"] =>
  async ({ fetch }) => {
    const method = identity.method ?? "GET"
    const response = await fetch(url, {
      method,
      headers: { accept: "application/json", ...identity.headers }
    })
    const where = (() => {
      const u = new URL(url, "http://relative.invalid")
      return u.origin === "http://relative.invalid" ? u.pathname : `${u.origin}${u.pathname}`
    })()
    if (!response.ok) {
      await response.body?.cancel()
      throw new Error(`${method} ${where} answered ${response.status}`)
    }
    let body: unknown
    try {
      body = await response.json()
    } catch {
      throw new Error(`${method} ${where} did not answer JSON`)
    }
    const accountId = textOf(valueAt(body, identity.accountIdPath))
    if (accountId === undefined) {
      throw new Error(
        `identity.accountIdPath ${identity.accountIdPath} is not in the answer of ${method} ${where}`
      )
    }
    const labelPaths =
      identity.labelPath === undefined
        ? []
        : typeof identity.labelPath === "string"
          ? [identity.labelPath]
          : identity.labelPath
    const label = labelPaths.map((p) => textOf(valueAt(body, p))).find((v) => v !== undefined) ?? accountId
    const profile: Record<string, unknown> = {}
    for (const [name, path] of Object.entries(identity.profile ?? {})) {
      const v = valueAt(body, path)
      if (v !== undefined) profile[name] = v
    }
    return { accountId, label, ...(identity.profile ? { profile } : {}) }
  }

/** Which file field a `Provider.make` field comes from. */
const fileField = (field: string): string =>
  field === "apiBaseUrl"
    ? "api.baseUrl"
    : field.startsWith("apiOrigins")
      ? "api.origins"
      : field === "identify"
        ? "identity"
        : field === "authorizeRequest"
          ? "api.headers"
          : field

const build = (file: string, data: Parsed): Provider.Provider => {
  const id = data.id
  const baseUrl = data.api?.baseUrl
  const identityUrl = data.identity.url ?? data.endpoints?.userinfo
  if (identityUrl === undefined) {
    fail(
      "invalid",
      file,
      id,
      "identity.url",
      "is required (the file has no endpoints.userinfo to default to)"
    )
  }
  if (baseUrl !== undefined) {
    const check = urlLike("api.baseUrl").safeParse(baseUrl)
    if (!check.success) fail("invalid", file, id, "api.baseUrl", check.error.issues[0]!.message)
  }
  let resolvedIdentityUrl: string
  try {
    resolvedIdentityUrl = new URL(identityUrl!, baseUrl).href
  } catch {
    return fail(
      "invalid",
      file,
      id,
      "identity.url",
      "must be an absolute URL, or a path with api.baseUrl set"
    )
  }
  const check = urlLike("identity.url").safeParse(resolvedIdentityUrl)
  if (!check.success) fail("invalid", file, id, "identity.url", check.error.issues[0]!.message)

  const apiHeaders = data.api?.headers
  const apiKeyHeaders = data.apiKey?.headers
  const tokenInvalid = new Set(data.api?.tokenInvalidStatuses ?? [401])
  const rateLimited = new Set(data.api?.rateLimitedStatuses ?? [429])
  const custom = data.api?.tokenInvalidStatuses !== undefined || data.api?.rateLimitedStatuses !== undefined

  const definition: Provider.ProviderDefinition = {
    id,
    name: data.name,
    clientId: data.clientId,
    ...(data.clientSecret !== undefined ? { clientSecret: data.clientSecret } : {}),
    clientAuth: data.clientAuth,
    ...(data.pkce !== undefined ? { pkce: data.pkce } : {}),
    ...(data.endpoints !== undefined ? { endpoints: data.endpoints } : {}),
    ...(data.discovery !== undefined ? { discovery: data.discovery } : {}),
    redirectUri: data.redirectUri,
    ...(data.scopes !== undefined ? { scopes: data.scopes } : {}),
    ...(data.scopeSeparator !== undefined ? { scopeSeparator: data.scopeSeparator } : {}),
    ...(data.authorizationParams !== undefined ? { authorizationParams: data.authorizationParams } : {}),
    ...(data.tokenParams !== undefined ? { tokenParams: data.tokenParams } : {}),
    ...(data.refreshParams !== undefined ? { refreshParams: data.refreshParams } : {}),
    ...(data.lifetimes !== undefined ? { lifetimes: data.lifetimes } : {}),
    ...(data.refreshTokenPolicy !== undefined ? { refreshTokenPolicy: data.refreshTokenPolicy } : {}),
    ...(data.refreshTokenReuse !== undefined ? { refreshTokenReuse: data.refreshTokenReuse } : {}),
    ...(data.tokenErrorCodes !== undefined ? { tokenErrorCodes: data.tokenErrorCodes } : {}),
    ...(baseUrl !== undefined ? { apiBaseUrl: baseUrl } : {}),
    // The identity request carries the credentials: its origin is one of the provider's API origins.
    apiOrigins: [resolvedIdentityUrl, ...(data.api?.origins ?? [])],
    ...(data.requireIss !== undefined ? { requireIss: data.requireIss } : {}),
    ...(data.dpop !== undefined ? { dpop: data.dpop } : {}),
    ...(data.providerInitiated !== undefined ? { providerInitiated: data.providerInitiated } : {}),
    ...(apiKeyHeaders !== undefined ? { apiKeys: true } : {}),
    identify: identifyWith(data.identity, resolvedIdentityUrl),
    ...(apiHeaders !== undefined || apiKeyHeaders !== undefined
      ? {
          authorizeRequest: (credential: Provider.Credential) =>
            credential.kind === "api_key"
              ? fillAll(apiKeyHeaders ?? {}, { apiKey: credential.apiKey })
              : apiHeaders !== undefined
                ? fillAll(apiHeaders, {
                    token: credential.accessToken,
                    tokenType: /^bearer$/i.test(credential.tokenType) ? "Bearer" : credential.tokenType
                  })
                : {
                    authorization: `${/^bearer$/i.test(credential.tokenType) ? "Bearer" : credential.tokenType} ${credential.accessToken}`
                  }
        }
      : {}),
    ...(custom
      ? {
          classifyResponse: ({ status }: Provider.ApiResponseInfo): Provider.ApiResponseClass =>
            tokenInvalid.has(status) ? "token_invalid" : rateLimited.has(status) ? "rate_limited" : "ok"
        }
      : {})
  }
  try {
    return Provider.make(definition)
  } catch (e) {
    if (e instanceof ProviderDefinitionError) {
      const field = fileField(e.field)
      // Provider.make says `Invalid provider "id": <field> <detail>`; some details repeat the field.
      let detail = e.message.replace(/^Invalid provider "[^"]*": \S+ /, "")
      if (detail.startsWith(`${e.field} `)) detail = detail.slice(e.field.length + 1)
      return fail("invalid", file, id, field, detail)
    }
    throw e
  }
}

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/** Validate an already-parsed provider object (from JSON, YAML or code) and make the Provider. */
export const fromObject = (value: unknown, options: ParseOptions = {}): Provider.Provider => {
  const file = options.file ?? "(inline)"
  const rawId =
    isPlainObject(value) && typeof value.id === "string" && value.id !== "" ? value.id : "(unnamed)"
  if (!isPlainObject(value)) return fail("invalid", file, rawId, "(file)", "must hold a provider object")
  const merged = options.overrides ? merge(value, options.overrides) : value
  const resolved = resolveEnv(merged, options.env ?? process.env, [], file, rawId)
  const parsed = FileSchema.safeParse(resolved)
  if (!parsed.success) {
    // A misspelt field also makes the real one "missing": name the misspelling first.
    const issues = parsed.error.issues
    const first = issues.find((i) => i.code === "unrecognized_keys") ?? issues[0]!
    const { field, detail } = describeIssue(first)
    return fail("invalid", file, rawId, field, detail)
  }
  return build(file, parsed.data)
}

/** Parse a provider file's text (JSON or YAML). */
export const parse = (text: string, options: ParseOptions = {}): Provider.Provider => {
  const file = options.file ?? "(inline)"
  const format = options.format ?? (extname(file).toLowerCase() === ".json" ? "json" : "yaml")
  let value: unknown
  if (format === "json") {
    try {
      value = JSON.parse(text)
    } catch (e) {
      const detail = e instanceof SyntaxError ? e.message.split("\n")[0] : "could not be parsed"
      return fail("syntax", file, "(unnamed)", "(file)", `is not valid JSON: ${detail}`)
    }
  } else {
    const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true })
    const error = doc.errors[0]
    if (error !== undefined) {
      const at = error.linePos?.[0]
      const detail = error.message.split("\n")[0]!.replace(/ at line \d+, column \d+:?$/, "")
      return fail(
        "syntax",
        file,
        "(unnamed)",
        "(file)",
        `is not valid YAML${at ? ` (line ${at.line}, column ${at.col})` : ""}: ${detail}`
      )
    }
    value = doc.toJS()
  }
  return fromObject(value, { ...options, file })
}

/** Read and parse a provider file (`.json`, `.yaml` or `.yml`). */
export const load = (path: string, options: LoadOptions = {}): Provider.Provider => {
  let text: string
  try {
    text = readFileSync(path, "utf8")
  } catch (e) {
    const code = (e as { code?: string } | undefined)?.code
    return fail(
      "unreadable",
      path,
      "(unnamed)",
      "(file)",
      code === "ENOENT" ? "does not exist" : `could not be read (${code ?? "unknown error"})`
    )
  }
  return parse(text, { ...options, file: path })
}
