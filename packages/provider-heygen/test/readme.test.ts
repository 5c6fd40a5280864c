/**
 * The README's example runs as written: the first ```ts block after "Try it against the sandbox" is
 * executed verbatim by Node in this package's directory (so the package names resolve as they would
 * for a user), and must print the linked account and its remaining credits.
 */
import { execFile } from "node:child_process"
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"

const packageDir = join(import.meta.dirname, "..")

const example = (): string => {
  const readme = readFileSync(join(packageDir, "README.md"), "utf8")
  const section = readme.slice(readme.indexOf("## Try it against the sandbox"))
  const match = section.match(/```ts\n([\s\S]*?)```/)
  if (!match) throw new Error("README has no ts block under 'Try it against the sandbox'")
  return match[1]!
}

describe("README", () => {
  it("the sandbox example has ten lines after its imports", () => {
    const lines = example()
      .split("\n")
      .filter((l) => l.trim().length > 0 && !l.startsWith("import "))
    expect(lines).toHaveLength(10)
  })

  it("runs as written and prints the remaining credits", async () => {
    const { stdout, stderr, code } = await new Promise<{
      stdout: string
      stderr: string
      code: number | null
    }>((resolve) => {
      const child = execFile(
        process.execPath,
        ["--input-type=module", "-e", example()],
        { cwd: packageDir, timeout: 30_000 },
        (error, stdout, stderr) =>
          resolve({ stdout, stderr, code: error ? ((error as { code?: number }).code ?? 1) : 0 })
      )
      child.stdin?.end()
    })
    expect(stderr).toBe("")
    expect(code).toBe(0)
    expect(stdout.trim()).toBe(
      "jane@example.com: 300 credits left on enterprise, resets 2026-05-01T00:00:00Z"
    )
  })
})
