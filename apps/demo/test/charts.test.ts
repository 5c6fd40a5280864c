/**
 * The refresh charts' arithmetic: each process's Prometheus text is a set of counters since that
 * process started; the chart adds what grew since the previous reading, per provider, and a process
 * that started over (a worker restarted in the same slot) counts from zero again.
 */
import { describe, expect, it } from "vitest"
import { RefreshChart, refreshCounters } from "../src/charts.ts"

/** The lines `latchkey.metrics()` prints for refreshes (names and labels as in Telemetry). */
const text = (provider: string, success: number, failed: number, sumMs: number) =>
  [
    "# TYPE latchkey_refreshes_total counter",
    `latchkey_refreshes_total{provider="${provider}",outcome="success"} ${success}`,
    `latchkey_refreshes_total{provider="${provider}",outcome="failed",reason="transient"} ${failed}`,
    "# TYPE latchkey_refresh_duration_ms histogram",
    `latchkey_refresh_duration_ms_bucket{provider="${provider}",source="refresher",outcome="success",le="+Inf"} ${success}`,
    `latchkey_refresh_duration_ms_sum{provider="${provider}",source="refresher",outcome="success"} ${sumMs}`,
    `latchkey_refresh_duration_ms_count{provider="${provider}",source="refresher",outcome="success"} ${success}`,
    `latchkey_refresh_commit_ms_sum{provider="${provider}"} 999`
  ].join("\n")

describe("refresh charts", () => {
  it("reads the refresh counters and the latency of successful refreshes from Prometheus text", () => {
    expect(refreshCounters(text("heygen", 3, 2, 600)).get("heygen")).toEqual({
      success: 3,
      failed: 2,
      durationSum: 600,
      durationCount: 3
    })
  })

  it("sums the increases of several processes, and a process that started over counts from zero", () => {
    const chart = new RefreshChart({ bucketMs: 10_000, buckets: 3 })
    const t0 = 1_000_000
    chart.record([{ process: "worker-1#10", text: text("heygen", 2, 0, 200) }], t0)
    chart.record(
      [
        { process: "worker-1#10", text: text("heygen", 5, 1, 500) },
        { process: "worker-2#11", text: text("heygen", 1, 0, 300) }
      ],
      t0 + 10_000
    )
    // worker-1's slot restarted: its counters are those of a new process (its pid is the same here).
    chart.record([{ process: "worker-1#10", text: text("heygen", 1, 0, 100) }], t0 + 20_000)
    const points = chart.points("heygen", t0 + 20_000)
    expect(points.map((p) => [p.success, p.failed])).toEqual([
      [2, 0],
      [4, 1],
      [1, 0]
    ])
    expect(points.map((p) => p.meanMs)).toEqual([100, 150, 100])
    expect(chart.points("example", t0 + 20_000).every((p) => p.success === 0)).toBe(true)
  })
})
