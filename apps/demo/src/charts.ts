/**
 * Refreshes over time and their latency, per provider, from the engines' own metrics: every process
 * (the web process and each refresh worker) runs Latchkey with `telemetry: { prometheus: true }`,
 * the page's process reads each one's Prometheus text (`latchkey.metrics()`, the workers' over the
 * IPC channel), and sums what changed since the last reading into time buckets:
 * `latchkey_refreshes_total` (by outcome) and `latchkey_refresh_duration_ms` (sum and count of the
 * successful ones). Drawn as inline SVG (no script, no request) with a title, a description and a
 * caption that say the same in words.
 */
const escapeHtml = (value: unknown): string =>
  String(value).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]!
  )

/** One process's metrics: `web`, or a worker and its pid (`worker-2#1234`). */
export interface ProcessMetrics {
  readonly process: string
  readonly text: string
}

interface Counters {
  success: number
  failed: number
  durationSum: number
  durationCount: number
}

const zero = (): Counters => ({ success: 0, failed: 0, durationSum: 0, durationCount: 0 })

/** `name{a="x",b="y"} 12.5` → the labels and the value; undefined for other lines. */
const parseLine = (
  line: string
): { name: string; labels: Record<string, string>; value: number } | undefined => {
  const m = /^([a-z_:][a-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/i.exec(line)
  if (m === null) return undefined
  const labels: Record<string, string> = {}
  for (const l of (m[2] ?? "").matchAll(/([a-z_][a-z0-9_]*)="((?:[^"\\]|\\.)*)"/gi)) labels[l[1]!] = l[2]!
  const value = Number(m[3])
  return Number.isFinite(value) ? { name: m[1]!, labels, value } : undefined
}

/** The refresh counters by provider in one process's Prometheus text. */
export const refreshCounters = (text: string): Map<string, Counters> => {
  const out = new Map<string, Counters>()
  const of = (provider: string) => {
    const known = out.get(provider)
    if (known !== undefined) return known
    const c = zero()
    out.set(provider, c)
    return c
  }
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue
    const p = parseLine(line)
    if (p === undefined || p.labels.provider === undefined) continue
    if (p.name === "latchkey_refreshes_total") {
      if (p.labels.outcome === "success") of(p.labels.provider).success += p.value
      else of(p.labels.provider).failed += p.value
    } else if (p.labels.outcome === "success" && p.name === "latchkey_refresh_duration_ms_sum") {
      of(p.labels.provider).durationSum += p.value
    } else if (p.labels.outcome === "success" && p.name === "latchkey_refresh_duration_ms_count") {
      of(p.labels.provider).durationCount += p.value
    }
  }
  return out
}

export interface Bucket {
  readonly start: number
  readonly success: number
  readonly failed: number
  /** Mean latency of the successful refreshes (ms), when there were any. */
  readonly meanMs: number | undefined
}

export interface ChartOptions {
  /** Width of a bucket (default 30 s). */
  readonly bucketMs?: number | undefined
  /** Buckets shown (default 12: six minutes). */
  readonly buckets?: number | undefined
}

/** Sums the processes' counter increases into time buckets, per provider. */
export class RefreshChart {
  readonly bucketMs: number
  readonly buckets: number
  private readonly last = new Map<string, Map<string, Counters>>()
  private readonly series = new Map<string, Map<number, Counters>>()
  /** Processes read at the last sample. */
  processes = 0

  constructor(options: ChartOptions = {}) {
    this.bucketMs = options.bucketMs ?? 30_000
    this.buckets = options.buckets ?? 12
  }

  /** Add what each process counted since its previous reading (a restarted process starts from 0); true when anything changed. */
  record(samples: ReadonlyArray<ProcessMetrics>, at: number): boolean {
    let changed = false
    const slot = Math.floor(at / this.bucketMs) * this.bucketMs
    this.processes = samples.length
    for (const sample of samples) {
      const now = refreshCounters(sample.text)
      const before = this.last.get(sample.process) ?? new Map<string, Counters>()
      for (const [provider, c] of now) {
        const b = before.get(provider) ?? zero()
        // Counters only grow; a smaller one means the process started over.
        const reset = c.success < b.success || c.failed < b.failed || c.durationCount < b.durationCount
        const from = reset ? zero() : b
        const d = {
          success: c.success - from.success,
          failed: c.failed - from.failed,
          durationSum: c.durationSum - from.durationSum,
          durationCount: c.durationCount - from.durationCount
        }
        if (d.success === 0 && d.failed === 0 && d.durationCount === 0) continue
        changed = true
        const series = this.series.get(provider) ?? new Map<number, Counters>()
        const bucket = series.get(slot) ?? zero()
        bucket.success += d.success
        bucket.failed += d.failed
        bucket.durationSum += d.durationSum
        bucket.durationCount += d.durationCount
        series.set(slot, bucket)
        for (const k of series.keys()) if (k < slot - this.bucketMs * this.buckets) series.delete(k)
        this.series.set(provider, series)
      }
      this.last.set(sample.process, now)
    }
    return changed
  }

  /** The last `buckets` buckets of a provider, oldest first (empty ones included). */
  points(provider: string, now: number): ReadonlyArray<Bucket> {
    const series = this.series.get(provider)
    const last = Math.floor(now / this.bucketMs) * this.bucketMs
    return Array.from({ length: this.buckets }, (_, i) => {
      const start = last - (this.buckets - 1 - i) * this.bucketMs
      const c = series?.get(start) ?? zero()
      return {
        start,
        success: c.success,
        failed: c.failed,
        meanMs: c.durationCount > 0 ? c.durationSum / c.durationCount : undefined
      }
    })
  }
}

export interface ChartView {
  readonly providerId: string
  readonly providerName: string
  readonly points: ReadonlyArray<Bucket>
  readonly bucketMs: number
  /** How many processes' metrics were read. */
  readonly processes: number
}

const ms = (v: number) => (v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${Math.round(v)} ms`)
const span = (v: number) => (v % 60_000 === 0 ? `${v / 60_000} min` : `${Math.round(v / 1000)} s`)
const clock = (t: number) => new Date(t).toISOString().slice(11, 19)

/** The chart of one provider: bars for refreshes per bucket, a line for their mean latency. */
export const chartFigure = (view: ChartView): string => {
  const W = 240
  const H = 64
  const n = view.points.length
  const step = W / n
  const maxCount = Math.max(1, ...view.points.map((p) => p.success + p.failed))
  const latencies = view.points.flatMap((p) => (p.meanMs === undefined ? [] : [p.meanMs]))
  const maxLatency = Math.max(1, ...latencies)
  const total = view.points.reduce((s, p) => s + p.success, 0)
  const failed = view.points.reduce((s, p) => s + p.failed, 0)
  const withData = view.points.filter((p) => p.success + p.failed > 0)
  const durationCount = view.points.reduce((s, p) => s + (p.meanMs === undefined ? 0 : p.success), 0)
  const mean =
    durationCount === 0
      ? undefined
      : view.points.reduce((s, p) => s + (p.meanMs === undefined ? 0 : p.meanMs * p.success), 0) /
        durationCount
  const window = span(view.bucketMs * n)
  const id = `chart-${view.providerId}`
  const summary =
    total + failed === 0
      ? `No refresh of ${view.providerName} in the last ${window}.`
      : `${view.providerName} in the last ${window}: ${total} refresh${total === 1 ? "" : "es"}` +
        `${failed > 0 ? `, ${failed} failed attempt${failed === 1 ? "" : "s"}` : ""}` +
        `${mean !== undefined ? `; mean latency ${ms(mean)}, slowest bucket ${ms(maxLatency)}` : ""}.`
  const detail = withData
    .map(
      (p) =>
        `${clock(p.start)}: ${p.success} refreshed${p.failed > 0 ? `, ${p.failed} failed` : ""}${p.meanMs !== undefined ? `, mean ${ms(p.meanMs)}` : ""}`
    )
    .join("; ")
  const bars = view.points
    .map((p, i) => {
      const count = p.success + p.failed
      if (count === 0) return ""
      const h = Math.max(2, (count / maxCount) * (H - 8))
      const okH = (p.success / count) * h
      const x = (i * step + 1.5).toFixed(1)
      const w = (step - 3).toFixed(1)
      return (
        `<rect class="bar" data-point="${p.start}" x="${x}" y="${(H - okH).toFixed(1)}" width="${w}" height="${okH.toFixed(1)}"/>` +
        (p.failed > 0
          ? `<rect class="bar-failed" x="${x}" y="${(H - h).toFixed(1)}" width="${w}" height="${(h - okH).toFixed(1)}"/>`
          : "")
      )
    })
    .join("")
  const dots = view.points.flatMap((p, i) =>
    p.meanMs === undefined
      ? []
      : [
          {
            x: i * step + step / 2,
            y: H - 4 - (p.meanMs / maxLatency) * (H - 12)
          }
        ]
  )
  const line =
    dots.length > 1
      ? `<polyline class="latency" points="${dots.map((d) => `${d.x.toFixed(1)},${d.y.toFixed(1)}`).join(" ")}"/>`
      : ""
  const circles = dots
    .map(
      (d) =>
        `<circle class="latency-dot" data-latency cx="${d.x.toFixed(1)}" cy="${d.y.toFixed(1)}" r="2.6"/>`
    )
    .join("")
  return (
    `<figure class="chart" id="${id}" data-chart="${escapeHtml(view.providerId)}" data-points="${withData.length}" data-refreshes="${total}">` +
    `<svg viewBox="0 0 ${W} ${H}" role="img" aria-labelledby="${id}-title ${id}-desc" focusable="false">` +
    `<title id="${id}-title">${escapeHtml(`${view.providerName}: refreshes per ${span(view.bucketMs)} and their mean latency, last ${window}`)}</title>` +
    `<desc id="${id}-desc">${escapeHtml(detail ? `${summary} ${detail}.` : summary)}</desc>` +
    `<line class="axis" x1="0" y1="${H - 0.5}" x2="${W}" y2="${H - 0.5}"/>` +
    bars +
    line +
    circles +
    `</svg>` +
    `<figcaption><span class="key key-bar">refreshes</span> <span class="key key-latency">mean latency</span> · ` +
    `${escapeHtml(summary)} <span class="chart-source">From the engines’ metrics (${view.processes} process${view.processes === 1 ? "" : "es"}).</span></figcaption>` +
    `</figure>`
  )
}
