"""Every CUDA kernel the backend launches compiles for a real GPU (sm_90), checked
without one: the simulator runs the op table and the training steps of
test_cuda_sim.py, test_cuda_loops.py and LeNet-5 (test_cuda_zoo.py), recording each launch's argument types
(NNSPEC_CUDA_RECORD), and `nnspec.backend.cuda.ptx` compiles every recorded
signature to PTX with numba-cuda and NVVM.

Needs numba-cuda and the NVIDIA compiler wheels (`pip install -e
'.[cuda-check]'`) in this Python, or NNSPEC_PTX_PYTHON naming a Python that
has them; skipped otherwise.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from test_cuda_ops import NOT_ON_CUDA, RUN
from test_cuda_sim import FAST_THREADS, ROOT, SPECS, child_env
from opcases import CASES, ELSEWHERE

CHECK = "from nnspec.backend.cuda.ptx import available; print(available() or 'ok')"


def ptx_python() -> str | None:
    for py in (os.environ.get("NNSPEC_PTX_PYTHON"), sys.executable):
        if py and subprocess.run([py, "-c", CHECK], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip() == "ok":
            return py
    return None


STEPS = """
import warnings, numpy as np
warnings.simplefilter('ignore', RuntimeWarning)
import test_cuda_sim, test_cuda_loops, test_cuda_zoo
for mod in (test_cuda_sim, test_cuda_loops):
    for name in mod.SPECS:
        for dt in ('float64', 'float32'):
            mod.steps(mod.SPECS[name], dt, 'cuda')
name, sets, _ = test_cuda_zoo.CASES[0]
full, x, t = test_cuda_zoo.batch_of(name, sets)
for dt in ('float64', 'float32'):
    test_cuda_zoo.one_step(name, full, dt, 'cuda', x, t)
from numba import cuda       # the tiled GEMM (the simulator's programs use NumPy's)
from nnspec.backend.cuda.gemm import TiledGemm
for dt in ('float64', 'float32'):
    a, o = cuda.to_device(np.ones((3, 2), dt)), cuda.to_device(np.ones((3, 3), dt))
    TiledGemm()(a, a, o, False, True, True)
"""


def test_every_launch_compiles_for_sm90(tmp_path):
    py = ptx_python()
    if py is None:
        pytest.skip("no Python with numba-cuda and NVVM (pip install -e '.[cuda-check]')")
    rec = tmp_path / "launches.jsonl"
    env = dict(child_env(), NNSPEC_CUDA_RECORD=str(rec))
    ids = [c.id for c in CASES if c.op not in ELSEWHERE | NOT_ON_CUDA]
    for code, args in ((RUN, ids), (STEPS, [])):
        r = subprocess.run([sys.executable, "-c", FAST_THREADS + code, *args], env=env,
                           cwd=ROOT, text=True, capture_output=True, timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
    assert SPECS and rec.stat().st_size > 0
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    r = subprocess.run([py, "-m", "nnspec.backend.cuda.ptx", str(rec), "--cc", "9.0"],
                       env=env, cwd=ROOT, text=True, capture_output=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "launches compile for sm_90" in r.stdout
