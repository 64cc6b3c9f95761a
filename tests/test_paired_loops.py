"""Loops run by two threads (backend/loops.py, backend/sync.py): the
handshake that never leaves both threads waiting, the barrier, and paired
LSTM and GRU loops against the NumPy reference, each thread taking an
uneven share of the batch rows."""
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


# Cells over T steps of a batch of 15 (threads take 7 and 8 rows), wide
# and long enough that their loops pair their threads (loops.PAIR_MIN_ROW_MACS,
# sync.PAIR_MIN_MACS, and the step runs on both: codegen.PAR_MIN_LOOP_STEP).
F, B, T = 8, 15, 40

CHECK = """
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


@pytest.mark.parametrize("cell,H,options,small", [
    ("lstm", 128, "", "1"),
    ("gru", 160, "reverse=true, bptt=7", "0"),
])
def test_paired_loop_matches_reference(cell, H, options, small, tmp_path):
    """Forward and gradients of a paired loop, with its products in small
    blocks or whole (NNSPEC_BLAS_SMALL_GEMM), in a process of two threads."""
    code = CHECK % dict(cell=cell, options=options, H=H, F=F, B=B, T=T,
                        tests=str(ROOT / "tests"))
    env = dict(os.environ, NNSPEC_CACHE=str(tmp_path), PYTHONPATH=str(ROOT),
               NUMBA_NUM_THREADS="2", NNSPEC_BLAS_SMALL_GEMM=small)
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_which_loops_pair():
    """Small products and masked loops (their blend is not split by rows)
    run on one thread, in the plain loop."""
    import nnspec
    from nnspec.backend import loops
    sys.path.insert(0, str(ROOT / "tests"))
    from test_loop_compiled import H as small, spec
    assert small * (small + 3) < loops.PAIR_MIN_ROW_MACS
    src = nnspec.compile(spec("elman"), seed=0)._program("train").source
    assert "PAIRED_LOOPS = 0" in src and "prange(2)" not in src
