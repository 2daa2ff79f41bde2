#!/usr/bin/env bash
# CA, SuperLink certificate and SuperNode key pairs for a plant (see the README, section "Deploying on a plant").
#   deploy/certs/make-certs.sh --out pki --hosts superlink.plant.lan 10.0.0.5 --nodes 12
# Later, one more device:   python -m fedhet.deploy keygen --out pki/nodes press-07
#                           flwr supernode register pki/nodes/press-07.pub <connection> --name press-07
# (the operator, on the SuperLink host: <connection> is the loopback Control API, 127.0.0.1:9092)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
exec "$python" -m fedhet.deploy certs "$@"
