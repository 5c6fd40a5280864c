/**
 * A least-recently-used map of bounded size: `get` and `set` make an entry the most recent; past
 * `maxSize` entries the least recent is dropped. One `Map` (its insertion order is the recency order),
 * so every operation is O(1). Used for the token cache of the Promise API and meant for the
 * TokenManager's decoded-connection cache (which today is cleared past 10,000 entries).
 */
export class Lru<K, V> {
  readonly maxSize: number
  private readonly map = new Map<K, V>()

  constructor(maxSize: number) {
    if (!Number.isInteger(maxSize) || maxSize < 1) {
      throw new RangeError(`Lru: maxSize must be a positive integer (got ${maxSize})`)
    }
    this.maxSize = maxSize
  }

  get size(): number {
    return this.map.size
  }

  /** The value, made the most recent; `undefined` when absent. */
  get(key: K): V | undefined {
    const value = this.map.get(key)
    if (value === undefined) return undefined
    this.map.delete(key)
    this.map.set(key, value)
    return value
  }

  /** The value without touching its recency. */
  peek(key: K): V | undefined {
    return this.map.get(key)
  }

  has(key: K): boolean {
    return this.map.has(key)
  }

  /** Set (and make the most recent); drops the least recent entries past `maxSize`. */
  set(key: K, value: V): this {
    this.map.delete(key)
    this.map.set(key, value)
    while (this.map.size > this.maxSize) {
      const oldest = this.map.keys().next()
      if (oldest.done === true) break
      this.map.delete(oldest.value)
    }
    return this
  }

  delete(key: K): boolean {
    return this.map.delete(key)
  }

  clear(): void {
    this.map.clear()
  }

  /** Keys from the least to the most recent. */
  keys(): IterableIterator<K> {
    return this.map.keys()
  }
}
