#!/usr/bin/env bash
# Regenerates the shipped model, models/riskgate-default.model.json, exactly (training is
# deterministic: same riskgate source, same bytes). Run from anywhere; about a minute
# on two cores. Rerun it after any change to the feature list (src/features.rs).
#
#   models/train.sh            # seed 1, scale 2 (what is shipped)
#   SEED=5 models/train.sh     # another training set, e.g. to compare
set -euo pipefail
cd "$(dirname "$0")/.."
SEED="${SEED:-1}"
SCALE="${SCALE:-2}"
OUT="${OUT:-models/riskgate-default.model.json}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cargo build --release --quiet
target/release/riskgate simulate --scenario default --seed "$SEED" --scale "$SCALE" --out "$WORK/train.jsonl"
target/release/riskgate train --config config/riskgate.toml --input "$WORK/train.jsonl" --out "$OUT" --seed 1
