#!/usr/bin/env bash
# Parquet -> batches, one thread: Funnel's reader (hashing, bags, labels, numeric transforms)
# beside pyarrow.parquet.read_table of the same columns of the same gen-data files, in one run.
# Prints both medians and the ratio. Not run by CI; installs pyarrow into bench/.venv.
#   bench/decode.sh [ROWS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-2000000}
runs=${2:-5}
out=bench/out/decode
columns="user_id,item_id,category_id,query,hour,recent_items,price,user_age,click,favorite,order,pay"

if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet pyarrow
fi
cargo build --release --quiet --bin funnel
if [ ! -f "$out/rows-$rows" ]; then
  rm -rf "$out"
  ./target/release/funnel gen-data --output "$out/data" --rows "$rows" --files 4 \
    --row-group-rows 65536 --write-config "$out/job.toml"
  touch "$out/rows-$rows"
fi
# Both sides read only the training split.
sed -i 's|^eval = .*||' "$out/job.toml"

rust=$(cargo bench --quiet -p funnel-common --bench decode -- --spec "$PWD/$out/job.toml" --runs "$runs")
py=$(bench/.venv/bin/python bench/decode_pyarrow.py "$out/data/train" "$columns" "$runs")
echo "funnel : $rust"
echo "pyarrow: $py"
python3 - "$rust" "$py" <<'PY'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert r["rows"] == p["rows"], (r["rows"], p["rows"])
print(f"rows {r['rows']}: funnel {r['rows_per_s']:,.0f} rows/s, pyarrow {p['rows_per_s']:,.0f} rows/s "
      f"(pyarrow {p['pyarrow']}), ratio funnel/pyarrow = {r['rows_per_s'] / p['rows_per_s']:.2f}x")
PY
