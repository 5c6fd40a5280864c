/**
 * The Promise API's cache of valid access tokens: `latchkey.accessToken(id)` answers from it without
 * entering the Effect runtime, and concurrent callers of one id share one in-flight lookup.
 *
 * What keeps it honest (invariant 1 and the promise are the engine's; this only must never answer
 * with a token the engine would not):
 * - An entry is served only while its token is fresh by its expiry minus the configured skew, on the
 *   instance's clock (the same test the engine makes).
 * - Every change the store announces (`watch`) drops the entry: writes through this store object
 *   synchronously (so every local write: refreshes, revocations, unlinks), writes elsewhere through
 *   the store's channel. `Live` (a channel (re)connected) and `Lost` flush everything.
 * - While the store's channel is not live (no `watch`, not yet connected, or lost), an entry is
 *   trusted only `maxStaleMs` after it was read from the store.
 * - A lookup that began before a change of its id (or a flush) does not fill the cache, and a caller
 *   arriving after such a change does not join it.
 * - A 401 from the API drops the entry (`invalidate`).
 */
import type { StoreChange } from "../ConnectionStore.ts"
import { Lru } from "./Lru.ts"

export interface TokenCacheOptions {
  /**
   * How long an entry is trusted while the store cannot announce changes made elsewhere (a store
   * without `watch`, or its channel down), in ms on the instance's clock. Default 1,000.
   */
  readonly maxStaleMs?: number | undefined
  /** Most entries kept (the oldest filled dropped first). Default 10,000. */
  readonly maxEntries?: number | undefined
}

interface Entry {
  readonly token: string
  /** The token is served while `now < freshUntil`. */
  readonly freshUntil: number
  /** When it was read from the store (instance clock). */
  readonly readAt: number
}

/** What a lookup found: the token and, when it may be cached, until when it is fresh. */
export interface Lookup {
  readonly token: string
  readonly freshUntil: number | undefined
}

export class TokenCache {
  private readonly entries: Lru<string, Entry>
  private readonly inflight = new Map<string, Promise<string>>()
  private readonly maxStaleMs: number
  /** Bumped on every change and flush; a lookup fills only if nothing relevant moved since it began. */
  private epoch = 0
  private flushedAt = 0
  private readonly changedAt = new Map<string, number>()
  private lookups = 0
  private live = false
  /** Counters, for the bench and operators. */
  hits = 0
  misses = 0

  private readonly clock: () => number

  constructor(clock: () => number, options: TokenCacheOptions = {}) {
    this.clock = clock
    this.maxStaleMs = options.maxStaleMs ?? 1_000
    if (!(this.maxStaleMs >= 0)) throw new RangeError("tokenCache.maxStaleMs must be >= 0")
    this.entries = new Lru(options.maxEntries ?? 10_000)
  }

  /** A fresh cached token, or `undefined`. */
  get(id: string): string | undefined {
    const entry = this.entries.peek(id)
    if (entry === undefined) return undefined
    const now = this.clock()
    if (
      now >= entry.freshUntil ||
      (!this.live && now - entry.readAt >= this.maxStaleMs) ||
      now < entry.readAt
    ) {
      this.entries.delete(id)
      return undefined
    }
    return entry.token
  }

  /**
   * The token for `id`: from the cache, else from the in-flight lookup of the same id, else from a
   * new `lookup` (whose fresh result is cached).
   */
  accessToken(id: string, lookup: () => Promise<Lookup>): Promise<string> {
    const token = this.get(id)
    if (token !== undefined) {
      this.hits++
      return Promise.resolve(token)
    }
    this.misses++
    const running = this.inflight.get(id)
    if (running !== undefined) return running
    const startedAt = this.epoch
    const readAt = this.clock()
    this.lookups++
    const promise = lookup().then(
      (found) => {
        // Checked before settling: the last lookup to settle forgets the changes it was guarding against.
        if (
          found.freshUntil !== undefined &&
          this.flushedAt <= startedAt &&
          (this.changedAt.get(id) ?? 0) <= startedAt
        ) {
          this.entries.set(id, { token: found.token, freshUntil: found.freshUntil, readAt })
        }
        this.settle(id, promise)
        return found.token
      },
      (error: unknown) => {
        this.settle(id, promise)
        throw error
      }
    )
    this.inflight.set(id, promise)
    return promise
  }

  private settle(id: string, promise: Promise<string>) {
    if (this.inflight.get(id) === promise) this.inflight.delete(id)
    if (--this.lookups === 0) this.changedAt.clear()
  }

  /** Drop what is known about `id` (a local write, a change elsewhere, a 401). */
  invalidate(id: string): void {
    this.epoch++
    this.entries.delete(id)
    this.inflight.delete(id)
    if (this.lookups > 0) this.changedAt.set(id, this.epoch)
  }

  /** Drop everything. */
  flush(): void {
    this.epoch++
    this.flushedAt = this.epoch
    this.entries.clear()
    this.inflight.clear()
  }

  /** Follow the store's announcements. */
  onChange = (change: StoreChange): void => {
    switch (change._tag) {
      case "Changed":
        this.invalidate(change.id)
        return
      case "Live":
        this.flush()
        this.live = true
        return
      case "Lost":
        this.flush()
        this.live = false
        return
    }
  }

  get isLive(): boolean {
    return this.live
  }

  get size(): number {
    return this.entries.size
  }
}
