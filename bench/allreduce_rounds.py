"""Summary of bench/allreduce_rounds.sh: per (ranks, MiB), the TCP ceiling's median bus
bandwidth and, per variant, its median and the median (quartiles) of its ratio to the TCP run
of the same round. Usage: python3 bench/allreduce_rounds.py RESULTS.jsonl"""
import json
import statistics
import sys
from collections import defaultdict


def quartile(sorted_values, q):
    return sorted_values[round(q * (len(sorted_values) - 1))]


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    busbw = defaultdict(dict)  # (n, MiB, impl) -> round -> GB/s
    for r in rows:
        busbw[(r["n"], r["size_mib"], r["impl"])][r["round"]] = r["busbw_gbps"]
    variants = sorted({r["impl"] for r in rows} - {"tcp"})
    print("| n | MiB | tcp GB/s | " + " | ".join(f"{v} GB/s | {v} / tcp" for v in variants) + " |")
    print("|---" * (3 + 2 * len(variants)) + "|")
    for n, mib in sorted({(r["n"], r["size_mib"]) for r in rows}):
        tcp = busbw[(n, mib, "tcp")]
        cells = [str(n), str(mib), f"{statistics.median(tcp.values()):.2f}" if tcp else "-"]
        for v in variants:
            mine = busbw[(n, mib, v)]
            ratios = sorted(mine[k] / tcp[k] for k in mine if k in tcp)
            if not ratios:
                cells += ["-", "-"]
                continue
            cells.append(f"{statistics.median(mine.values()):.2f}")
            cells.append(
                f"{statistics.median(ratios):.0%} [{quartile(ratios, 0.25):.0%}-"
                f"{quartile(ratios, 0.75):.0%}]"
            )
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
