import { Effect, Metric } from "effect"
import { describe, expect, it } from "vitest"
import { metrics, tagged } from "../src/internal/telemetry.ts"

/** The series of one metric in a fresh registry, by their attributes. */
const seriesOf = (name: string, effect: Effect.Effect<void>) =>
  Effect.runPromise(
    effect.pipe(
      Effect.andThen(Metric.snapshot),
      Effect.map((all) =>
        all
          .filter((m) => m.id === name)
          .map((m) => ({ attributes: m.attributes ?? {}, state: m.state as { count?: number } }))
      ),
      Effect.provideService(Metric.MetricRegistry, new Map())
    )
  )

describe("metrics built once per attribute set (tagged)", () => {
  it("updates the very series Metric.withAttributes does, one metric object per attribute set", async () => {
    const attributes = { provider: "example", source: "refresher", outcome: "success" }
    const series = await seriesOf(
      "latchkey_refresh_duration_ms",
      Effect.gen(function* () {
        yield* Metric.update(tagged(metrics.refreshDuration, attributes), 12)
        yield* Metric.update(Metric.withAttributes(metrics.refreshDuration, attributes), 30)
        // The same attributes in another order: the same series.
        yield* Metric.update(
          tagged(metrics.refreshDuration, { outcome: "success", provider: "example", source: "refresher" }),
          5
        )
        yield* Metric.update(tagged(metrics.refreshDuration, { ...attributes, outcome: "failure" }), 7)
      })
    )
    expect(series).toHaveLength(2)
    const success = series.find((s) => s.attributes.outcome === "success")!
    expect(success.attributes).toEqual(attributes)
    expect(success.state.count).toBe(3)
    expect(series.find((s) => s.attributes.outcome === "failure")!.state.count).toBe(1)
    expect(tagged(metrics.refreshDuration, attributes)).toBe(tagged(metrics.refreshDuration, attributes))
  })

  it("past 1,000 attribute sets of one metric it falls back to withAttributes, and counts stay right", async () => {
    const series = await seriesOf(
      "latchkey_api_requests_total",
      Effect.forEach(
        Array.from({ length: 1_100 }, (_, i) => i),
        (i) => Metric.update(tagged(metrics.apiRequests, { provider: `p${i}`, status: "200" }), 1),
        { discard: true }
      )
    )
    expect(series).toHaveLength(1_100)
    expect(series.every((s) => (s.state as unknown as { count: number }).count === 1)).toBe(true)
    // Beyond the bound no metric object is kept: each call builds a transform.
    expect(tagged(metrics.apiRequests, { provider: "p1099", status: "200" })).not.toBe(
      tagged(metrics.apiRequests, { provider: "p1099", status: "200" })
    )
  })
})
