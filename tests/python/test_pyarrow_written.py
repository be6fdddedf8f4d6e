"""Parquet written by pyarrow with types Rust tests do not write (dictionary strings, large
strings, lists of strings, uint64 ids, boolean labels, several row groups) is read by the real
`funnel validate`, and its bad rows are reported with their location."""
import os
import pathlib
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq

FUNNEL = os.environ.get("FUNNEL_BIN", str(pathlib.Path(__file__).parents[2] / "target" / "debug" / "funnel"))

SPEC = """
version = 1
[data]
train = "{train}"
inconsistent_labels = "{policy}"
[[features.categorical]]
column = "shop"
buckets = 100
dim = 4
[[features.categorical]]
column = "query"
buckets = 100
dim = 4
[[features.categorical]]
column = "item"
buckets = 1000
dim = 4
[[features.list]]
column = "tags"
buckets = 100
dim = 4
max_len = 3
[[features.numeric]]
column = "price"
transform = "log1p"
[funnel]
preset = "esmm"
"""


def write(tmp: pathlib.Path, purchase):
    n = len(purchase)
    table = pa.table({
        "shop": pa.array([f"s{i % 3}" for i in range(n)]).dictionary_encode(),
        "query": pa.array([f"q{i}" for i in range(n)], type=pa.large_string()),
        "item": pa.array([2**63 + i for i in range(n)], type=pa.uint64()),
        "tags": pa.array([[f"t{i}", None, "x"] if i % 2 else None for i in range(n)], type=pa.list_(pa.string())),
        "price": pa.array([float(i) if i % 5 else None for i in range(n)], type=pa.float64()),
        "click": pa.array([i % 2 == 0 for i in range(n)]),
        "purchase": pa.array([bool(p) for p in purchase]),
    })
    (tmp / "data").mkdir()
    pq.write_table(table, tmp / "data" / "part-0.parquet", row_group_size=7)


def validate(tmp: pathlib.Path, policy: str):
    spec = tmp / "job.toml"
    spec.write_text(SPEC.format(train=f"{tmp}/data/", policy=policy))
    return subprocess.run([FUNNEL, "validate", "--config", str(spec)], capture_output=True, text=True)


def test_pyarrow_types_are_read(tmp_path):
    write(tmp_path, [0] * 20)
    run = validate(tmp_path, "fail")
    assert run.returncode == 0, run.stderr
    assert "3 row groups, 20 rows" in run.stdout
    assert "scanned 20 rows, kept 20" in run.stdout
    assert "numeric values filled: 4" in run.stdout  # the four nulls in price


def test_pyarrow_inconsistent_row_is_located(tmp_path):
    purchase = [0] * 20
    purchase[9] = 1  # row 9 has click=False (odd row, not forced) -> row group 1, row 2
    write(tmp_path, purchase)
    run = validate(tmp_path, "fail")
    assert run.returncode != 0
    assert "part-0.parquet, row group 1, row 2" in run.stderr, run.stderr
    assert "funnel.labels.purchase" in run.stderr
    run = validate(tmp_path, "drop")
    assert run.returncode == 0, run.stderr
    assert "kept 19" in run.stdout
