#!/usr/bin/env bash
# `bit export --format onnx` checked in tract, a pure-Rust ONNX runtime (checks/onnx-tract, its
# own cargo workspace and target dir: inside the main workspace, tract would change the
# features of crates `bit` builds). Two kinds of model:
#   - the golden reference nets (tiny, R50x1): the exported graph on the golden inputs gives the
#     reference PyTorch logits within 1e-4;
#   - a model fine-tuned by `bit train` on real images (Fashion-MNIST): the graph, on the exact
#     tensors `bit eval --record` fed the model, gives bit's logits within 1e-4 and the same
#     top-1 for every image.
# Usage: scripts/onnx_tract_check.sh [--bit PATH_TO_BIT]   (needs BIT_GOLDEN_DIR, numpy, and
# Debian's dataset-fashion-mnist)
set -euo pipefail
cd "$(dirname "$0")/.."

bit="${CARGO_TARGET_DIR:-$HOME/.cache/big-transfer-rs/target}/release/bit"
if [ "${1:-}" = "--bit" ]; then bit="$2"; fi
golden="${BIT_GOLDEN_DIR:-$PWD/../shared/golden}"
check_target="${ONNX_TRACT_TARGET_DIR:-$HOME/.cache/big-transfer-rs/onnx-tract-target}"

CARGO_TARGET_DIR="$check_target" cargo build --release --locked \
    --manifest-path checks/onnx-tract/Cargo.toml
check="$check_target/release/onnx-tract-check"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for case in tiny r50x1; do
    resolution=$(python3 - "$golden/$case.case.npz" "$work/$case" <<'PY'
import sys
import numpy as np
case = np.load(sys.argv[1])
np.save(sys.argv[2] + ".inputs.npy", case["input"].astype(np.float32))
np.save(sys.argv[2] + ".logits.npy", case["logits"].astype(np.float32))
print(case["input"].shape[2])
PY
    )
    "$bit" export --model "$golden/$case.weights.npz" --resolution "$resolution" \
        --out "$work/$case.onnx"
    "$check" "$work/$case.onnx" "$work/$case.inputs.npy" "$work/$case.logits.npy"
done

"$bit" train --name ft --model "$golden/tiny.weights.npz" --logdir "$work" \
    --dataset fashion_mnist --examples_per_class 4 --batch 8 --steps 4 --resolution 40,32 \
    --max_eval_examples 16 --workers 2 >"$work/train.out" 2>&1 ||
    { cat "$work/train.out"; exit 1; }
tail -1 "$work/train.out"
"$bit" export --model "$work/ft/model.safetensors" --out "$work/ft.onnx"
"$bit" eval --model "$work/ft/model.safetensors" --dataset fashion_mnist --max_examples 256 \
    --record "$work/ft-record"
"$check" "$work/ft.onnx" "$work/ft-record/inputs.npy" "$work/ft-record/logits.npy" \
    --labels "$work/ft-record/labels.npy"
echo "ONNX in tract: ok"
