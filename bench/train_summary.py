"""The table of bench/train.sh from its results.jsonl (one JSON line per run).

Per thread count: the median samples/s of each side [the median CPU cores its process used],
the ratios of the medians (funnel / pytorch-sparse, funnel / pytorch-dense, funnel / the better
PyTorch), and, as a check against load drifting between runs, the median and range of the same
ratio taken within each repeat (the sides of one repeat run back to back).

    python bench/train_summary.py RESULTS.jsonl [ROWS]
"""
import json
import statistics
import sys
from collections import defaultdict

TORCH = ("pytorch-sparse", "pytorch-dense")


def main() -> None:
    res = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if not res:
        sys.exit("no results")
    if len(sys.argv) > 2:
        bad = [r for r in res if r["rows"] != int(sys.argv[2])]
        if bad:
            sys.exit(f"rows differ from {sys.argv[2]}: {bad}")
    sides = list(dict.fromkeys(r["side"] for r in res))
    threads = list(dict.fromkeys(r["threads"] for r in res))
    by = defaultdict(list)
    for r in res:
        by[r["threads"], r["side"]].append(r)
    runs = max(len(v) for v in by.values())
    print(f"rows {res[0]['rows']}, medians of {runs} runs: samples/s over the whole epoch "
          "(reading included) [CPU cores the process used on average]")
    head = "threads" + "".join(f"{s:>24}" for s in sides)
    if "funnel" in sides:
        head += "  funnel/sparse  funnel/dense  funnel/best  per-repeat funnel/best"
    print(head)
    for t in threads:
        med = {s: statistics.median(r["rows_per_s"] for r in by[t, s]) for s in sides if by[t, s]}
        cores = {s: statistics.median(r["cores"] for r in by[t, s]) for s in sides if by[t, s]}
        line = f"{t:>7}" + "".join(
            f"{med[s]:>16,.0f} [{cores[s]:.2f}]" if s in med else f"{'-':>24}" for s in sides)
        torch_sides = [s for s in TORCH if s in med]
        if "funnel" in med and torch_sides:
            f = med["funnel"]
            best = f / max(med[s] for s in torch_sides)

            def ratio(s):
                return f"{f / med[s]:.2f}x" if s in med else "-"

            line += f"  {ratio(TORCH[0]):>13}  {ratio(TORCH[1]):>12}  {best:>10.2f}x"
            paired = []
            for r in by[t, "funnel"]:
                same = [o["rows_per_s"] for s in torch_sides for o in by[t, s]
                        if o["run"] == r["run"]]
                if same:
                    paired.append(r["rows_per_s"] / max(same))
            if paired:
                line += (f"  {statistics.median(paired):.2f}x "
                         f"({min(paired):.2f}-{max(paired):.2f})")
            line += "  goal 1.5x: " + ("met" if best >= 1.5 else "not met")
        print(line)


if __name__ == "__main__":
    main()
