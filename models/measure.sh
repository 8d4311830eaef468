#!/usr/bin/env bash
# Rules alone against rules + model on simulated traffic the model never saw:
# `riskgate replay` of one seed with the default config, once with `[model] mode = "off"`
# and once as shipped. Prints both summaries (per attack kind the share stopped, per
# legitimate segment the share wrongly stopped). Seed 42 is the one README.md quotes.
#
#   models/measure.sh          # seed 42
#   SEED=7 models/measure.sh
#   SCENARIO=shifted SEED=2028 models/measure.sh   # crews working differently
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${SEED:-42}"
SCENARIO="${SCENARIO:-default}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build --release --quiet
mkdir -p "$WORK/config"
cp -r config/lists "$WORK/config/"
ln -s "$PWD/models" "$WORK/models"
cp config/riskgate.toml "$WORK/config/model.toml"
# The [model] section's mode line is the first `mode = "enforce"` after `[model]`.
awk 'BEGIN{m=0} /^\[model\]/{m=1} m==1 && /^mode = "enforce"/{print "mode = \"off\""; m=2; next} {print}' \
    config/riskgate.toml > "$WORK/config/rules.toml"
grep -q '^mode = "off"' "$WORK/config/rules.toml"
target/release/riskgate simulate --scenario "$SCENARIO" --seed "$SEED" --out "$WORK/events.jsonl"
for cfg in rules model; do
    echo "=== $SCENARIO seed $SEED: $cfg ==="
    target/release/riskgate replay --quiet --config "$WORK/config/$cfg.toml" --input "$WORK/events.jsonl" \
        --output "$WORK/$cfg.decisions.jsonl" --report "$WORK/$cfg.report.json" 2>&1 | sed -n '/attack kind/,$p'
done
# The model's own figures on the same traffic, from model_score in the decision records.
if command -v python3 >/dev/null; then
    echo "=== $SCENARIO seed $SEED: the model alone ==="
    python3 models/model_alone.py "$WORK/model.decisions.jsonl" 0.99
fi
