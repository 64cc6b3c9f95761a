"""Loops run by two threads (backend/loops.py, backend/sync.py): the
handshake that never leaves both threads waiting, the barrier, and a paired
LSTM against the NumPy reference, each thread taking an uneven share of the
batch rows, and the same bits when one thread runs both threads' parts."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")
import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

from nnspec.backend import sync  # noqa: E402
from nnspec.backend.jit import compile_module  # noqa: E402
from nnspec.ops import linalg  # noqa: E402

compile_module(linalg)          # its kernels as njit functions

ROOT = Path(__file__).resolve().parent.parent


@njit
def _shake(sy, q):
    return sync.pair(sy, q)


def test_handshake_one_after_the_other():
    """Run one after the other (a pool that runs both halves of the region on
    one thread), either order: thread 0 goes on alone, thread 1 does nothing."""
    sy = np.zeros(16, np.int64)
    assert _shake(sy, 0) == 1 and _shake(sy, 1) == 0
    sy = np.zeros(16, np.int64)
    assert _shake(sy, 1) == 0 and _shake(sy, 0) == 1


@njit(parallel=True)
def _count(n, sy, seen, bad):
    for q in prange(2):
        nq = sync.pair(sy, q)
        seen[q] = nq
        if nq == 0:
            continue
        k = 1
        for i in range(n):
            sync.add(bad, 0, 1)                  # every thread adds one per round
            k = sync.barrier(sy, nq, k)
            if sync.load(bad, 0) != (i + 1) * nq:
                sync.add(bad, 1, 1)              # a thread passed the barrier early
            k = sync.barrier(sy, nq, k)


def test_barrier_holds_both_threads():
    if numba.get_num_threads() < 2:
        pytest.skip("one thread")
    sy, seen, bad = np.zeros(16, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64)
    _count(2000, sy, seen, bad)
    nq = seen[0]
    assert nq in (1, 2) and seen[1] == (2 if nq == 2 else 0)
    assert bad[0] == 2000 * nq and bad[1] == 0


@njit
def _shared_layout(x, w, q, nq):
    """Both threads' parts of a paired product, run one after the other."""
    B = x.shape[0]
    pad = linalg.pair_pad(B, x.itemsize)
    xt = sync.empty64((x.shape[1], B + pad), x.dtype)
    xt[:] = 0
    tmp = sync.empty64((w.shape[0], B + pad), x.dtype)
    out = np.zeros((B, w.shape[0]), x.dtype)
    for p in range(nq):
        r0, r1 = p * B // nq, (p + 1) * B // nq
        linalg.rows_t(x, xt, r0, r1)
    for p in range(nq):
        linalg.cols_part(xt, w, out, tmp, p, nq)
    return out, xt.ctypes.data % 64, tmp.ctypes.data % 64, pad


@pytest.mark.parametrize("B", [1, 2, 7, 31, 32, 33])
def test_paired_product_layout(B):
    """A paired product's shared buffers start on a cache line, the second
    thread's half of x^T on its own line (pair_pad) where the plan has two
    threads, no pad where it has one (a split step's half), and the parts
    give x w^T either way."""
    from nnspec.backend.jit import planned_threads, set_planned_threads
    rng = np.random.default_rng(B)
    x = rng.standard_normal((B, 37)).astype(np.float32)
    w = rng.standard_normal((45, 37)).astype(np.float32)
    was = planned_threads()
    try:
        for planned in (2, 1):
            set_planned_threads(planned)
            for nq in (1, 2):
                out, ax, at, pad = _shared_layout(x, w, 0, nq)
                np.testing.assert_allclose(out, x @ w.T, rtol=1e-5, atol=1e-5)
                assert ax == 0 and at == 0
                if planned == 2:
                    assert (B // 2 + pad) * 4 % 64 == 0 and pad < 16
                else:
                    assert pad == 0
    finally:
        set_planned_threads(was)


@njit
def _gather(parts, starts, transposed, out, nq):
    for q in range(nq):
        linalg.gather_w(parts, starts, transposed, out, q, nq)


@pytest.mark.parametrize("transposed", [False, True])
def test_gather_w_matches_numpy(transposed):
    """A loop's derived weight in one pass: parts' columns stacked, or their
    transpose, each thread its rows."""
    rng = np.random.default_rng(0)
    parts = tuple(rng.standard_normal((r, 11)).astype(np.float32) for r in (5, 3, 70))
    starts = (2, 0, 4)
    ref = np.concatenate([p[:, s:s + 7] for p, s in zip(parts, starts)])
    ref = ref.T if transposed else ref
    for nq in (1, 2, 3):
        out = np.full(ref.shape, np.nan, np.float32)
        _gather(parts, starts, transposed, out, nq)
        np.testing.assert_array_equal(out, ref)


# Cells over T steps of a batch of 15 (threads take 7 and 8 rows), wide
# and long enough that their loops pair their threads (loops.PAIR_MIN_ROW_MACS,
# sync.PAIR_MIN_MACS, and the step runs on both: codegen.PAR_MIN_LOOP_STEP).
F, B, T = 8, 15, 40

CELL_CHECK = """
import re, sys
import numpy as np
import numba
import nnspec
from nnspec.backend import numpy_ref, sync
from nnspec.passes.autodiff import backward
from nnspec.passes.mode import specialise
sys.path.insert(0, %(tests)r)
from test_loop_compiled import cell_source

cell, options = %(cell)r, %(options)r
net = nnspec.compile(f'''{cell_source(cell)}
network t {{
  input x: [T, %(F)d]
  y = x -> {cell}(%(H)d{", " + options if options else ""})
  output s = y
}}
train {{
  target r: [T, {2 * %(H)d if "bidir" in options else %(H)d}]
  loss = mse(s, r)
}}''', dtype="float64", seed=3)
src = net._program("train").source
assert src.count("prange(2)") >= 2, "no paired loop"
macs = [int(m) for m in re.findall(r"threads_for\\(B, T_ \\* B \\* (\\d+)\\)", src)]
assert macs and all(sync.threads_for(%(B)d, %(T)d * %(B)d * m) == 2 for m in macs), macs
rng = np.random.default_rng(0)
x = rng.standard_normal((%(B)d, %(T)d, %(F)d))
r = rng.standard_normal((%(B)d, %(T)d) + net.graph.shape("r")[2:])
loss, grads = net.gradients({"x": x}, {"r": r})
assert list(net._program("grad")._bound.values())[0][1] == (0, 1)   # both threads, one BLAS
gt = specialise(net.graph, True)
gg, gids = backward(gt, gt.meta["loss"], gt.params)
vals = numpy_ref.run(gg, {"x": x, "r": r, **net.params}, [*gids.values(), gt.meta["loss"]])
assert abs(loss - float(vals[gt.meta["loss"]])) <= 1e-12 * abs(loss), loss
for p, gn in gids.items():
    np.testing.assert_allclose(grads[p], vals[gn], rtol=1e-9, atol=1e-12, err_msg=p)
print("OK")
"""


# Fresh compiles of a minute or more each, only with NNSPEC_SLOW=1: by
# default the benchmark's LSTM below checks a paired loop (forward and
# gradients against the reference, in small blocks).
SLOW = pytest.mark.skipif(not os.environ.get("NNSPEC_SLOW"), reason="set NNSPEC_SLOW=1")


@pytest.mark.parametrize("cell,H,options,small", [
    pytest.param("lstm", 128, "", "1", marks=SLOW),
    pytest.param("gru", 160, "reverse=true, bptt=7", "0", marks=SLOW),
])
def test_paired_loop_matches_reference(cell, H, options, small, tmp_path):
    """Forward and gradients of a paired loop, with its products in small
    blocks or whole (NNSPEC_BLAS_SMALL_GEMM), in a process of two threads."""
    code = CELL_CHECK % dict(cell=cell, options=options, H=H, F=F, B=B, T=T,
                        tests=str(ROOT / "tests"))
    env = dict(os.environ, NNSPEC_CACHE=str(tmp_path), PYTHONPATH=str(ROOT),
               NUMBA_NUM_THREADS="2", NNSPEC_BLAS_SMALL_GEMM=small)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]



# The benchmark's LSTM (64 -> 256 over 64 steps, a classifier on the last
# state): its loops pair their threads (loops.PAIR_MIN_ROW_MACS,
# sync.PAIR_MIN_MACS, and the step runs on both: codegen.PAR_MIN_LOOP_STEP).
CHECK = r"""
import re, resource, sys
import numpy as np
import nnspec
from nnspec.backend import numpy_ref, sync
from nnspec.passes.autodiff import backward
from nnspec.passes.mode import specialise
sys.path.insert(0, BENCH)
from run import WORKLOADS

net = nnspec.compile(WORKLOADS["lstm"][0], dtype="float32", seed=3)
# First (before the reference's large arrays raise glibc's thresholds): its
# steps (forward and backward: the program checked below, one compile) reuse
# freed memory (cpu.keep_freed_memory): the loops' stacks are malloc'd at
# every call, and glibc unmapped them when freed, so the next step faulted
# them in again (4,600 page faults per step; the mechanism has its own test
# with a control run, test_backend.py).  The least of 4 runs of 10 steps (a
# busy machine may send a step down a path it had not taken yet).
rng = np.random.default_rng(0)
x = rng.standard_normal((32, 64, 64)).astype(np.float32)
y = rng.integers(0, 10, 32)
for _ in range(5):
    net.gradients({"x": x}, {"label": y})
per_step = []
for _ in range(4):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        net.gradients({"x": x}, {"label": y})
    per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
print("FAULTS", min(per_step))
src = net._program("train").source
assert src.count("prange(2)") == 2, "no paired loop"
macs = [int(m) for m in re.findall(r"threads_for\(B, T_ \* B \* (\d+)\)", src)]
rng = np.random.default_rng(0)
for B in (31, 32):          # the threads take 15 and 16 rows, then 16 each
    assert all(sync.threads_for(B, 64 * B * m) == 2 for m in macs), macs
    x = rng.standard_normal((B, 64, 64)).astype(np.float32)
    y = rng.integers(0, 10, B)
    loss, grads = net.gradients({"x": x}, {"label": y})
    assert net._program("grad")._bound[B][1] == (0, 1)   # both threads, one BLAS
    gt = specialise(net.graph, True)
    gg, gids = backward(gt, gt.meta["loss"], gt.params)
    vals = numpy_ref.run(gg, {"x": x, "label": y, **net.params},
                         [*gids.values(), gt.meta["loss"]])
    assert abs(loss - float(vals[gt.meta["loss"]])) <= 1e-5 * abs(loss), loss
    for p, gn in gids.items():
        scale = float(np.abs(vals[gn]).max())
        np.testing.assert_allclose(grads[p], vals[gn], rtol=1e-3, atol=1e-4 * scale, err_msg=p)
# On one thread (the pacer on a busy machine, backend/cores.py; or thread 1
# late for the handshake) the loops compute both threads' parts, in the same
# order: the same bits
import numba
from nnspec.backend import cores
loss2, grads2 = net.gradients({"x": x}, {"label": y})
cores.limit(True)
try:
    loss1, grads1 = net.gradients({"x": x}, {"label": y})
    assert numba.get_num_threads() == 1
finally:
    cores.limit(False)
assert loss1 == loss2 == loss, (loss1, loss2, loss)
for p in grads2:
    assert np.array_equal(grads1[p], grads2[p]), p
    assert np.array_equal(grads2[p], grads[p]), p
print("OK")
"""


def test_paired_lstm_matches_reference_and_reuses_memory(tmp_path):
    """Forward and gradients of the benchmark's LSTM, its loops paired, in a
    process of two threads with products in small blocks; and no page
    faults in its training steps."""
    import ctypes
    glibc = hasattr(ctypes.CDLL(None), "mallopt") and not (
        os.environ.get("MALLOC_TRIM_THRESHOLD_") or os.environ.get("MALLOC_MMAP_THRESHOLD_"))
    code = f"BENCH = {str(ROOT / 'bench')!r}\n" + CHECK
    env = dict(os.environ, NNSPEC_CACHE=str(tmp_path), PYTHONPATH=str(ROOT),
               NUMBA_NUM_THREADS="2", NNSPEC_BLAS_SMALL_GEMM="1")
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    faults = float(r.stdout.split("FAULTS")[1].split()[0])
    if glibc:
        assert faults < 20, f"{faults} page faults per step"


def test_which_loops_pair():
    """Small products run on one thread, in the plain loop."""
    import nnspec
    from nnspec.backend import loops
    sys.path.insert(0, str(ROOT / "tests"))
    from test_loop_compiled import H as small, spec
    assert small * (small + 3) < loops.PAIR_MIN_ROW_MACS
    src = nnspec.compile(spec("elman"), seed=0)._program("train").source
    assert "PAIRED_LOOPS = 0" in src and "prange(2)" not in src
