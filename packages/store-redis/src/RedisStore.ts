/**
 * The Redis store, for apps that run many instances: connections, pending authorizations and the
 * refresh lease under one key prefix. Every operation that reads and writes is one Lua script, so it
 * is atomic on the server.
 *
 * Keys (P = the prefix, default `latchkey:`):
 * - `P c:<id>` hash: `v` version, `r` the record (JSON), `o` owner id, `a` account key. Reads of a
 *   connection are one `HGET`.
 * - `P a:<[owner, provider, account]>` → id (uniqueness of the account), `P o:<owner>` sorted set of
 *   ids by creation time (list by owner), `P due` sorted set of active ids by `refreshDueAt`
 *   (`listDue`), `P ids` sorted set of every id (`scan` in id order, `count`).
 * - `P l:<id>` the lease: a hash (holder, fence, expiry) created with a PX TTL of the lease's length,
 *   only when no unexpired lease exists (`SET NX PX` semantics, inside a script so that the fence is
 *   incremented in the same step); released by compare-and-delete (same holder and fence). `P f:<id>`
 *   the fence counter (`INCR`): it survives releases, so fences only grow; `P r:<id>` the last
 *   released fence (a released lease is never renewed). Lease time is the server's `TIME`, never a
 *   caller's clock.
 * - `P p:<state>` a pending authorization: a hash taken once by a get-and-mark script; it expires an
 *   hour after the authorization does.
 * - `P w:<key>` a `claimOnce` record (`SET NX PX`), e.g. a webhook id already handled.
 * - `P ev` the lifecycle event log: a stream whose entry ids are `0-<seq>`, `seq` from the counter
 *   `P evseq`, both written by the same script as the change they go with (fields `a` at, `e` the
 *   event's JSON); `P ecs` a hash of the event consumers' states (e.g. the webhook worker's cursor).
 * - `P changes` the pub/sub channel every connection write publishes its id on, from inside its
 *   script (so a write and its announcement are one atomic step); `watch` subscribes to it.
 * - `P rate:<key>` a `takeRateBudget` budget: the next free slot (server time, ms), with a TTL.
 * - `P k:<id>` a `claimDue` claim: the version of the connection it claimed, with a PX TTL (a write
 *   of the connection, which changes its version, ends the claim).
 *
 * The server's `maxmemory-policy` must be `noeviction` (checked before the first command; see
 * `allowEviction`), and errors keep nothing of the driver's command arguments.
 *
 * Writes of a connection are compare-and-set on its version in a script, so a writer whose lease
 * lapsed (its fence superseded) cannot overwrite the newer tokens: its write fails with `conflict`.
 *
 * Redis Cluster is not supported (the scripts touch keys they derive from the prefix); use a
 * standalone server, Sentinel or a managed primary. Tokens reach Redis sealed by the Vault.
 */
import { createHash, randomUUID } from "node:crypto"
import { type Connection, ConnectionStore, LifecycleEvents, StoreError } from "@latchkey/core"
import { Effect, Layer, Redacted } from "effect"
import { Redis, type RedisOptions } from "ioredis"

type ConnectionRecord = Connection.ConnectionRecord
type PendingAuthorization = ConnectionStore.PendingAuthorization
type TakePendingResult = ConnectionStore.TakePendingResult
type LifecycleEvent = LifecycleEvents.LifecycleEvent

export interface RedisStoreOptions {
  /** `redis://[:password@]host:6379/db`; a Redacted value keeps the password out of logs. */
  readonly url?: string | Redacted.Redacted<string> | undefined
  /** Your own ioredis client instead (then `close()` leaves it connected). Its `keyPrefix` is honoured. */
  readonly client?: Redis | undefined
  /** Prefix of every key (default `"latchkey:"`). */
  readonly keyPrefix?: string | undefined
  /** How long a command may take before failing with `StoreError("timeout")` (default 5 s; own client only). */
  readonly commandTimeoutMs?: number | undefined
  /** More ioredis options for the client this store creates (RESP2 replies). */
  readonly redisOptions?: Omit<RedisOptions, "replyMapping"> | undefined
  /**
   * Accept a server whose `maxmemory-policy` may evict keys (`allkeys-*`, `volatile-*`). By default
   * the store refuses to work on such a server: an evicted connection is a linked account lost, an
   * evicted lease a refresh token spent twice. Set only when eviction cannot happen (no maxmemory).
   */
  readonly allowEviction?: boolean | undefined
  /**
   * `watch` (the token cache's view of writes made by other instances) subscribes to the prefix's
   * change channel on one more connection (`client.duplicate()`) while anyone listens (default true).
   */
  readonly subscribe?: boolean | undefined
}

export interface RedisStore extends ConnectionStore.ConnectionStoreShape {
  readonly keyPrefix: string
  /** Resolves once the server answers (a `PING`); operations wait for the connection anyway. */
  readonly ready: Effect.Effect<void, StoreError>
  /** Quit the client this store created (a client you passed in stays connected). */
  readonly close: () => Effect.Effect<void>
}

const CONSUMED_TOMBSTONE_MS = 60 * 60 * 1000

interface Script {
  readonly name: string
  readonly lua: string
  readonly sha: string
}

const script = (name: string, lua: string): Script => ({
  name,
  lua,
  sha: createHash("sha1").update(lua).digest("hex")
})

/** Keep the due index in step with the record: ARGV[due] is the score or "" (not due). */
const SET_DUE = `
local function setDue(P, id, due)
  if due == '' then redis.call('ZREM', P .. 'due', id) else redis.call('ZADD', P .. 'due', due, id) end
end
`

/**
 * Append the events passed from ARGV[from]: a count, then (at, JSON) pairs. Called by the script that
 * makes the change, after it succeeded: the change and its events are one atomic step.
 */
const APPEND_EVENTS = `
local function appendEvents(P, from)
  local n = tonumber(ARGV[from] or '0') or 0
  for i = 1, n do
    local seq = redis.call('INCR', P .. 'evseq')
    redis.call('XADD', P .. 'ev', '0-' .. seq, 'a', ARGV[from + 2 * i - 1], 'e', ARGV[from + 2 * i])
  end
end
`

/** ARGV: prefix, id, version, record, owner, account key, createdAt, due, events... */
const INSERT = script(
  "insert",
  `${SET_DUE}${APPEND_EVENTS}
local P, id = ARGV[1], ARGV[2]
local ck = P .. 'c:' .. id
if redis.call('EXISTS', ck) == 1 then return 'id' end
local ak = P .. 'a:' .. ARGV[6]
if redis.call('EXISTS', ak) == 1 then return 'account' end
redis.call('HSET', ck, 'v', ARGV[3], 'r', ARGV[4], 'o', ARGV[5], 'a', ARGV[6])
redis.call('SET', ak, id)
redis.call('ZADD', P .. 'o:' .. ARGV[5], ARGV[7], id)
redis.call('ZADD', P .. 'ids', 0, id)
setDue(P, id, ARGV[8])
appendEvents(P, 9)
redis.call('PUBLISH', P .. 'changes', id)
return 'ok'`
)

/**
 * The caller's own lease released (same holder and fence; another holder's is left alone), and its
 * fence marked released so that it cannot be renewed. Returns 1 when released.
 */
const RELEASE_LEASE = `
local function releaseLease(P, id, holder, fence)
  local lk = P .. 'l:' .. id
  local cur = redis.call('HMGET', lk, 'h', 'f')
  if cur[1] == holder and cur[2] == fence then
    redis.call('SET', P .. 'r:' .. id, fence, 'PX', 86400000)
    return redis.call('DEL', lk)
  end
  return 0
end
`

/**
 * ARGV: prefix, id, expected version, new version, record, owner, account key, createdAt, due, quiet
 * ('1': nothing a token cache holds changed, so no PUBLISH), the holder and fence of a lease to
 * release with the write ('' and '' for none), events...
 */
const UPDATE = script(
  "update",
  `${SET_DUE}${APPEND_EVENTS}${RELEASE_LEASE}
local P, id = ARGV[1], ARGV[2]
local ck = P .. 'c:' .. id
local cur = redis.call('HMGET', ck, 'v', 'o', 'a')
if not cur[1] then return 'missing' end
if tonumber(cur[1]) ~= tonumber(ARGV[3]) then return 'version' end
if cur[3] ~= ARGV[7] then
  local ak = P .. 'a:' .. ARGV[7]
  if redis.call('EXISTS', ak) == 1 then return 'account' end
  redis.call('DEL', P .. 'a:' .. cur[3])
  redis.call('SET', ak, id)
end
if cur[2] ~= ARGV[6] then redis.call('ZREM', P .. 'o:' .. cur[2], id) end
redis.call('ZADD', P .. 'o:' .. ARGV[6], ARGV[8], id)
redis.call('HSET', ck, 'v', ARGV[4], 'r', ARGV[5], 'o', ARGV[6], 'a', ARGV[7])
setDue(P, id, ARGV[9])
if ARGV[12] ~= '' then releaseLease(P, id, ARGV[11], ARGV[12]) end
appendEvents(P, 13)
if ARGV[10] ~= '1' then redis.call('PUBLISH', P .. 'changes', id) end
return 'ok'`
)

/** ARGV: prefix, id, events... */
const REMOVE = script(
  "remove",
  `${APPEND_EVENTS}
local P, id = ARGV[1], ARGV[2]
local ck = P .. 'c:' .. id
local cur = redis.call('HMGET', ck, 'o', 'a')
if not cur[1] then return 0 end
redis.call('DEL', ck, P .. 'a:' .. cur[2], P .. 'l:' .. id, P .. 'f:' .. id, P .. 'r:' .. id, P .. 'k:' .. id)
redis.call('ZREM', P .. 'o:' .. cur[1], id)
redis.call('ZREM', P .. 'ids', id)
redis.call('ZREM', P .. 'due', id)
appendEvents(P, 3)
redis.call('PUBLISH', P .. 'changes', id)
return 1`
)

/** ARGV: prefix, events... */
const APPEND = script(
  "appendEvents",
  `${APPEND_EVENTS}
appendEvents(ARGV[1], 2)
return 'ok'`
)

/**
 * ARGV: prefix, before. Deletes the oldest events up to the first whose `at` is not earlier than
 * `before` (one XTRIM MINID), looking at 10,000 events at most per call (the script blocks the
 * server while it runs; the next call goes on); returns how many.
 */
const PRUNE_EVENTS = script(
  "pruneEvents",
  `
local key, before = ARGV[1] .. 'ev', tonumber(ARGV[2])
local start, seen = '-', 0
while true do
  local batch = redis.call('XRANGE', key, start, '+', 'COUNT', 200)
  if #batch == 0 then return redis.call('XTRIM', key, 'MINID', '0-' .. (redis.call('GET', ARGV[1] .. 'evseq') or '0') + 1) end
  for _, entry in ipairs(batch) do
    local fields, at = entry[2], nil
    for i = 1, #fields, 2 do
      if fields[i] == 'a' then at = tonumber(fields[i + 1]) end
    end
    if at == nil or at >= before or seen >= 10000 then return redis.call('XTRIM', key, 'MINID', entry[1]) end
    seen = seen + 1
  end
  local last = batch[#batch][1]
  start = '0-' .. (tonumber(string.sub(last, 3)) + 1)
end`
)

/** ARGV: prefix, account key. Returns the record, or false. */
const FIND_BY_ACCOUNT = script(
  "findByAccount",
  `
local id = redis.call('GET', ARGV[1] .. 'a:' .. ARGV[2])
if not id then return false end
return redis.call('HGET', ARGV[1] .. 'c:' .. id, 'r')`
)

/** Records of ids, skipping any that vanished. */
const RECORDS_OF = `
local function recordsOf(P, ids)
  local out = {}
  for _, id in ipairs(ids) do
    local r = redis.call('HGET', P .. 'c:' .. id, 'r')
    if r then out[#out + 1] = r end
  end
  return out
end
`

/** ARGV: prefix, owner. */
const LIST_BY_OWNER = script(
  "listByOwner",
  `${RECORDS_OF}
return recordsOf(ARGV[1], redis.call('ZRANGE', ARGV[1] .. 'o:' .. ARGV[2], 0, -1))`
)

/** ARGV: prefix, now, limit. */
const LIST_DUE = script(
  "listDue",
  `${RECORDS_OF}
return recordsOf(ARGV[1], redis.call('ZRANGEBYSCORE', ARGV[1] .. 'due', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3])))`
)

/** ARGV: prefix, lex start ("-" or "(" .. after), limit. Returns id, record, id, record, ... */
const SCAN = script(
  "scan",
  `
local P = ARGV[1]
local ids = redis.call('ZRANGEBYLEX', P .. 'ids', ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local r = redis.call('HGET', P .. 'c:' .. id, 'r')
  if r then
    out[#out + 1] = id
    out[#out + 1] = r
  end
end
return out`
)

/** The server's clock in epoch milliseconds (leases are judged by it, never by a caller's clock). */
const SERVER_NOW = `
local function serverNow()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
`

/**
 * ARGV: prefix, connection id, holder, ttl. The lease is granted when no unexpired lease exists by
 * the server's clock: the key is gone (its PX ran out, or it was released) or its expiry is at or
 * before the server's now. Then the fence is incremented and the lease written with a PX TTL.
 * Returns { fence, grantedAt, expiresAt } or false.
 */
const ACQUIRE = script(
  "acquireLease",
  `${SERVER_NOW}
local lk = ARGV[1] .. 'l:' .. ARGV[2]
local now, ttl = serverNow(), tonumber(ARGV[4])
local held = redis.call('HGET', lk, 'e')
if held and tonumber(held) > now then return false end
local fence = redis.call('INCR', ARGV[1] .. 'f:' .. ARGV[2])
local expires = now + ttl
redis.call('DEL', lk)
redis.call('HSET', lk, 'h', ARGV[3], 'f', fence, 'e', string.format('%.0f', expires))
redis.call('PEXPIRE', lk, math.max(1, ttl))
return { fence, string.format('%.0f', now), string.format('%.0f', expires) }`
)

/**
 * ARGV: prefix, connection id, holder, fence, ttl. Renew the caller's own lease from the server's
 * now: still its own when the fence counter was not advanced by a newer holder (the key may have
 * lapsed meanwhile). Returns { grantedAt, expiresAt } or false.
 */
const RENEW = script(
  "renewLease",
  `${SERVER_NOW}
local lk = ARGV[1] .. 'l:' .. ARGV[2]
local fence = redis.call('GET', ARGV[1] .. 'f:' .. ARGV[2])
if fence ~= ARGV[4] then return false end
local cur = redis.call('HMGET', lk, 'h', 'f')
if cur[1] and (cur[1] ~= ARGV[3] or cur[2] ~= ARGV[4]) then return false end
if not cur[1] and redis.call('GET', ARGV[1] .. 'r:' .. ARGV[2]) == ARGV[4] then return false end
local now, ttl = serverNow(), tonumber(ARGV[5])
local expires = now + ttl
redis.call('HSET', lk, 'h', ARGV[3], 'f', ARGV[4], 'e', string.format('%.0f', expires))
redis.call('PEXPIRE', lk, math.max(1, ttl))
return { string.format('%.0f', now), string.format('%.0f', expires) }`
)

/** ARGV: prefix, connection id, holder, fence. Compare-and-delete; marks the fence released. */
const RELEASE = script(
  "releaseLease",
  `${RELEASE_LEASE}
return releaseLease(ARGV[1], ARGV[2], ARGV[3], ARGV[4])`
)

/**
 * ARGV: prefix, now (the caller's, for what is due), limit, holder, ttl. Walks the due index soonest
 * first and claims (a `P k:<id>` key with a PX TTL) each connection that has no unexpired lease and
 * no unexpired claim, by the server's clock, until `limit` are claimed; looks at a bounded number of
 * entries per call. Returns the claimed records, soonest first.
 */
const CLAIM_DUE = script(
  "claimDue",
  `${SERVER_NOW}
local P, limit, holder, ttl = ARGV[1], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local now = serverNow()
local out = {}
local offset, page = 0, math.max(64, limit * 2)
local budget = math.max(2000, limit * 20)
while #out < limit and offset < budget do
  local ids = redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', ARGV[2], 'LIMIT', offset, page)
  if #ids == 0 then break end
  for _, id in ipairs(ids) do
    local held = redis.call('HGET', P .. 'l:' .. id, 'e')
    local cur = redis.call('HMGET', P .. 'c:' .. id, 'v', 'r')
    -- A claim holds the version it claimed: a write of the connection ends it.
    if (not held or tonumber(held) <= now) and cur[1] and redis.call('GET', P .. 'k:' .. id) ~= cur[1] then
      local r = cur[2]
      if r then
        redis.call('SET', P .. 'k:' .. id, cur[1], 'PX', math.max(1, ttl))
        out[#out + 1] = r
        if #out >= limit then break end
      end
    end
  end
  offset = offset + page
end
return out`
)

/**
 * ARGV: prefix, key, step (ms between slots x cost), window ms. The slot is max(stored next slot,
 * server now); the next slot is stored with a TTL. Returns the wait in ms (as a string).
 */
const TAKE_RATE = script(
  "takeRateBudget",
  `${SERVER_NOW}
local k = ARGV[1] .. 'rate:' .. ARGV[2]
local step, now = tonumber(ARGV[3]), serverNow()
local stored = tonumber(redis.call('GET', k) or '0')
local slot = math.max(now, stored)
redis.call('SET', k, string.format('%.3f', slot + step), 'PX', math.max(1, math.ceil(slot + step - now + tonumber(ARGV[4]))))
return string.format('%.3f', slot - now)`
)

/** ARGV: prefix, state, record, expiresAt, ttl ms. */
const PUT_PENDING = script(
  "putPending",
  `
local pk = ARGV[1] .. 'p:' .. ARGV[2]
redis.call('DEL', pk)
redis.call('HSET', pk, 'r', ARGV[3], 'x', ARGV[4])
redis.call('PEXPIRE', pk, tonumber(ARGV[5]))
return 'ok'`
)

/**
 * ARGV: prefix, state, now, tombstone ms, "1" to check the owner, expected owner. Returns { 'found', record } |
 * { 'consumed' } | { 'missing' } | { 'foreign' } (another owner's state: left unconsumed).
 */
const TAKE_PENDING = script(
  "takePending",
  `
local pk = ARGV[1] .. 'p:' .. ARGV[2]
local cur = redis.call('HMGET', pk, 'r', 'c')
if not cur[1] then return { 'missing' } end
if cur[2] then return { 'consumed' } end
if ARGV[5] == '1' then
  local ok, rec = pcall(cjson.decode, cur[1])
  if not ok or type(rec) ~= 'table' or rec.ownerId ~= ARGV[6] then return { 'foreign' } end
end
redis.call('HSET', pk, 'c', ARGV[3])
if redis.call('PTTL', pk) < tonumber(ARGV[4]) then redis.call('PEXPIRE', pk, tonumber(ARGV[4])) end
return { 'found', cur[1] }`
)

const errorText = (e: unknown) => String((e as Error)?.message ?? e)

/**
 * The driver's error without what it carries about the command: ioredis errors keep the command's
 * arguments (`command.args`: records with sealed or, without a vault key, plain tokens), so only the
 * name, message and code are kept.
 */
export const safeCause = (cause: unknown): Error => {
  const error = new Error(errorText(cause))
  error.name = String((cause as Error)?.name ?? "Error")
  const code = (cause as { code?: unknown } | undefined)?.code
  if (typeof code === "string") Object.assign(error, { code })
  error.stack = `${error.name}: ${error.message}`
  return error
}

const STORE = "Redis store"

/**
 * The Redis classifier: every failure of ioredis (or of decoding a value) as a `StoreError` with the
 * reasons every store shares. A command timeout or a server busy running a script is `timeout`; a
 * key holding another type than the store wrote (`WRONGTYPE`) is `corrupt`; anything else (refused,
 * closed, out of memory, loading) `unavailable`.
 */
export const classifyRedisError =
  (operation: string) =>
  (cause: unknown): StoreError => {
    if (cause instanceof StoreError) return cause
    const text = errorText(cause)
    const reason = /^WRONGTYPE\b/.test(text)
      ? "corrupt"
      : /timed? ?out|ETIMEDOUT|^BUSY\b/i.test(text)
        ? "timeout"
        : "unavailable"
    return new StoreError({
      reason,
      operation,
      message: `${STORE}: ${operation} failed (${text})`,
      cause: safeCause(cause)
    })
  }

const storeError = classifyRedisError

const conflict = (message: string) => new StoreError({ reason: "conflict", message: `${STORE}: ${message}` })

/** The server's `maxmemory-policy`, read from `INFO memory` (allowed where `CONFIG` is not, e.g. managed Redis). */
export const readEvictionPolicy = async (client: Redis): Promise<string> => {
  const info = await client.info("memory")
  const match = /^maxmemory_policy:(\S+)/m.exec(info)
  if (match === null) throw new Error("INFO memory has no maxmemory_policy")
  return match[1]!
}

/** Whether a `maxmemory-policy` can evict the store's keys: every policy but `noeviction` can. */
export const evicts = (policy: string): boolean => policy !== "noeviction"

const parseRecord = (what: string, text: unknown): ConnectionRecord =>
  ConnectionStore.decodeRecord(text, STORE, what)

/** The account index key: JSON keeps the three parts apart whatever characters they hold. */
const accountKey = (r: Pick<ConnectionRecord, "ownerId" | "providerId" | "accountId">) =>
  JSON.stringify([r.ownerId, r.providerId, r.accountId])

/** The events as script arguments: a count, then (at, JSON) pairs. */
const eventArgs = (events: ReadonlyArray<LifecycleEvent> | undefined): Array<string | number> => {
  if (events === undefined || events.length === 0) return []
  const args: Array<string | number> = [events.length]
  for (const event of events) args.push(String(event.at), LifecycleEvents.encode(event))
  return args
}

const dueScore = (r: ConnectionRecord) =>
  r.status === "active" && r.refreshDueAt !== null ? String(r.refreshDueAt) : ""

const invalid = (field: string, message: string) =>
  new StoreError({ reason: "invalid_options", field, message: `RedisStore: ${message}` })

/**
 * Create the store. Nothing is written until it is used; `ready` checks the server answers. Throws
 * `StoreError("invalid_options")` on invalid options.
 */
export const make = (options: RedisStoreOptions): RedisStore => {
  const keyPrefix = options.keyPrefix ?? "latchkey:"
  if (keyPrefix.length === 0 || /[*?[\]\\]/.test(keyPrefix)) {
    throw invalid("keyPrefix", "keyPrefix must be non-empty and free of glob characters (* ? [ ] \\)")
  }
  if (options.client === undefined && options.url === undefined) {
    throw invalid("url", "give a url or a client")
  }
  const commandTimeoutMs = options.commandTimeoutMs ?? 5_000
  if (!Number.isInteger(commandTimeoutMs) || commandTimeoutMs < 1) {
    throw invalid("commandTimeoutMs", "commandTimeoutMs must be a positive integer")
  }
  const ownClient = options.client === undefined
  const clientOptions: Omit<RedisOptions, "replyMapping"> = {
    commandTimeout: commandTimeoutMs,
    maxRetriesPerRequest: 2,
    connectTimeout: commandTimeoutMs,
    retryStrategy: (times: number) => Math.min(50 * 2 ** times, 2_000),
    ...options.redisOptions
  }
  const url = Redacted.isRedacted(options.url) ? Redacted.value(options.url) : options.url
  const client = options.client ?? new Redis(url as string, clientOptions)
  // Connection errors surface as typed StoreErrors on the operations; the event must not crash.
  if (ownClient) client.on("error", () => {})
  // Scripts build keys themselves, so they need the client's own prefix too (plain commands get it from ioredis).
  const P = `${client.options.keyPrefix ?? ""}${keyPrefix}`

  // The eviction policy is checked once, before the first command; a refusal is checked again next
  // time (an operator may fix the server's policy without restarting the app).
  let policyChecked: Promise<void> | undefined
  const checkPolicy = (): Promise<void> => {
    if (options.allowEviction === true) return Promise.resolve()
    policyChecked ??= readEvictionPolicy(client).then((policy) => {
      if (evicts(policy)) {
        throw new StoreError({
          reason: "unavailable",
          message: `Redis store: the server's maxmemory-policy is ${policy}, which can evict connections and leases (linked accounts lost, refresh tokens spent twice). Set it to noeviction, or pass allowEviction: true if the server never reaches maxmemory`
        })
      }
    })
    policyChecked.catch(() => {
      policyChecked = undefined
    })
    return policyChecked
  }

  const call = <A>(what: string, f: () => Promise<A>): Effect.Effect<A, StoreError> =>
    Effect.tryPromise({
      try: async () => {
        await checkPolicy()
        return f()
      },
      catch: storeError(what)
    })

  const evalScript = async (s: Script, args: ReadonlyArray<string | number>): Promise<unknown> => {
    try {
      return await client.evalsha(s.sha, 0, ...args)
    } catch (error) {
      if (!/NOSCRIPT/.test(errorText(error))) throw error
      return await client.eval(s.lua, 0, ...args)
    }
  }
  const run = (s: Script, args: ReadonlyArray<string | number>) =>
    call(s.name, () => evalScript(s, [P, ...args]))

  const parseAll = (what: string) => (rows: unknown) =>
    (rows as Array<string>).map((r) => parseRecord(what, r))

  let closed = false

  // watch: writes through this object are announced at once; every write's script also publishes
  // its id on `P changes`, which one subscriber connection follows while anyone listens.
  const hub = ConnectionStore.makeChangeHub()
  const channel = `${P}changes`
  let subscriber: Redis | undefined
  let live = false
  const stopSubscriber = async () => {
    const current = subscriber
    subscriber = undefined
    live = false
    if (current !== undefined) await current.quit().catch(() => current.disconnect())
  }
  const watch = (listener: ConnectionStore.StoreChangeListener) => {
    const remove = hub.add(listener)
    if (subscriber === undefined) {
      const sub = client.duplicate({
        lazyConnect: false,
        enableOfflineQueue: true,
        maxRetriesPerRequest: null,
        connectionName: `latchkey-watch:${channel}`.replace(/[^A-Za-z0-9:_-]/g, "_")
      })
      subscriber = sub
      sub.on("error", () => {})
      sub.on("message", (from: string, id: string) => {
        if (from === channel) hub.emit({ _tag: "Changed", id })
      })
      sub.on("ready", () => {
        // After every (re)connect: subscribe, then everything cached must go (writes may have been missed).
        sub.subscribe(channel).then(
          () => {
            if (subscriber !== sub) return
            live = true
            hub.emit({ _tag: "Live" })
          },
          () => {}
        )
      })
      sub.on("close", () => {
        if (subscriber === sub && live) {
          live = false
          hub.emit({ _tag: "Lost" })
        }
      })
    } else if (live) listener({ _tag: "Live" })
    return () => {
      remove()
      if (hub.listeners.size === 0) void stopSubscriber()
    }
  }

  return {
    keyPrefix,
    ...(options.subscribe === false ? {} : { watch }),
    ready: call("ping", () => client.ping()).pipe(Effect.asVoid),
    get: (id) =>
      call("get", () => client.hget(`${keyPrefix}c:${id}`, "r")).pipe(
        Effect.flatMap((r) =>
          r === null
            ? Effect.succeed(undefined)
            : Effect.try({
                try: () => parseRecord(`connection ${id}`, r),
                catch: storeError("get")
              })
        )
      ),
    findByAccount: (ownerId, providerId, accountId) =>
      run(FIND_BY_ACCOUNT, [accountKey({ ownerId, providerId, accountId })]).pipe(
        Effect.flatMap((r) =>
          typeof r !== "string"
            ? Effect.succeed(undefined)
            : Effect.try({
                try: () => parseRecord("a connection", r),
                catch: storeError("findByAccount")
              })
        )
      ),
    listByOwner: (ownerId) =>
      run(LIST_BY_OWNER, [ownerId]).pipe(
        Effect.flatMap((rows) =>
          Effect.try({ try: () => parseAll("a connection")(rows), catch: storeError("listByOwner") })
        )
      ),
    listDue: (now, limit) =>
      Math.floor(limit) <= 0
        ? Effect.succeed([])
        : run(LIST_DUE, [String(now), Math.floor(limit)]).pipe(
            Effect.flatMap((rows) =>
              Effect.try({ try: () => parseAll("a connection")(rows), catch: storeError("listDue") })
            )
          ),
    takeRateBudget: (key, limit, windowMs, cost = 1) =>
      run(TAKE_RATE, [
        key,
        String((windowMs / Math.max(1e-9, limit)) * Math.max(1, cost)),
        String(Math.max(1, Math.ceil(windowMs)))
      ]).pipe(Effect.map((wait) => Math.max(0, Number(wait)))),
    claimDue: (now, limit, holder, ttlMs) =>
      Math.floor(limit) <= 0
        ? Effect.succeed([])
        : run(CLAIM_DUE, [String(now), Math.floor(limit), holder, Math.max(1, Math.floor(ttlMs))]).pipe(
            Effect.flatMap((rows) =>
              Effect.try({ try: () => parseAll("a connection")(rows), catch: storeError("claimDue") })
            )
          ),
    scan: (after, limit) => {
      const size = Math.max(0, Math.floor(limit))
      if (size === 0) return Effect.succeed({ records: [], next: undefined })
      return run(SCAN, [after === undefined ? "-" : `(${after}`, size + 1]).pipe(
        Effect.flatMap((flat) =>
          Effect.try({
            try: () => {
              const items = flat as Array<string>
              const ids: Array<string> = []
              const records: Array<ConnectionRecord> = []
              for (let i = 0; i + 1 < items.length; i += 2) {
                ids.push(items[i]!)
                records.push(parseRecord(`connection ${items[i]}`, items[i + 1]!))
              }
              const more = records.length > size
              return {
                records: records.slice(0, size),
                next: more ? ids[size - 1] : undefined
              }
            },
            catch: storeError("scan")
          })
        )
      )
    },
    count: () => call("count", () => client.zcard(`${keyPrefix}ids`)),
    describe: () =>
      call("describe", async () => {
        const [seconds, micros] = await client.time()
        // INFO works where CONFIG GET is disabled (managed Redis).
        const info = `${await client.info("memory")}\n${await client.info("server")}`
        const field = (name: string) => new RegExp(`^${name}:(.*)$`, "m").exec(info)?.[1]?.trim()
        return {
          kind: "redis",
          serverTime: Number(seconds) * 1000 + Math.floor(Number(micros) / 1000),
          settings: {
            keyPrefix,
            "maxmemory-policy": field("maxmemory_policy") ?? "unknown",
            redis_version: field("redis_version") ?? "unknown"
          }
        }
      }),
    insert: (record, events) =>
      run(INSERT, [
        record.id,
        record.version,
        JSON.stringify(record),
        record.ownerId,
        accountKey(record),
        record.createdAt,
        dueScore(record),
        ...eventArgs(events)
      ]).pipe(
        Effect.flatMap((answer) =>
          answer === "ok"
            ? Effect.sync(() => hub.changed(record.id))
            : Effect.fail(
                conflict(
                  answer === "id"
                    ? `connection ${record.id} already exists`
                    : `account ${record.accountId} of ${record.providerId} is already linked`
                )
              )
        )
      ),
    update: (record, expectedVersion, events, options) =>
      record.version !== expectedVersion + 1
        ? Effect.fail(conflict(`connection ${record.id}: a write must advance the version by one`))
        : run(UPDATE, [
            record.id,
            expectedVersion,
            record.version,
            JSON.stringify(record),
            record.ownerId,
            accountKey(record),
            record.createdAt,
            dueScore(record),
            options?.quiet === true ? "1" : "0",
            options?.releaseLease?.holder ?? "",
            options?.releaseLease === undefined ? "" : String(options.releaseLease.fence),
            ...eventArgs(events)
          ]).pipe(
            Effect.flatMap((answer) =>
              answer === "ok"
                ? Effect.sync(() => hub.changed(record.id))
                : Effect.fail(
                    conflict(
                      answer === "account"
                        ? `connection ${record.id}: account already linked`
                        : `connection ${record.id} is missing or not at version ${expectedVersion}`
                    )
                  )
            )
          ),
    remove: (id, events) =>
      run(REMOVE, [id, ...eventArgs(events)]).pipe(
        Effect.map((n) => Number(n) === 1),
        Effect.tap((removed) => Effect.sync(() => removed && hub.changed(id)))
      ),
    appendEvents: (events) =>
      events.length === 0 ? Effect.void : run(APPEND, eventArgs(events)).pipe(Effect.asVoid),
    readEvents: (after, limit) => {
      const size = Math.max(0, Math.floor(limit))
      if (size === 0) return Effect.succeed({ events: [], next: after })
      return call("readEvents", () =>
        client.xrange(`${keyPrefix}ev`, `0-${Math.max(0, Math.floor(after)) + 1}`, "+", "COUNT", size)
      ).pipe(
        Effect.flatMap((entries) =>
          Effect.try({
            try: () => {
              const events = entries.map(([id, fields]) => {
                const seq = Number(id.slice(2))
                const text = fields[fields.indexOf("e") + 1]
                try {
                  return LifecycleEvents.decode(seq, text ?? "")
                } catch {
                  throw new StoreError({
                    reason: "corrupt",
                    message: `Redis store: event ${seq} is not valid JSON`
                  })
                }
              })
              return { events, next: events.length === 0 ? after : events[events.length - 1]!.seq }
            },
            catch: storeError("readEvents")
          })
        )
      )
    },
    pruneEvents: (before) => run(PRUNE_EVENTS, [String(before)]).pipe(Effect.map(Number)),
    getConsumerState: (name) =>
      call("getConsumerState", () => client.hget(`${keyPrefix}ecs`, name)).pipe(
        Effect.map((state) => state ?? undefined)
      ),
    setConsumerState: (name, state) =>
      call("setConsumerState", () => client.hset(`${keyPrefix}ecs`, name, state)).pipe(Effect.asVoid),
    acquireLease: (connectionId, holder, ttlMs) =>
      run(ACQUIRE, [connectionId, holder, String(Math.max(1, Math.floor(ttlMs)))]).pipe(
        Effect.map((answer) => {
          if (!Array.isArray(answer)) return undefined
          return {
            connectionId,
            holder,
            fence: Number(answer[0]),
            grantedAt: Number(answer[1]),
            expiresAt: Number(answer[2])
          }
        })
      ),
    renewLease: (lease, ttlMs) =>
      run(RENEW, [
        lease.connectionId,
        lease.holder,
        String(lease.fence),
        String(Math.max(1, Math.floor(ttlMs)))
      ]).pipe(
        Effect.map((answer) =>
          Array.isArray(answer)
            ? { ...lease, grantedAt: Number(answer[0]), expiresAt: Number(answer[1]) }
            : undefined
        )
      ),
    releasesLeaseOnUpdate: true,
    releaseLease: (lease) =>
      run(RELEASE, [lease.connectionId, lease.holder, String(lease.fence)]).pipe(Effect.asVoid),
    claimOnce: (key, until, now) =>
      call("claimOnce", () =>
        client.set(`${keyPrefix}w:${key}`, "1", "PX", Math.max(1, Math.ceil(until - now)), "NX")
      ).pipe(Effect.map((answer) => answer === "OK")),
    putPending: (pending: PendingAuthorization) =>
      run(PUT_PENDING, [
        pending.state,
        JSON.stringify(pending),
        String(pending.expiresAt),
        Math.max(1, pending.expiresAt - pending.createdAt) + CONSUMED_TOMBSTONE_MS
      ]).pipe(Effect.asVoid),
    takePending: (state, now, ownerId) =>
      run(TAKE_PENDING, [
        state,
        String(now),
        CONSUMED_TOMBSTONE_MS,
        ownerId === undefined ? "0" : "1",
        ownerId ?? ""
      ]).pipe(
        Effect.flatMap((answer) =>
          Effect.try({
            try: (): TakePendingResult => {
              const [tag, record] = answer as [string, string | undefined]
              if (tag === "found") {
                return {
                  _tag: "Found",
                  pending: ConnectionStore.decodePending(record, STORE, undefined, "takePending")
                }
              }
              if (tag === "foreign") return { _tag: "Foreign" }
              return tag === "consumed" ? { _tag: "Consumed" } : { _tag: "Missing" }
            },
            catch: storeError("takePending")
          })
        )
      ),
    close: () =>
      Effect.promise(async () => {
        await stopSubscriber()
        if (closed || !ownClient) return
        closed = true
        await client.quit().catch(() => client.disconnect())
      })
  }
}

/** A scoped store: created when the layer is built (after the server answers), closed when released. */
export const layer = (options: RedisStoreOptions): Layer.Layer<ConnectionStore.ConnectionStore, StoreError> =>
  Layer.effect(
    ConnectionStore.ConnectionStore,
    Effect.acquireRelease(
      Effect.suspend(() => {
        const store = make(options)
        return store.ready.pipe(
          Effect.as(store),
          Effect.tapError(() => store.close())
        )
      }),
      (store) => store.close()
    )
  )

/** A fresh random key prefix, e.g. for tests: `latchkey-<uuid>:`. */
export const randomPrefix = (base = "latchkey"): string => `${base}-${randomUUID()}:`
