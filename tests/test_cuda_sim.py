"""The CUDA backend (nnspec/backend/cuda/) under Numba's CUDA simulator.

Each check runs in a child process with NUMBA_ENABLE_CUDASIM=1 in its
environment (the simulator must be chosen before Numba is imported), at
tiny odd sizes: the simulator runs every GPU thread as a Python thread.
The CPU side of a comparison runs here, in this process.  With a GPU and
NNSPEC_CUDA_REAL=1 (bench/gpu_check.sh) the children run on the device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REAL = os.environ.get("NNSPEC_CUDA_REAL") == "1"

CLASSIFIER = """
network classifier {
    input x: [5]
    output logits = x -> dense(7) -> relu -> dropout(0.3) -> dense(4)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.1)
}
"""

REGRESSION = """
network regression {
    input x: [5]
    output y = x -> dense(6) -> tanh -> dense(3)
}
train {
    target t: [3]
    loss = mse(y, t)
    optimizer = sgd(lr = 0.1)
}
"""

SPECS = {"classifier": CLASSIFIER, "regression": REGRESSION}
TOL = {"float64": 1e-10, "float32": 1e-5}


def child_env(simulator: bool = True) -> dict:
    """A child's environment: the simulator on (unless on a GPU), tests importable."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if simulator and not REAL:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")]
                                        + [p for p in [env.get("PYTHONPATH")] if p])
    return env


# The simulator's threads meet at every barrier; each hands the GIL on only
# after the switch interval (5 ms by default): a shorter one is 2-3x faster.
FAST_THREADS = "import sys; sys.setswitchinterval(1e-4)\n"


def child(code: str, simulator: bool = True, timeout: int = 120):
    """Run `code` in a fresh Python with `child_env`."""
    return subprocess.run([sys.executable, "-c", FAST_THREADS + code], env=child_env(simulator),
                          cwd=ROOT, text=True, capture_output=True, timeout=timeout)


def steps(spec: str, dtype: str, device: str) -> dict:
    """Forward, loss and every gradient, then the parameters after an SGD step
    (momentum, clipped) and after an Adam step, by name."""
    import nnspec
    net = nnspec.compile(spec, dtype=dtype, seed=3, device=device)
    rng = np.random.default_rng(1)
    x = {"x": rng.standard_normal((5, 5)).astype(dtype)}
    if "label" in net.targets:
        t = {"label": rng.integers(0, 4, 5)}
    else:
        t = {"t": rng.standard_normal((5, 3)).astype(dtype)}
    out = {"forward": next(iter(net.forward(**x).values()))}
    out["loss"], grads = net.gradients(x, t)
    out.update({f"grad {k}": v for k, v in grads.items()})
    net.set_optimizer("sgd", momentum=0.9, clip=0.5)
    out["sgd loss"] = net.train_step(x, t, lr=0.1)
    out.update({f"sgd {k}": v.copy() for k, v in net.params.items()})
    net.set_optimizer("adam", weight_decay=0.01)
    out["adam loss"] = net.train_step(x, t, lr=0.01)
    out.update({f"adam {k}": v.copy() for k, v in net.params.items()})
    out["eval loss"] = net.evaluate_batch(x, t)[0]
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def test_training_steps_match_the_cpu(tmp_path, monkeypatch):
    """(a) A 2-layer classifier (dropout, softmax cross-entropy) and an MSE
    regression: forward, every gradient, the parameters after SGD and Adam
    steps equal the CPU backend's, in float64 and float32."""
    cases = [(name, dt) for name in SPECS for dt in ("float64", "float32")]
    code = (f"{FAST_THREADS}import numpy as np, warnings\n"
            f"warnings.simplefilter('ignore', RuntimeWarning)\n"
            f"from test_cuda_sim import SPECS, steps\n"
            f"for name, dt in {cases!r}:\n"
            f"    np.savez(r'{tmp_path}/' + name + dt + '.npz', **steps(SPECS[name], dt, 'cuda'))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=child_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")   # the NumPy interpreter: nothing to compile
    cpu = {(name, dt): steps(SPECS[name], dt, "cpu") for name, dt in cases}
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    for (name, dt), want in cpu.items():
        got = np.load(tmp_path / f"{name}{dt}.npz")
        assert sorted(got.files) == sorted(want), (name, dt)
        for k, w in want.items():
            np.testing.assert_allclose(got[k], w, rtol=TOL[dt], atol=TOL[dt],
                                       err_msg=f"{name} {dt}: {k}")


KERNELS = r"""
import json, warnings
import numpy as np
from numba import cuda
warnings.simplefilter("ignore", RuntimeWarning)
from nnspec.ops import OPS, get_op, load_all
from nnspec.backend.cuda import fused
from nnspec.backend.cuda.gemm import TiledGemm, gemm_provider
from nnspec.backend.cuda.kernels import kernels
from nnspec.backend.cuda.runtime import MAX_BLOCKS, THREADS, blocks
load_all()
rng = np.random.default_rng(0)
errors = {}

def err(name, got, want):
    errors[name] = float(np.max(np.abs(np.asarray(got, np.float64) - want), initial=0.0)
                         / max(1.0, float(np.max(np.abs(want), initial=0.0))))

# (b) the tiled GEMM, and the provider a step uses (cuBLAS on a GPU), against
# NumPy: odd shapes, every transpose, accumulating
for g in (TiledGemm(), gemm_provider()):
    for M, N, K in [(5, 7, 3), (9, 1, 11), (1, 6, 13)]:
        for ta in (False, True):
            for tb in (False, True):
                a = rng.standard_normal((K, M) if ta else (M, K))
                b = rng.standard_normal((N, K) if tb else (K, N))
                c = rng.standard_normal((M, N))
                want = (a.T if ta else a) @ (b.T if tb else b)
                what = f"{g.name} {M}x{N}x{K} ta={ta} tb={tb}"
                out = cuda.to_device(c)
                g(cuda.to_device(a), cuda.to_device(b), out, ta, tb)
                err(f"gemm {what}", out.copy_to_host(), want)
                out = cuda.to_device(c)
                g(cuda.to_device(a), cuda.to_device(b), out, ta, tb, accumulate=True)
                err(f"gemm+= {what}", out.copy_to_host(), c + want)

# (c) every elementwise op as a fused kernel, its inputs full, a row block, a scalar
POSITIVE = {"log", "sqrt", "sqrt_grad", "div", "div_grad_b"}
B, C = 3, 37
for name, op in sorted(OPS.items()):
    if not isinstance(getattr(op, "expr", None), str):
        continue
    shapes = [(B, C), (C,), ()][:op.arity]
    xs = [rng.uniform(0.5, 2.0, s) * (1 if name in POSITIVE else rng.choice([-1, 1], s))
          for s in shapes]
    body = [{"id": "y", "op": name, "attrs": {}, "args": [f"in{j}" for j in range(op.arity)]}]
    fn, extra = fused.kernel(body, [("B", C), (C,), ()][:op.arity], ("B", C), "float64")
    o = cuda.device_array(B * C)
    fn[blocks(B * C), THREADS](o, B * C, *[cuda.to_device(np.ravel(x)) for x in xs],
                               *extra((B, C)))
    err(f"elementwise {name}", o.copy_to_host().reshape(B, C), op.reference({}, *xs))

# (c) the shared kernels (the ops' own: tests/test_cuda_ops.py)
k = kernels("float64")
n, C = 5, 37
z = rng.standard_normal((n, C))
part, loss = cuda.device_array(MAX_BLOCKS), cuda.device_array(1)
big = rng.standard_normal(1001)
k.sum_part[blocks(big.size), THREADS](cuda.to_device(big), big.size, part, True)
k.sum_final[1, THREADS](part, blocks(big.size), loss, 1.0)
err("sum of squares", loss.copy_to_host()[0], np.sum(big * big))
k.sum_part[blocks(big.size), THREADS](cuda.to_device(big), big.size, part, False)
k.sum_final[1, THREADS](part, blocks(big.size), loss, 1.0 / big.size)
err("mean", loss.copy_to_host()[0], get_op("mean").reference({"axes": None}, big))
g3 = rng.standard_normal((1, C))
o = cuda.device_array(n * C)
k.broadcast[blocks(n * C), THREADS](cuda.to_device(g3.ravel()), o, n * C, (n, C), (0, 1), 0.25)
err("broadcast_like", o.copy_to_host().reshape(n, C), np.broadcast_to(g3, (n, C)) * 0.25)
attrs = {"p": 0.3, "seed": 1234, "training": True}
o = cuda.device_array(n * C)
k.dropout_mask[blocks(n * C), THREADS](cuda.to_device(np.array([7.0])), o, n * C, 0.3, 1234,
                                       1 / 0.7)
err("dropout_mask", o.copy_to_host().reshape(n, C),
    get_op("dropout_mask").reference(attrs, z, np.array(7.0)))
print(json.dumps(errors))
"""


def test_kernels_match_numpy():
    """(b) the tiled GEMM fallback on odd shapes with transposes; (c) every
    elementwise op (fused from its expression) and the shared kernels (sums,
    broadcast, dropout masks) against the NumPy references."""
    r = child(KERNELS)
    assert r.returncode == 0, r.stderr[-3000:]
    errors = json.loads(r.stdout.strip().splitlines()[-1])
    assert any(k.startswith("elementwise tanh") for k in errors)
    assert any(k.startswith("gemm") for k in errors)
    bad = {k: e for k, e in errors.items() if not e < 1e-12}
    assert not bad, bad


GRAPHS = r"""
import json, os, numpy as np, nnspec
from test_cuda_sim import SPECS
rng = np.random.default_rng(1)
out = {}
for name in SPECS:
    net = nnspec.compile(SPECS[name], dtype="float32", seed=3, device="cuda")
    net.set_optimizer("sgd", momentum=0.9)
    x = {"x": rng.standard_normal((5, 5)).astype(np.float32)}
    t = ({"label": rng.integers(0, 4, 5)} if "label" in net.targets
         else {"t": rng.standard_normal((5, 3)).astype(np.float32)})
    losses = [float(net.train_step(x, t, lr=0.05)) for _ in range(4)]
    prog = net._program("train")
    out[name] = {"losses": losses, "params": {k: v.tolist() for k, v in net.params.items()},
                 "graphs": sum(b.graph is not None for b in prog._bound.values()),
                 "no_graph": prog.no_graph}
print(json.dumps(out))
"""


@pytest.mark.skipif(not REAL, reason="CUDA graphs need a GPU (NNSPEC_CUDA_REAL=1)")
def test_graph_replay_equals_launches():
    """From its second call a step is captured into a CUDA graph and
    replayed: the losses and parameters after four steps equal those of the
    same steps launched one by one (NNSPEC_CUDA_GRAPHS=0), bit for bit."""
    runs = {}
    for graphs in ("1", "0"):
        env = {**child_env(), "NNSPEC_CUDA_GRAPHS": graphs}
        r = subprocess.run([sys.executable, "-c", GRAPHS], env=env, cwd=ROOT, text=True,
                           capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs[graphs] = json.loads(r.stdout.strip().splitlines()[-1])
    for name in SPECS:
        on, off = runs["1"][name], runs["0"][name]
        assert on["no_graph"] is None and on["graphs"] == 1, on
        assert off["graphs"] == 0, off
        assert on["losses"] == off["losses"], name
        assert on["params"] == off["params"], name


def test_device_cuda_without_a_gpu_is_one_line():
    """(d) --device cuda where no GPU can run: one line naming what is
    missing, exit 1, no traceback; --device auto falls back to the CPU."""
    from nnspec.backend.device import cuda_missing, resolve
    if REAL or cuda_missing() is None:
        pytest.skip("a GPU is usable here")
    r = child("from nnspec.cli import main; raise SystemExit(main(['train', "
              "'specs/mlp.nn', '--device', 'cuda', '--epochs', '1']))", simulator=False)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "device cuda cannot run here" in lines[0]
    assert any(w in lines[0] for w in ("numba-cuda", "driver", "GPU")), lines[0]
    assert resolve("auto") == "cpu"


UNSUPPORTED = r"""
import nnspec, numpy as np
from nnspec.ir import BATCH, Graph
from nnspec.ops.base import Op, register
from nnspec.passes import pipeline as pp
from nnspec.backend.cuda.runtime import Mirror
from nnspec.backend.cuda.step import CudaStep


class Twice(Op):            # an op with a shape rule and a reference, no CUDA kernel
    name, arity = "twice_no_cuda", 1

    def infer(self, attrs, shapes, dtypes):
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        return 2 * x


register(Twice())
g = Graph("t", "float32")
g.outputs["y"] = g.add("twice_no_cuda", [g.input("x", (BATCH, 3))], {}, name="y")
summed = nnspec.compile(SPECS["classifier"].replace("label)", "label, reduction=sum)"),
                        device="cuda")
x = np.zeros((2, 5), np.float32)
for run in (lambda: CudaStep(pp.build(g, "infer", "float32"), {}, {}, None, Mirror()),
            lambda: summed.gradients({"x": x}, {"label": np.zeros(2, np.int64)})):
    try:
        run()
        print("ran")
    except nnspec.DeviceError as e:
        print(e)
"""


def test_an_op_without_a_cuda_kernel_is_named():
    """(e) an op the CUDA backend has no kernel for: an error naming it, never
    a silent fallback to the CPU; an op with a kernel runs with every option
    (a loss with reduction=sum)."""
    r = child("from test_cuda_sim import SPECS\n" + UNSUPPORTED)
    assert r.returncode == 0, r.stderr[-3000:]
    missing, summed = r.stdout.strip().splitlines()
    assert missing.startswith("op 'twice_no_cuda' has no CUDA kernel yet (node 'y')"), missing
    assert summed == "ran", summed


SHARED_RACE = """
import time
import numpy as np
from nnspec.backend.cuda.kernels import kernels
from nnspec.backend.cuda.runtime import THREADS
sum_part = kernels("float64").sum_part
x = np.arange(1.0, 38.0)
empty = np.empty

def slow_empty(*a, **k):          # hands the GIL on where the look-up and the store
    time.sleep(0.002)             # of a new shared array are apart
    return empty(*a, **k)

np.empty = slow_empty
wrong = 0
for _ in range(5):
    part = np.zeros(2)
    sum_part[2, THREADS](x, x.size, part, False)
    wrong += part.sum() != x.sum()
print(wrong)
"""


def test_a_blocks_threads_share_its_shared_array():
    """The simulator's `cuda.shared.array` looks a call site's array up and
    stores a new one without a lock: two threads of a block starting together
    could each get one of their own, and a block reduction then summed part of
    its values (the zoo steps' intermittent misses: every other bias element,
    the first block's rows).  runtime.py locks it.  Here the window is made
    wide (a slow np.empty): the simulator alone gets every launch wrong."""
    if REAL:
        pytest.skip("a real GPU: no simulator")
    r = child(SHARED_RACE)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "0"
