"""Funnel's metrics against scikit-learn on the same scores.

tests/fixtures/metrics_sklearn.json holds score/label sets and the metrics scikit-learn and numpy
compute for them. This test regenerates that file from the generator below and checks that the
data is identical and that scikit-learn's values equal the committed ones within 1e-12; the Rust
test common/tests/metrics_fixture.rs feeds the same data to `funnel_common::metrics` (whole, in
small batches, and merged across "workers") and checks it against the same values.

Scores are stored as decimal strings (Python's shortest round-trip repr): Rust reads them with
`str::parse::<f64>`, which is correctly rounded, so both sides score bit-identical f64s. (serde_json
without its `float_roundtrip` feature may read a 17-digit number one ulp off.)

Regenerate after changing the generator:  python3 tests/python/test_metrics_sklearn.py --write

Semantics compared (see common/src/metrics/mod.rs):
- auc: sklearn.metrics.roc_auc_score; undefined (null) without both classes, where sklearn raises
  or returns NaN.
- logloss: sklearn.metrics.log_loss(labels=[0, 1]). sklearn clips predictions to f64's epsilon,
  Funnel to 1e-15: every prediction here lies in [1e-15, 1 - 1e-15], where the two agree.
- mean_prediction: numpy.mean(p); calibration: mean(p) / mean(y), null without positives.
"""
import json
import math
import pathlib
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "metrics_sklearn.json"
MASK = (1 << 64) - 1


class SplitMix64:
    """The generator of common/src/rng.rs (Steele, Lea, Flood 2014), in plain Python."""

    def __init__(self, seed: int):
        self.state = seed & MASK

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def next_f64(self) -> float:
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        return (self.next_u64() * n) >> 64

    def bernoulli(self, p: float) -> int:
        return int(self.next_f64() < p)


def tied(rng, n, levels, slope):
    """Scores on `levels` grid points (heavy ties), labels more likely at high scores."""
    scores = [(rng.below(levels) + 0.5) / levels for _ in range(n)]
    return scores, [rng.bernoulli(s * slope) for s in scores]


def continuous(rng, n, rate):
    scores = [rng.next_f64() for _ in range(n)]
    return scores, [rng.bernoulli(s * rate) for s in scores]


def extreme(rng, n):
    """Predictions at 1e-12 and 1 - 1e-12 (and 1e-9, 0.5), some of them confidently wrong."""
    levels = [1e-12, 1e-9, 0.5, 1 - 1e-9, 1 - 1e-12]
    scores, labels = [], []
    for _ in range(n):
        s = levels[rng.below(len(levels))]
        label = rng.bernoulli(s)
        if rng.bernoulli(0.05):
            label = 1 - label
        scores.append(s)
        labels.append(label)
    return scores, labels


def target_cases():
    rng = SplitMix64(20240611)
    cases = [
        ("ties_20_levels", *tied(rng, 400, 20, 0.6)),
        ("ties_3_levels", *tied(rng, 300, 3, 0.5)),
        ("continuous", *continuous(rng, 300, 1.0)),
        ("all_equal_scores", [0.3] * 200, [rng.bernoulli(0.25) for _ in range(200)]),
        ("tiny_two_rows", [0.2, 0.7], [0, 1]),
        ("tiny_three_rows_tie", [0.4, 0.4, 0.1], [1, 0, 0]),
        ("tiny_one_row", [0.6], [1]),
        ("extreme_probabilities", *extreme(rng, 300)),
        ("rare_positives", *continuous(rng, 500, 0.012)),
        ("no_positives", [rng.next_f64() for _ in range(100)], [0] * 100),
        ("no_negatives", [rng.next_f64() for _ in range(60)], [1] * 60),
    ]
    return [{"name": n, "scores": s, "labels": y} for n, s, y in cases]


def esmm_case():
    """ESMM: pCTR and pCVR on grids (ties), pCTCVR = pCTR x pCVR, purchases only after clicks."""
    rng = SplitMix64(7)
    ctr, cvr, click, buy = [], [], [], []
    for _ in range(600):
        p_click = (rng.below(10) + 0.5) / 20
        p_buy = (rng.below(25) + 0.5) / 25
        c = rng.bernoulli(p_click)
        ctr.append(p_click)
        cvr.append(p_buy)
        click.append(c)
        buy.append(int(c == 1 and rng.bernoulli(p_buy * 0.5) == 1))
    return {
        "preset": "esmm",
        "predictions": {"click": ctr, "purchase": [a * b for a, b in zip(ctr, cvr)]},
        "labels": {"click": click, "purchase": buy},
        "conditional": {"name": "purchase|click", "stage": "purchase", "given": "click",
                        "scores": cvr},
    }


def sklearn_auc(scores, labels):
    """roc_auc_score, or None where it is undefined (sklearn raises, or warns and returns NaN)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = roc_auc_score(labels, scores)
    except ValueError:
        return None
    return None if math.isnan(value) else float(value)


def expected(scores, labels):
    p = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    positives = int(y.sum())
    return {
        "auc": sklearn_auc(p, y),
        "logloss": float(log_loss(y, p, labels=[0, 1])),
        "calibration": float(np.mean(p) / np.mean(y)) if positives else None,
        "mean_prediction": float(np.mean(p)),
        "rows": int(len(y)),
        "positives": positives,
    }


def as_text(scores):
    return [repr(float(s)) for s in scores]


def build_fixture():
    cases = []
    for c in target_cases():
        cases.append({"name": c["name"], "scores": as_text(c["scores"]), "labels": c["labels"],
                      "expected": expected(c["scores"], c["labels"])})
    f = esmm_case()
    cond = f["conditional"]
    kept = [r for r, c in enumerate(f["labels"][cond["given"]]) if c == 1]
    funnel = {
        "preset": f["preset"],
        "predictions": {k: as_text(v) for k, v in f["predictions"].items()},
        "labels": f["labels"],
        "conditional": {**cond, "scores": as_text(cond["scores"])},
        "expected": {
            "targets": {k: expected(f["predictions"][k], f["labels"][k]) for k in f["labels"]},
            "conditional": expected([cond["scores"][r] for r in kept],
                                    [f["labels"][cond["stage"]][r] for r in kept]),
        },
    }
    return {
        "about": "Generated by tests/python/test_metrics_sklearn.py --write (SplitMix64 data, "
                 "scikit-learn and numpy values); checked by that test and by "
                 "common/tests/metrics_fixture.rs.",
        "cases": cases,
        "funnel": funnel,
    }


def assert_values_match(got, want, where):
    assert got.keys() == want.keys(), where
    for key, w in want.items():
        g = got[key]
        if w is None or g is None:
            assert g is None and w is None, f"{where}.{key}: {g} vs {w}"
        else:
            assert abs(g - w) <= 1e-12, f"{where}.{key}: {g} vs {w}"


@pytest.fixture(scope="module")
def committed():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def regenerated():
    return build_fixture()


def test_committed_data_is_what_the_generator_makes(committed, regenerated):
    strip = lambda c: {k: v for k, v in c.items() if k != "expected"}  # noqa: E731
    assert [strip(c) for c in committed["cases"]] == [strip(c) for c in regenerated["cases"]]
    assert strip(committed["funnel"]) == strip(regenerated["funnel"])


def test_sklearn_gives_the_committed_values(committed, regenerated):
    for got, want in zip(regenerated["cases"], committed["cases"], strict=True):
        assert_values_match(got["expected"], want["expected"], want["name"])
    got, want = regenerated["funnel"]["expected"], committed["funnel"]["expected"]
    for stage, values in want["targets"].items():
        assert_values_match(got["targets"][stage], values, f"funnel.{stage}")
    assert_values_match(got["conditional"], want["conditional"], "funnel.conditional")


def test_sklearn_values_from_the_committed_data(committed):
    """The committed values also follow from the committed data alone, read as the Rust test
    reads it."""
    for case in committed["cases"]:
        scores = [float(s) for s in case["scores"]]
        assert_values_match(expected(scores, case["labels"]), case["expected"], case["name"])


def test_fixture_covers_the_edge_cases(committed):
    cases = {c["name"]: c for c in committed["cases"]}
    unique = {n: len(set(c["scores"])) for n, c in cases.items()}
    assert unique["ties_20_levels"] <= 20 and unique["ties_3_levels"] <= 3
    assert unique["all_equal_scores"] == 1
    assert cases["all_equal_scores"]["expected"]["auc"] == 0.5
    assert min(len(c["labels"]) for c in cases.values()) == 1
    extreme_scores = {float(s) for s in cases["extreme_probabilities"]["scores"]}
    assert {1e-12, 1 - 1e-12} <= extreme_scores
    ex = cases["extreme_probabilities"]
    assert any(float(s) == 1e-12 and y == 1 for s, y in zip(ex["scores"], ex["labels"])), \
        "a confidently wrong prediction"
    assert cases["no_positives"]["expected"]["auc"] is None
    assert cases["no_positives"]["expected"]["calibration"] is None
    assert cases["no_negatives"]["expected"]["auc"] is None
    assert cases["tiny_one_row"]["expected"]["auc"] is None
    assert 0 < cases["rare_positives"]["expected"]["positives"] <= 10
    for c in cases.values():
        # Where Funnel's clip (1e-15) and sklearn's (f64 epsilon) agree.
        assert all(1e-15 <= float(s) <= 1 - 1e-15 for s in c["scores"]), c["name"]
    funnel = committed["funnel"]
    clicked = sum(funnel["labels"]["click"])
    assert funnel["expected"]["conditional"]["rows"] == clicked < len(funnel["labels"]["click"])
    assert all(c >= b for c, b in zip(funnel["labels"]["click"], funnel["labels"]["purchase"]))


def test_sklearn_refuses_auc_without_both_classes():
    assert sklearn_auc([0.1, 0.9], [0, 0]) is None
    assert sklearn_auc([0.1, 0.9], [1, 1]) is None
    assert sklearn_auc([0.1, 0.9], [0, 1]) == 1.0


def dump(value, depth=0):
    """JSON with one key per line but each list of numbers or strings on a single line."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(k)}: {dump(v, depth + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + dump(v, depth + 1) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python3 tests/python/test_metrics_sklearn.py --write")
    FIXTURE.write_text(dump(build_fixture()) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE}")
