#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU (run from anywhere):
#   bash bench/gpu_check.sh            # logs also under $OUT (default /tmp/nnspec-gpu)
# uses this checkout in place (PYTHONPATH; lark from .whl/ where the machine
# is offline and lacks it), and at once
#   - runs the CUDA tests (tests/test_cuda_*.py) on the device, not the simulator;
#   - trains specs/lenet5.nn with --device cuda (accuracy against the CPU's);
#   - times training steps against PyTorch eager on CUDA (bench/gpu.py): one table;
# then times the large networks again with TF32 products on both sides, and
# profiles a few of nnspec's steps per op (NNSPEC_CUDA_PROFILE=1).
# Each part has its own time limit (TESTS_S, BENCH_S seconds), so one that
# hangs does not cost the others; the whole run takes about BENCH_S + 60 s.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${OUT:-/tmp/nnspec-gpu}
mkdir -p "$LOGS"
export NNSPEC_CACHE=${NNSPEC_CACHE:-/tmp/nnspec-gpu-cache} PYTHONUNBUFFERED=1
TESTS_S=${TESTS_S:-270} BENCH_S=${BENCH_S:-220} WORKERS=${WORKERS:-8}
unset NUMBA_ENABLE_CUDASIM
if [ -d .devcache ]; then                 # a cache an earlier run brought back
    mkdir -p "$NNSPEC_CACHE" && tar -xzf .devcache/cache.tgz -C "$NNSPEC_CACHE" 2>/dev/null
fi
if ! $PY -c "import lark" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/nnspec-site .whl/*.whl
    export PYTHONPATH=/tmp/nnspec-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not found"
$PY - <<'PY'
import importlib
for m in ("numpy", "numba", "numba.cuda", "cupy", "torch", "lark"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '')}")
    except Exception as e:
        print(f"{m}: {type(e).__name__}: {e}")
try:
    import numba_cuda
    print("numba_cuda", numba_cuda.__version__)
except Exception as e:
    print(f"numba_cuda: {e}")
from nnspec.backend.device import cuda_missing
print("nnspec --device cuda:", cuda_missing() or "usable")
PY

echo "== started: the CUDA tests on the device ($WORKERS workers), lenet5 --device cuda"
NNSPEC_CUDA_REAL=1 timeout "$TESTS_S" $PY -m pytest -q -n "$WORKERS" -p no:cacheprovider \
    tests/test_cuda_sim.py tests/test_cuda_ops.py tests/test_cuda_conv.py \
    tests/test_cuda_loops.py tests/test_cuda_zoo.py >"$LOGS/tests.log" 2>&1 &
TESTS=$!
timeout "$TESTS_S" $PY -m nnspec train specs/lenet5.nn --device cuda --out /tmp/nnspec-lenet5 \
    >"$LOGS/lenet5.log" 2>&1 &
LENET=$!

echo "== training steps, nnspec --device cuda against torch eager CUDA"
timeout "$BENCH_S" $PY bench/gpu.py --only mlp resnet18 vgg16 lenet5 resnet mlp_small gru \
    lstm lstm_cell --reps 100 --warmup 5 --budget 4 "$@" 2>"$LOGS/bench.err" | tee "$LOGS/bench.log"

echo "== the large networks with float32 products on tensor cores (TF32), both sides"
timeout 120 $PY bench/gpu.py --only resnet18 vgg16 --tf32 --reps 50 --warmup 3 --budget 3 \
    2>>"$LOGS/bench.err" | tee "$LOGS/bench_tf32.log"

echo "== nnspec's steps per op (NNSPEC_CUDA_PROFILE=1)"
NNSPEC_CUDA_PROFILE=1 timeout 60 $PY bench/gpu.py --only mlp gru resnet18 vgg16 --reps 3 \
    --warmup 1 --budget 1 --no-torch >"$LOGS/profile.log" 2>&1
grep -A 12 "steps:" "$LOGS/profile.log"

wait $TESTS $LENET
echo "== lenet5 --device cuda"
tail -n 8 "$LOGS/lenet5.log"
echo "== CUDA tests"
tail -n 25 "$LOGS/tests.log"
echo "== bench errors"
tail -n 30 "$LOGS/bench.err"
# the kernel cache, for a next run on a fresh machine (carry .devcache)
(cd "$NNSPEC_CACHE" && tar -czf "$LOGS/cache.tgz" . 2>/dev/null) || true
ls -la "$LOGS"
