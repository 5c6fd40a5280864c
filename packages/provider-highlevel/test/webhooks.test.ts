/**
 * Webhook verification on its own: Ed25519 `x-ghl-signature` (preferred), legacy RSA-SHA256
 * `x-wh-signature`, stale timestamps and replayed webhook ids. The clock is Effect's TestClock.
 */
import { generateKeyPairSync, sign } from "node:crypto"
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { HighLevel, WebhookError } from "../src/index.ts"

const ed = generateKeyPairSync("ed25519")
const otherEd = generateKeyPairSync("ed25519")
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 })
const edPem = ed.publicKey.export({ type: "spki", format: "pem" }).toString()
const rsaPem = rsa.publicKey.export({ type: "spki", format: "pem" }).toString()

const NOW = Date.parse("2025-06-01T12:00:00.000Z")

const payload = (over: Record<string, unknown> = {}) =>
  JSON.stringify({
    type: "UNINSTALL",
    appId: "app1",
    locationId: "loc_1",
    companyId: "co_1",
    webhookId: `wh_${Math.random().toString(36).slice(2)}`,
    timestamp: new Date(NOW).toISOString(),
    ...over
  })

const ghl = (body: string, key = ed.privateKey) => sign(null, Buffer.from(body), key).toString("base64")
const wh = (body: string) => sign("sha256", Buffer.from(body), rsa.privateKey).toString("base64")

const failure = <A>(effect: Effect.Effect<A, WebhookError>) =>
  Effect.flip(effect).pipe(Effect.map((e) => e.reason))

const atNow = <A, E>(effect: Effect.Effect<A, E>) => TestClock.setTime(NOW).pipe(Effect.andThen(effect))

describe("HighLevel webhook signatures", () => {
  const hooks = HighLevel.Webhooks.make({ ed25519PublicKey: edPem, rsaPublicKey: rsaPem, appId: "app1" })

  it.effect("an Ed25519 x-ghl-signature over the raw body verifies", () =>
    atNow(
      Effect.gen(function* () {
        const body = payload()
        const event = yield* hooks.verify(body, { "x-ghl-signature": ghl(body) })
        assert.strictEqual(event.signature, "ed25519")
        assert.strictEqual(event.type, "UNINSTALL")
        assert.strictEqual(event.locationId, "loc_1")
        assert.strictEqual(event.timestamp, NOW)
      })
    )
  )

  it.effect("a legacy RSA-SHA256 x-wh-signature verifies when no Ed25519 signature came", () =>
    atNow(
      Effect.gen(function* () {
        const body = payload({ type: "INSTALL" })
        const event = yield* hooks.verify(
          new TextEncoder().encode(body),
          new Headers({ "X-WH-Signature": wh(body) })
        )
        assert.strictEqual(event.signature, "rsa-sha256")
        assert.strictEqual(event.type, "INSTALL")
      })
    )
  )

  it.effect("Ed25519 is decisive: a bad x-ghl-signature is refused even with a good x-wh-signature", () =>
    atNow(
      Effect.gen(function* () {
        const body = payload()
        const reason = yield* failure(
          hooks.verify(body, { "x-ghl-signature": ghl(body, otherEd.privateKey), "x-wh-signature": wh(body) })
        )
        assert.strictEqual(reason, "bad_signature")
      })
    )
  )

  it.effect(
    "a body changed after signing, a missing signature, and a signature with no key are refused",
    () =>
      atNow(
        Effect.gen(function* () {
          const body = payload()
          const tampered = body.replace("loc_1", "loc_2")
          assert.strictEqual(
            yield* failure(hooks.verify(tampered, { "x-ghl-signature": ghl(body) })),
            "bad_signature"
          )
          assert.strictEqual(
            yield* failure(hooks.verify(tampered, { "x-wh-signature": wh(body) })),
            "bad_signature"
          )
          assert.strictEqual(yield* failure(hooks.verify(body, {})), "missing_signature")
          assert.strictEqual(yield* failure(hooks.verify(body, { "x-ghl-signature": "" })), "bad_signature")
          const edOnly = HighLevel.Webhooks.make({ ed25519PublicKey: ed.publicKey })
          assert.strictEqual(yield* failure(edOnly.verify(body, { "x-wh-signature": wh(body) })), "no_key")
        })
      )
  )

  it.effect("a refused delivery does not use up its webhookId", () =>
    atNow(
      Effect.gen(function* () {
        const body = payload({ webhookId: "wh_fixed" })
        assert.strictEqual(
          yield* failure(hooks.verify(body, { "x-ghl-signature": ghl(body, otherEd.privateKey) })),
          "bad_signature"
        )
        const event = yield* hooks.verify(body, { "x-ghl-signature": ghl(body) })
        assert.strictEqual(event.webhookId, "wh_fixed")
      })
    )
  )

  it.effect("stale and future timestamps are refused; five minutes of drift is accepted", () =>
    atNow(
      Effect.gen(function* () {
        const fresh = payload({ timestamp: new Date(NOW - 4 * 60_000).toISOString() })
        yield* hooks.verify(fresh, { "x-ghl-signature": ghl(fresh) })
        const old = payload({ timestamp: new Date(NOW - 6 * 60_000).toISOString() })
        assert.strictEqual(yield* failure(hooks.verify(old, { "x-ghl-signature": ghl(old) })), "stale")
        const ahead = payload({ timestamp: new Date(NOW + 6 * 60_000).toISOString() })
        assert.strictEqual(yield* failure(hooks.verify(ahead, { "x-ghl-signature": ghl(ahead) })), "stale")
        const garbage = payload({ timestamp: "yesterday-ish" })
        assert.strictEqual(
          yield* failure(hooks.verify(garbage, { "x-ghl-signature": ghl(garbage) })),
          "malformed"
        )
      })
    )
  )

  it.effect("a duplicate webhookId is refused; its error answers 200 so HighLevel stops redelivering", () =>
    atNow(
      Effect.gen(function* () {
        const body = payload({ webhookId: "wh_dup" })
        yield* hooks.verify(body, { "x-ghl-signature": ghl(body) })
        const error = yield* Effect.flip(hooks.verify(body, { "x-ghl-signature": ghl(body) }))
        assert.instanceOf(error, WebhookError)
        assert.strictEqual(error.reason, "duplicate")
        assert.strictEqual(error.status, 200)
        // The same id signed with the legacy key is the same delivery.
        assert.strictEqual(yield* failure(hooks.verify(body, { "x-wh-signature": wh(body) })), "duplicate")
      })
    )
  )

  it.effect("deliveries for another app, non-JSON bodies and payloads without type are refused", () =>
    atNow(
      Effect.gen(function* () {
        const foreign = payload({ appId: "someone-else" })
        assert.strictEqual(
          yield* failure(hooks.verify(foreign, { "x-ghl-signature": ghl(foreign) })),
          "foreign_app"
        )
        const notJson = "type=UNINSTALL"
        assert.strictEqual(
          yield* failure(hooks.verify(notJson, { "x-ghl-signature": ghl(notJson) })),
          "malformed"
        )
        const noType = JSON.stringify({ appId: "app1" })
        assert.strictEqual(
          yield* failure(hooks.verify(noType, { "x-ghl-signature": ghl(noType) })),
          "malformed"
        )
      })
    )
  )

  it.effect("older payloads without timestamp or webhookId are refused unless acceptLegacy", () =>
    atNow(
      Effect.gen(function* () {
        const legacy = JSON.stringify({ type: "INSTALL", appId: "app1", locationId: "loc_9" })
        assert.strictEqual(yield* failure(hooks.verify(legacy, { "x-wh-signature": wh(legacy) })), "stale")
        const lenient = HighLevel.Webhooks.make({ rsaPublicKey: rsaPem, acceptLegacy: true })
        const event = yield* lenient.verify(legacy, { "x-wh-signature": wh(legacy) })
        assert.isUndefined(event.timestamp)
        const strict = HighLevel.Webhooks.make({
          rsaPublicKey: rsaPem,
          acceptLegacy: true,
          requireTimestamp: true
        })
        assert.strictEqual(yield* failure(strict.verify(legacy, { "x-wh-signature": wh(legacy) })), "stale")
      })
    )
  )

  it("keys are checked at construction", () => {
    assert.throws(() => HighLevel.Webhooks.make({}), /ed25519PublicKey, rsaPublicKey or both/)
    assert.throws(() => HighLevel.Webhooks.make({ ed25519PublicKey: rsaPem }), /ed25519 public key/)
    assert.throws(() => HighLevel.Webhooks.make({ rsaPublicKey: edPem }), /rsa public key/)
  })

  it("error messages never echo the signature or the body", async () => {
    const body = payload({ locationId: "secret-location-xyz" })
    const signature = ghl(body, otherEd.privateKey)
    const error = await HighLevel.Webhooks.verifyWebhook(hooks, body, { "x-ghl-signature": signature }).then(
      () => undefined,
      (e: unknown) => e
    )
    assert.instanceOf(error, WebhookError)
    assert.notInclude(String(error), signature)
    assert.notInclude(String(error), "secret-location-xyz")
  })
})
