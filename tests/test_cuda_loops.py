"""Recurrent loops on the CUDA backend (backend/cuda/loop.py) under Numba's
CUDA simulator: one training step of small recurrent networks equals the
CPU backend's, in float64 (1e-10) and float32 (1e-5).

Each check runs the CUDA side in a child process (the simulator is chosen
before Numba is imported; tests/test_cuda_sim.py's `child`) and meanwhile
the CPU side here with the NumPy interpreter (NNSPEC_DRIVER=reference: the
oracle the compiled CPU loops are tested against in test_loop_compiled.py;
compiling these four loops for the CPU took minutes from an empty cache).
Sizes are tiny (hidden 3, T 3, batch 2): the simulator runs every GPU thread
as a Python thread.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from test_cuda_sim import TOL, child
from test_loop_compiled import cell_source

CELLS = "\n".join(cell_source(c) for c in ("lstm", "gru", "elman"))

# An LSTM, a GRU (after a dense layer: its input sequence's gradient), an
# Elman cell with a mask (a hole and padding at the end) and one run both
# ways (a reversed loop) with truncated BPTT, side by side: sequences and
# final states in the loss.
RECURRENT = CELLS + """
network cells {
    input x: [3, 2]
    input mask: [3]
    output a = x -> lstm(3)
    output b = x -> dense(2) -> gru(3)
    output c = x -> elman(3, mask=mask)
    output d = x -> elman(3, direction=bidir, merge=sum, bptt=2)
}
train {
    target r: [3, 3]
    target q: [3]
    loss = (mse(a, r) + mse(b, r) + mse(c, r) + mse(d, r)
            + mse(a.h, q) + mse(final(b), q) + mse(final(c), q) + mse(d.h, q))
}
"""

# The encoder-decoder of specs/seq2seq.nn, shrunk (a dense layer for the
# embedding): the decoder starts from the encoder's final states (gradients
# into a loop's initial states).
SEQ2SEQ = cell_source("lstm") + """
network seq2seq {
    input src: [3, 2]
    input prev: [3, 2]
    enc = src -> dense(2) -> lstm(3)
    dec = prev -> lstm(3, init=enc)
    output logits = dec -> dense(4)
}
train {
    target next: int[3]
    loss = cross_entropy(logits, next)
}
"""

SPECS = {"recurrent": RECURRENT, "seq2seq": SEQ2SEQ}


def feeds(net, B: int = 2) -> dict:
    """Random inputs and targets; a mask with padding and a hole."""
    rng = np.random.default_rng(1)
    out = {}
    for name in list(net.inputs) + list(net.targets):
        shape = tuple(B if d == "B" else d for d in net.graph.shape(name))
        if net.graph.dtype_of(name).startswith("int"):
            out[name] = rng.integers(0, 4, shape)
        else:
            out[name] = rng.standard_normal(shape).astype(net.dtype)
    if "mask" in out:
        m = np.ones(out["mask"].shape, net.dtype)
        m[0, -1] = 0              # padding at the end
        m[1, 1] = 0               # a hole in the middle
        out["mask"] = m
    return out


def steps(spec: str, dtype: str, device: str) -> dict:
    """Eval-mode outputs and loss; then one SGD step (momentum): its loss,
    every gradient, the parameters after it, by name."""
    import nnspec
    net = nnspec.compile(spec, dtype=dtype, seed=3, device=device)
    fd = feeds(net)
    x = {k: fd[k] for k in net.inputs}
    t = {k: fd[k] for k in net.targets}
    out = {}
    out["eval loss"], ys = net.evaluate_batch(x, t)
    out.update({f"forward {k}": v for k, v in ys.items()})
    net.set_optimizer("sgd", momentum=0.9)
    out["train loss"] = net.train_step(x, t, lr=0.1)
    g = net.grad_arena
    for name, (off, shape) in net._playout.items():
        out[f"grad {name}"] = g[off:off + int(np.prod(shape))].reshape(shape).copy()
    out.update({f"sgd {k}": v.copy() for k, v in net.params.items()})
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


CUDA_SIDE = """import numpy as np, warnings
warnings.simplefilter("ignore", RuntimeWarning)
from test_cuda_loops import SPECS, steps
for dt in ("float64", "float32"):
    np.savez(r"{out}/" + dt + ".npz", **steps(SPECS[{name!r}], dt, "cuda"))
"""


@pytest.mark.parametrize("name", sorted(SPECS))
def test_training_step_matches_the_cpu(name, tmp_path, monkeypatch):
    """Forward, loss, every gradient and the parameters after an SGD step
    equal the CPU backend's (the CUDA side in a child process meanwhile)."""
    with ThreadPoolExecutor(1) as pool:
        cuda_side = pool.submit(child, CUDA_SIDE.format(out=tmp_path, name=name), timeout=600)
        monkeypatch.setenv("NNSPEC_DRIVER", "reference")
        cpu = {dt: steps(SPECS[name], dt, "cpu") for dt in TOL}
        r = cuda_side.result()
    assert r.returncode == 0, r.stderr[-3000:]
    for dt, want in cpu.items():
        got = np.load(tmp_path / f"{dt}.npz")
        assert sorted(got.files) == sorted(want), dt
        for k, w in want.items():
            np.testing.assert_allclose(got[k], w, rtol=TOL[dt], atol=TOL[dt],
                                       err_msg=f"{name} {dt}: {k}")
