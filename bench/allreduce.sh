#!/usr/bin/env bash
# All-reduce bus bandwidth (issue 4 point 7): Funnel's ring all-reduce over its gRPC transport
# beside torch.distributed with gloo and beside a raw TCP loopback ring (the ceiling), same
# ranks and sizes of f32, one process per rank, in one run; prints the table and the ratios.
# Not run by CI; the gloo side needs torch in bench/.venv (installed as bench/train.sh does).
#   bench/allreduce.sh
# Environment: ROUNDS (3: the whole comparison that many times over; ratios are taken within
# each round and their median reported), RANKS (default "2 3 4"), SIZES_MIB ("1 4 16 64 256"),
# REPS (5), WARMUP (2),
# CHUNK_LENS (Funnel's values per chunk, "262144"; several values sweep), RING_THREADS (tokio
# worker threads per Funnel rank, 2), CARGO_TARGET_DIR. A quick run:
#   SIZES_MIB="1 16" RANKS="2 3" REPS=3 bench/allreduce.sh
# See docs/allreduce-benchmark.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export RANKS=${RANKS:-"2 3 4"}
export SIZES_MIB=${SIZES_MIB:-"1 4 16 64 256"}
export REPS=${REPS:-5}
export WARMUP=${WARMUP:-2}
rounds=${ROUNDS:-3}
out=bench/out/allreduce
py=bench/.venv/bin/python

if [ ! -x "$py" ]; then
  python3 -m venv bench/.venv
fi
if ! "$py" -c 'import torch; assert torch.__version__.startswith("2.9.0")' 2>/dev/null; then
  "$py" -m pip install --quiet --no-deps -r bench/requirements-train.txt
fi

# shellcheck source=bench/allreduce_lib.sh
. bench/allreduce_lib.sh
exe=$(ring_bandwidth_exe "$py")
[ -x "$exe" ] || { echo "no ring_bandwidth binary" >&2; exit 1; }

mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
echo "machine: $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg);" \
  "ranks $RANKS; sizes $SIZES_MIB MiB; $rounds rounds of $WARMUP warm-up + $REPS timed" \
  "iterations" >&2
# One side of the comparison at ring size $2: funnel (both transports), gloo or tcp ($1).
run_side() {
  case $1 in
    funnel) RANKS=$2 IMPLS="funnel funnel-grpc" "$exe" ;;
    gloo) RANKS=$2 "$py" bench/allreduce_gloo.py 2> >(grep -v '^\[Gloo\]' >&2) ;;
    tcp) RANKS=$2 IMPLS=tcp "$exe" ;;
  esac
}

# The three sides take turns for each ring size, so a change of machine load hits all alike;
# rounds repeat that, since a cell swings by far more between runs than within one. The side
# that goes first changes from round to round: whichever runs right after the large buffers of
# the ring size before read up to a third less at 1 MiB (docs/allreduce-benchmark.md, "Order").
sides=(funnel gloo tcp)
for round in $(seq 1 "$rounds"); do
  first=$(( (round - 1) % 3 ))
  for n in $RANKS; do
    for i in 0 1 2; do
      run_side "${sides[(first + i) % 3]}" "$n"
    done | tag_round "$py" "$round" >> "$results"
  done
done
echo "machine: load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo
"$py" bench/allreduce_summary.py "$results"
