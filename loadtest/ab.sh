#!/usr/bin/env bash
# Interleaved A/B of riskgate variants (configs and/or builds) against the bare hyper
# pass-through, in bench.sh's layout: the load generator on core 0 (LOAD_CPU), every
# server and the stub upstream on core 1 (SERVER_CPU), one worker each. See BENCHMARKS.md.
#
#   loadtest/ab.sh [--rounds 4] [--duration 5] [--connections 50] [--skip-build]
#                  NAME=CONFIG[@BINARY] ...
#
# Each NAME=CONFIG[@BINARY] is one riskgate row (`serve --shadow`, the binary defaults to
# target/release/riskgate); a passthrough row is always measured too. Every round
# measures all rows in a rotated order; printed per row: the median over the rounds of
# req/s, server-core CPU µs per request (proxy + stub, from /proc/PID/stat) and the
# throughput ratio to the pass-through of the same round.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"
ROUNDS=4
DURATION=5
CONNECTIONS=50
BUILD=1
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
VARIANTS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --skip-build) BUILD=0 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *=*) VARIANTS+=("$1") ;;
        *) echo "ab.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#VARIANTS[@]} -gt 0 ] || { echo "ab.sh: give at least one NAME=CONFIG[@BINARY]" >&2; exit 2; }
need_tools ab.sh "" taskset python3 curl
build_bins
WORK=$(mktemp -d /tmp/riskgate-ab.XXXXXX)
echo "work dir $WORK"

PIDS=()
cleanup() {
    stop_servers
    rm -rf "$WORK"
}
trap cleanup EXIT

UP=127.0.0.1:18281
declare -A PORT SERVER_PID
taskset -c "$SERVER_CPU" "$BIN/stub-upstream" --listen $UP --workers 1 2>"$WORK/stub.log" &
PIDS+=($!); STUB=$!
PORT[passthrough]=18282
taskset -c "$SERVER_CPU" "$BIN/passthrough" --listen 127.0.0.1:18282 --upstream $UP --workers 1 2>"$WORK/passthrough.log" &
PIDS+=($!); SERVER_PID[passthrough]=$!
ORDER=(passthrough)
port=18283
for variant in "${VARIANTS[@]}"; do
    name=${variant%%=*}
    spec=${variant#*=}
    config=${spec%%@*}
    binary="$BIN/riskgate"
    [ "$spec" != "$config" ] && binary=$(realpath "${spec#*@}")
    # The repository's layout, so that relative list and model paths resolve, one per
    # variant, so that its audit log does not share a file with another's.
    mkdir -p "$WORK/$name/config"
    cp -r "$ROOT/config/lists" "$WORK/$name/config/lists"
    ln -s "$ROOT/models" "$WORK/$name/models"
    cp "$(realpath "$config")" "$WORK/$name/config/riskgate.toml"
    (cd "$WORK/$name" && RUST_LOG=warn RISKGATE_WORKERS=1 exec taskset -c "$SERVER_CPU" "$binary" serve \
        --config config/riskgate.toml --shadow --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$((port + 1000)) \
        --upstream http://$UP 2>"$WORK/$name.log") &
    PIDS+=($!); SERVER_PID[$name]=$!
    PORT[$name]=$port
    ORDER+=("$name")
    port=$((port + 1))
done

for name in "${ORDER[@]}"; do wait_until_serving ab.sh "$name" "${PORT[$name]}"; done

ticks() {
    local sum=0 pid
    for pid in $STUB "${SERVER_PID[$1]}"; do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo $sum
}

for name in "${ORDER[@]}"; do
    load --target "http://127.0.0.1:${PORT[$name]}" --max --connections "$CONNECTIONS" --duration 2 >/dev/null
done
RESULTS="$WORK/ab.tsv"
for round in $(seq "$ROUNDS"); do
    rotated_order "$round"
    for name in "${ROTATED[@]}"; do
        before=$(ticks "$name")
        load --target "http://127.0.0.1:${PORT[$name]}" --max --connections "$CONNECTIONS" \
            --duration "$DURATION" --seed "$round" > "$WORK/out.json"
        after=$(ticks "$name")
        python3 - "$WORK/out.json" "$round" "$name" $((after - before)) "$(getconf CLK_TCK)" <<'PY' | tee -a "$RESULTS"
import json, sys
r = json.load(open(sys.argv[1]))
n = max(r["requests"], 1)
print("\t".join(str(x) for x in [sys.argv[2], sys.argv[3], round(r["throughput_rps"]), r["errors_total"],
      round(int(sys.argv[4]) / int(sys.argv[5]) * 1e6 / n, 2)]))
PY
    done
done

python3 - "$RESULTS" <<'PY'
import collections, statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
rps, cpu, base = collections.defaultdict(list), collections.defaultdict(list), {}
for rnd, name, r, _errors, us in rows:
    rps[name].append(float(r)); cpu[name].append(float(us))
    if name == "passthrough":
        base[rnd] = float(r)
ratio = collections.defaultdict(list)
for rnd, name, r, _errors, _us in rows:
    ratio[name].append(float(r) / base[rnd])
print("row\treq/s\tµs/req\tvs passthrough\tper round")
for name in rps:
    print(f"{name}\t{statistics.median(rps[name]):.0f}\t{statistics.median(cpu[name]):.2f}\t"
          f"{statistics.median(ratio[name]):.3f}x\t{' '.join(f'{x:.3f}' for x in ratio[name])}")
PY
