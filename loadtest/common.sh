# Shared by bench.sh, ab.sh and instructions.sh (sourced, not run).

# stop_servers: kills every pid in PIDS and waits for them.
stop_servers() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# wait_until_serving SCRIPT NAME PORT: waits (up to 10 s) until the server on PORT
# answers a coupon claim with 200; else says which one did not and exits.
wait_until_serving() {
    local script=$1 name=$2 port=$3 code=""
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'x-user-id: u1' -H 'x-device-id: d1' \
            "http://127.0.0.1:$port/api/coupon/claim" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    echo "$script: $name does not answer 200 (got $code; see its log in $WORK)" >&2
    exit 1
}
