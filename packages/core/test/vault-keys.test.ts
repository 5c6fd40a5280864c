/**
 * The vault key format the READMEs document: 32 bytes as base64url, base64 or hex; anything else is
 * refused at construction with a message saying so.
 */
import { randomBytes } from "node:crypto"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { Vault, VaultError } from "../src/index.ts"

const roundTrip = (key: string) => {
  const vault = Vault.make({ keys: [{ id: "k1", key }] })
  const context = { connectionId: "conn_1", field: "accessToken" }
  const sealed = vault.seal("token-value", context)
  expect(sealed.startsWith("lk1.k1.")).toBe(true)
  return Effect.runSync(vault.open(sealed, context))
}

describe("vault keys", () => {
  const bytes = randomBytes(32)
  it.each([
    ["base64url (43 characters)", bytes.toString("base64url")],
    ["base64 (44 characters, padded)", bytes.toString("base64")],
    ["hex (64 characters)", bytes.toString("hex")],
    ["Vault.generateKey()", Vault.generateKey()]
  ])("accepts %s", (_what, key) => {
    expect(roundTrip(key)).toBe("token-value")
  })

  it("the same 32 bytes in any encoding open each other's ciphertexts", () => {
    const context = { connectionId: "conn_1", field: "refreshToken" }
    const sealed = Vault.make({ keys: [{ id: "k1", key: bytes.toString("hex") }] }).seal("v", context)
    const other = Vault.make({ keys: [{ id: "k1", key: bytes.toString("base64url") }] })
    expect(Effect.runSync(other.open(sealed, context))).toBe("v")
  })

  it.each([
    ["31 bytes", randomBytes(31).toString("base64url")],
    ["33 bytes", randomBytes(33).toString("hex")],
    ["a passphrase", "correct horse battery staple"]
  ])("refuses %s, saying a key is 32 bytes", (_what, key) => {
    expect(() => Vault.make({ keys: [{ id: "k1", key }] })).toThrow(VaultError)
    expect(() => Vault.make({ keys: [{ id: "k1", key }] })).toThrow(/must be 32 bytes/)
  })

  it("keyIdOf names the key a value was sealed with, and nothing for a value in plain", () => {
    const vault = Vault.make({ keys: [{ id: "2026-11_a", key: Vault.generateKey() }] })
    const sealed = vault.seal("token", { connectionId: "c1", field: "accessToken" })
    expect(vault.keyIdOf(sealed)).toBe("2026-11_a")
    expect(vault.keyIdOf("plain.token")).toBeUndefined()
    expect(vault.keyIdOf("lk1.other")).toBe("other")
    expect(vault.keyIdOf("lk1.")).toBe("")
  })

  it("refuses a key id with other characters", () => {
    expect(() => Vault.make({ keys: [{ id: "key one", key: Vault.generateKey() }] })).toThrow(
      /letters, digits/
    )
  })
})
