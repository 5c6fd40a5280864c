/** Output for people on an 80-column terminal, and the verdicts `doctor` prints. */

export const WIDTH = 80

/** `3d 4h`, `12m`, `45s`: the two largest units. */
export const span = (ms: number): string => {
  const s = Math.round(Math.abs(ms) / 1000)
  const units: ReadonlyArray<[string, number]> = [
    ["d", 86_400],
    ["h", 3_600],
    ["m", 60],
    ["s", 1]
  ]
  const parts: Array<string> = []
  let rest = s
  for (const [unit, size] of units) {
    if (rest >= size || (parts.length === 0 && size === 1)) {
      parts.push(`${Math.floor(rest / size)}${unit}`)
      rest %= size
    }
    if (parts.length === 2) break
  }
  return parts.join(" ")
}

/** `in 3d 4h` or `2m ago`. */
export const relative = (at: number | undefined, now: number): string =>
  at === undefined ? "never" : at >= now ? `in ${span(at - now)}` : `${span(now - at)} ago`

/** Cut a line to the terminal width. */
export const clip = (line: string, width = WIDTH): string =>
  line.length <= width ? line : `${line.slice(0, width - 1)}…`

/**
 * Wrap a line to `width` at spaces (keeping its own leading spaces and inner alignment), indenting
 * continuation lines with `indent`; a word longer than a line is cut.
 */
export const wrap = (text: string, width = WIDTH, indent = ""): Array<string> => {
  const lines: Array<string> = []
  let rest = text
  let prefix = text.length - text.trimStart().length
  while (rest.length > width) {
    let cut = rest.lastIndexOf(" ", width)
    if (cut <= prefix) cut = width
    lines.push(rest.slice(0, cut).trimEnd())
    rest = indent + rest.slice(cut).trimStart()
    prefix = indent.length
  }
  lines.push(rest)
  return lines
}

export type Verdict = "ok" | "warn" | "fail"

export interface Check {
  readonly check: string
  readonly verdict: Verdict
  readonly message: string
}

const MARK: Record<Verdict, string> = { ok: "ok  ", warn: "WARN", fail: "FAIL" }

/** `ok   store         reachable …`, wrapped under the message column. */
export const checkLines = (checks: ReadonlyArray<Check>): Array<string> => {
  const label = Math.min(24, Math.max(...checks.map((c) => c.check.length)))
  const indent = " ".repeat(4 + 2 + label + 2)
  return checks.flatMap((c) =>
    wrap(`${MARK[c.verdict]}  ${c.check.padEnd(label)}  ${c.message}`, WIDTH, indent)
  )
}

/**
 * The store's clock against this host's: `serverTime` read between `before` and `after` (this host's
 * clock). Hosts sharing a store compare lease expiries with their own clocks, so they must agree.
 */
export const clockCheck = (serverTime: number, before: number, after: number): Check => {
  const rtt = Math.max(0, after - before)
  const skew = serverTime - (before + after) / 2
  const tolerance = Math.max(1_000, rtt)
  if (Math.abs(skew) <= tolerance) {
    return {
      check: "clock",
      verdict: "ok",
      message: `the store's clock is within ${Math.max(Math.round(Math.abs(skew)), 1)} ms of this host's (±${Math.ceil(rtt / 2)} ms)`
    }
  }
  return {
    check: "clock",
    verdict: Math.abs(skew) <= 10_000 ? "warn" : "fail",
    message: `the store's clock is ${span(Math.abs(skew))} ${skew >= 0 ? "ahead of" : "behind"} this host's: hosts compare lease expiries with their own clocks, so keep them all in sync (NTP)`
  }
}

/** Redis may drop keys under memory pressure unless its policy is `noeviction`: leases and connections would vanish. */
export const evictionCheck = (policy: string): Check =>
  policy === "noeviction"
    ? {
        check: "redis eviction",
        verdict: "ok",
        message: "maxmemory-policy is noeviction: Redis never drops Latchkey's keys"
      }
    : {
        check: "redis eviction",
        verdict: "fail",
        message: `maxmemory-policy is ${policy}: under memory pressure Redis may drop leases or connections; set it to noeviction`
      }

/** A progress bar with a rate and an ETA, on one line. */
export const progressLine = (done: number, total: number, elapsedMs: number): string => {
  const ratio = total === 0 ? 1 : Math.min(1, done / total)
  const barWidth = 30
  const filled = Math.round(ratio * barWidth)
  const rate = elapsedMs > 0 ? (done * 1000) / elapsedMs : 0
  const eta = rate > 0 && total > done ? `ETA ${span(((total - done) / rate) * 1000)}` : "ETA -"
  return `[${"#".repeat(filled)}${".".repeat(barWidth - filled)}] ${done}/${total} ${Math.floor(ratio * 100)}% ${rate.toFixed(1)}/s ${eta}`
}
