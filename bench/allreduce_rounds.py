"""Summary of bench/allreduce_rounds.sh: per (ranks, MiB), the TCP ceiling's median bus
bandwidth and, per variant, its median, the median (quartiles) of its ratio to the TCP run
of the same round, and its CPU per all-reduce against the TCP ring's (medians over rounds).
Usage: python3 bench/allreduce_rounds.py RESULTS.jsonl"""
import statistics
import sys

from allreduce_summary import load, load_cpu, ratios


def quartile(sorted_values, q):
    return sorted_values[round(q * (len(sorted_values) - 1))]


def main(path):
    cells, _ = load(path)
    cpu = load_cpu(path)
    variants = sorted({v for per in cells.values() for v in per} - {"tcp"})
    print("| n | MiB | tcp GB/s | "
          + " | ".join(f"{v} GB/s | {v} / tcp | {v} CPU / tcp" for v in variants) + " |")
    print("|---" * (3 + 3 * len(variants)) + "|")
    for (n, mib), per in sorted(cells.items()):
        tcp = per.get("tcp", {})
        row = [str(n), str(mib), f"{statistics.median(tcp.values()):.2f}" if tcp else "-"]
        for v in variants:
            rs = ratios(per, v, "tcp")
            if not rs:
                row += ["-", "-", "-"]
                continue
            row.append(f"{statistics.median(per[v].values()):.2f}")
            row.append(
                f"{statistics.median(rs):.0%} [{quartile(rs, 0.25):.0%}-{quartile(rs, 0.75):.0%}]"
            )
            c = cpu.get((n, mib), {})
            row.append(f"{statistics.median(c[v]) / statistics.median(c['tcp']):.2f}x"
                       if v in c and c.get("tcp") else "-")
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
