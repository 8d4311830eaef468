#!/usr/bin/env python3
"""The model on its own, from replay output: every scored decision record carries the
model's calibrated score (`model_score`) and the event's label. Prints PR-AUC, ROC-AUC,
recall at 0.5 % false-positive rate and the share flagged per label kind, at that
threshold and at a given one (the config's min_score). Used by models/measure.sh.

    python3 models/model_alone.py DECISIONS.jsonl [THRESHOLD]
"""
import collections
import json
import sys

TARGET_FPR = 0.005


def main():
    path = sys.argv[1]
    extra = float(sys.argv[2]) if len(sys.argv) > 2 else 0.99
    rows = []
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            label = d.get("label")
            if "model_score" in d and label:
                rows.append((d["model_score"], label["fraud"], label.get("kind") or "?"))
    rows.sort(key=lambda r: -r[0])
    pos = sum(1 for r in rows if r[1])
    neg = len(rows) - pos
    tp = fp = 0
    ap = auc = prev_r = prev_f = 0.0
    best = (0.0, 1.0)
    i = 0
    # One group of tied scores at a time: a threshold cannot split a tie.
    while i < len(rows):
        s = rows[i][0]
        while i < len(rows) and rows[i][0] == s:
            tp += rows[i][1]
            fp += not rows[i][1]
            i += 1
        r, f = tp / pos, fp / neg
        ap += (r - prev_r) * tp / (tp + fp)
        auc += (f - prev_f) * (r + prev_r) / 2
        if f <= TARGET_FPR and r >= best[0]:
            best = (r, s)
        prev_r, prev_f = r, f
    print(f"model alone: {len(rows)} scored requests, {pos} fraud")
    print(f"PR-AUC {ap:.4f}  ROC-AUC {auc:.4f}  recall at 0.5% FPR {best[0]:.4f} (score >= {best[1]:.3f})")
    kinds = collections.defaultdict(lambda: [0, 0, 0, False])
    for s, fraud, kind in rows:
        k = kinds[kind]
        k[0] += 1
        k[1] += s >= best[1]
        k[2] += s >= extra
        k[3] = fraud
    print(f"{'kind':<18} {'fraud':>5} {'requests':>9} {'>= %.3f' % best[1]:>9} {'>= %.2f' % extra:>9}")
    for kind in sorted(kinds, key=lambda k: (not kinds[k][3], k)):
        n, a, b, fraud = kinds[kind]
        print(f"{kind:<18} {str(fraud):>5} {n:>9} {100 * a / n:>8.1f}% {100 * b / n:>8.1f}%")


if __name__ == "__main__":
    main()
