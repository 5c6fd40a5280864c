import { refresherRound } from "./engine.ts"
const c = Number(process.argv[2] ?? 8)
await refresherRound(c, 500)
for (let i = 0; i < 4; i++) {
  const r = await refresherRound(c, 5000)
  console.log(`round ${i}: ${Math.round(r.usPerRefresh)} µs failed ${r.failed}`)
}
