/**
 * The in-memory store against the store conformance suite (its cross-process checks are skipped:
 * it lives in one process).
 */
import { ConnectionStore } from "../src/index.ts"
import { storeConformance } from "../src/testing/index.ts"

storeConformance({
  name: "memory",
  open: async () => ({ store: ConnectionStore.makeMemory(), close: async () => {} })
})
