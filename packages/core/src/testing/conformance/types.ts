/** What a provider conformance run is given, and what a check is. */
import type * as Provider from "../../Provider.ts"

export interface ConformanceAccount {
  /** Who the authorize driver signs in as. */
  readonly login: string
  /** The account id the provider must report for this login; omit when the server assigns it. */
  readonly accountId?: string | undefined
  /** The label the provider must report; omit to only require a non-empty one. */
  readonly label?: string | undefined
}

export interface ConformanceServer {
  /** The provider under test, configured to talk to this server. */
  readonly provider: Provider.Provider
  /** Act as the user on the authorize page who approves as `login`; resolve the callback URL. */
  readonly approve: (authorizeUrl: string, login: string) => Promise<string>
  /** Act as the user who refuses; resolve the callback URL (with `error=access_denied`). */
  readonly deny?: ((authorizeUrl: string) => Promise<string>) | undefined
  /** Two different accounts at the server. */
  readonly accounts: readonly [ConformanceAccount, ConformanceAccount]
  /**
   * An API URL that answers 2xx to a valid access token and refuses an invalid one (the who-am-I
   * endpoint): absolute, or relative to the provider's `apiBaseUrl`.
   */
  readonly whoAmI: string
  /** Whether linking yields a refresh token. Default true. */
  readonly issuesRefreshTokens?: boolean | undefined
  /** Whether access tokens come with an expiry (`expires_in` or the provider's default). Default true. */
  readonly accessTokensExpire?: boolean | undefined
  /** Whether the provider can revoke at the server. Default: it has `revoke`, `endpoints.revocation` or discovery. */
  readonly revocation?: boolean | undefined
  /** Whether revoking also ends the access token (RFC 7009 leaves it to the server). Default true. */
  readonly revocationEndsAccessTokens?: boolean | undefined
  /**
   * The server's own count of refresh-token grants it answered. When given, the suite checks it moves
   * exactly as much as the refresh requests it saw leave.
   */
  readonly refreshCount?: (() => number) | undefined
  /**
   * Make the server refuse this refresh token from now on (a sandbox's admin switch). Without it, the
   * suite spends a rotating refresh token itself, or revokes a reusable one.
   */
  readonly rejectRefreshToken?: ((refreshToken: string) => Promise<void>) | undefined
  /** The fetch that reaches the server. Default: the global fetch. */
  readonly fetch?: typeof fetch | undefined
  /** Stop the server. */
  readonly close?: (() => Promise<void>) | undefined
}

export interface ConformanceCheck {
  /** Stable name, e.g. `"refresh"`. */
  readonly name: string
  /** What the check proves, as a test title. */
  readonly title: string
  /** Why the check does not apply to this server, or undefined when it does. */
  readonly notApplicable: (server: ConformanceServer) => string | undefined
  readonly run: (server: ConformanceServer) => Promise<void>
}

export interface ProviderConformanceOptions {
  /** The describe block's title. Default: `provider conformance: <provider name>`. */
  readonly name?: string | undefined
  /** Start the server and describe it. Called once, before the checks. */
  readonly server: () => Promise<ConformanceServer>
  /** Checks to leave out, by name, each with the reason (shown as a skipped test). */
  readonly skip?: Readonly<Record<string, string>> | undefined
}
