#!/usr/bin/env bash
# Instructions per request, counted by callgrind: a figure that does not move with the
# machine's load, for comparing two builds of riskgate (or riskgate against the bare
# pass-through) on a shared, noisy machine. See BENCHMARKS.md.
#
#   loadtest/instructions.sh [--requests 6000] [--rate 300] [--config FILE]
#                            [--riskgate BIN]... [--no-passthrough] [--skip-build]
#
# Each target runs under `valgrind --tool=callgrind` in front of the stub upstream (not
# under valgrind), gets a warm-up of 500 requests, then its counters are zeroed and
# `loadtest --rate R` sends --requests coupon claims (the bench's key space, seed 1).
# Printed: user-space instructions per request of the proxy process (every thread: the
# audit writer too), and where --keep-dir is given, the callgrind files to read with
# callgrind_annotate. The kernel's share (system calls, loopback TCP) is not counted:
# it is the same for every hyper proxy here.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"
REQUESTS=6000
RATE=300
CONFIG="$ROOT/config/riskgate.toml"
RISKGATE=()
PASSTHROUGH=1
BUILD=1
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) REQUESTS=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --config) CONFIG=$(realpath "$2"); shift ;;
        --riskgate) RISKGATE+=("$(realpath "$2")"); shift ;;
        --no-passthrough) PASSTHROUGH=0 ;;
        --skip-build) BUILD=0 ;;
        --keep-dir) KEEP=$(realpath -m "$2"); shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
need_tools instructions.sh "apt-get install -y valgrind" valgrind callgrind_control callgrind_annotate curl python3
build_bins
[ ${#RISKGATE[@]} -gt 0 ] || RISKGATE=("$BIN/riskgate")
WORK=$(mktemp -d /tmp/riskgate-instructions.XXXXXX)
OUT=${KEEP:-$WORK}
mkdir -p "$OUT" "$WORK/config"
# The config's relative paths (lists, the model) resolve as in the repository's layout.
cp -r "$ROOT/config/lists" "$WORK/config/lists"
ln -s "$ROOT/models" "$WORK/models"
cp "$CONFIG" "$WORK/config/riskgate.toml"

PIDS=()
cleanup() {
    stop_servers
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=127.0.0.1:18181
LISTEN=127.0.0.1:18182
"$BIN/stub-upstream" --listen $UP --workers 1 2>"$WORK/stub.log" &
PIDS+=($!)

send_claims() {
    "$BIN/loadtest" --json --target "http://$LISTEN" --rate "$RATE" --connections 20 --seed 1 "$@" \
        | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["requests"], r["ok"], r["errors_total"])'
}

# measure NAME CMD...: the instructions per request of CMD, serving on $LISTEN.
measure() {
    local name=$1; shift
    local file="$OUT/callgrind.$name"
    (cd "$WORK" && exec valgrind --tool=callgrind --callgrind-out-file="$file" "$@") 2>"$WORK/$name.log" &
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 300); do
        curl -s -o /dev/null -X POST "http://$LISTEN/api/coupon/claim" && break
        sleep 0.2
    done
    send_claims --duration $((500 / RATE + 1)) >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    read -r sent ok errors < <(send_claims --duration "$(python3 -c "print($REQUESTS / $RATE)")")
    callgrind_control -d "$pid" >/dev/null 2>&1
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true
    # The dump after the zeroing is the file with the highest suffix.
    local dump
    dump=$(ls -v "$file".* | tail -1)
    local ir
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    [ "$errors" = 0 ] && [ "$ok" = "$sent" ] || echo "instructions.sh: $name: $errors errors, $ok of $sent ok" >&2
    printf '%-16s %9d requests  %8.0f instructions per request\n' "$name" "$sent" "$(python3 -c "print($ir / $sent)")"
}

if [ "$PASSTHROUGH" = 1 ]; then
    measure passthrough-ct "$BIN/passthrough" --listen $LISTEN --upstream $UP --current-thread
fi
i=0
for rg in "${RISKGATE[@]}"; do
    i=$((i + 1))
    RUST_LOG=warn RISKGATE_WORKERS=1 measure "riskgate-$i" "$rg" serve --config config/riskgate.toml --shadow \
        --listen $LISTEN --admin-listen 127.0.0.1:18183 --upstream "http://$UP"
done
[ -z "$KEEP" ] || echo "callgrind files in $OUT"
