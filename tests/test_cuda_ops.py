"""The op table (`tests/opcases.py`) on the CUDA backend, under Numba's simulator.

Every case of every op runs as a one-op program through the CUDA backend's
pipeline (`backend/cuda/step.py`: the op's own `Op.cuda` stages, a fused
kernel for elementwise ops, or a launcher of the step), in float64 and
float32, against the op's NumPy reference.  Gradients are ops of the table
too (conv_grad_input, batchnorm_grad, ...), so forward and backward kernels
are both checked here; whole training steps against the CPU backend are in
test_cuda_sim.py.  An op without a CUDA kernel fails
`test_every_op_has_a_cuda_kernel`.

Each family runs in a child process with NUMBA_ENABLE_CUDASIM=1 (set before
Numba is imported): the simulator runs each GPU thread as a Python thread,
so the table's tiny odd sizes are what it can afford.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from opcases import CASES, ELSEWHERE
from test_cuda_sim import FAST_THREADS, ROOT, child_env

# Ops that never reach the CUDA backend: the MPI collectives and the synced
# batch norm they serve (passes/sync_bn.py runs only on the CPU backend; a
# CUDA network is one process: nnspec/backend/cuda/__init__.py).
NOT_ON_CUDA = {"allreduce", "bn_sums", "batchnorm_synced", "batchnorm_synced_grad",
               "bn_synced_stat"}

TOL = {"float64": 1e-10, "float32": 2e-5}

RUN = r"""
import json, sys, traceback, warnings
import numpy as np
warnings.simplefilter("ignore", RuntimeWarning)
from nnspec.errors import DeviceError
from nnspec.ir import BATCH, Graph
from nnspec.ops import get_op
from nnspec.passes import pipeline as pp
from nnspec.backend.cuda.runtime import Mirror
from nnspec.backend.cuda.step import CudaStep
from opcases import CASES
PASSES = [pp.cast_dtype, pp.choose_roots, pp.eliminate_dead_code, pp.fuse_elementwise,
          pp.place_loop_results, pp.plan_memory]
ids = set(sys.argv[1:])
out = {}
for case in CASES:
    if case.id not in ids:
        continue
    op = get_op(case.op)
    for dtype in ("float64", "float32"):
        key = f"{case.id} {dtype}"
        rng = np.random.default_rng(0)
        xs = [a.sample(rng, dtype) for a in case.args]
        ref = np.asarray(op.reference(case.attrs, *[x.copy() for x in xs]))
        g = Graph("case", dtype)
        names = []
        for i, (a, x) in enumerate(zip(case.args, xs)):
            shape = ((BATCH,) + x.shape[1:]) if a.batched else x.shape
            names.append(g.input(f"x{i}", shape, dtype=str(x.dtype)))
        y = g.add(case.op, names, case.attrs, name="y")
        g.outputs["y"] = y
        try:
            b = pp.build(g, "infer", dtype, passes=PASSES)
            step = CudaStep(b, {}, {}, None, Mirror())
            one = np.zeros(1, dtype)
            step(one, one, one.copy(), one.copy(), one.copy(), None, dict(zip(names, xs)))
            got = step.value(y, 0).reshape(ref.shape)
            scale = max(1.0, float(np.max(np.abs(ref), initial=0.0)))
            err = float(np.max(np.abs(got.astype(np.float64) - ref), initial=0.0)) / scale
            out[key] = err if np.isfinite(err) or not np.isfinite(ref).all() else "nan"
            if not np.all(np.isfinite(got) == np.isfinite(ref)):
                out[key] = "non-finite values where the reference has none"
        except DeviceError as e:
            out[key] = "no kernel: " + str(e)
        except Exception as e:
            out[key] = "error: " + "".join(traceback.format_exception(e))[-1500:]
print(json.dumps(out))
"""


def _family(op: str) -> str:
    from nnspec.ops import get_op
    return type(get_op(op)).__module__.rsplit(".", 1)[-1]


def _cases():
    return [c for c in CASES if c.op not in ELSEWHERE | NOT_ON_CUDA]


def _families() -> list:
    return sorted({_family(c.op) for c in _cases()})


def test_every_op_has_a_cuda_kernel():
    """Every op of the registry a CUDA program can hold has a CUDA kernel: a
    launcher of the step, or its own `Op.cuda` (the loops: test_cuda_sim)."""
    from nnspec.backend.cuda import step
    from nnspec.ir import LEAF_OPS
    from nnspec.ops import all_ops
    missing = sorted(o for o in set(all_ops()) - set(LEAF_OPS) - NOT_ON_CUDA
                     if not hasattr(step.CudaStep, f"_op_{o}") and not step._defines_cuda(o))
    assert not missing, f"ops with no CUDA kernel: {missing}"


@pytest.mark.parametrize("family", _families())
def test_cuda_op_table(family):
    """Each case of the family's ops, on the CUDA backend under the simulator,
    equals the op's NumPy reference (float64 to 1e-10, float32 to 2e-5)."""
    ids = [c.id for c in _cases() if _family(c.op) == family]
    r = subprocess.run([sys.executable, "-c", FAST_THREADS + RUN, *ids], env=child_env(),
                       cwd=ROOT, text=True, capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * len(ids), sorted(set(f"{i} {d}" for i in ids
                                                for d in ("float64", "float32")) - set(got))
    bad = {k: e for k, e in got.items()
           if not (isinstance(e, float) and e <= TOL[k.rsplit(" ", 1)[1]])}
    assert not bad, json.dumps(bad, indent=1)[:6000]
