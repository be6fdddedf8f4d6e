#!/usr/bin/env bash
# Funnel ring all-reduce settings side by side with the raw TCP ceiling, in alternating rounds
# (docs/allreduce-benchmark.md, "Rounds"): each round runs every variant, then the TCP ring, so load that
# drifts during the run falls on all of them; the summary pairs each variant with the TCP run of
# the same round and prints the median of those per-round ratios (and their quartiles).
#   bench/allreduce_rounds.sh ROUNDS VARIANT...
# VARIANT: NAME or NAME:ENV=VALUE[,ENV=VALUE...], environment for that variant's bench binary
# (e.g. RING_THREADS=0, CHUNK_LENS=32768). Also read: RANKS (default "2"), SIZES_MIB ("1 4 16"),
# REPS (21), WARMUP (3), CARGO_TARGET_DIR. Example (the thread-structure comparison):
#   bench/allreduce_rounds.sh 12 threads2:RING_THREADS=2 current:RING_THREADS=0
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,11p' "$0" >&2; exit 2; }
rounds=$1
shift
export RANKS=${RANKS:-2} SIZES_MIB=${SIZES_MIB:-"1 4 16"} REPS=${REPS:-21} WARMUP=${WARMUP:-3}
out=bench/out/allreduce
mkdir -p "$out"
results=$out/rounds.jsonl
: > "$results"
# shellcheck source=bench/allreduce_lib.sh
. bench/allreduce_lib.sh
exe=$(ring_bandwidth_exe python3)
[ -x "$exe" ] || { echo "no ring_bandwidth binary" >&2; exit 1; }
echo "machine: $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg); ranks $RANKS;" \
  "sizes $SIZES_MIB MiB; $rounds rounds of $WARMUP warm-up + $REPS timed iterations" >&2
for round in $(seq 1 "$rounds"); do
  for v in "$@"; do
    settings=()
    if [[ $v == *:* ]]; then IFS=, read -ra settings <<< "${v#*:}"; fi
    env IMPLS=funnel "${settings[@]}" "$exe" 2>/dev/null \
      | tag_round python3 "$round" "${v%%:*}" >> "$results"
  done
  IMPLS=tcp "$exe" 2>/dev/null | tag_round python3 "$round" >> "$results"
done
echo "machine: load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
python3 bench/allreduce_rounds.py "$results"
