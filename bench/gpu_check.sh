#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU (run from anywhere):
#   bash bench/gpu_check.sh
# installs this checkout, runs the CUDA tests (tests/test_cuda_*.py) on the device instead of
# the simulator, and times training steps against PyTorch on CUDA: one table.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export NNSPEC_CACHE=${NNSPEC_CACHE:-/tmp/nnspec-gpu-cache}
unset NUMBA_ENABLE_CUDASIM

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not found"
# offline machines: the extras may not install; then the checkout alone, then PYTHONPATH
$PY -m pip install -q -e '.[cuda,test]' >/dev/null 2>&1 \
    || $PY -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'PY'
import importlib
for m in ("numba", "numba_cuda", "cupy", "torch"):
    try:
        print(f"{m} {importlib.import_module(m).__version__}")
    except Exception as e:
        print(f"{m}: {type(e).__name__}: {e}")
from nnspec.backend.device import cuda_missing
print("nnspec --device cuda:", cuda_missing() or "usable")
PY

echo "== CUDA tests on the device"
NNSPEC_CUDA_REAL=1 timeout 600 $PY -m pytest -q -n 0 -p no:cacheprovider tests/test_cuda_sim.py \
    tests/test_cuda_ops.py tests/test_cuda_conv.py tests/test_cuda_loops.py tests/test_cuda_zoo.py \
    2>&1 | tail -15

echo "== training steps, nnspec --device cuda against torch eager CUDA"
timeout 900 $PY bench/gpu.py "$@"
