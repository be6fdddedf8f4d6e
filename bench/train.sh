#!/usr/bin/env bash
# Training samples/s (issue 3 point 9): `funnel train` on bench/reference.toml beside the same
# model in PyTorch (sparse embeddings + SparseAdam, and dense embeddings + Adam) on the same
# Parquet files, on 1 and 2 threads, in one run. Prints the medians and the ratios.
# Not run by CI; installs torch, numpy and pyarrow into bench/.venv (bench/requirements-train.txt).
#   bench/train.sh [ROWS] [RUNS]
# Environment: THREADS (default "1 2"), SIDES (default "funnel pytorch-sparse pytorch-dense"),
# CARGO_TARGET_DIR (where the funnel binary is built), OMP_WAIT_POLICY for the PyTorch side
# (default PASSIVE: with libgomp's default spinning, PyTorch on 2 threads collapsed ~7x on a
# shared 2-core machine). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
runs=${2:-3}
[ "$runs" -ge 1 ] || { echo "RUNS must be >= 1" >&2; exit 2; }
threads_list=${THREADS:-"1 2"}
sides=${SIDES:-"funnel pytorch-sparse pytorch-dense"}
out=bench/out/train
py=bench/.venv/bin/python
omp_wait_policy=${OMP_WAIT_POLICY:-PASSIVE}
unset OMP_WAIT_POLICY
bin=${CARGO_TARGET_DIR:-target}/release/funnel

if [ ! -x "$py" ]; then
  python3 -m venv bench/.venv
fi
if ! "$py" -c 'import torch, numpy, pyarrow; assert torch.__version__.startswith("2.9.0")' \
    2>/dev/null; then
  "$py" -m pip install --quiet --no-deps -r bench/requirements-train.txt
fi
case " $sides " in *" funnel "*)
  cargo build --release --quiet --bin funnel ;;
esac

mkdir -p "$out"
# The marker says which row count the data has; without the data (removed by hand) regenerate.
if [ ! -f "$out/rows-$rows" ] || ! ls "$out/data"/*.parquet >/dev/null 2>&1; then
  rm -rf "$out/data" "$out"/rows-*
  "$py" bench/make_train_data.py --output "$out/data" --rows "$rows" --files 4 \
    --row-group-rows 65536 --seed 42
  touch "$out/rows-$rows"
fi
case " $sides " in *" funnel "*)
  "$bin" validate --config bench/reference.toml >/dev/null ;;
esac

results=$out/results.jsonl
: > "$results"
mkdir -p "$out/logs"
echo "machine: $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg);" \
  "PyTorch side: OMP_WAIT_POLICY=$omp_wait_policy"
# Sides interleave within each repeat, so a change of machine load hits all of them alike.
for t in $threads_list; do
  for r in $(seq 1 "$runs"); do
    for side in $sides; do
      load=$(cut -d' ' -f1 /proc/loadavg)
      log=$out/logs/$side-t$t-r$r.log
      tm=$out/logs/$side-t$t-r$r.time
      case $side in
        funnel)
          run=$PWD/$out/run-t$t
          rm -rf "$run"
          /usr/bin/time -f '%e %U %S' -o "$tm" "$bin" train --no-progress \
            --config bench/reference.toml --threads "$t" --output "$run" >"$log" 2>&1 \
            || { tail -20 "$log"; exit 1; }
          line=$run/metrics.jsonl
          ;;
        pytorch-sparse | pytorch-dense)
          line=$(OMP_WAIT_POLICY=$omp_wait_policy /usr/bin/time -f '%e %U %S' -o "$tm" \
            "$py" bench/train_pytorch.py "$out/data" \
            --threads "$t" --variant "${side#pytorch-}" 2>"$log") || { tail -20 "$log"; exit 1; }
          ;;
        *) echo "unknown side $side" >&2; exit 2 ;;
      esac
      "$py" - "$side" "$t" "$r" "$load" "$line" "$(tail -n 1 "$tm")" >>"$results" <<'PY'
import json, sys
side, t, r, load, line, tm = sys.argv[1:]
wall, user, system = map(float, tm.split())
if side == "funnel":  # the last epoch's line of metrics.jsonl
    epochs = [json.loads(l) for l in open(line).read().splitlines()]
    train = [d for d in epochs if "train" in d][-1]["train"]
else:
    train = json.loads(line)
print(json.dumps({"side": side, "threads": int(t), "run": int(r), "load1": float(load),
                  "rows": train["rows"], "seconds": train["seconds"],
                  "rows_per_s": train["rows_per_s"],
                  "warm_rows_per_s": train.get("warm_rows_per_s"), "loss": train.get("loss"),
                  "process_wall_s": wall, "process_cpu_s": user + system,
                  "cores": (user + system) / wall}))
PY
      tail -n 1 "$results"
    done
  done
done
echo "machine: load after: $(cut -d' ' -f1-3 /proc/loadavg)"

echo
"$py" bench/train_summary.py "$results" "$rows"
