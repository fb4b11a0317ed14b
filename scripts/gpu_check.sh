#!/usr/bin/env bash
# One prepared check of the GPU path, for a machine with a GPU and no internet, from a `bit`
# binary built beforehand (`cargo build --release --bin bit`: the wgpu backend is on by default;
# `strip` it to carry it). Writes one report file and exits non-zero if any check fails.
#
#   bash scripts/gpu_check.sh [--quick] [--bit PATH] [--golden DIR] [--device NAME] [--out FILE]
#
# 1. `bit selftest`: logits, features and one SGD step against the reference vectors
#    (shared/golden: tiny always, r50x1 when its files are there).
# 2. `bit bench`: inference and training img/s and device memory, R50x1 @128 batch 128 and
#    @224 batch 32, in f32 and bf16 (mixed precision; reported as unsupported where the adapter
#    has no bf16 kernels), and, where python3 has torch, timm and CUDA, the same for
#    PyTorch/timm (`resnetv2_50x1_bit`, eager, f32) on the same GPU.
# 3. `bit train`: 50 steps on generated data (an MNIST-format set written here: a bright square
#    whose position is the class), from a `bit init` checkpoint.
# --quick shrinks every size (tiny model, a few images), for a software adapter: CI runs it on
# Mesa's lavapipe. The whole full run is sized for ~8 minutes on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
bit=${CARGO_TARGET_DIR:-target}/release/bit
golden=${BIT_GOLDEN_DIR:-../shared/golden}
device=wgpu
out=gpu_check_report.txt
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --bit) bit=$2; shift ;;
        --golden) golden=$2; shift ;;
        --device) device=$2; shift ;;
        --out) out=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$bit" ] || { echo "error: no bit binary at $bit (cargo build --release --bin bit)" >&2; exit 1; }
[ -f "$golden/tiny.case.npz" ] || { echo "error: no reference vectors in $golden" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0
: >"$out"
report() { echo "$*" | tee -a "$out"; }
# Runs a check, its output into the report; a failure is counted, and the next check runs.
check() {
    local what=$1; shift
    report "=== $what"
    local start=$SECONDS
    if "$@" >"$work/log" 2>&1; then
        grep -v '^\s*$' "$work/log" | grep -v 'Compiling\|^\[' | tail -n 40 | tee -a "$out"
        report "--- ok ($((SECONDS - start)) s)"
    else
        tail -n 40 "$work/log" | tee -a "$out"
        report "--- FAILED ($((SECONDS - start)) s)"
        failed=$((failed + 1))
    fi
}

report "gpu_check $(date -u +%FT%TZ) on $(hostname); device $device; $( [ $quick = 1 ] && echo quick || echo full )"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$out" || true
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|driverName|deviceType' | tee -a "$out" || true

cases=tiny
[ -f "$golden/r50x1.weights.npz" ] && [ $quick = 0 ] && cases=tiny,r50x1
check "selftest ($cases) against the reference" "$bit" selftest --golden "$golden" --cases "$cases" --device "$device"

if [ $quick = 1 ]; then
    benches=("tiny 32 4")
    precisions="f32 f16 bf16"
    steps=4; batch=8
else
    benches=("R50x1 128 128" "R50x1 224 32")
    precisions="f32 bf16"
    steps=50; batch=32
fi
# A precision the adapter has no kernels for is reported as such, not as a failure.
supports() {
    if "$bit" bench --arch tiny --size 32 --batch 1 --mode infer --iters 1 --warmup 0 \
        --device "$device" --precision "$1" >"$work/probe" 2>&1; then
        return 0
    fi
    grep -q "cannot compute in" "$work/probe" || return 0 # another failure: let the check show it
    report "=== $1 on $device: $(grep -o 'cannot compute in.*' "$work/probe")"
    return 1
}
iters=10; [ $quick = 1 ] && iters=2
for precision in $precisions; do
    supports "$precision" || continue
    for b in "${benches[@]}"; do
        read -r arch size n <<<"$b"
        for mode in infer train; do
            check "bit bench $arch @$size batch $n $mode $precision" \
                "$bit" bench --arch "$arch" --size "$size" --batch "$n" --mode "$mode" \
                --iters "$iters" --warmup 2 --device "$device" --precision "$precision"
        done
    done
done

if [ $quick = 0 ] && python3 -c 'import torch, timm; assert torch.cuda.is_available()' 2>/dev/null; then
    cat >"$work/timm_bench.py" <<'EOF'
import sys, time, torch, timm
size, batch, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).cuda()
opt = torch.optim.SGD(model.parameters(), lr=0.003, momentum=0.9)
times = []
for i in range(12):
    x = torch.rand(batch, 3, size, size, device="cuda") * 2 - 1
    y = torch.randint(0, 10, (batch,), device="cuda")
    torch.cuda.synchronize(); t = time.perf_counter()
    if mode == "train":
        model.train(); opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward(); opt.step()
    else:
        model.eval()
        with torch.no_grad(): model(x)
    torch.cuda.synchronize()
    if i >= 2: times.append(time.perf_counter() - t)
times.sort()
print(f"timm R50x1 @{size} {mode} batch {batch}: {batch / times[len(times) // 2]:.2f} img/s, "
      f"peak {torch.cuda.max_memory_allocated() >> 20} MiB (torch {torch.__version__})")
EOF
    for b in "${benches[@]}"; do
        read -r arch size n <<<"$b"
        for mode in infer train; do
            check "PyTorch/timm $arch @$size batch $n $mode" python3 "$work/timm_bench.py" "$size" "$n" "$mode"
        done
    done
fi

# Generated data in MNIST's IDX format: class c is a bright 8x8 square at one of 10 places.
python3 - "$work/data" <<'EOF'
import gzip, os, random, struct, sys
out = sys.argv[1]; os.makedirs(out, exist_ok=True)
rng = random.Random(0)
def write(prefix, n):
    labels = [i % 10 for i in range(n)]
    pixels = bytearray()
    for c in labels:
        img = [rng.randrange(0, 60) for _ in range(28 * 28)]
        y0, x0 = 2 + (c // 5) * 14, 2 + (c % 5) * 5
        for y in range(y0, y0 + 8):
            for x in range(x0, x0 + 4):
                img[y * 28 + x] = 255
        pixels += bytes(img)
    with gzip.open(f"{out}/{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + pixels)
    with gzip.open(f"{out}/{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 2049, n) + bytes(labels))
write("train", 1000); write("t10k", 200)
EOF
check "bit init (tiny, 10 classes)" "$bit" init --arch tiny --head 10 --out "$work/tiny.npz"
check "bit train: $steps steps on generated data" \
    "$bit" train --name gen --model "$work/tiny.npz" --logdir "$work/logs" --dataset mnist \
    --datadir "$work/data" --batch "$batch" --steps "$steps" --resolution 40,32 \
    --eval_every "$steps" --max_eval_examples 200 --workers 2 --device "$device"

report "=== $failed check(s) failed; report in $out"
[ $failed = 0 ]
