"""The checkpoint is enough to serve: a consumer that knows only model.json and
model.safetensors (numpy, safetensors, pyarrow and xxhash; no Funnel code) reproduces
`funnel predict` within 1e-5 for every stage.

The consumer below reads everything from model.json: tables, hash seeds and buckets, the input
layout and each input's encoding, the numeric transforms, the towers' structure and the funnel.
Nothing about the model is hard-coded here; where model.json did not say something, model.json
was fixed (common/src/checkpoint/card.rs) rather than this file.

The real binary (FUNNEL_BIN, set by scripts/test.sh) generates data, trains small towers of each
kind for one epoch and predicts on the eval split plus a file of edge cases written here (null
ids, unsigned and narrow integers, dictionary and large strings, null and empty lists, lists with
null elements and longer than max_len, null, NaN, infinite and negative numbers)."""
import json
import math
import os
import pathlib
import struct
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash
from safetensors.numpy import load_file

FUNNEL = os.environ.get("FUNNEL_BIN", str(pathlib.Path(__file__).parents[2] / "target" / "debug" / "funnel"))

TOLERANCE = 1e-5

# gen-data's columns; small tables so the test stays fast. Every embedding has width 8 so that
# DeepFM (one width for all fields) runs on the same spec.
SPEC = """
version = 1
name = "consumer-{kind}"
output = "{out}"
[data]
train = "{data}/train/"
[[features.categorical]]
column = "user_id"
buckets = 5000
dim = 8
[[features.categorical]]
column = "item_id"
buckets = 5000
dim = 8
table = "items"
[[features.categorical]]
column = "category_id"
buckets = 300
dim = 8
[[features.categorical]]
column = "query"
buckets = 2000
dim = 8
[[features.categorical]]
column = "hour"
buckets = 24
dim = 8
[[features.categorical]]
column = "query"
cross = ["category_id", "user_id"]
buckets = 3000
dim = 8
[[features.list]]
column = "recent_items"
buckets = 5000
dim = 8
max_len = 5
table = "items"
[[features.numeric]]
column = "price"
transform = "log1p"
fill_null = -1.0
[[features.numeric]]
column = "user_age"
transform = "standardize"
mean = 41.5
std = 13.6
fill_null = 0.5
[funnel]
preset = "click-fav-order-pay"
[towers]
kind = "{kind}"
hidden = [16, 8]
cross_layers = 2
[train]
batch_size = 512
epochs = 1
"""


def funnel(*args):
    run = subprocess.run([FUNNEL, *args], capture_output=True, text=True, env={**os.environ, "RUST_LOG": "warn"})
    assert run.returncode == 0, f"funnel {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("consumer")
    funnel("gen-data", "--output", str(root / "data"), "--rows", "20000", "--files", "2",
           "--row-group-rows", "3000", "--users", "3000", "--items", "8000", "--seed", "7")
    write_edge_cases(root / "edge" / "edge.parquet")
    return root


def write_edge_cases(path: pathlib.Path):
    """Rows whose encoding exercises every rule of model.json, in types gen-data does not write."""
    n = 64
    table = pa.table({
        "user_id": pa.array([None if i % 7 == 0 else (-i if i % 2 else 2**62 + i) for i in range(n)], type=pa.int64()),
        "item_id": pa.array([2**64 - 1 - i if i % 3 == 0 else i for i in range(n)], type=pa.uint64()),
        "category_id": pa.array([None if i % 5 == 0 else i * 3 for i in range(n)], type=pa.int16()),
        "query": pa.array([None if i % 6 == 0 else f"q{i % 9}é" for i in range(n)]).dictionary_encode(),
        "hour": pa.array([i % 24 for i in range(n)], type=pa.uint8()),
        "recent_items": pa.array(
            [None if i % 8 == 0 else [] if i % 8 == 1 else [j if j % 3 else None for j in range(i % 11)]
             for i in range(n)],
            type=pa.large_list(pa.int64())),
        "price": pa.array([[None, math.nan, math.inf, -math.inf, -3.5, 0.0, 1e6][i % 7] if i < 14 else i * 0.37 - 2
                           for i in range(n)], type=pa.float64()),
        "user_age": pa.array([None if i % 4 == 0 else i for i in range(n)], type=pa.int32()),
    })
    path.parent.mkdir(parents=True)
    pq.write_table(table, path, row_group_size=20)


# ---- the consumer: model.json + model.safetensors only ----------------------------------------

def load_checkpoint(directory: pathlib.Path):
    card = json.loads((directory / "model.json").read_text())
    tensors = {k: v.astype(np.float64) for k, v in load_file(str(directory / "model.safetensors")).items()}
    return card, tensors


def value_bytes(v) -> bytes:
    # model.json hash.value_bytes: integers as 8-byte LE two's complement (unsigned 64-bit keep
    # their bit pattern), strings as UTF-8, null as the byte 0xff.
    if v is None:
        return b"\xff"
    if isinstance(v, bool):
        raise TypeError("booleans are not hashable features")
    if isinstance(v, int):
        return struct.pack("<Q", v & 0xFFFF_FFFF_FFFF_FFFF)
    if isinstance(v, str):
        return v.encode("utf-8")
    raise TypeError(f"cannot hash {v!r}")


def bucket(v, seed: int, buckets: int) -> int:
    return xxhash.xxh64_intdigest(value_bytes(v), seed) % buckets


def encode(card, tensors, table: pa.Table) -> np.ndarray:
    """The tower input x, [rows, input_dim], per model.json `encoding` and `input`."""
    n = table.num_rows
    x = np.zeros((n, card["input_dim"]), dtype=np.float64)
    tables = {t["name"]: t for t in card["tables"]}
    for inp in card["input"]:
        lo, hi = inp["offset"], inp["offset"] + inp["width"]
        values = table.column(inp["column"]).to_pylist()
        if inp["kind"] in ("categorical", "list"):
            t = tables[inp["table"]]
            emb = tensors[t["tensor"]].astype(np.float32)
            seed = xxhash.xxh64_intdigest(t["name"].encode("utf-8"), 0)
        if inp["kind"] == "categorical" and inp.get("cross"):
            # encoding.categorical: a cross hashes the 8-byte LE hashes of its members' values.
            members = [values] + [table.column(c).to_pylist() for c in inp["cross"]]
            ids = []
            for row in zip(*members):
                hashes = b"".join(
                    struct.pack("<Q", xxhash.xxh64_intdigest(value_bytes(v), seed)) for v in row
                )
                ids.append(xxhash.xxh64_intdigest(hashes, seed) % t["buckets"])
            x[:, lo:hi] = emb[ids]
        elif inp["kind"] == "categorical":
            ids = [bucket(v, seed, t["buckets"]) for v in values]
            x[:, lo:hi] = emb[ids]
        elif inp["kind"] == "list":
            sep = inp.get("separator")
            for r, v in enumerate(values):
                if v is None:
                    continue
                items = [p for p in v.split(sep) if p] if sep is not None else [e for e in v if e is not None]
                items = items[: inp["max_len"]]
                if items:
                    x[r, lo:hi] = emb[[bucket(e, seed, t["buckets"]) for e in items]].astype(np.float64).mean(axis=0)
        elif inp["kind"] == "numeric":
            for r, v in enumerate(values):
                v = float("nan") if v is None else float(v)
                if not math.isfinite(v):
                    x[r, lo] = np.float32(inp["fill_null"])
                    continue
                transform = inp["transform"]
                if transform == "none":
                    y = v
                elif transform == "log1p":
                    y = math.copysign(math.log1p(abs(v)), v) if v != 0 else 0.0
                elif transform == "standardize":
                    y = (v - inp["mean"]) / inp["std"]
                else:
                    raise ValueError(f"unknown transform {transform}")
                x[r, lo] = np.float32(y)
        else:
            raise ValueError(f"unknown input kind {inp['kind']}")
    return x


def linear(tensors, name, h):
    return h @ tensors[f"{name}.weight"].T + tensors[f"{name}.bias"]


def tower_logit(card, tensors, tower: str, x: np.ndarray) -> np.ndarray:
    spec = card["towers"]
    p = f"towers.{tower}"
    h = x
    if spec["kind"] == "dcn-v2":
        for layer in range(spec["cross_layers"]):
            h = x * linear(tensors, f"{p}.cross.{layer}", h) + h
    for i in range(len(spec["hidden"])):
        h = np.maximum(linear(tensors, f"{p}.layers.{i}", h), 0.0)
    logit = linear(tensors, f"{p}.out", h)[:, 0]
    if spec["kind"] in ("deepfm", "deep-fwfm"):
        logit = logit + linear(tensors, f"{p}.first_order", x)[:, 0]
        fields = [i for i in card["input"] if i["kind"] in ("categorical", "list")]
        v = np.stack([x[:, f["offset"]: f["offset"] + f["width"]] for f in fields], axis=1)  # [n, F, k]
        if spec["kind"] == "deepfm":
            logit = logit + 0.5 * ((v.sum(axis=1) ** 2) - (v ** 2).sum(axis=1)).sum(axis=1)
        else:
            pairs = [(f, g) for f in range(len(fields)) for g in range(f + 1, len(fields))]
            w = tensors[f"{p}.fm_pairs.weight"][0]
            logit = logit + sum(w[i] * (v[:, f] * v[:, g]).sum(axis=1) for i, (f, g) in enumerate(pairs))
    return logit


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def forward(card, tensors, x: np.ndarray) -> dict:
    """P(stage) for every stage, per model.json `stages` (funnel order, parents first)."""
    cond, prob = {}, {}
    for s in card["stages"]:
        t = [sigmoid(tower_logit(card, tensors, name, x)) for name in s["towers"]]
        if s["branch_on"] is None:
            c = t[0]
        else:
            b = cond[s["branch_on"]]  # P(branch | given)
            c = b * t[0] + (1.0 - b) * t[1]
        cond[s["name"]] = c
        prob[s["name"]] = c if s["given"] is None else prob[s["given"]] * c
    return prob


# ---- the test ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "dcn-v2", "deepfm", "deep-fwfm"])
def test_consumer_reproduces_funnel_predict(data, kind):
    root = data / kind
    out = root / "output"
    spec = root / "job.toml"
    root.mkdir()
    spec.write_text(SPEC.format(kind=kind, out=out, data=data / "data"))
    funnel("train", "--config", str(spec), "--no-progress")
    checkpoint = out / "checkpoints" / (out / "checkpoints" / "LATEST").read_text().strip()
    card, tensors = load_checkpoint(checkpoint)
    assert card["towers"]["kind"] == kind
    worst = {}
    for name, inputs in [("eval", data / "data" / "eval"), ("edge", data / "edge")]:
        pred = root / f"pred-{name}"
        funnel("predict", "--checkpoint", str(out), "--data", str(inputs), "--out", str(pred), "--keep", "")
        for f in sorted(inputs.glob("*.parquet")):
            table = pq.read_table(f)
            got = pq.read_table(pred / f.name)
            assert got.num_rows == table.num_rows
            want = forward(card, tensors, encode(card, tensors, table))
            assert got.column_names == [f"p_{s['name']}" for s in card["stages"]]
            for s in card["stages"]:
                p_funnel = got.column(f"p_{s['name']}").to_numpy().astype(np.float64)
                diff = float(np.max(np.abs(p_funnel - want[s["name"]])))
                key = f"{name}/p_{s['name']}"
                worst[key] = max(worst.get(key, 0.0), diff)
    print(f"\n{kind}: max |p_python - p_funnel| per output: "
          + ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items())))
    assert max(worst.values()) <= TOLERANCE, worst
