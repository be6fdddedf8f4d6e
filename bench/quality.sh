#!/usr/bin/env bash
# Training quality against the oracle at full size (issue 3 point 8; CI runs the small version,
# tests/train_quality.rs): 2.2M rows of gen-data, the recipe of docs/training.md "Quality against
# the oracle", then every target's AUC next to the oracle AUC (the truth_p_* columns) on the
# eval split (funnel's own table) and on a held-out sample of the same world that neither
# training nor the choice of the recipe saw. Not run by CI (about 3 minutes of training on 2
# cores after the build).
#   bench/quality.sh
# Environment: USERS (200), ITEMS (500): the world; EPOCHS (10); THREADS (2); CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
users=${USERS:-200}
items=${ITEMS:-500}
epochs=${EPOCHS:-10}
out=bench/out/quality
py=bench/.venv-quality/bin/python

if ! "$py" -c 'import numpy, pyarrow' 2>/dev/null; then
  python3 -m venv bench/.venv-quality
  "$py" -m pip install --quiet numpy==2.4.6 pyarrow==26.0.1
fi
cargo build --release --quiet -p funnel
funnel="${CARGO_TARGET_DIR:-target}/release/funnel"

rm -rf "$out"
mkdir -p "$out/holdout"
# Five parts of 550k rows: parts 0-3 hold exactly the rows of `--rows 2200000 --files 4` (each
# part's rows come from its own streams), part 4 is a fresh sample of the same world, held out.
"$funnel" gen-data --rows 2750000 --files 5 --row-group-rows 65536 --users "$users" \
  --items "$items" --categories 50 --queries 200 --output "$out/data" \
  --write-config "$out/job.toml" >/dev/null
mv "$out/data/train/part-00004.parquet" "$out/holdout/train-part.parquet"
mv "$out/data/eval/part-00004.parquet" "$out/holdout/eval-part.parquet"

# The recipe (docs/training.md; tests/fixtures/quality_recipe.json, shared with
# tests/train_quality.rs): edits of the spec gen-data wrote.
EPOCHS=$epochs "$py" - "$out/job.toml" <<'PY'
import json, os, sys
path = sys.argv[1]
text = open(path).read()
recipe = json.load(open("tests/fixtures/quality_recipe.json"))
edits = [(e["old"], e["new"]) for e in recipe["edits"]]
edits.append(("epochs = 2", f"epochs = {os.environ['EPOCHS']}"))
for old, new in edits:
    if old not in text:
        sys.exit(f"quality.sh: the written spec has no {old!r}; update the recipe edits")
    text = text.replace(old, new)
open(path, "w").write(text)
PY

echo "training (log: $out/train.log)" >&2
"$funnel" train --config "$out/job.toml" --threads "${THREADS:-2}" >"$out/train.log" 2>&1
latest=$(cat "$out/data/output/checkpoints/LATEST")
"$funnel" predict --checkpoint "$out/data/output/checkpoints/$latest" \
  --data "$out/holdout/" --out "$out/holdout-pred/" --keep '' >/dev/null
echo
"$py" bench/quality_summary.py "$out/data/output/metrics.jsonl" "$out/data/eval/" \
  "$out/holdout-pred/" "$out/holdout/"
