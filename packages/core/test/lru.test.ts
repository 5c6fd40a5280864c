import { describe, expect, it } from "vitest"
import { Lru } from "../src/internal/Lru.ts"

describe("Lru", () => {
  it("keeps at most maxSize entries, dropping the least recently used", () => {
    const lru = new Lru<string, number>(3)
    lru.set("a", 1).set("b", 2).set("c", 3)
    expect(lru.get("a")).toBe(1) // a is now the most recent: b is the oldest
    lru.set("d", 4)
    expect(lru.size).toBe(3)
    expect(lru.has("b")).toBe(false)
    expect([...lru.keys()]).toEqual(["c", "a", "d"])
    // Setting an existing key refreshes it without growing.
    lru.set("c", 30)
    lru.set("e", 5)
    expect([...lru.keys()]).toEqual(["d", "c", "e"])
    expect(lru.get("c")).toBe(30)
  })

  it("peek does not touch recency; delete and clear remove", () => {
    const lru = new Lru<string, number>(2)
    lru.set("a", 1).set("b", 2)
    expect(lru.peek("a")).toBe(1)
    lru.set("c", 3)
    expect(lru.has("a")).toBe(false)
    expect(lru.delete("b")).toBe(true)
    expect(lru.delete("b")).toBe(false)
    expect(lru.get("missing")).toBeUndefined()
    lru.clear()
    expect(lru.size).toBe(0)
  })

  it("a cycle over more ids than it holds keeps the most recent ones (no thrash-to-empty)", () => {
    const lru = new Lru<number, number>(1_000)
    for (let i = 0; i < 5_000; i++) lru.set(i, i)
    expect(lru.size).toBe(1_000)
    expect(lru.has(3_999)).toBe(false)
    expect(lru.has(4_000)).toBe(true)
    expect(lru.get(4_999)).toBe(4_999)
  })

  it("agrees with a plain model of least-recently-used over 20,000 random operations", () => {
    // The model: keys from the least to the most recent in an array, values in a Map.
    const model = { order: [] as Array<number>, values: new Map<number, number>() }
    const toEnd = (key: number) => {
      model.order.splice(model.order.indexOf(key), 1)
      model.order.push(key)
    }
    const lru = new Lru<number, number>(50)
    let seed = 42
    const next = (n: number) => {
      seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648
      return seed % n
    }
    for (let step = 0; step < 20_000; step++) {
      const key = next(120)
      const op = next(10)
      if (op < 4) {
        lru.set(key, step)
        if (model.values.has(key)) toEnd(key)
        else model.order.push(key)
        model.values.set(key, step)
        while (model.order.length > 50) model.values.delete(model.order.shift()!)
      } else if (op < 7) {
        expect(lru.get(key)).toBe(model.values.get(key))
        if (model.values.has(key)) toEnd(key)
      } else if (op < 8) {
        expect(lru.peek(key)).toBe(model.values.get(key))
      } else if (op < 9) {
        const had = model.values.delete(key)
        if (had) model.order.splice(model.order.indexOf(key), 1)
        expect(lru.delete(key)).toBe(had)
      } else if (next(200) === 0) {
        lru.clear()
        model.order.length = 0
        model.values.clear()
      } else {
        expect(lru.has(key)).toBe(model.values.has(key))
      }
      expect(lru.size).toBe(model.order.length)
      if (step % 97 === 0) expect([...lru.keys()]).toEqual(model.order)
    }
    expect([...lru.keys()]).toEqual(model.order)
  })

  it("refuses a size that is not a positive integer", () => {
    expect(() => new Lru(0)).toThrow(RangeError)
    expect(() => new Lru(1.5)).toThrow(RangeError)
  })
})
