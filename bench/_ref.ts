import { refresherRound } from "./engine.ts"
for (let i = 0; i < 3; i++) await refresherRound(32, 1500)
const t = process.cpuUsage()
let n = 0
for (let i = 0; i < 8; i++) { const r = await refresherRound(32, 1500); n += 1500 }
const u = process.cpuUsage(t)
console.log("us/refresh incl insert", (u.user + u.system) / n)
