/**
 * `@latchkey/core/sandbox`: a small kit for writing a provider's sandbox, a faithful local stand-in
 * of its OAuth server and API on 127.0.0.1, so that apps and tests run offline. The built-in
 * providers' sandboxes are written with it; a third party writes one for its provider the same way.
 *
 * ```ts
 * import { approve, json, startOAuthSandbox } from "@latchkey/core/sandbox"
 *
 * const sandbox = await startOAuthSandbox({
 *   name: "Acme",
 *   clients: [{ clientId: "app", redirectUris: ["http://127.0.0.1:3000/cb"], auth: "none" }],
 *   accounts: [{ id: "u1", label: "ada@example.com" }, { id: "u2", label: "bob@example.com" }],
 *   paths: { authorize: "/oauth/authorize", token: "/oauth/token", revoke: "/oauth/revoke" },
 *   pkce: "S256",
 *   lifetimes: { accessTokenSeconds: 3600, refreshTokenSeconds: null },
 *   refreshTokens: { rotate: true, reuseRevokesGrant: false }
 * })
 * sandbox.route("GET", "/me", "me", (req) => {
 *   const auth = sandbox.authenticate(req)   // Bearer access token or X-Api-Key
 *   return auth.ok ? json(200, { id: auth.account.id }) : json(401, { error: auth.reason })
 * })
 * const callbackUrl = await approve(authorizeUrl, { account: "u2" })  // walks the HTML page
 * sandbox.inject({ endpoint: "token", grantType: "refresh_token", fault: "drop_after_rotate" })
 * sandbox.calls.token                                                   // requests seen
 * await sandbox.close()
 * ```
 *
 * Pieces, each usable alone:
 * - `startOAuthSandbox(options)`: the composed authorization server (authorize page with an account
 *   chooser and Approve / Deny, token endpoint, optional separate refresh endpoint, RFC 7009
 *   revocation, client authentication none / client_secret_post / client_secret_basic, PKCE S256,
 *   exact redirect URIs, single-use codes, rotating refresh tokens, RFC 6749 §5.2 errors) with hooks
 *   for provider specifics (`authorizePage.validate/fields/onApprove`, `validateTokenRequest`,
 *   `tokenResponseExtras`, `formatError`) and `route(...)` for the provider's API.
 * - `startSandboxServer(options)`: the HTTP layer alone (router with named endpoints and `:params`,
 *   form / JSON bodies, per-endpoint counters and log, fault injection).
 * - `GrantRegistry`: codes, grants, tokens, lifetimes, rotation, reuse detection, revocation, API keys.
 * - `approve(authorizeUrl, { account, deny, fields })`: a fetch-based person at a browser.
 * - Helpers: `json`, `html`, `text`, `empty`, `redirect`, `escapeHtml`, `s256`, `verifyPkce`,
 *   `authenticateClient`, `oauthErrorResponse`, `OAuthError`, `parseForms`.
 *
 * Faults (`inject`): `delay` (then answer), `status` (5xx by default, unprocessed), `rate_limit` (429
 * with `Retry-After`, unprocessed), `malformed` (200 with a body that is not JSON, unprocessed),
 * `drop` (connection closed, unprocessed), `drop_after_rotate` (processed — a refresh rotates and
 * consumes the old refresh token — then the connection is closed without an answer). Each applies
 * to `times` matching requests (default 1), filtered by `endpoint`, optionally `grantType` / `match`.
 */
export {
  type ApproveOptions,
  approve,
  type ParsedForm,
  parseForms,
  SandboxDriverError
} from "./driver.ts"
export {
  type CodeRequest,
  type Grant,
  GrantRegistry,
  type GrantRegistryOptions,
  type IssuedTokens,
  type Lifetimes,
  OAuthError,
  type RefreshTokenOptions,
  s256,
  type TokenCheck,
  verifyPkce
} from "./grants.ts"
export {
  type CallRecord,
  empty,
  escapeHtml,
  type FaultKind,
  type FaultSpec,
  html,
  json,
  type Route,
  type RouteHandler,
  redirect,
  type SandboxRequest,
  type SandboxResponse,
  type SandboxServer,
  type SandboxServerOptions,
  startSandboxServer,
  text
} from "./http.ts"
export {
  type ApiAuth,
  type AuthorizeTransaction,
  authenticateClient,
  type ClientAuthMethod,
  type HookError,
  type OAuthSandbox,
  type OAuthSandboxOptions,
  oauthErrorResponse,
  SANDBOX_PAGE_STYLE,
  type SandboxAccount,
  type SandboxClient,
  sandboxPage,
  startOAuthSandbox,
  type TokenRequestKind,
  type TokenResponseContext
} from "./oauth.ts"
