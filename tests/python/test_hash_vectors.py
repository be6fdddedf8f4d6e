"""The feature hash of docs/hashing.md, recomputed with the `xxhash` package from the written
rules alone, must give the pinned vectors that the Rust tests also check."""
import json
import pathlib
import struct

import xxhash

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "hash_vectors.json"


def bucket(value, table: str, buckets: int) -> int:
    seed = xxhash.xxh64_intdigest(table.encode("utf-8"), 0)
    if value is None:
        data = b"\xff"
    elif isinstance(value, str):
        data = value.encode("utf-8")
    else:
        data = struct.pack("<q", value)
    return xxhash.xxh64_intdigest(data, seed) % buckets


def test_pinned_vectors_follow_the_documented_rule():
    cases = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert len(cases) >= 8
    for case in cases:
        assert xxhash.xxh64_intdigest(case["table"].encode(), 0) == case["seed"], case
        assert bucket(case["value"], case["table"], case["buckets"]) == case["bucket"], case


def test_null_and_empty_string_differ():
    assert bucket(None, "query", 1 << 30) != bucket("", "query", 1 << 30)
