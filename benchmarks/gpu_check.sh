#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU, a CUDA toolkit (nvcc) and an installed CUDA build of torch
# (2.4 or later, Python 3.10+, pytest and hypothesis); it needs no network. In one run of at most 8 minutes it
#   1. builds the extension with CUDA, with all cores, for this GPU's architecture;
#   2. runs every GPU test (`pytest -k cuda`: parity with the CPU path, gradcheck on cuda, float16/bfloat16, the
#      kernels in the library);
#   3. trains one short epoch with --device cuda on generated IDX data, manual and native;
#   4. times conv2d forward+backward on the GPU, manual ('cpp') against native (conv_bench.py times the CPU);
# and prints a summary. Where no GPU is present it says so and exits 0, before building anything (CI gets that far).
#
#   benchmarks/gpu_check.sh                                 # with python3, or PYTHON=/path/to/python
#   GPU_CHECK_LOGS=DIR benchmarks/gpu_check.sh              # every step's whole output in DIR (default: a new
#                                                           # temporary folder, named at the end)
# Exit status: 0 when every step passed or no GPU is present, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHON=${PYTHON:-python3}
summary=()
failed=0

# step NAME LIMIT COMMAND...: COMMAND with LIMIT seconds, its output shown and kept in $LOGS/NAME.log; the summary gets
# the outcome, the time taken and the output's last line.
step() {
    local name=$1 limit=$2 begin=$SECONDS outcome=PASS
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local status=${PIPESTATUS[0]}
    case $status in
        0) ;;
        124 | 137) outcome=TIMEOUT ;;
        *) outcome="FAIL ($status)" ;;
    esac
    [ "$outcome" = PASS ] || failed=1
    local last_line
    last_line=$(tail -n 1 "$LOGS/$name.log")
    summary+=("$(printf '%-13s %-9s %4d s  %s' "$name" "$outcome" $((SECONDS - begin)) "$last_line")")
}

# ------------------------------------------------------------------------------------------ is there a GPU at all?
"$PYTHON" - <<'EOF'
import sys

if sys.version_info < (3, 10):
    sys.exit(f"gpu_check: Python {sys.version.split()[0]} is too old: manual_conv needs 3.10 or later")
try:
    import torch
except ImportError:
    sys.exit(f"gpu_check: {sys.executable} has no torch: install a CUDA build of torch, or set PYTHON")
if tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2]) < (2, 4):
    sys.exit(f"gpu_check: torch {torch.__version__} is too old: 2.4 or later is needed")
print(f"Python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if not torch.cuda.is_available():
    reason = "torch is a CPU-only build" if torch.version.cuda is None else "torch sees no CUDA device"
    print(f"gpu_check: no GPU present ({reason}): nothing to check")
    sys.exit(10)
major, minor = torch.cuda.get_device_capability()
print(f"GPU: {torch.cuda.get_device_name()}, compute capability {major}.{minor}")
EOF
case $? in
    0) ;;
    10) exit 0 ;;
    *) exit 1 ;;
esac

LOGS=${GPU_CHECK_LOGS:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$LOGS"

# ---------------------------------------------------------------------------------------------------------- build
CUDA_ARCH=$("$PYTHON" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
# FORCE_CUDA=1: the tests' check of the library then fails a build that lacks the CUDA kernels, instead of skipping.
export FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$CUDA_ARCH} MAX_JOBS=${MAX_JOBS:-$(nproc)}
build() {
    "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps -e . || return
    "$PYTHON" - <<'EOF'
import os

import torch

import manual_conv  # noqa: F401  (registers the ops)

if not torch._C._dispatch_has_kernel_for_dispatch_key("manual_conv::conv2d", "CUDA"):
    raise SystemExit("built without CUDA kernels: is nvcc on PATH, or CUDA_HOME set?")
print(f"built with CUDA kernels for {os.environ['TORCH_CUDA_ARCH_LIST']}, {os.environ['MAX_JOBS']} jobs")
EOF
}
export -f build
step build 200 bash -c build

# ---------------------------------------------------------------------------------------------------------- tests
step gpu-tests 150 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests -k cuda

# ------------------------------------------------------------------------------------------------------- training
"$PYTHON" -c 'import sys; from pathlib import Path; sys.path.insert(0, "tests")
from test_train_mnist import write_synthetic_dataset
write_synthetic_dataset(Path(sys.argv[1]), train_count=4096, test_count=1024)' "$LOGS/idx"
for impl in manual native; do
    step "train-$impl" 40 "$PYTHON" train_mnist.py --device cuda --impl "$impl" --data-dir "$LOGS/idx" --epochs 1 \
        --metrics "$LOGS/train-$impl.json" --plot "$LOGS/train-$impl.png"
done

# ------------------------------------------------------------------------------------------------------ benchmark
step bench 45 "$PYTHON" - <<'EOF'
"""conv2d forward+backward (input, weight and bias gradients), float32, on the GPU: manual_conv's 'cpp' backend
against native F.conv2d (cuDNN), conv_bench.py's layers, each timed with CUDA events, the two alternating;
medians of 25 runs after 5 warm-ups."""
import statistics

import torch
import torch.nn.functional as F

import manual_conv
import manual_conv.functional as MF

LAYERS = [  # name, batch, in channels, out channels, size, stride, padding (3x3 kernels)
    ("MNIST conv1", 64, 1, 32, 28, 1, 0), ("MNIST conv2", 64, 32, 64, 26, 1, 0),
    ("ResNet-18 64ch 56x56", 8, 64, 64, 56, 1, 1), ("ResNet-18 128ch s2 56x56", 8, 64, 128, 56, 2, 1),
    ("ResNet-18 256ch 14x14", 8, 256, 256, 14, 1, 1), ("ResNet-18 512ch 7x7", 8, 512, 512, 7, 1, 1),
]


def manual(*args):
    with manual_conv.use_backend("cpp"):
        return MF.conv2d(*args)


print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
print("| layer | native ms | cpp ms | cpp x native |\n|---|---:|---:|---:|")
for name, batch, channels, out_channels, size, stride, padding in LAYERS:
    x = torch.randn(batch, channels, size, size, device="cuda", requires_grad=True)
    w = torch.randn(out_channels, channels, 3, 3, device="cuda", requires_grad=True)
    b = torch.randn(out_channels, device="cuda", requires_grad=True)
    grad = torch.randn_like(F.conv2d(x, w, b, stride, padding))
    times = {F.conv2d: [], manual: []}
    for run in range(30):
        for conv in times:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.autograd.grad(conv(x, w, b, stride, padding), (x, w, b), grad)
            end.record()
            end.synchronize()
            if run >= 5:
                times[conv].append(start.elapsed_time(end))
    native, ours = statistics.median(times[F.conv2d]), statistics.median(times[manual])
    print(f"| {name} | {native:.3f} | {ours:.3f} | {ours / native:.2f} |")
EOF

# -------------------------------------------------------------------------------------------------------- summary
echo
echo "== summary ($SECONDS s in all; whole outputs in $LOGS)"
printf '%s\n' "${summary[@]}"
grep '^|' "$LOGS/bench.log"
exit $failed
