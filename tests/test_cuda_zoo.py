"""Zoo networks on the CUDA backend under the simulator: one training step equals
the CPU backend's.

For each spec, at sizes the simulator can afford (it runs every GPU thread as
a Python thread): two examples of the spec's own data, the loss and every
gradient, then the parameters (and batch norm's running statistics) after a
momentum-SGD step, on the CPU here and on the CUDA backend in a child
process, within 1e-10 relative in float64 and 1e-5 in float32.  The CPU
side is the NumPy interpreter (NNSPEC_DRIVER=reference), the oracle the
compiled CPU backend is tested against: nothing to compile here.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from test_cuda_sim import FAST_THREADS, ROOT, child_env

# A small ResNet at 16x16: stem, a basic block with an identity shortcut and
# one with a strided 1x1 projection, batch norm, global average pooling.
SMALL_RESNET = """
block basic(c, s)(x) {
    y = x -> conv2d(c, 3, stride=s, pad=1, bias=false) -> batchnorm -> relu
          -> conv2d(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + x)
}
block down(c)(x) {
    y = x -> conv2d(c, 3, stride=2, pad=1, bias=false) -> batchnorm -> relu
          -> conv2d(c, 3, pad=1, bias=false) -> batchnorm
    p = x -> conv2d(c, 1, stride=2, bias=false) -> batchnorm
    return relu(y + p)
}
network small_resnet {
    input x: [3, 16, 16]
    output logits = x -> conv2d(4, 3, pad=1, bias=false) -> batchnorm -> relu
        -> basic(4, 1) -> down(6) -> global_avgpool -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
"""

# spec (a zoo name, or text), --set overrides, dtypes.  DenseNet-121 (121
# layers: thousands of launches) only with NNSPEC_SLOW=1; Xception has 21 M
# parameters at any input size, too many for the simulator's Python threads
# (its ops are all among the table's and DenseNet's).
SLOW = bool(os.environ.get("NNSPEC_SLOW"))
CASES = [   # one dtype each by default (the suite's time), both with NNSPEC_SLOW=1
    ("lenet5", {}, ("float64", "float32") if SLOW else ("float32",)),
    (SMALL_RESNET, {}, ("float64", "float32") if SLOW else ("float64",)),
    *([("densenet121", {"size": 32, "growth": 2}, ("float64",))]
      if SLOW else []),
]
TOL = {"float64": 1e-10, "float32": 1e-5}


def batch_of(name: str, sets: dict, n: int = 2):
    """(sets, inputs, targets): n examples of the spec's data at `sets`
    (random ones for a spec given as text)."""
    import nnspec
    if "{" in name:
        rng = np.random.default_rng(0)
        return sets, {"x": rng.standard_normal((n, 3, 16, 16))}, \
            {"label": rng.integers(0, 10, n)}
    from nnspec.data import is_text, load, text_info
    from nnspec.train.commands import training_args
    from nnspec.data.registry import parse
    path = ROOT / "specs" / f"{name}.nn"
    graph = nnspec.lower(path, set=sets)
    kind, opts = parse(graph.meta["train"]["data"])
    opts.update({"limit": 20, **({"size": sets["size"]} if "size" in sets else {})})
    data = f"{kind}(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"
    info = text_info(data) if is_text(data) else None
    full = training_args(graph, data, {}, info)
    full.update(sets)
    net = nnspec.compile(path, set=full)
    arrays, _ = load(data, net)
    return (full, {k: arrays[k][:n] for k in net.inputs},
            {k: arrays[k][:n] for k in net.targets})


def one_step(name: str, sets: dict, dtype: str, device: str, x: dict, t: dict) -> dict:
    import nnspec
    spec = name if "{" in name else ROOT / "specs" / f"{name}.nn"
    net = nnspec.compile(spec, set=sets, dtype=dtype, seed=5, device=device)
    x = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in x.items()}
    t = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in t.items()}
    out = {}
    out["loss"], grads = net.gradients(x, t)
    out.update({f"grad {k}": v for k, v in grads.items()})
    net.set_optimizer("sgd", momentum=0.9)
    out["step loss"] = net.train_step(x, t, lr=0.05)
    out.update({f"param {k}": v.copy() for k, v in net.params.items()})
    out.update({f"state {k}": v.copy() for k, v in net.state.items()})
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


CHILD = """
import pickle, sys, warnings
import numpy as np
warnings.simplefilter('ignore', RuntimeWarning)
from test_cuda_zoo import one_step
name, sets, dtype, x, t, path = pickle.load(open(sys.argv[1], 'rb'))
np.savez(path, **one_step(name, sets, dtype, 'cuda', x, t))
"""


def _id(case) -> str:
    return "small_resnet" if "{" in case[0] else case[0]


@pytest.mark.parametrize("name,sets,dtypes", CASES,
                         ids=[_id(c) for c in CASES])
def test_training_step_matches_the_cpu(name, sets, dtypes, tmp_path, monkeypatch):
    import pickle
    full, x, t = batch_of(name, sets)
    for dtype in dtypes:
        args = tmp_path / f"{dtype}.pkl"
        got_path = tmp_path / f"{dtype}.npz"
        with open(args, "wb") as f:
            pickle.dump((name, full, dtype, x, t, str(got_path)), f)
        proc = subprocess.Popen([sys.executable, "-c", FAST_THREADS + CHILD, str(args)],
                                env=child_env(), cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        monkeypatch.setenv("NNSPEC_DRIVER", "reference")
        want = one_step(name, full, dtype, "cpu", x, t)
        monkeypatch.delenv("NNSPEC_DRIVER")
        _, err = proc.communicate(timeout=1500)
        assert proc.returncode == 0, err[-3000:]
        got = np.load(got_path)
        assert sorted(got.files) == sorted(want)
        for k, w in want.items():
            scale = max(1.0, float(np.max(np.abs(w), initial=0.0)))
            np.testing.assert_allclose(got[k], w, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                                       err_msg=f"{name} {dtype}: {k}")
