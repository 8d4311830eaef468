# Shared by bench.sh, ab.sh and instructions.sh (sourced, not run; they set ROOT, BUILD,
# LOAD_CPU, PIDS, WORK and ORDER as these functions need).

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

# need_tools SCRIPT HINT TOOL...: exits unless every TOOL is on the PATH (HINT, which
# may be empty, is added to the message).
need_tools() {
    local script=$1 hint=$2 tool
    shift 2
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$script: needs $tool${hint:+ ($hint)}" >&2; exit 2; }
    done
}

# build_bins: from the repository root, the release binaries (unless BUILD is 0); sets BIN.
build_bins() {
    cd "$ROOT"
    if [ "$BUILD" = 1 ]; then
        cargo build --release --workspace --bins
    fi
    BIN="$ROOT/target/release"
}

# load ARGS...: the load generator on the load core, JSON report on stdout.
load() { taskset -c "$LOAD_CPU" "$BIN/loadtest" --json "$@"; }

# rotated_order ROUND: ORDER rotated by ROUND - 1, into ROTATED (so that a noisy
# neighbour spreads over every row).
rotated_order() {
    local shift_by=$(( ($1 - 1) % ${#ORDER[@]} ))
    ROTATED=("${ORDER[@]:$shift_by}" "${ORDER[@]:0:$shift_by}")
}
