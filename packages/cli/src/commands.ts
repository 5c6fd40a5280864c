/**
 * The `latchkey` operator command, on `effect/cli`. Every command loads the app's own Latchkey
 * options (`--config`), prints for people on an 80-column terminal, or JSON with `--json`, and never
 * prints a token value.
 */
import {
  Connection as ConnectionModule,
  ConnectionStore,
  Latchkey,
  type LatchkeyOptions,
  OAuth,
  Provider,
  TokenManager,
  Vault,
  Webhooks
} from "@latchkey/core"
import { Cause, Data, Effect, Layer, Option } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { ConfigError, loadOptions } from "./config.ts"
import {
  type Check,
  checkLines,
  clip,
  clockCheck,
  evictionCheck,
  progressLine,
  relative,
  span,
  wrap
} from "./format.ts"

type ConnectionRecord = ConnectionModule.ConnectionRecord
type ConnectionSummary = ConnectionModule.ConnectionSummary

// ---- output -------------------------------------------------------------------------------------

const out = (lines: string | ReadonlyArray<string>) =>
  Effect.sync(() => {
    process.stdout.write(`${typeof lines === "string" ? lines : lines.join("\n")}\n`)
  })
const printJson = (value: unknown) => out(JSON.stringify(value, null, 2))

/** A failure of a command: its message goes to stderr (or JSON), the exit code becomes 1. */
class Failed extends Data.TaggedError("Failed")<{ readonly message: string }> {}

const messageOf = (error: unknown): string => {
  if (error instanceof Failed || error instanceof ConfigError) return error.message
  const e = error as { _tag?: unknown; message?: unknown } | undefined
  const text = typeof e?.message === "string" && e.message.length > 0 ? e.message : String(error)
  return typeof e?._tag === "string" && e._tag !== "Failed" ? `${e._tag}: ${text}` : text
}

/** Run a command's program: failures are reported, never thrown with a stack. */
const guarded = <A, E, R>(json: boolean, program: Effect.Effect<A, E, R>) =>
  program.pipe(
    Effect.catchCause((cause) =>
      Effect.gen(function* () {
        const error = Cause.squash(cause)
        process.exitCode = 1
        const message = messageOf(error)
        if (json) yield* printJson({ error: message })
        else
          yield* Effect.sync(() =>
            process.stderr.write(`${wrap(`error: ${message}`, 80, "  ").join("\n")}\n`)
          )
      })
    ),
    Effect.asVoid
  )

// ---- the app's Latchkey --------------------------------------------------------------------------

const load = (path: string) => Effect.tryPromise({ try: () => loadOptions(path), catch: (e) => e })

const storeLayer = (options: LatchkeyOptions): Layer.Layer<ConnectionStore.ConnectionStore, unknown> =>
  options.store === undefined
    ? ConnectionStore.ConnectionStore.layerMemory
    : Layer.isLayer(options.store)
      ? (options.store as Layer.Layer<ConnectionStore.ConnectionStore, unknown>)
      : Layer.succeed(ConnectionStore.ConnectionStore, options.store as ConnectionStore.ConnectionStoreShape)

/**
 * Run `program` with every Latchkey service of the app's configuration (the Refresher, the webhook
 * worker and telemetry are not started).
 */
const withLatchkey = <A, E>(
  options: LatchkeyOptions,
  program: Effect.Effect<A, E, Latchkey.LatchkeyServices>
) =>
  Effect.suspend(() => {
    // The command is not an instance of the app: no background work (webhook worker, telemetry, pruning).
    const layer = Latchkey.layer({
      ...options,
      refresher: { ...options.refresher, autoStart: false },
      webhooks: undefined,
      telemetry: undefined,
      events: undefined
    })
    return program.pipe(Effect.provide(layer))
  })

/** Every connection record, a page at a time. */
const allRecords = Effect.gen(function* () {
  const store = yield* ConnectionStore.ConnectionStore
  const scan = store.scan
  if (scan === undefined)
    return yield* new Failed({ message: "this store cannot list its connections (it has no scan)" })
  const records: Array<ConnectionRecord> = []
  let after: string | undefined
  for (;;) {
    const page = yield* scan(after, 500)
    records.push(...page.records)
    if (page.next === undefined || page.records.length === 0) break
    after = page.next
  }
  return records
})

const getRecord = (id: string) =>
  Effect.gen(function* () {
    const store = yield* ConnectionStore.ConnectionStore
    const record = yield* store.get(id)
    if (record === undefined) return yield* new Failed({ message: `no connection ${id}` })
    return record
  })

const sealedFields = ["accessToken", "refreshToken", "extras"] as const

// ---- flags shared by every command ---------------------------------------------------------------

const root = Command.make("latchkey").pipe(
  Command.withSharedFlags({
    config: Flag.String("config").pipe(
      Flag.withAlias("c"),
      Flag.withDescription("The module exporting your Latchkey options (default ./latchkey.config.ts)"),
      Flag.withDefault("./latchkey.config.ts")
    ),
    json: Flag.Boolean("json").pipe(
      Flag.withDescription("Print JSON instead of text"),
      Flag.withDefault(false)
    )
  }),
  Command.withDescription("Operate the Latchkey connections of your app, with its own configuration.")
)

// ---- connections ---------------------------------------------------------------------------------

const connectionLines = (c: ConnectionSummary, now: number): Array<string> => [
  clip(`${c.id}  ${c.status.padEnd(12)}  ${c.providerId}`),
  clip(
    `  owner ${c.ownerId} · ${c.label} · ${
      c.kind === "api_key"
        ? "API key"
        : `access ${c.expiresAt === undefined ? "never expires" : `expires ${relative(c.expiresAt, now)}`}`
    }`
  )
]

/** A command's body with the global flags read, the app's options loaded, and failures printed (exit code 1). */
const withConfig = <A, E, R>(
  body: (context: { readonly json: boolean; readonly options: LatchkeyOptions }) => Effect.Effect<A, E, R>
) =>
  Effect.gen(function* () {
    const { config, json } = yield* root
    yield* guarded(
      json,
      Effect.flatMap(load(config), (options) => body({ json, options }))
    )
  })

const list = Command.make(
  "list",
  {
    owner: Flag.String("owner").pipe(Flag.withDescription("Only this owner's connections"), Flag.optional),
    provider: Flag.String("provider").pipe(Flag.withDescription("Only this provider's"), Flag.optional),
    status: Flag.Literals("status", ["active", "needs_reauth", "revoked"]).pipe(
      Flag.withDescription("Only connections with this status"),
      Flag.optional
    )
  },
  (flags) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const records = yield* withLatchkey(
          options,
          Option.isSome(flags.owner)
            ? ConnectionStore.ConnectionStore.use((s) => s.listByOwner(flags.owner.pipe(Option.getOrThrow)))
            : allRecords
        )
        const rows = records
          .map(ConnectionModule.summaryOfRecord)
          .filter((c) => Option.isNone(flags.provider) || c.providerId === flags.provider.value)
          .filter((c) => Option.isNone(flags.status) || c.status === flags.status.value)
        if (json) return yield* printJson(rows)
        const now = Date.now()
        yield* out([
          ...rows.flatMap((c) => connectionLines(c, now)),
          `${rows.length} connection${rows.length === 1 ? "" : "s"}`
        ])
      })
    )
).pipe(Command.withDescription("List connections (no token values)"))

const show = Command.make(
  "show",
  { id: Argument.String("id").pipe(Argument.withDescription("The connection id")) },
  ({ id }) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const { record, keys } = yield* withLatchkey(
          options,
          Effect.gen(function* () {
            const record = yield* getRecord(id)
            const vault = yield* Vault.Vault
            const keys = Object.fromEntries(
              sealedFields.flatMap((f) =>
                record[f] === null ? [] : [[f, vault.keyIdOf(record[f]!) ?? "plain"] as const]
              )
            )
            return { record, keys }
          })
        )
        const c = ConnectionModule.summaryOfRecord(record)
        if (json) return yield* printJson({ ...c, refreshDueAt: record.refreshDueAt, sealedWith: keys })
        const now = Date.now()
        const provider = options.providers.find((p) => p.id === c.providerId)
        const at = (t: number | undefined) =>
          t === undefined ? "never" : `${new Date(t).toISOString()} (${relative(t, now)})`
        const rows: Array<[string, string]> = [
          ["id", c.id],
          ["owner", c.ownerId],
          ["provider", provider ? `${c.providerId} (${provider.name})` : `${c.providerId} (not configured)`],
          ["account", `${c.accountId} (${c.label})`],
          [
            "kind",
            c.kind === "api_key"
              ? "API key"
              : c.kind === "client_credentials"
                ? "client credentials"
                : c.kind === "minted"
                  ? `minted from ${c.parentId ?? "its parent"}`
                  : "OAuth"
          ],
          ["status", c.status],
          ["version", String(c.version)],
          ["linked", at(c.createdAt)],
          ["tokens from", at(c.obtainedAt)],
          ["last refresh", at(c.lastRefreshAt)],
          ["access token", c.expiresAt === undefined ? "does not expire" : `expires ${at(c.expiresAt)}`],
          [
            "refresh token",
            !c.hasRefreshToken
              ? "none"
              : c.refreshExpiresAt === undefined
                ? "present, does not expire"
                : `present, expires ${at(c.refreshExpiresAt)}`
          ],
          ["next refresh", record.refreshDueAt === null ? "none planned" : at(record.refreshDueAt)],
          ["scopes", c.scopes.length === 0 ? "(none)" : c.scopes.join(" ")],
          [
            "sealed with",
            Object.entries(keys)
              .map(([f, k]) => `${f}: ${k}`)
              .join(", ")
          ]
        ]
        if (c.lastError) {
          rows.push([
            "last error",
            `${c.lastError.code}${c.lastError.description ? `: ${c.lastError.description}` : ""} (${relative(c.lastError.at, now)})`
          ])
        }
        yield* out(rows.flatMap(([k, v]) => wrap(`${k.padEnd(14)}${v}`, 80, " ".repeat(14))))
      })
    )
).pipe(Command.withDescription("Show one connection (never a token value)"))

const connections = Command.make("connections").pipe(
  Command.withDescription("List and show connections"),
  Command.withSubcommands([list, show])
)

// ---- health --------------------------------------------------------------------------------------

const health = Command.make("health", {}, () =>
  withConfig(({ json, options }) =>
    Effect.gen(function* () {
      const hooks = options.webhooks
      const { records, webhookState } = yield* withLatchkey(
        options,
        Effect.gen(function* () {
          const records = yield* allRecords
          // The app's webhook worker, when its options configure one: its dead letters are health too.
          const webhookState =
            hooks === undefined
              ? undefined
              : yield* ConnectionStore.ConnectionStore.use((s) =>
                  Webhooks.readState(s, hooks.name ?? "default")
                )
          return { records, webhookState }
        })
      )
      const now = Date.now()
      const byStatus = { active: 0, needs_reauth: 0, revoked: 0 } as Record<string, number>
      for (const r of records) byStatus[r.status] = (byStatus[r.status] ?? 0) + 1
      const due = records
        .filter((r) => r.status === "active" && r.refreshDueAt !== null && r.refreshDueAt <= now + 3_600_000)
        .sort((a, b) => a.refreshDueAt! - b.refreshDueAt!)
      const overdue = due.filter((r) => r.refreshDueAt! <= now).length
      const causes = new Map<string, { count: number; example: string }>()
      for (const r of records.filter((r) => r.status === "needs_reauth")) {
        const code = r.lastError?.code ?? "unknown"
        const entry = causes.get(code) ?? { count: 0, example: r.lastError?.description ?? "" }
        entry.count++
        causes.set(code, entry)
      }
      const oldest = records
        .filter((r) => r.status === "active" && r.refreshToken !== null)
        .sort((a, b) => a.obtainedAt - b.obtainedAt)
        .slice(0, 5)
      const report = {
        total: records.length,
        byStatus,
        dueWithinHour: due.length,
        overdue,
        nextDueAt: due.find((r) => r.refreshDueAt! > now)?.refreshDueAt ?? null,
        needsReauth: [...causes].map(([code, { count, example }]) => ({ code, count, example })),
        oldestRefreshTokens: oldest.map((r) => ({
          id: r.id,
          providerId: r.providerId,
          obtainedAt: r.obtainedAt,
          ageMs: now - r.obtainedAt,
          refreshExpiresAt: r.refreshExpiresAt
        })),
        ...(webhookState === undefined
          ? {}
          : {
              webhooks: {
                name: hooks?.name ?? "default",
                delivered: webhookState.delivered,
                failing: webhookState.failing !== null,
                deadLetters: webhookState.deadLetters.length
              }
            })
      }
      if (json) return yield* printJson(report)
      const lines = [
        `connections    ${records.length}: ${byStatus.active} active, ${byStatus.needs_reauth} needs_reauth, ${byStatus.revoked} revoked`,
        `due in 1 hour  ${due.length} refresh${due.length === 1 ? "" : "es"}${overdue > 0 ? ` (${overdue} overdue)` : ""}${report.nextDueAt !== null ? `, next ${relative(report.nextDueAt, now)}` : ""}`
      ]
      if (causes.size === 0) lines.push("needs_reauth   none")
      else {
        lines.push("needs_reauth   by cause:")
        for (const c of report.needsReauth) {
          lines.push(...wrap(`  ${c.count} × ${c.code}${c.example ? `: ${c.example}` : ""}`, 80, "      "))
        }
      }
      if (oldest.length === 0) lines.push("oldest refresh tokens  none")
      else {
        lines.push("oldest refresh tokens:")
        for (const r of oldest) {
          lines.push(
            clip(
              `  ${r.id}  ${r.providerId}  ${span(now - r.obtainedAt)} old${r.refreshExpiresAt !== null ? `, expires ${relative(r.refreshExpiresAt, now)}` : ""}`
            )
          )
        }
      }
      if (webhookState !== undefined) {
        lines.push(
          `webhooks       ${webhookState.delivered} delivered, ${webhookState.failing === null ? "none failing" : `failing since ${relative(webhookState.failing.since, now)}`}, ${webhookState.deadLetters.length} dead letter(s)`
        )
      }
      yield* out(lines.map((l) => clip(l)))
    })
  )
).pipe(
  Command.withDescription(
    "Counts by status, refreshes due, needs_reauth causes, oldest refresh tokens, the webhook worker"
  )
)

// ---- refresh / unlink ----------------------------------------------------------------------------

const refresh = Command.make(
  "refresh",
  { id: Argument.String("id").pipe(Argument.withDescription("The connection id")) },
  ({ id }) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const c = yield* withLatchkey(
          options,
          TokenManager.TokenManager.use((t) => t.refreshNow(id)).pipe(Effect.map(ConnectionModule.summary))
        )
        if (json) return yield* printJson(c)
        yield* out(
          clip(
            `refreshed ${c.id} (${c.providerId}): access token ${c.expiresAt === undefined ? "does not expire" : `expires ${relative(c.expiresAt, Date.now())}`}`
          )
        )
      })
    )
).pipe(Command.withDescription("Refresh a connection now (shares any refresh in flight)"))

const unlink = Command.make(
  "unlink",
  { id: Argument.String("id").pipe(Argument.withDescription("The connection id")) },
  ({ id }) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const result = yield* withLatchkey(options, Latchkey.unlink(id))
        if (json) return yield* printJson({ unlinked: id, ...result })
        yield* out(
          `unlinked ${id} (${result.revokedAtProvider ? "revoked at the provider" : "not revoked at the provider: it has no revocation, or did not confirm"})`
        )
      })
    )
).pipe(Command.withDescription("Revoke at the provider (best effort) and remove a connection"))

// ---- vault ---------------------------------------------------------------------------------------

const rotate = Command.make(
  "rotate",
  {
    to: Flag.String("to").pipe(Flag.withDescription("The key id to re-seal every connection with")),
    pageSize: Flag.Int("page-size").pipe(
      Flag.withDescription("Connections read per page"),
      Flag.withDefault(100)
    )
  },
  ({ to, pageSize }) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const keys = options.vault?.keys ?? []
        if (!keys.some((k) => k.id === to)) {
          return yield* new Failed({
            message: `key "${to}" is not in the configuration's vault keys (${keys.map((k) => k.id).join(", ") || "none"}); add it first`
          })
        }
        const appWrites = options.vault?.writeKeyId ?? keys[0]?.id
        if (appWrites !== to && !json) {
          yield* Effect.sync(() =>
            process.stderr.write(
              `${wrap(`note: the configuration writes with key "${appWrites}", so the app re-seals what it refreshes with it; deploy it with writeKeyId "${to}" first, then rotate.`, 80, "  ").join("\n")}\n`
            )
          )
        }
        const started = Date.now()
        const tty = process.stderr.isTTY === true && !json
        let lastDecile = -1
        const onProgress = (p: Vault.RotateProgress) => {
          if (json) return
          const line = progressLine(p.done, p.total, Date.now() - started)
          if (tty) process.stderr.write(`\r${line}`)
          else {
            const decile = p.total === 0 ? 10 : Math.floor((p.done / p.total) * 10)
            if (decile !== lastDecile) {
              lastDecile = decile
              process.stderr.write(`${line}\n`)
            }
          }
        }
        const report = yield* withLatchkey(
          { ...options, vault: { keys, writeKeyId: to } },
          Vault.rotate({ onProgress, pageSize })
        )
        if (tty) process.stderr.write("\n")
        const failed = report.failed.map((f) => ({
          connectionId: f.connectionId,
          reason: f.error.reason,
          message: f.error.message
        }))
        if (failed.length > 0) process.exitCode = 1
        if (json) return yield* printJson({ to, ...report, failed, elapsedMs: Date.now() - started })
        const lines = [
          `re-sealed ${report.resealed} of ${report.done} connections with key "${to}" in ${span(Date.now() - started)}; ${report.done - report.resealed - failed.length} already were`
        ]
        if (failed.length === 0) {
          lines.push(
            `every connection is sealed with "${to}"; run it again any time, it resumes where it stopped`
          )
        } else {
          lines.push(`${failed.length} left as they were (keep the old keys; run it again):`)
          for (const f of failed)
            lines.push(...wrap(`  ${f.connectionId}: ${f.reason}: ${f.message}`, 80, "    "))
        }
        yield* out(lines.flatMap((l) => wrap(l, 80, "  ")))
      })
    )
).pipe(Command.withDescription("Re-seal every connection with a key (resumable; safe while the app serves)"))

const check = Command.make("check", {}, () =>
  withConfig(({ json, options }) =>
    Effect.gen(function* () {
      const result = yield* withLatchkey(
        options,
        Effect.gen(function* () {
          const vault = yield* Vault.Vault
          const records = yield* allRecords
          const byKey: Record<string, number> = {}
          const failed: Array<{ connectionId: string; field: string; reason: string; message: string }> = []
          let stale = 0
          for (const r of records) {
            let notWriteKey = false
            for (const field of sealedFields) {
              const value = r[field]
              if (value === null) continue
              const key = vault.keyIdOf(value) ?? "plain"
              byKey[key] = (byKey[key] ?? 0) + 1
              if (key !== (vault.writeKeyId ?? "plain")) notWriteKey = true
              const opened = yield* Effect.result(vault.open(value, { connectionId: r.id, field }))
              if (opened._tag === "Failure") {
                failed.push({
                  connectionId: r.id,
                  field,
                  reason: opened.failure.reason,
                  message: opened.failure.message
                })
              }
            }
            if (notWriteKey) stale++
          }
          return { connections: records.length, writeKeyId: vault.writeKeyId ?? null, byKey, stale, failed }
        })
      )
      if (result.failed.length > 0) process.exitCode = 1
      if (json) return yield* printJson(result)
      const counts =
        Object.entries(result.byKey)
          .map(([k, n]) => `${k}: ${n}`)
          .join(", ") || "none"
      const lines = [
        result.failed.length === 0
          ? `all ${result.connections} connections open with the configured keys (sealed fields by key: ${counts})`
          : `${result.failed.length} sealed field(s) do not open with the configured keys (by key: ${counts}):`
      ]
      for (const f of result.failed) lines.push(`  ${f.connectionId} ${f.field}: ${f.reason}`)
      if (result.stale > 0 && result.writeKeyId !== null) {
        lines.push(
          `${result.stale} connection(s) not yet sealed with the write key "${result.writeKeyId}": run latchkey vault rotate --to ${result.writeKeyId}`
        )
      }
      yield* out(lines.flatMap((l) => wrap(l, 80, "  ")))
    })
  )
).pipe(Command.withDescription("Check that every connection opens with the configured keys"))

const vault = Command.make("vault").pipe(
  Command.withDescription("Vault key rotation and checks"),
  Command.withSubcommands([rotate, check])
)

// ---- store ---------------------------------------------------------------------------------------

const migrate = Command.make("migrate", {}, () =>
  withConfig(({ json, options }) =>
    Effect.gen(function* () {
      // Opening a durable store applies its migrations (idempotently, one instance at a time).
      const description = yield* ConnectionStore.ConnectionStore.use((s) =>
        s.describe ? s.describe() : Effect.succeed(undefined)
      ).pipe(Effect.provide(storeLayer(options)))
      if (json) return yield* printJson({ migrated: true, ...description })
      if (description === undefined) return yield* out("the store was opened; it does not describe itself")
      if (description.kind === "memory") return yield* out("the in-memory store has nothing to migrate")
      const settings = Object.entries(description.settings).map(([k, v]) => `${k} ${v}`)
      yield* out(
        wrap(
          `${description.kind} store ready: ${description.schemaVersion === undefined ? "it has no migrations" : `schema version ${description.schemaVersion}`}${settings.length > 0 ? ` (${settings.join(", ")})` : ""}`,
          80,
          "  "
        )
      )
    })
  )
).pipe(Command.withDescription("Apply the store's migrations (PostgreSQL, SQLite; Redis has none)"))

const store = Command.make("store").pipe(
  Command.withDescription("Store maintenance"),
  Command.withSubcommands([migrate])
)

// ---- doctor --------------------------------------------------------------------------------------

const providerChecks = (options: LatchkeyOptions) =>
  Effect.gen(function* () {
    const checks: Array<Check> = []
    const byRedirect = new Map<string, Array<string>>()
    for (const p of options.providers) {
      const list = byRedirect.get(p.redirectUri) ?? []
      list.push(p.id)
      byRedirect.set(p.redirectUri, list)
    }
    for (const p of options.providers) {
      const name = `provider ${p.id}`
      let redirect: URL | undefined
      try {
        redirect = new URL(p.redirectUri)
      } catch {
        checks.push({
          check: name,
          verdict: "fail",
          message: `the redirect URI ${p.redirectUri} is not a URL`
        })
        continue
      }
      if (redirect.protocol === "https:") {
        checks.push({ check: name, verdict: "ok", message: `redirect URI ${p.redirectUri} uses https` })
      } else if (Provider.isLoopbackHost(redirect.hostname)) {
        checks.push({
          check: name,
          verdict: "warn",
          message: `redirect URI ${p.redirectUri} is plain http on this machine: fine for development, not for production`
        })
      } else {
        checks.push({
          check: name,
          verdict: "fail",
          message: `redirect URI ${p.redirectUri} is plain http: codes would cross the network unencrypted; use https`
        })
      }
      const sharing = (byRedirect.get(p.redirectUri) ?? []).filter((id) => id !== p.id)
      if (sharing.length > 0) {
        checks.push({
          check: name,
          verdict: "warn",
          message: `shares its redirect URI with ${sharing.join(", ")}: callbacks are told apart by state, and by iss only when the server sends it (RFC 9207); a redirect URI per provider is safer`
        })
      }
      if (p.discovery !== undefined) {
        const userinfo = yield* Effect.result(
          OAuth.userinfoEndpoint(p, { timeoutMs: 10_000, fetch: (i, init) => fetch(i, init) })
        )
        if (userinfo._tag === "Failure") {
          checks.push({
            check: name,
            verdict: "fail",
            message: `cannot read the discovery document of ${p.discovery.issuer}: ${userinfo.failure.message}`
          })
        } else if (p.requiresUserinfo === true && userinfo.success === undefined) {
          checks.push({
            check: name,
            verdict: "fail",
            message: `the discovery document of ${p.discovery.issuer} has no userinfo_endpoint, which identifying accounts needs`
          })
        } else {
          checks.push({
            check: name,
            verdict: "ok",
            message: `discovery document of ${p.discovery.issuer} read`
          })
        }
      } else {
        checks.push({
          check: name,
          verdict: "ok",
          message: `endpoints valid (${p.clientAuth}${p.pkce === "S256" ? ", PKCE S256" : ", no PKCE"})`
        })
      }
    }
    return checks
  })

const storeChecks = (options: LatchkeyOptions) =>
  Effect.gen(function* () {
    const checks: Array<Check> = []
    const described = yield* Effect.result(
      ConnectionStore.ConnectionStore.use((s) =>
        Effect.gen(function* () {
          const before = Date.now()
          const description = s.describe ? yield* s.describe() : undefined
          const after = Date.now()
          const count = s.count ? yield* s.count() : undefined
          return { description, before, after, count }
        })
      ).pipe(Effect.provide(storeLayer(options)), Effect.scoped)
    )
    if (described._tag === "Failure") {
      checks.push({
        check: "store",
        verdict: "fail",
        message: `not reachable: ${messageOf(described.failure)}`
      })
      return checks
    }
    const { description, before, after, count } = described.success
    const rtt = after - before
    if (description === undefined) {
      checks.push({
        check: "store",
        verdict: "ok",
        message: `reachable (${rtt} ms); it does not describe itself`
      })
      return checks
    }
    checks.push({
      check: "store",
      verdict: description.kind === "memory" ? "warn" : "ok",
      message:
        description.kind === "memory"
          ? "in memory: nothing survives a restart and other processes cannot see it"
          : `${description.kind} reachable in ${rtt} ms${description.schemaVersion !== undefined ? `, schema version ${description.schemaVersion}` : ""}${count !== undefined ? `, ${count} connections` : ""}`
    })
    checks.push(clockCheck(description.serverTime, before, after))
    if (description.kind === "redis") {
      checks.push(evictionCheck(description.settings["maxmemory-policy"] ?? "unknown"))
    }
    return checks
  })

const doctor = Command.make("doctor", {}, () =>
  Effect.gen(function* () {
    const { config, json } = yield* root
    yield* guarded(
      json,
      Effect.gen(function* () {
        const checks: Array<Check> = []
        const loaded = yield* Effect.result(load(config))
        if (loaded._tag === "Failure") {
          checks.push({ check: "configuration", verdict: "fail", message: messageOf(loaded.failure) })
        } else {
          const options = loaded.success
          checks.push({
            check: "configuration",
            verdict: "ok",
            message: `loaded, ${options.providers.length} provider(s): ${options.providers.map((p) => p.id).join(", ")}`
          })
          const keys = options.vault?.keys ?? []
          if (keys.length === 0) {
            checks.push({
              check: "vault",
              verdict: "warn",
              message: "no vault key: tokens are stored in plain text (tests only); add a 32-byte key"
            })
          } else {
            try {
              const v = Vault.make(options.vault)
              checks.push({
                check: "vault",
                verdict: "ok",
                message: `${keys.length} key(s) valid (${keys.map((k) => k.id).join(", ")}), writing with "${v.writeKeyId}"`
              })
            } catch (error) {
              checks.push({ check: "vault", verdict: "fail", message: messageOf(error) })
            }
          }
          checks.push(...(yield* storeChecks(options)))
          checks.push(...(yield* providerChecks(options)))
        }
        const failed = checks.filter((c) => c.verdict === "fail").length
        const warned = checks.filter((c) => c.verdict === "warn").length
        if (failed > 0) process.exitCode = 1
        if (json) return yield* printJson({ checks, failed, warned })
        yield* out([
          ...checkLines(checks),
          failed > 0
            ? `${failed} problem(s) to fix before going live${warned > 0 ? `, ${warned} warning(s)` : ""}`
            : warned > 0
              ? `no problems; ${warned} warning(s)`
              : "no problems found"
        ])
      })
    )
  })
).pipe(
  Command.withDescription(
    "Check vault keys, the store (reachable, clock, Redis eviction) and each provider's configuration"
  )
)

// ---- webhooks ------------------------------------------------------------------------------------

const webhooks = Command.make(
  "webhooks",
  {
    name: Flag.String("name").pipe(
      Flag.withDescription("The webhook worker's name (default: the configured one, or default)"),
      Flag.optional
    ),
    redeliver: Flag.Boolean("redeliver").pipe(
      Flag.withDescription("Put the dead letters back in line: the worker delivers them again"),
      Flag.withDefault(false)
    )
  },
  (flags) =>
    withConfig(({ json, options }) =>
      Effect.gen(function* () {
        const name = Option.getOrElse(flags.name, () => options.webhooks?.name ?? "default")
        const { state, requeued, pending } = yield* withLatchkey(
          options,
          Effect.gen(function* () {
            const store = yield* ConnectionStore.ConnectionStore
            const requeued = flags.redeliver ? yield* Webhooks.redeliverDeadLetters(store, name) : 0
            return {
              state: yield* Webhooks.readState(store, name),
              requeued,
              pending: yield* Webhooks.pendingRedelivery(store, name)
            }
          })
        )
        const report = {
          name: name,
          cursor: state.cursor,
          delivered: state.delivered,
          lastDeliveredAt: state.lastDeliveredAt,
          failing: state.failing,
          deadLetters: state.deadLetters.map(({ payload: _, ...d }) => d),
          redeliveryPending: pending,
          requeued
        }
        if (json) return yield* printJson(report)
        const now = Date.now()
        const lines = [
          `webhooks "${name}": ${state.delivered} delivered, cursor at event ${state.cursor}${state.lastDeliveredAt !== null ? `, last ${relative(state.lastDeliveredAt, now)}` : ""}`,
          state.failing === null
            ? "failing        none"
            : `failing        event ${state.failing.seq} (${state.failing.eventId}): ${state.failing.attempts} attempt(s), ${state.failing.lastError}`,
          state.deadLetters.length === 0
            ? "dead letters   none"
            : `dead letters   ${state.deadLetters.length}:`
        ]
        for (const d of state.deadLetters) {
          lines.push(`  ${d.seq}  ${d.type}  ${d.connectionId}`)
          lines.push(`    ${d.attempts} attempt(s), ${d.lastError}, ${relative(d.at, now)}`)
        }
        if (requeued > 0) lines.push(`requeued ${requeued} dead letter(s): the worker delivers them again`)
        else if (pending) lines.push("a redelivery is pending: the worker applies it when it runs")
        yield* out(lines.map((l) => clip(l)))
      })
    )
).pipe(Command.withDescription("The webhook worker: delivered, failing, dead letters (--redeliver)"))

export const cli = root.pipe(
  Command.withSubcommands([connections, health, refresh, unlink, vault, store, doctor, webhooks])
)
