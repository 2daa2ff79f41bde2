#!/usr/bin/env bash
# fedhet compose demo: build the images, write certificates, bring up the SuperLink behind its
# TLS front door, the SuperExec, key registration and three SuperNodes with different CPU /
# memory limits, run a 3-round fedavg, print the per-device-class report, tear everything down.
#
#   deploy/compose/run-demo.sh setup    # install podman, podman-compose, mmdebstrap (apt, root)
#   deploy/compose/run-demo.sh engine   # print the engine that will be used; exit 1 if none runs
#   deploy/compose/run-demo.sh build    # build (or reuse) the images for the current sources
#   deploy/compose/run-demo.sh certs    # fresh CA, server certificate and node keys in $STATE/run
#   deploy/compose/run-demo.sh demo     # build + certs + up + run + report + down (`make compose-demo`)
#   deploy/compose/run-demo.sh down     # tear the project down (containers, networks, volumes)
#
# Engine: `docker compose` where a Docker engine answers, `podman-compose` otherwise (with
# CONTAINERS_CONF=deploy/compose/containers.conf: runc, cgroupfs, no default ulimits).
# Base image: $BASE_IMAGE if set; else python:3.11-slim when present or pullable; else a Debian
# bookworm base made here with mmdebstrap and imported as localhost/fedhet-base:bookworm.
# Images are tagged with a hash of their inputs and reused while the sources do not change.
#
# Settings (environment): FEDHET_COMPOSE_PROJECT (fedhet-demo), FEDHET_COMPOSE_STATE
# (deploy/compose/.state), FEDHET_COMPOSE_ROUNDS (3), FEDHET_COMPOSE_TIMEOUT (900 s for the run),
# FEDHET_COMPOSE_KEEP=1 (leave the project up), FEDHET_FLEET_PORT (host port of the front door,
# on 127.0.0.1; default: a free one).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PROJECT="${FEDHET_COMPOSE_PROJECT:-fedhet-demo}"
STATE="${FEDHET_COMPOSE_STATE:-$HERE/.state}"
ROUNDS="${FEDHET_COMPOSE_ROUNDS:-3}"
RUN_TIMEOUT="${FEDHET_COMPOSE_TIMEOUT:-900}"
RUN_NAME="compose-demo"
LOCAL_BASE="localhost/fedhet-base:bookworm"
REGISTRY_BASE="docker.io/library/python:3.11-slim"
FMNIST_DIR="/usr/share/datasets/fashion-mnist"
NODES=(node-0 node-1 node-2)
SUPERNODES=(supernode-strong supernode-medium supernode-weak)
T0=$SECONDS

log() { printf '[compose-demo %4ds] %s\n' "$((SECONDS - T0))" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------
ENGINE=""
COMPOSE=()
detect_engine() {
    if command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1 \
        && docker compose version >/dev/null 2>&1; then
        ENGINE=docker
        COMPOSE=(docker compose)
    elif command -v podman >/dev/null 2>&1 && command -v podman-compose >/dev/null 2>&1; then
        export CONTAINERS_CONF="$HERE/containers.conf"
        timeout 60 podman info >/dev/null 2>&1 || return 1
        ENGINE=podman
        COMPOSE=(podman-compose)
    else
        return 1
    fi
    COMPOSE+=(-p "$PROJECT" -f "$HERE/compose.yaml")
}

cmd_setup() {
    local missing=()
    if ! (command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1); then
        command -v podman >/dev/null 2>&1 || missing+=(podman)
        command -v podman-compose >/dev/null 2>&1 || missing+=(podman-compose)
        command -v runc >/dev/null 2>&1 || missing+=(runc)
    fi
    command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
    if [ ${#missing[@]} -eq 0 ]; then
        log "setup: nothing to install"
        return 0
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "setup: apt-get install ${missing[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    else
        die "setup: install ${missing[*]} (Debian: apt-get install ${missing[*]}) or Docker"
    fi
}

# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------
image_exists() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

choose_base() {
    if [ -n "${BASE_IMAGE:-}" ]; then
        echo "$BASE_IMAGE"
    elif image_exists "$REGISTRY_BASE"; then
        echo "$REGISTRY_BASE"
    elif image_exists "$LOCAL_BASE"; then
        echo "$LOCAL_BASE"
    elif timeout 90 "$ENGINE" pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then
        echo "$REGISTRY_BASE"
    else
        log "no registry base image reachable: building $LOCAL_BASE with mmdebstrap"
        command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap missing (run: $0 setup)"
        mkdir -p "$STATE"
        nice mmdebstrap --quiet --variant=minbase \
            --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$STATE/base.tar" >&2
        "$ENGINE" import "$STATE/base.tar" "$LOCAL_BASE" >/dev/null
        rm -f "$STATE/base.tar"
        echo "$LOCAL_BASE"
    fi
}

# This host's pip settings (find-links with the pinned CPU torch wheel, local indexes, CA
# bundle, constraints) as one pip.conf plus read-only mounts of every path it names. Sets
# PIP_MOUNTS (podman build -v arguments) and TORCH_PIP_ARGS.
PIP_MOUNTS=()
TORCH_PIP_ARGS=""
host_pip_settings() {
    local pip_cmd=() line key value token path
    if [ -x "$REPO/.venv/bin/python" ]; then
        pip_cmd=("$REPO/.venv/bin/python" -m pip)
    elif python3 -m pip --version >/dev/null 2>&1; then
        pip_cmd=(python3 -m pip)
    else
        return 0
    fi
    mkdir -p "$STATE/pip"
    local conf="$STATE/pip/pip.conf" paths=() seen_keys=" "
    echo "[global]" >"$conf"
    while IFS= read -r line; do
        key="${line%%=*}"
        value="${line#*=}"
        value="${value#\'}"
        value="${value%\'}"
        key="${key##*.}"
        case "$key" in
        find-links | extra-index-url | index-url | cert | constraint | trusted-host | default-timeout)
            case "$seen_keys" in *" $key "*) continue ;; esac
            seen_keys+="$key "
            echo "$key = $value" >>"$conf"
            for token in $value; do
                path="${token#file://}"
                path="${path%/}"
                # a local index (<root>/simple) links to files beside it: mount its root
                [ "$path" != "$token" ] && [ "${path##*/}" = simple ] && path="${path%/simple}"
                case "$path" in /*) [ -e "$path" ] && paths+=("$path") ;; esac
            done
            ;;
        esac
    done < <("${pip_cmd[@]}" config list 2>/dev/null | sort -u)
    PIP_MOUNTS=(-v "$conf:/etc/pip.conf:ro")
    local seen=" "
    for path in "${paths[@]}"; do
        case "$seen" in *" $path "*) continue ;; esac
        seen+="$path "
        PIP_MOUNTS+=(-v "$path:$path:ro")
        if [ -d "$path" ] && compgen -G "$path/torch-2.13.0+cpu-*.whl" >/dev/null; then
            TORCH_PIP_ARGS="torch==2.13.0+cpu"
        fi
    done
    # An egress proxy's CA (this host kind) is in the host bundle, not in the image's.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        case "$seen" in *" /etc/ssl/certs/ca-certificates.crt "*) ;; *)
            PIP_MOUNTS+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro) ;;
        esac
    fi
}

inputs_hash() {
    local base_id="$1"
    (
        cd "$REPO"
        printf 'base=%s torch=%s\n' "$base_id" "$TORCH_PIP_ARGS"
        find pyproject.toml README.md fedhet server_app client_app \
            deploy/compose/Dockerfile deploy/compose/Dockerfile.dockerignore \
            deploy/compose/flwr-config.toml \
            -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
            | sort -z | xargs -0 sha256sum
    ) | sha256sum | cut -c1-12
}

cmd_build() {
    local base base_id hash build_args=()
    base="$(choose_base)"
    base_id="$("$ENGINE" image inspect --format '{{.Id}}' "$base")"
    if [ "$ENGINE" = podman ]; then
        host_pip_settings
        build_args+=("${PIP_MOUNTS[@]}" --ignorefile "$HERE/Dockerfile.dockerignore")
    fi
    [ -n "$TORCH_PIP_ARGS" ] && build_args+=(--build-arg "TORCH_PIP_ARGS=$TORCH_PIP_ARGS")
    hash="$(inputs_hash "$base_id")"
    export FEDHET_IMAGE="localhost/fedhet:$hash"
    export FEDHET_FRONTDOOR_IMAGE="localhost/fedhet-frontdoor:$hash"
    export BASE_IMAGE="$base"
    local target image
    for target in frontdoor fedhet; do
        image="$FEDHET_IMAGE"
        [ "$target" = frontdoor ] && image="$FEDHET_FRONTDOOR_IMAGE"
        if image_exists "$image"; then
            log "image $image is up to date (inputs hash $hash)"
            continue
        fi
        log "building $image from $base (log: $STATE/build-$target.log)"
        mkdir -p "$STATE"
        if ! nice "$ENGINE" build -f "$HERE/Dockerfile" --target "$target" \
            --build-arg "BASE_IMAGE=$base" "${build_args[@]}" -t "$image" "$REPO" \
            >"$STATE/build-$target.log" 2>&1; then
            tail -n 30 "$STATE/build-$target.log" >&2
            die "building $image failed"
        fi
        log "built $image"
    done
}

# ---------------------------------------------------------------------------------------------
# Certificates: fedhet's own `python -m fedhet.deploy certs` in a one-shot container. The CA
# key stays in $STATE/run/pki on the host (mode 0600, root); every service mounts single files.
# ---------------------------------------------------------------------------------------------
cmd_certs() {
    [ -n "${FEDHET_IMAGE:-}" ] || die "certs: build first"
    rm -rf "$STATE/run"
    mkdir -p "$STATE/run/pki" "$STATE/run/runs"
    "$ENGINE" run --rm --user 0 --network none -v "$STATE/run:/work" "$FEDHET_IMAGE" sh -c '
        set -e
        python -m fedhet.deploy certs --out /work/pki --hosts superlink frontdoor \
            --nodes '"${NODES[*]}"' >/dev/null
        chown 10001:10001 /work/pki/server.key /work/pki/nodes/*.key /work/runs
        chmod 0755 /work/pki /work/pki/nodes
        chmod 0644 /work/pki/ca.pem /work/pki/server.pem /work/pki/nodes/*.pub' \
        || die "certs failed"
    log "certificates and node keys in $STATE/run/pki (ca.key stays here)"
}

# ---------------------------------------------------------------------------------------------
# Up / run / down
# ---------------------------------------------------------------------------------------------
compose() { "${COMPOSE[@]}" "$@"; }

cmd_down() {
    log "tearing down project $PROJECT"
    compose down -v >"$STATE/down.log" 2>&1 || tail -n 20 "$STATE/down.log" >&2
    if [ "$ENGINE" = podman ]; then
        # podman-compose 1.0.x leaves the one-off `run` containers and the networks behind.
        local leftovers
        leftovers="$(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" -q)"
        [ -z "$leftovers" ] || podman rm -f $leftovers >/dev/null 2>&1 || true
        for net in backend devices; do
            podman network rm -f "${PROJECT}_$net" >/dev/null 2>&1 || true
        done
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

flwr_cli() { compose run --rm -T --no-deps flwr "$@" </dev/null; }

# The JSON object printed last by a `flwr ... --format json` call (compose tools add lines).
last_json() {
    python3 -c '
import json, re, sys
text = sys.stdin.read()
found = {}
for match in re.finditer(r"^\{", text, re.M):
    try:
        found = json.JSONDecoder().raw_decode(text, match.start())[0]
    except ValueError:
        pass
print(json.dumps(found))
'
}

json_get() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

check_front_door() {
    local port="$1" code
    code="$(curl -sk --max-time 10 -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/health" || true)"
    [ "$code" = 200 ] || die "front door: /health answered '$code'"
    for path in /v1/control/list-runs /v1/runtime/get-run /v1/anything; do
        code="$(curl -sk --max-time 10 -o /dev/null -w '%{http_code}' -X POST "https://127.0.0.1:$port$path" || true)"
        [ "$code" = 403 ] || die "front door: $path answered $code, not 403"
    done
    log "front door on 127.0.0.1:$port: /health 200; /v1/control, /v1/runtime, others 403"
}

cmd_demo() {
    cmd_build
    cmd_certs
    export FEDHET_STATE="$STATE/run"
    if [ -d "$FMNIST_DIR" ]; then
        export FEDHET_DATA_DIR="$FMNIST_DIR" DATASET=fashion-mnist
    else
        mkdir -p "$STATE/run/no-data"
        export FEDHET_DATA_DIR="$STATE/run/no-data" DATASET=digits
    fi
    local port="${FEDHET_FLEET_PORT:-$(free_port)}"
    export FEDHET_FLEET_PUBLISH="127.0.0.1:$port"

    cmd_down >/dev/null 2>&1 || true
    if [ "${FEDHET_COMPOSE_KEEP:-0}" != 1 ]; then
        trap 'rc=$?; cmd_down; log "exit $rc after $((SECONDS - T0)) s"; exit $rc' EXIT
    fi

    log "up: superlink, frontdoor, serverapp (SuperExec)"
    compose up -d superlink frontdoor serverapp >"$STATE/up.log" 2>&1 || {
        tail -n 30 "$STATE/up.log" >&2
        die "compose up superlink/frontdoor/serverapp failed"
    }

    log "registering node keys (fedhet.deploy register)"
    compose run --rm -T --no-deps register </dev/null >"$STATE/register.log" 2>&1 || {
        tail -n 30 "$STATE/register.log" >&2
        die "key registration failed"
    }
    sed 's/^/    /' "$STATE/register.log" | grep -E '\.pub: ' >&2 || true

    local deadline=$((SECONDS + 60))
    until curl -skf --max-time 5 -o /dev/null "https://127.0.0.1:$port/health"; do
        [ $SECONDS -lt $deadline ] || die "front door not answering on 127.0.0.1:$port"
        sleep 1
    done
    check_front_door "$port"

    log "up: ${SUPERNODES[*]} (cpus 2 / 1 / 0.5, memory 4g / 2g / 1g)"
    compose up -d --no-deps "${SUPERNODES[@]}" >>"$STATE/up.log" 2>&1 || {
        tail -n 30 "$STATE/up.log" >&2
        die "compose up supernodes failed"
    }

    # Wait until the three SuperNodes are online (they connect through the front door).
    deadline=$((SECONDS + 180))
    local online=0
    while :; do
        online="$(flwr_cli supernode list compose --format json 2>/dev/null | last_json \
            | json_get 'sum(1 for n in d.get("nodes", []) if n.get("status") == "online")' \
            2>/dev/null || echo 0)"
        [ "$online" -ge 3 ] && break
        [ $SECONDS -lt $deadline ] || die "only $online of 3 SuperNodes online after 180 s"
        sleep 3
    done
    log "3 SuperNodes online"

    local config="method='fedavg' num-server-rounds=$ROUNDS min-nodes=3 dataset='$DATASET'"
    config+=" local-steps=5 batch-size=32 max-train-per-client=600 local-test-size=200"
    config+=" round-timeout=300 output-dir='/runs' run-name='$RUN_NAME'"
    log "flwr run /app compose -c \"$config\""
    # A starved host can make the CLI give up connecting ("SuperLink is unavailable"): retry.
    local out="" run_id="" attempt
    for attempt in 1 2 3; do
        out="$(flwr_cli run /app compose --format json -c "$config" 2>&1)" || true
        run_id="$(printf '%s\n' "$out" | last_json | json_get 'd.get("run-id", "")' 2>/dev/null || true)"
        [ -z "$run_id" ] || break
        log "flwr run attempt $attempt did not start a run; retrying"
        sleep 10
    done
    [ -n "$run_id" ] || die "flwr run did not start a run: $(printf '%s\n' "$out" | tail -n 12)"
    log "run $run_id submitted; polling flwr ls (flwr run exits 0 even when a run fails)"

    local status="" t_run=$SECONDS
    deadline=$((SECONDS + RUN_TIMEOUT))
    while :; do
        status="$(flwr_cli ls compose --run-id "$run_id" --format json 2>/dev/null | last_json \
            | json_get '(d.get("runs") or [{}])[0].get("status", "unknown")' 2>/dev/null \
            || echo unknown)"
        case "$status" in finished*) break ;; esac
        if [ $SECONDS -ge $deadline ]; then
            status="$status (timeout after $RUN_TIMEOUT s)"
            break
        fi
        sleep 10  # each `flwr ls` is a CLI container start: cheap enough every 10 s
    done
    local run_s=$((SECONDS - t_run))
    log "run $run_id: $status after $run_s s"
    echo "$status" >"$STATE/run/status"
    if [ "$status" != "finished:completed" ]; then
        timeout 180 "${COMPOSE[@]}" run --rm -T --no-deps flwr log "$run_id" compose --show \
            </dev/null 2>&1 | tail -n 60 >&2 || true
        for svc in serverapp "${SUPERNODES[@]}" frontdoor; do
            log "--- logs of $svc ---"
            timeout 60 "${COMPOSE[@]}" logs "$svc" 2>&1 | tail -n 15 >&2 || true
        done
        die "run did not complete"
    fi

    echo
    echo "== fedhet compose demo: run $run_id ($status, $ROUNDS rounds of fedavg on $DATASET, ${run_s} s) =="
    # `fedhet report` prints the per-round and per-device-class tables and writes report.md
    "$ENGINE" run --rm --network none -e COLUMNS=100 -v "$STATE/run/runs:/runs" "$FEDHET_IMAGE" \
        fedhet report "/runs/$RUN_NAME" || die "fedhet report failed"
    echo
    log "run folder: $STATE/run/runs/$RUN_NAME"
}

main() {
    local cmd="${1:-demo}"
    if [ "$cmd" = setup ]; then
        cmd_setup
        return
    fi
    detect_engine || die "no container engine can run here (Docker engine, or podman + podman-compose: $0 setup)"
    case "$cmd" in
    engine) echo "$ENGINE" ;;
    build | certs)
        cmd_build
        [ "$cmd" = build ] || cmd_certs
        # for `eval "$(./run-demo.sh certs)"` before driving compose by hand
        printf 'export FEDHET_IMAGE=%q FEDHET_FRONTDOOR_IMAGE=%q BASE_IMAGE=%q\n' \
            "$FEDHET_IMAGE" "$FEDHET_FRONTDOOR_IMAGE" "$BASE_IMAGE"
        ;;
    demo) cmd_demo ;;
    down) cmd_down ;;
    *) die "unknown command $cmd (setup | engine | build | certs | demo | down)" ;;
    esac
}

main "$@"
