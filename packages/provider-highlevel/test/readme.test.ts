/**
 * The README's example is `examples/link-location.ts`, included verbatim, and it runs as written.
 */
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { promisify } from "node:util"
import { describe, expect, it } from "vitest"

const root = join(import.meta.dirname, "..")
const EXAMPLE = "examples/link-location.ts"

describe("README", () => {
  it("includes the example file verbatim", () => {
    const readme = readFileSync(join(root, "README.md"), "utf8")
    const marker = `<!-- example: ${EXAMPLE} -->\n\`\`\`ts\n`
    const start = readme.indexOf(marker)
    expect(start).toBeGreaterThanOrEqual(0)
    const body = readme.slice(start + marker.length, readme.indexOf("\n```", start + marker.length) + 1)
    expect(body).toBe(readFileSync(join(root, EXAMPLE), "utf8"))
  })

  it("the example links a sandbox location and calls GET /locations/{id} through the ApiClient", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [EXAMPLE], { cwd: root, timeout: 30_000 })
    expect(stdout.trim().split("\n")).toEqual([
      "linked Acme Plumbing (location sbxLocation001)",
      "GET /locations/sbxLocation001 -> 200 Acme Plumbing (America/New_York)"
    ])
  })
})
