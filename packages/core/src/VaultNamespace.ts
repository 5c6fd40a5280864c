/** The public `Vault` namespace: the vault itself and `rotate`. */
export * from "./Vault.ts"
export * from "./VaultRotation.ts"
