"""The table of bench/allreduce.sh: bus bandwidth of Funnel (its default raw TCP ring links, and
its gRPC transport), gloo and raw TCP per (n, size), and Funnel's ratios to gloo and raw TCP,
against the goal of issue 4 point 7 (at least 1.0x gloo and 60% of raw TCP). Reads the JSON
lines of worker/benches/ring_bandwidth.rs and bench/allreduce_gloo.py.

    python3 bench/allreduce_summary.py bench/out/allreduce/results.jsonl
"""

import json
import sys

GOAL_GLOO = 1.0
GOAL_TCP = 0.6


def main(path):
    cells = {}  # (n, size_mib) -> impl -> best line
    for text in open(path):
        if not text.startswith("{"):
            continue
        line = json.loads(text)
        per = cells.setdefault((line["n"], line["size_mib"]), {})
        old = per.get(line["impl"])
        # Several chunk lengths of one impl (a CHUNK_LENS sweep): the best one is shown.
        if old is None or line["busbw_gbps"] > old["busbw_gbps"]:
            per[line["impl"]] = line
    chunk_lens = {
        p["funnel"]["chunk_len"] for p in cells.values() if "funnel" in p
    }

    def fmt(per, name):
        return f"{per[name]['busbw_gbps']:.3f}" if name in per else "-"

    def ratio(per, a, b):
        if a in per and b in per:
            return per[a]["busbw_gbps"] / per[b]["busbw_gbps"]
        return None

    print("| n | MiB | funnel | funnel-grpc | gloo | tcp | funnel / gloo | funnel / tcp "
          "| grpc / gloo |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {"gloo": None, "tcp": None}
    for (n, mib), per in sorted(cells.items()):
        rs = {side: ratio(per, "funnel", side) for side in ("gloo", "tcp")}
        for side, r in rs.items():
            if r is not None and (worst[side] is None or r < worst[side]):
                worst[side] = r
        shown = {s: (f"{r:.2f}x" if s == "gloo" else f"{r:.0%}") if r is not None else "-"
                 for s, r in rs.items()}
        grpc = ratio(per, "funnel-grpc", "gloo")
        grpc = f"{grpc:.2f}x" if grpc is not None else "-"
        print(f"| {n} | {mib} | {fmt(per, 'funnel')} | {fmt(per, 'funnel-grpc')} "
              f"| {fmt(per, 'gloo')} | {fmt(per, 'tcp')} "
              f"| {shown['gloo']} | {shown['tcp']} | {grpc} |")
    print()
    print("Bus bandwidth, GB/s (1e9 bytes/s), median of the repetitions "
          "(busbw = bytes / time x 2(n-1)/n). funnel: raw TCP ring links "
          "(cluster.ring_transport = tcp, the default without TLS); funnel-grpc: gRPC streams.")
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
            print(f"Goal {goal_text}: {verdict} (worst cell {shown}).")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/out/allreduce/results.jsonl")
