#!/usr/bin/env bash
# Data-parallel overhead on one machine: img/s and peak RSS of a training step of ARCH @SIZE
# (global batch BATCH) on 1 and 2 local replicas (one process) and on 1 and 2 `bit serve`
# worker processes on 127.0.0.1. On a CPU the point is overhead, not speed-up: every variant
# shares the same cores.
#
#   bash scripts/bench_scale_out.sh [ARCH] [SIZE] [BATCH] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-R50x1} SIZE=${2:-128} BATCH=${3:-16} ITERS=${4:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/big-transfer-rs/target}"
cargo build --release --bin bit --example throughput >&2
BIT="$CARGO_TARGET_DIR/release/bit"
THROUGHPUT="$CARGO_TARGET_DIR/release/examples/throughput"
run() { "$THROUGHPUT" --arch "$ARCH" --size "$SIZE" --batch "$BATCH" --iters "$ITERS" --warmup 1 --device "$1"; }
peak_mib() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }

run cpu
run cpu,cpu

pids=() addresses=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 1 2; do
    out=$(mktemp)
    "$BIT" serve --port 0 >"$out" 2>/dev/null &
    pids+=($!)
    until grep -q 'ws://' "$out"; do sleep 0.1; done
    addresses+=("$(grep -o 'ws://[0-9.:]*' "$out" | head -1)")
done
for n in 1 2; do
    devices=$(IFS=,; echo "${addresses[*]:0:$n}")
    echo "$(run "$devices"); workers' peak RSS: $(for p in "${pids[@]:0:$n}"; do echo -n "$(peak_mib "$p") MiB "; done)"
done
