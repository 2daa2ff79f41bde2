#!/usr/bin/env bash
# Local Flower fleet for demos and tests: SuperLink (TLS + SuperNode auth) on 127.0.0.1 behind an
# nginx front door (devices: Fleet API only) + N SuperNodes connected through the door.
#   deploy/local/fleet.sh start --nodes 3 [--insecure] [--no-auth] [--state-dir DIR] [--base-port P]
#   deploy/local/fleet.sh status | add-node | kill-node I | restart-node I | restart-superlink | stop
# Thin wrapper around `python -m fedhet.deploy` (see fedhet/deploy/ and the README, section
# "Deploying on a plant"). Needs nginx (Debian nginx-light; `make data` installs it as root).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
cd "$repo"
exec "$python" -m fedhet.deploy "$@"
