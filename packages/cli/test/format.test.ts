/** The verdicts and layout `latchkey` prints, without a process: clock skew, Redis eviction, 80 columns. */
import { describe, expect, it } from "vitest"
import { checkLines, clockCheck, evictionCheck, progressLine, wrap } from "../src/format.ts"

describe("doctor verdicts", () => {
  it("clock: within a second is ok, seconds off a warning, more a failure, saying which way", () => {
    expect(clockCheck(1_000_400, 1_000_000, 1_000_020).verdict).toBe("ok")
    const behind = clockCheck(1_000_000 - 5_000, 1_000_000, 1_000_010)
    expect(behind).toMatchObject({ verdict: "warn" })
    expect(behind.message).toMatch(/is 5s behind this host's/)
    const ahead = clockCheck(1_000_000 + 90_000, 1_000_000, 1_000_010)
    expect(ahead).toMatchObject({ verdict: "fail" })
    expect(ahead.message).toMatch(/is 1m 30s ahead of this host's/)
    // A slow round trip widens what can be told apart from skew.
    expect(clockCheck(1_000_000 + 2_500, 1_000_000, 1_004_000).verdict).toBe("ok")
  })

  it("Redis eviction: only noeviction is safe", () => {
    expect(evictionCheck("noeviction").verdict).toBe("ok")
    for (const policy of ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-random"]) {
      expect(evictionCheck(policy)).toMatchObject({ verdict: "fail" })
      expect(evictionCheck(policy).message).toContain(policy)
    }
  })
})

describe("layout", () => {
  it("wraps at 80 columns, keeping alignment and indenting continuations", () => {
    const lines = checkLines([
      { check: "store", verdict: "ok", message: "postgres reachable in 3 ms" },
      { check: "provider highlevel", verdict: "warn", message: "x ".repeat(70).trim() }
    ])
    for (const line of lines) expect(line.length).toBeLessThanOrEqual(80)
    expect(lines[0]).toBe("ok    store               postgres reachable in 3 ms")
    expect(lines[1]!.startsWith("WARN  provider highlevel  x x")).toBe(true)
    expect(lines[2]!.startsWith(`${" ".repeat(26)}x`)).toBe(true)
    expect(wrap("  indented line", 80)).toEqual(["  indented line"])
    expect(wrap("a".repeat(100), 80, "  ")).toEqual(["a".repeat(80), `  ${"a".repeat(20)}`])
  })

  it("the progress bar has a rate and an ETA", () => {
    expect(progressLine(50, 200, 10_000)).toBe(`[${"#".repeat(8)}${".".repeat(22)}] 50/200 25% 5.0/s ETA 30s`)
    expect(progressLine(200, 200, 10_000)).toMatch(/100% 20\.0\/s ETA -$/)
  })
})
