/**
 * Change a stored connection in a test through `Connections` (the one write path), e.g. to make its
 * access token expired; `vault` must open what the store holds (default: plain values).
 */
import { Effect, Layer } from "effect"
import * as Config from "../Config.ts"
import type { Connection } from "../Connection.ts"
import { ConnectionStore, type ConnectionStoreShape } from "../ConnectionStore.ts"
import * as Connections from "../Connections.ts"
import { Events } from "../Events.ts"
import * as Vault from "../Vault.ts"

export const modifyStored = (
  store: ConnectionStoreShape,
  id: string,
  f: (c: Connection) => Connection,
  vault: Vault.VaultOptions = { plaintext: true }
): Promise<{ readonly connection: Connection; readonly written: boolean }> =>
  Effect.runPromise(
    Connections.Connections.use((c) => c.modify(id, (current) => Connections.write(f(current)))).pipe(
      Effect.provide(
        Connections.Connections.layer.pipe(
          Layer.provide(
            Layer.mergeAll(
              Layer.succeed(ConnectionStore, store),
              Layer.succeed(Vault.Vault, Vault.make(vault)),
              Events.layer,
              Layer.succeed(Config.LatchkeyConfig, Config.defaults())
            )
          )
        )
      )
    )
  )
