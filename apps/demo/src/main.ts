/**
 * `pnpm --filter @latchkey/demo start` (or `npm run demo` at the repository root): the demo with the
 * settings of the environment (see README.md), printing the URL it serves.
 */
import { ConfigError, readConfig } from "./config.ts"
import { startDemo } from "./demo.ts"
import { VaultKeyError } from "./vaultKey.ts"

try {
  const config = readConfig(process.env)
  const demo = await startDemo({ ...config, log: (line) => console.log(`[demo] ${line}`) })
  const modes = demo.providers.setups.map((s) => `${s.name} (${s.mode === "sandbox" ? "sandbox" : "live"})`)
  console.log(`Latchkey demo: ${modes.join(", ")}`)
  console.log(
    "Example Corp is a local oidc-provider (in memory, a throwaway signing key, test login and consent pages)."
  )
  console.log(
    `Tokens sealed with ${demo.vaultKey.source === "env" ? "LATCHKEY_VAULT_KEY" : `the vault key in ${demo.vaultKey.path}${demo.vaultKey.source === "generated" ? " (generated now)" : ""}`}`
  )
  const workers = demo.fleet?.workers() ?? []
  console.log(
    workers.length > 0
      ? `Background refresh: ${workers.length} worker processes (pids ${workers.map((w) => w.pid).join(", ")}) sharing ${demo.databasePath}`
      : "Background refresh: in this process (DEMO_WORKERS=0)"
  )
  console.log(`Ready ${process.uptime().toFixed(1)} s after start. Open ${demo.url}`)
  let stopping = false
  const stop = async () => {
    if (stopping) return
    stopping = true
    console.log("Stopping…")
    await demo.close()
    process.exit(0)
  }
  process.on("SIGINT", stop)
  process.on("SIGTERM", stop)
} catch (error) {
  if (error instanceof ConfigError || error instanceof VaultKeyError) {
    console.error(`Cannot start the demo: ${error.message}`)
  } else if ((error as NodeJS.ErrnoException)?.code === "EADDRINUSE") {
    console.error(
      "Cannot start the demo: the port is in use. Set PORT to another one (PORT=0 picks a free one)."
    )
  } else {
    console.error("Cannot start the demo:", error)
  }
  process.exit(1)
}
