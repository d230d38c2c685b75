#!/usr/bin/env bash
# A local Milvus standalone server for trying Spotter's Milvus backend and for its tests.
#
#   scripts/milvus.sh start   install (once) and start; waits until healthy; prints the URL
#   scripts/milvus.sh stop    stop it (data kept in .cache/milvus/data)
#   scripts/milvus.sh status  exit 0 when a server answers
#   scripts/milvus.sh wipe    stop and delete its data
#
# The server is the PyPI package milvus==2.3.5: the real Milvus standalone (the same server code
# and gRPC API as a Milvus cluster), bound to 127.0.0.1. For production run a Milvus cluster
# and point Spotter at it (docs/scaling-out.md).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.cache/milvusvenv
HOME_DIR=.cache/milvus
PID_FILE=$HOME_DIR/pid
LOG=$HOME_DIR/server.log
PORT=${SPOTTER_MILVUS_PORT:-19530}
HEALTH=http://127.0.0.1:9091/healthz

healthy() {
    python3 - "$HEALTH" <<'EOF'
import sys, urllib.request
try:
    ok = urllib.request.urlopen(sys.argv[1], timeout=2).read().strip() == b"OK"
except Exception:
    ok = False
sys.exit(0 if ok else 1)
EOF
}

install() {
    if [[ ! -x $VENV/bin/milvus-server ]]; then
        echo "[milvus] installing milvus==2.3.5 into $VENV (58 MB, once)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check milvus==2.3.5
    fi
}

launch() {
    local extra=()
    for component in rootCoord proxy queryCoord queryNode indexNode dataCoord dataNode; do
        extra+=(--extra-config "$component.ip=127.0.0.1")
    done
    # setsid: its own process group, so `stop` takes down the wrapper and the server together.
    setsid "$VENV/bin/milvus-server" --data "$HOME_DIR/data" --proxy-port "$PORT" "${extra[@]}" \
        >"$LOG" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    for _ in $(seq 1 60); do
        if healthy; then
            return 0
        fi
        if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null || grep -q "started timeout" "$LOG"; then
            return 1
        fi
        sleep 1
    done
    return 1
}

start() {
    if healthy; then
        echo "[milvus] already running: milvus://127.0.0.1:$PORT"
        return 0
    fi
    install
    mkdir -p "$HOME_DIR/data"
    # The standalone server sometimes panics while its components find each other (a race in
    # its start-up); a second attempt starts cleanly.
    for attempt in 1 2 3; do
        echo "[milvus] starting (attempt $attempt; log: $LOG)"
        if launch; then
            echo "[milvus] ready: milvus://127.0.0.1:$PORT"
            return 0
        fi
        echo "[milvus] start-up failed; last lines of $LOG:" >&2
        tail -5 "$LOG" >&2
        stop >/dev/null
        sleep 2
    done
    echo "[milvus] could not start after 3 attempts; see $HOME_DIR/data/logs/" >&2
    return 1
}

stop() {
    if [[ -f $PID_FILE ]]; then
        local pid
        pid=$(cat "$PID_FILE")
        if kill -0 "$pid" 2>/dev/null; then
            kill -INT -- "-$pid" 2>/dev/null || kill -INT "$pid"
            for _ in $(seq 1 30); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 1
            done
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -f "$PID_FILE"
        echo "[milvus] stopped"
    fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) healthy ;;
wipe)
    stop
    rm -rf "$HOME_DIR/data"
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
