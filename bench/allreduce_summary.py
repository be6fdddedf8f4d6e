"""The table of bench/allreduce.sh: bus bandwidth of Funnel (its default raw TCP ring links, and
its gRPC transport), gloo and raw TCP per (n, size), and Funnel's ratios to gloo and raw TCP,
against the goal of issue 4 point 7 (at least 1.0x gloo and 60% of raw TCP). Reads the JSON
lines of worker/benches/ring_bandwidth.rs and bench/allreduce_gloo.py, tagged with their round
by bench/allreduce.sh.

    python3 bench/allreduce_summary.py bench/out/allreduce/results.jsonl
"""

import json
import statistics
import sys

GOAL_GLOO = 1.0
GOAL_TCP = 0.6


def records(path):
    """The bench's JSON lines in `path` (other lines skipped)."""
    for text in open(path):
        if text.startswith("{"):
            yield json.loads(text)


def load(path):
    """(n, size_mib) -> impl -> round -> the best busbw of that round (several chunk lengths of
    one impl, a CHUNK_LENS sweep: the best one counts; lines without a round are round 1), and
    the chunk lengths Funnel ran with."""
    cells = {}
    chunk_lens = set()
    for line in records(path):
        per = cells.setdefault((line["n"], line["size_mib"]), {})
        rounds = per.setdefault(line["impl"], {})
        k = line.get("round", 1)
        rounds[k] = max(rounds.get(k, 0.0), line["busbw_gbps"])
        if line["impl"] == "funnel" and line.get("chunk_len"):
            chunk_lens.add(line["chunk_len"])
    return cells, chunk_lens


def load_cpu(path):
    """(n, size_mib) -> impl -> the CPU seconds of an all-reduce, all ranks together (the bench
    lines' `cpu_s`), one per line read (rounds, chunk lengths); lines without it are skipped."""
    cpu = {}
    for line in records(path):
        if line.get("cpu_s") is not None:
            per = cpu.setdefault((line["n"], line["size_mib"]), {})
            per.setdefault(line["impl"], []).append(line["cpu_s"])
    return cpu


def print_cpu(cpu):
    """CPU per all-reduce of each side, and Funnel's against the others."""
    sides = [s for s in ("funnel", "funnel-grpc", "gloo", "tcp")
             if any(s in per for per in cpu.values())]
    if "funnel" not in sides:
        return
    others = [s for s in ("tcp", "gloo") if s in sides]
    print()
    print("| n | MiB | " + " | ".join(f"{s} ms" for s in sides) + " | "
          + " | ".join(f"funnel / {s}" for s in others) + " |")
    print("|---" * (2 + len(sides) + len(others)) + "|")
    for (n, mib), per in sorted(cpu.items()):
        med = {s: statistics.median(per[s]) for s in sides if s in per}
        row = [str(n), str(mib)] + [f"{med[s] * 1e3:.2f}" if s in med else "-" for s in sides]
        row += [f"{med['funnel'] / med[s]:.2f}x" if "funnel" in med and med.get(s) else "-"
                for s in others]
        print("| " + " | ".join(row) + " |")
    print()
    print("CPU time of one all-reduce, user + system, summed over the ranks (getrusage of each "
          "rank's process around it; median over iterations, then over rounds), in ms. On "
          "loopback much of the receiver's TCP work runs in the sender's context, so only the "
          "sum over ranks is meaningful.")


def ratios(per, a, b):
    """a / b within each round that has both, sorted."""
    if a not in per or b not in per:
        return []
    return sorted(per[a][k] / per[b][k] for k in per[a] if k in per[b])


def main(path):
    cells, chunk_lens = load(path)
    n_rounds = max((len(r) for per in cells.values() for r in per.values()), default=0)

    def fmt(per, name):
        return f"{statistics.median(per[name].values()):.3f}" if name in per else "-"

    def show(rs, side):
        if not rs:
            return "-"
        f = (lambda r: f"{r:.2f}x") if side == "gloo" else (lambda r: f"{r:.0%}")
        text = f(statistics.median(rs))
        return text if len(rs) == 1 else f"{text} ({f(rs[0])}-{f(rs[-1])})"

    print("| n | MiB | funnel | funnel-grpc | gloo | tcp | funnel / gloo | funnel / tcp "
          "| grpc / gloo |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {"gloo": None, "tcp": None}
    for (n, mib), per in sorted(cells.items()):
        rs = {side: ratios(per, "funnel", side) for side in ("gloo", "tcp")}
        for side, r in rs.items():
            if r and (worst[side] is None or statistics.median(r) < worst[side]):
                worst[side] = statistics.median(r)
        print(f"| {n} | {mib} | {fmt(per, 'funnel')} | {fmt(per, 'funnel-grpc')} "
              f"| {fmt(per, 'gloo')} | {fmt(per, 'tcp')} "
              f"| {show(rs['gloo'], 'gloo')} | {show(rs['tcp'], 'tcp')} "
              f"| {show(ratios(per, 'funnel-grpc', 'gloo'), 'gloo')} |")
    print()
    print("Bus bandwidth, GB/s (1e9 bytes/s), median of the repetitions "
          "(busbw = bytes / time x 2(n-1)/n). funnel: raw TCP ring links "
          "(cluster.ring_transport = tcp, the default without TLS); funnel-grpc: gRPC streams.")
    if n_rounds > 1:
        print(f"{n_rounds} rounds: bandwidths are the median over rounds; ratios are taken within "
              "each round, shown as their median (lowest-highest).")
    if len(chunk_lens) > 1:
        print(f"Funnel: the best of chunk lengths {sorted(chunk_lens)} per cell.")
    elif chunk_lens:
        print(f"Funnel: chunks of {chunk_lens.pop()} values.")
    for side, goal, word in (("gloo", GOAL_GLOO, "x gloo"), ("tcp", GOAL_TCP, " of raw TCP")):
        w = worst[side]
        if w is not None:
            goal_text = f"{goal:.1f}{word}" if side == "gloo" else f"{goal:.0%}{word}"
            shown = f"{w:.2f}x" if side == "gloo" else f"{w:.0%}"
            verdict = "met" if w >= goal else "NOT met"
            print(f"Goal {goal_text}: {verdict} (worst cell {shown}, median over rounds).")
    print_cpu(load_cpu(path))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/allreduce/results.jsonl")
