#!/usr/bin/env bash
# Side-by-side benchmark: riskgate against a bare hyper pass-through proxy and nginx, all
# in front of one stub upstream, on loopback, in one run. See BENCHMARKS.md.
#
#   loadtest/bench.sh [--rounds 3] [--duration 8] [--connections 50]
#                     [--full-config FILE] [--rules-config FILE] [--out DIR]
#                     [--rate 5000] [--fixed-duration 15] [--no-fixed] [--no-spike] [--skip-build]
#
# The load generator runs on core 0 (LOAD_CPU); each server and the stub upstream on
# core 1 (SERVER_CPU), one worker each. Targets are measured in turn, in a rotated
# order each round, so that a noisy neighbour spreads over all of them. Server-core CPU
# per request comes from /proc/PID/stat (utime + stime) of the proxy and the upstream.
#
# Rows:
#   direct         the stub upstream itself (no proxy)
#   passthrough    bare hyper pass-through (loadtest/src/servers.rs): the floor
#   passthrough-ct the same on a current-thread runtime (as riskgate runs with one
#                  worker), to show how much of a difference the runtime makes
#   riskgate-rules riskgate --shadow, loadtest/configs/rules-only.toml (lists, limits,
#                  request-shape rules; no graph rules)
#   riskgate-full  riskgate --shadow, config/riskgate.toml (every signal and rule, audit
#                  log on, the shipped model) or --full-config FILE
#   nginx          nginx reverse proxy, upstream keep-alive
#   nginx-limit    the same with limit_req keyed by x-device-id (dry run, so that every
#                  request is forwarded, as riskgate --shadow does)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=loadtest/common.sh
. "$ROOT/loadtest/common.sh"
ROUNDS=3
DURATION=8
CONNECTIONS=50
FULL_CONFIG=""
RULES_CONFIG="$ROOT/loadtest/configs/rules-only.toml"
OUT=""
RATE=5000
FIXED_DURATION=15
FIXED=1
SPIKE=1
BUILD=1
LOAD_CPU=${LOAD_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --full-config) FULL_CONFIG=$(realpath "$2"); shift ;;
        --rules-config) RULES_CONFIG=$(realpath "$2"); shift ;;
        --out) OUT=$2; shift ;;
        --rate) RATE=$2; shift ;;
        --fixed-duration) FIXED_DURATION=$2; shift ;;
        --no-fixed) FIXED=0 ;;
        --no-spike) SPIKE=0 ;;
        --skip-build) BUILD=0 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

need_tools bench.sh "" taskset python3 curl
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "bench.sh: needs nginx (apt-get install -y nginx)" >&2; exit 2; }

build_bins
WORK=$(mktemp -d /tmp/riskgate-bench.XXXXXX)
OUT=${OUT:-$WORK/results}
mkdir -p "$OUT"
echo "work dir $WORK, results in $OUT"

# Configs are copied next to a copy of the lists, so that the audit log lands in WORK,
# in the repository's layout (config/ beside models/), so that the default config's
# relative model path finds the shipped model.
mkdir -p "$WORK/config"
cp -r "$ROOT/config/lists" "$WORK/config/lists"
ln -s "$ROOT/models" "$WORK/models"
cp "$RULES_CONFIG" "$WORK/config/rules.toml"
if [ -z "$FULL_CONFIG" ]; then
    cp "$ROOT/config/riskgate.toml" "$WORK/config/full.toml"
    FULL="$WORK/config/full.toml"
else
    FULL="$FULL_CONFIG"
fi

PIDS=()
cleanup() {
    stop_servers
    if [ -f "$WORK/nginx.pid" ]; then kill -QUIT "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    # The results stay; the rest goes (the audit logs alone are hundreds of MB a run).
    if [ "$OUT" = "$WORK/results" ]; then
        find "$WORK" -mindepth 1 -maxdepth 1 ! -name results -exec rm -rf {} +
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

UP=127.0.0.1:18081
declare -A PORT=([direct]=18081 [passthrough]=18082 [riskgate-rules]=18083 [riskgate-full]=18084 [nginx]=18085 [nginx-limit]=18086 [passthrough-ct]=18087)
declare -A SERVER_PID

taskset -c "$SERVER_CPU" "$BIN/stub-upstream" --listen $UP --workers 1 2>"$WORK/stub.log" &
PIDS+=($!); SERVER_PID[direct]=$!
taskset -c "$SERVER_CPU" "$BIN/passthrough" --listen 127.0.0.1:${PORT[passthrough]} --upstream $UP --workers 1 2>"$WORK/passthrough.log" &
PIDS+=($!); SERVER_PID[passthrough]=$!
taskset -c "$SERVER_CPU" "$BIN/passthrough" --listen 127.0.0.1:${PORT[passthrough-ct]} --upstream $UP --current-thread 2>"$WORK/passthrough-ct.log" &
PIDS+=($!); SERVER_PID[passthrough-ct]=$!
for row in rules full; do
    cfg="$WORK/config/rules.toml"; [ $row = full ] && cfg="$FULL"
    port=${PORT[riskgate-$row]}
    RUST_LOG=warn RISKGATE_WORKERS=1 taskset -c "$SERVER_CPU" "$BIN/riskgate" serve --config "$cfg" --shadow \
        --listen 127.0.0.1:$port --admin-listen 127.0.0.1:$((port + 1000)) --upstream http://$UP \
        2>"$WORK/riskgate-$row.log" &
    PIDS+=($!); SERVER_PID[riskgate-$row]=$!
done

mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream stub {
        server $UP;
        keepalive 128;
    }
    # The coupon route's device limit of config/riskgate.toml: 10/min, burst 5.
    limit_req_zone \$http_x_device_id zone=device:32m rate=10r/m;
    server {
        listen 127.0.0.1:${PORT[nginx]};
        location / {
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:${PORT[nginx-limit]};
        location / {
            limit_req zone=device burst=5 nodelay;
            # Count and log, but forward: the same work riskgate does under --shadow.
            limit_req_dry_run on;
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
taskset -c "$SERVER_CPU" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx/stderr.log" &
PIDS+=($!)
NGINX_MASTER=$!

# Wait until every target answers.
for name in "${!PORT[@]}"; do wait_until_serving bench.sh "$name" "${PORT[$name]}"; done
NGINX_WORKERS=$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')
# "Fully on" means with the trained model: refuse to measure a riskgate that runs without it.
# (The page is read whole first: `curl | grep -q` under pipefail fails whenever grep
# stops reading before curl has written everything.)
if [ -z "$FULL_CONFIG" ] && ! grep -q '^riskgate_model_loaded 1' <<<"$(curl -s "http://127.0.0.1:$((${PORT[riskgate-full]} + 1000))/metrics")"; then
    echo "bench.sh: riskgate-full has no model loaded (see $WORK/riskgate-full.log)" >&2; exit 1
fi

# (Every server is started as `taskset ... PROGRAM &`: taskset execs the program, so $!
# is the server's own pid, for /proc/PID/stat and for stopping it.)

# CPU ticks (utime + stime) of the processes serving a row: its proxy and the upstream.
ticks() {
    local pids="${SERVER_PID[direct]}" sum=0 pid
    case "$1" in
        direct) ;;
        nginx|nginx-limit) pids="$pids $NGINX_WORKERS" ;;
        *) pids="$pids ${SERVER_PID[$1]}" ;;
    esac
    for pid in $pids; do
        sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo $sum
}


ORDER=(direct passthrough passthrough-ct riskgate-rules riskgate-full nginx nginx-limit)
echo "warm-up: 2 s each"
for name in "${ORDER[@]}"; do
    load --target "http://127.0.0.1:${PORT[$name]}" --max --connections "$CONNECTIONS" --duration 2 >/dev/null
done

RESULTS="$OUT/max.tsv"
echo -e "round\trow\trps\tp50_us\tp99_us\tp999_us\terrors\tnon2xx\tserver_cpu_us_per_req" > "$RESULTS"
for round in $(seq "$ROUNDS"); do
    rotated_order "$round"
    for name in "${ROTATED[@]}"; do
        before=$(ticks "$name")
        load --target "http://127.0.0.1:${PORT[$name]}" --max --connections "$CONNECTIONS" \
            --duration "$DURATION" --seed "$round" > "$OUT/max-$name-$round.json"
        after=$(ticks "$name")
        python3 - "$OUT/max-$name-$round.json" "$round" "$name" $((after - before)) "$(getconf CLK_TCK)" >> "$RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ticks, hz = int(sys.argv[4]), int(sys.argv[5])
n = max(r["requests"], 1)
non2xx = r["requests"] - r["ok"] - r["errors_total"]
print("\t".join(str(x) for x in [sys.argv[2], sys.argv[3], r["throughput_rps"], r["latency_us"]["p50"],
      r["latency_us"]["p99"], r["latency_us"]["p999"], r["errors_total"], non2xx,
      round(ticks / hz * 1e6 / n, 2)]))
PY
        tail -1 "$RESULTS"
    done
done

if [ "$FIXED" = 1 ]; then
    FIXED_RESULTS="$OUT/fixed.tsv"
    echo -e "round\trow\trate\tp50_us\tp90_us\tp99_us\tp999_us\tmax_us\terrors\tlate" > "$FIXED_RESULTS"
    for round in $(seq "$ROUNDS"); do
        for name in passthrough riskgate-full; do
            load --target "http://127.0.0.1:${PORT[$name]}" --rate "$RATE" --duration "$FIXED_DURATION" \
                --connections "$CONNECTIONS" --seed "$round" > "$OUT/fixed-$name-$round.json"
            python3 - "$OUT/fixed-$name-$round.json" "$round" "$name" >> "$FIXED_RESULTS" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_us"]
print("\t".join(str(x) for x in [sys.argv[2], sys.argv[3], r["offered_rps"], l["p50"], l["p90"], l["p99"],
      l["p999"], l["max"], r["errors_total"], r["late_sends"]]))
PY
            tail -1 "$FIXED_RESULTS"
        done
    done
fi

if [ "$SPIKE" = 1 ]; then
    # 1,000 req/s, then 10,000 req/s for 2 s (a 10x step within one second), then back.
    for name in passthrough riskgate-full; do
        load --target "http://127.0.0.1:${PORT[$name]}" --rate 1000 --duration 12 --spike 10000 \
            --spike-at 5 --spike-for 2 --connections 200 > "$OUT/spike-$name.json"
    done
fi

python3 "$ROOT/loadtest/summarize.py" "$OUT" | tee "$OUT/summary.md"
