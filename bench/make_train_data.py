"""Writes the reference training data of bench/train.sh (issue 3 point 9) with pyarrow.

20 int64 categorical columns `c00`..`c19` and the ESM² labels `click`, `action`, `purchase`
(uint8 0/1), which respect the funnel: action => click, purchase => click.

Ids: per column, a rank drawn from a truncated power law (Zipf-like, exponent 1.1) over 2,000,000
distinct values, mapped by a SplitMix64 finaliser to a non-negative 62-bit int64. So ids are spread
over a huge range, a few are very popular, and hashing them to 50,000 buckets collides.

Labels come from a hidden logistic model of a few columns' ids (each id has a fixed random effect,
a hash of the id), with intercepts calibrated on a separate sample to click ~5%, action ~20% of
clicks, purchase ~10% of clicks (purchase is likelier after an action, as in ESM²):

    click    ~ Bernoulli(sigmoid(b_c + e(c00) + e(c01) + e(c02)))
    action   = click and Bernoulli(sigmoid(b_a + e(c03) + e(c04)))
    purchase = click and Bernoulli(sigmoid(b_p + 1.5 action + e(c05) + e(c06)))

Deterministic per seed. Files `part-00000.parquet`..., snappy, row groups of --row-group-rows.
Prints one JSON line: rows, files, the realised rates.

    python bench/make_train_data.py --output DIR [--rows N --files F --row-group-rows R --seed S]
"""
import argparse
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIELDS = 20
DISTINCT = 2_000_000
ZIPF_EXPONENT = 1.1
EFFECT_SCALE = 0.8  # std of one id's effect on a logit
CLICK_COLS = (0, 1, 2)
ACTION_COLS = (3, 4)
PURCHASE_COLS = (5, 6)
PURCHASE_AFTER_ACTION = 1.5
TARGET_CLICK, TARGET_ACTION, TARGET_PURCHASE = 0.05, 0.20, 0.10
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def draw_ids(rng: np.random.Generator, n: int, column: int, seed: int) -> np.ndarray:
    """Zipf-like ranks in [0, DISTINCT) mapped to spread-out non-negative int64 ids."""
    u = rng.random(n)
    a = 1.0 - ZIPF_EXPONENT
    # Inverse CDF of the continuous power law x^-s on [1, DISTINCT + 1).
    x = (1.0 + u * ((DISTINCT + 1.0) ** a - 1.0)) ** (1.0 / a)
    rank = np.minimum(x.astype(np.uint64) - np.uint64(1), np.uint64(DISTINCT - 1))
    salt = np.uint64((seed * 1_000_003 + column * 7919) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        h = splitmix(rank + salt * np.uint64(0x100000001B3))
    return (h >> np.uint64(2)).astype(np.int64)


def effect(ids: np.ndarray, column: int) -> np.ndarray:
    """A fixed effect per id: uniform with standard deviation EFFECT_SCALE, from a hash."""
    h = splitmix(ids.astype(np.uint64) ^ np.uint64(0xA5A5A5A5 + column))
    u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (u - 0.5) * (EFFECT_SCALE * np.sqrt(12.0))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def logits(ids: list, cols: tuple) -> np.ndarray:
    return sum(effect(ids[c], c) for c in cols)


def calibrate(z: np.ndarray, target: float) -> float:
    """The intercept b with mean(sigmoid(b + z)) == target, by bisection."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if sigmoid(mid + z).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def draw_chunk(rng, n, seed, b):
    ids = [draw_ids(rng, n, c, seed) for c in range(FIELDS)]
    p_click = sigmoid(b["click"] + logits(ids, CLICK_COLS))
    click = rng.random(n) < p_click
    action = click & (rng.random(n) < sigmoid(b["action"] + logits(ids, ACTION_COLS)))
    p_purchase = sigmoid(b["purchase"] + PURCHASE_AFTER_ACTION * action
                         + logits(ids, PURCHASE_COLS))
    purchase = click & (rng.random(n) < p_purchase)
    return ids, click, action, purchase


def intercepts(seed: int) -> dict:
    """Intercepts calibrated on 400k rows from a stream separate from the data's."""
    rng = np.random.default_rng([seed, 1])
    n = 400_000
    ids = [draw_ids(rng, n, c, seed) for c in range(FIELDS)]
    b_click = calibrate(logits(ids, CLICK_COLS), TARGET_CLICK)
    b_action = calibrate(logits(ids, ACTION_COLS), TARGET_ACTION)
    # Purchase | click depends on the action, drawn at its calibrated rate.
    action = rng.random(n) < sigmoid(b_action + logits(ids, ACTION_COLS))
    b_purchase = calibrate(PURCHASE_AFTER_ACTION * action + logits(ids, PURCHASE_COLS),
                           TARGET_PURCHASE)
    return {"click": b_click, "action": b_action, "purchase": b_purchase}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", required=True, help="folder for the Parquet files")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--row-group-rows", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    if args.rows < 1 or args.files < 1 or args.row_group_rows < 1:
        ap.error("--rows, --files and --row-group-rows must be >= 1")

    b = intercepts(args.seed)
    rng = np.random.default_rng([args.seed, 0])
    schema = pa.schema([(f"c{c:02d}", pa.int64()) for c in range(FIELDS)]
                       + [(name, pa.uint8()) for name in ("click", "action", "purchase")])
    os.makedirs(args.output, exist_ok=True)
    counts = {"click": 0, "action": 0, "purchase": 0}
    per_file = [args.rows // args.files + (i < args.rows % args.files) for i in range(args.files)]
    for f, file_rows in enumerate(per_file):
        path = os.path.join(args.output, f"part-{f:05d}.parquet")
        with pq.ParquetWriter(path, schema, compression="snappy") as w:
            done = 0
            while done < file_rows:
                n = min(args.row_group_rows, file_rows - done)
                ids, click, action, purchase = draw_chunk(rng, n, args.seed, b)
                cols = ids + [click.astype(np.uint8), action.astype(np.uint8),
                              purchase.astype(np.uint8)]
                w.write_table(pa.Table.from_arrays(cols, schema=schema),
                              row_group_size=args.row_group_rows)
                for name, v in (("click", click), ("action", action), ("purchase", purchase)):
                    counts[name] += int(v.sum())
                done += n
    rows = args.rows
    print(json.dumps({
        "rows": rows, "files": args.files, "row_group_rows": args.row_group_rows,
        "seed": args.seed, "output": args.output,
        "click_rate": counts["click"] / rows,
        "action_given_click": counts["action"] / max(counts["click"], 1),
        "purchase_given_click": counts["purchase"] / max(counts["click"], 1),
    }))


if __name__ == "__main__":
    main()
