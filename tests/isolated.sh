#!/usr/bin/env bash
# Run a command in a network namespace whose only interface is loopback, so that every
# Ray node, dashboard and Serve endpoint a test starts binds to 127.0.0.1 and no test
# traffic can leave the machine.  Falls back to running the command directly (with Ray
# pinned to loopback for single-node clusters) where namespaces are not permitted.
set -euo pipefail
if unshare --net true 2>/dev/null; then
  exec unshare --net bash -c 'ip link set lo up 2>/dev/null || true; exec "$@"' _ "$@"
fi
echo "tests/isolated.sh: no network namespace here; running directly (multi-node tests skip)" >&2
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
exec "$@"
