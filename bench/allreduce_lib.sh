# shellcheck shell=bash
# Shared by bench/allreduce.sh and bench/allreduce_rounds.sh (sourced, not run).

# Builds the ring_bandwidth bench in release and prints its path, from cargo's own report of
# what it built. $1: the Python to parse that report with.
ring_bandwidth_exe() {
  cargo build --release --quiet -p funnel-worker --bench ring_bandwidth \
    --message-format=json-render-diagnostics | "$1" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "ring_bandwidth":
        print(m["executable"])'
}

# Copies the bench's JSON lines from stdin to stdout with "round": $2 and, when $3 is given,
# "impl": $3 (a named Funnel setting). $1: the Python to do it with.
tag_round() {
  ROUND=$2 NAME=${3:-} "$1" -c '
import json, os, sys
for line in sys.stdin:
    if line.startswith("{"):
        r = json.loads(line)
        r["round"] = int(os.environ["ROUND"])
        r["impl"] = os.environ["NAME"] or r["impl"]
        print(json.dumps(r))'
}
