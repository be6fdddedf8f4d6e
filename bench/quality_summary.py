"""The table of bench/quality.sh: eval AUC per target and epoch (metrics.jsonl), the oracle AUC
on the same eval rows (truth_p_* columns), and model vs oracle on the held-out sample (funnel
predict's p_* columns beside the held-out files' labels and truth columns), against the goal
of issue 3 point 8: every target within 0.01 of the oracle.

    python bench/quality_summary.py METRICS_JSONL EVAL_DIR PRED_DIR HOLDOUT_DIR
"""

import glob
import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TARGETS = ["click", "favorite", "order", "pay"]
GOAL = 0.01


def auc(labels, scores):
    """Exact ROC AUC, tied scores sharing their average rank (as funnel's metrics)."""
    order = np.argsort(scores, kind="mergesort")
    s, y = scores[order], labels[order]
    ranks = np.empty(len(s))
    cuts = np.flatnonzero(np.diff(s)) + 1
    for a, b in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(s)]])):
        ranks[a:b] = (a + b + 1) / 2.0
    pos = y.sum()
    neg = len(y) - pos
    return (ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg)


def table(directory):
    files = sorted(glob.glob(f"{directory.rstrip('/')}/*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def oracle(t):
    return {k: auc(t.column(k).to_numpy().astype(int), t.column(f"truth_p_{k}").to_numpy())
            for k in TARGETS}


def main(metrics, eval_dir, pred_dir, holdout_dir):
    records = [json.loads(line) for line in open(metrics)]
    eval_oracle = oracle(table(eval_dir))
    print("| epoch | " + " | ".join(TARGETS) + " |")
    print("|---|" + "---|" * len(TARGETS))
    for r in records:
        aucs = {t["stage"]: t["auc"] for t in r["eval"]["metrics"]["targets"]}
        print(f"| {r['epoch'] + 1} | " + " | ".join(f"{aucs[k]:.4f}" for k in TARGETS) + " |")
    print("| oracle | " + " | ".join(f"{eval_oracle[k]:.4f}" for k in TARGETS) + " |")
    gaps = {k: eval_oracle[k] - aucs[k] for k in TARGETS}
    print("| gap, last epoch | " + " | ".join(f"{gaps[k]:.4f}" for k in TARGETS) + " |")

    pred, held = table(pred_dir), table(holdout_dir)
    assert pred.num_rows == held.num_rows, "one prediction per held-out row"
    held_oracle = oracle(held)
    held_gaps = {}
    print(f"\nHeld-out sample ({held.num_rows} rows of the same world, unseen):")
    for k in TARGETS:
        model = auc(held.column(k).to_numpy().astype(int),
                    pred.column(f"p_{k}").to_numpy().astype(np.float64))
        held_gaps[k] = held_oracle[k] - model
        print(f"  {k}: model {model:.4f}, oracle {held_oracle[k]:.4f}, gap {held_gaps[k]:.4f}")
    for name, g in (("eval split", gaps), ("held-out sample", held_gaps)):
        worst = max(g, key=g.get)
        verdict = "met" if g[worst] <= GOAL else "NOT met"
        print(f"Goal (every target within {GOAL} of the oracle) on the {name}: {verdict} "
              f"(largest gap {g[worst]:.4f}, {worst}).")


if __name__ == "__main__":
    main(*sys.argv[1:5])
