#!/usr/bin/env python3
"""Summarises a bench.sh results directory as Markdown: medians over rounds, ratios to
the bare pass-through and to nginx measured in the same run."""
import json
import os
import statistics
import sys

out = sys.argv[1]


def tsv(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        head = f.readline().rstrip("\n").split("\t")
        return [dict(zip(head, line.rstrip("\n").split("\t"))) for line in f if line.strip()]


def median(rows, row, key):
    vals = [float(r[key]) for r in rows if r["row"] == row]
    return statistics.median(vals) if vals else float("nan")


rows = tsv("max.tsv")
order = ["direct", "passthrough", "passthrough-ct", "riskgate-rules", "riskgate-full", "nginx", "nginx-limit"]
if rows:
    rounds = len({r["round"] for r in rows})
    base = median(rows, "passthrough", "rps")
    base_ct = median(rows, "passthrough-ct", "rps")
    nginx = median(rows, "nginx", "rps")
    nlimit = median(rows, "nginx-limit", "rps")
    base_cpu = median(rows, "passthrough", "server_cpu_us_per_req")
    print(f"## Maximum throughput (closed loop, medians of {rounds} rounds)\n")
    # Two floors: riskgate with one worker runs a current-thread runtime, and on some
    # machines the multi-threaded pass-through costs much more than that one.
    print("| row | req/s | vs pass-through | vs pass-through-ct | vs nginx | vs nginx + limit_req | p50 ms "
          "| p99 ms | server CPU µs/req | CPU vs pass-through | errors | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in order:
        if not any(r["row"] == name for r in rows):
            continue
        rps = median(rows, name, "rps")
        cpu = median(rows, name, "server_cpu_us_per_req")
        errs = sum(int(r["errors"]) for r in rows if r["row"] == name)
        non2xx = sum(int(r["non2xx"]) for r in rows if r["row"] == name)
        print(f"| {name} | {rps:,.0f} | {rps / base:.2f}x | {rps / base_ct:.2f}x | {rps / nginx:.2f}x "
              f"| {rps / nlimit:.2f}x "
              f"| {median(rows, name, 'p50_us') / 1000:.3f} | {median(rows, name, 'p99_us') / 1000:.3f} "
              f"| {cpu:.1f} | {cpu / base_cpu:.2f}x | {errs} | {non2xx} |")
    # The same round's rows were measured minutes apart at most: per-round ratios show
    # how much of a median's ratio is the machine.
    per_round = {}
    for r in rows:
        per_round.setdefault(r["round"], {})[r["row"]] = float(r["rps"])
    for ref in ["passthrough", "passthrough-ct", "nginx-limit"]:
        ratios = [f"{v['riskgate-full'] / v[ref]:.2f}x" for _, v in sorted(per_round.items(), key=lambda kv: int(kv[0]))
                  if "riskgate-full" in v and ref in v]
        if ratios:
            print(f"\nriskgate-full / {ref} per round: {', '.join(ratios)}", end="")
    print("\n")

fixed = tsv("fixed.tsv")
if fixed:
    print(f"## Fixed rate {float(fixed[0]['rate']):,.0f} req/s (open loop, latency from the intended "
          f"send time; medians of {len({r['round'] for r in fixed})} rounds)\n")
    print("| row | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | sent late |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in ["passthrough", "riskgate-full"]:
        m = lambda k: median(fixed, name, k) / 1000  # noqa: E731
        errs = sum(int(r["errors"]) for r in fixed if r["row"] == name)
        late = sum(int(r["late"]) for r in fixed if r["row"] == name)
        print(f"| {name} | {m('p50_us'):.3f} | {m('p90_us'):.3f} | {m('p99_us'):.3f} | {m('p999_us'):.3f} "
              f"| {m('max_us'):.3f} | {errs} | {late} |")
    d = (median(fixed, "riskgate-full", "p99_us") - median(fixed, "passthrough", "p99_us")) / 1000
    print(f"\nriskgate fully on adds {d:+.3f} ms at p99 over the bare pass-through.\n")

for name in ["passthrough", "riskgate-full"]:
    path = os.path.join(out, f"spike-{name}.json")
    if not os.path.exists(path):
        continue
    r = json.load(open(path))
    if name == "passthrough":
        print("## Spike: 1,000 -> 10,000 -> 1,000 req/s (open loop)\n")
        print("| row | phase | offered req/s | requests | errors | p50 ms | p99 ms | max ms |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
    for i, p in enumerate(r["phases"]):
        label = ["before", "spike", "after"][i] if len(r["phases"]) == 3 else str(i)
        lat = p["latency_us"]
        print(f"| {name} | {label} | {p['offered_rps']:,.0f} | {p['requests']} | {p['errors']} "
              f"| {lat['p50'] / 1000:.3f} | {lat['p99'] / 1000:.3f} | {lat['max'] / 1000:.3f} |")
    print(f"| {name} | all | | {r['requests']} | {r['errors_total']} | | | |")
