"""Recurrences compiled into the whole-step function (backend/loops.py via
codegen's hook): forward and gradients against the NumPy reference for the
Elman, LSTM and GRU cells of specs/, in every direction, with masks and
truncated BPTT; the generated code and its compile time do not depend on T."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.passes.autodiff import backward
from nnspec.passes.mode import specialise

pytest.importorskip("numba")
from nnspec.backend.cpu import CompiledStep  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"
CELLS = {"elman": "elman_rnn.nn", "lstm": "lstm.nn", "gru": "gru.nn"}
H, F = 4, 3


def cell_source(name: str) -> str:
    """The `cell name(...) { ... }` block of the spec that defines it."""
    text = (SPECS / CELLS[name]).read_text()
    m = re.search(rf"^cell {name}\(.*?^\}}", text, re.S | re.M)
    return m.group(0)


def spec(cell: str, options: str = "", final: bool = True, width: int = H,
         steps: str = "T") -> str:
    mask = "mask" in options
    return f"""{cell_source(cell)}
network t {{
  input x: [{steps}, {F}]
  {"input mask: [%s]" % steps if mask else ""}
  y = x -> {cell}({H}{", " + options if options else ""})
  output s = y
  {"output h = final(y)" if final else ""}
}}
train {{
  target r: [{steps}, {width}]
  {"target q: [%d]" % H if final else ""}
  loss = mse(s, r){" + mse(h, q)" if final else ""}
}}
"""


def feeds(net, B=3, T=7, seed=1):
    rng = np.random.default_rng(seed)
    out = {}
    for name in list(net.inputs) + list(net.targets):
        shape = tuple(B if d == "B" else T if d == "T" else d
                      for d in net.graph.shape(name))
        out[name] = rng.standard_normal(shape)
    if "mask" in out:
        m = np.ones((B, T))
        m[0, T - 2:] = 0          # padding at the end
        m[1, 2] = 0               # a hole in the middle
        out["mask"] = m
    return out


CASES = [("", True), ("reverse=true", True), ("direction=bidir, merge=concat", False),
         ("mask=mask", True), ("mask=mask, bptt=2", True), ("bptt=3, reverse=true", True)]


# Each combination is a fresh compile (20-45 s of CPU).  By default each
# option at least once: the Elman cell reversed and truncated, the plain and
# the masked-truncated LSTM, the bidirectional GRU (the plain forward cell
# runs in test_loop_backend.py and the zoo's specs).  NNSPEC_SLOW=1 runs every
# cell with every option.
FAST = {("elman", "bptt=3, reverse=true"), ("lstm", ""), ("lstm", "mask=mask, bptt=2"),
        ("gru", "direction=bidir, merge=concat")}
COMBOS = [(c, o, f) for c in CELLS for o, f in CASES
          if os.environ.get("NNSPEC_SLOW") or (c, o) in FAST]
COMBOS.append(("gru", "reset_after=true", True))    # PyTorch's form: stacked gates, split


@pytest.mark.parametrize("cell,options,final", COMBOS)
def test_compiled_loop_matches_reference(cell, options, final):
    width = 2 * H if "bidir" in options else H
    net = nnspec.compile(spec(cell, options, final, width), dtype="float64", seed=2)
    fd = feeds(net)
    x = {k: fd[k] for k in net.inputs}
    y = {k: fd[k] for k in net.targets}
    assert isinstance(net._program("grad"), CompiledStep)
    # forward (eval mode)
    got = net.forward(**x)
    g = specialise(net.graph, False)
    want = numpy_ref.run(g, {**x, **net.params}, list(g.outputs.values()))
    for k, nid in g.outputs.items():
        np.testing.assert_allclose(got[k], want[nid], rtol=1e-12, atol=1e-13, err_msg=k)
    # gradients (train mode)
    loss, grads = net.gradients(x, y)
    gt = specialise(net.graph, True)
    gg, gids = backward(gt, gt.meta["loss"], gt.params)
    vals = numpy_ref.run(gg, {**fd, **net.params}, [*gids.values(), gt.meta["loss"]])
    assert loss == pytest.approx(float(vals[gt.meta["loss"]]), rel=1e-12)
    for p, gn in gids.items():
        np.testing.assert_allclose(grads[p], vals[gn], rtol=1e-10, atol=1e-12, err_msg=p)


def test_batch_and_length_change_between_calls():
    """Arenas are per (batch, T): a longer sequence after a shorter one."""
    net = nnspec.compile(spec("gru"), dtype="float64", seed=0)
    for B, T in ((2, 5), (4, 11), (2, 5)):
        fd = feeds(net, B, T)
        got = net.forward(x=fd["x"])["s"]
        g = specialise(net.graph, False)
        want = numpy_ref.run(g, {"x": fd["x"], **net.params}, [g.outputs["s"]])
        np.testing.assert_allclose(got, want[g.outputs["s"]], rtol=1e-12, atol=1e-13)


def loop_functions(source: str) -> str:
    """The generated loop helpers of a step module."""
    return "\n".join(re.findall(r"^@njit[^\n]*\ndef _loop.*?(?=^\S|\Z)", source, re.S | re.M))


@pytest.mark.parametrize("cell", ["elman"] + (["lstm"] if os.environ.get("NNSPEC_SLOW") else []))
def test_source_does_not_depend_on_T(cell):
    srcs = []
    for T in (10, 1000):
        net = nnspec.compile(spec(cell, steps=str(T)), seed=0)
        srcs.append(net._program("train").source)
    a, b = (loop_functions(s) for s in srcs)
    assert a and a == b
    assert "for i in range(T_)" in a and "for i in range(T_ - 1, -1, -1)" in a
    # nothing is unrolled: one loop per direction, whatever T
    assert len(re.findall(r"^def _loop\d+\(", a, re.M)) == 2
    # with a dynamic time axis the whole step is one program for every T
    dyn = nnspec.compile(spec(cell), seed=0)
    p = dyn._program("train")
    for T in (10, 1000):
        fd = {k: v.astype(np.float32) for k, v in feeds(dyn, 2, T).items()}
        assert np.isfinite(dyn.train_step({"x": fd["x"]}, {"r": fd["r"], "q": fd["q"]}, 0.01))
        assert dyn._program("train") is p


COMPILE = r"""
import json, sys, time
t0 = time.perf_counter()
import nnspec, numpy as np
net = nnspec.compile(sys.argv[1], seed=0)
x = np.zeros((2, int(sys.argv[2]), 3), np.float32)
r = np.zeros((2, int(sys.argv[2]), 4), np.float32)
q = np.zeros((2, 4), np.float32)
net.train_step({"x": x}, {"r": r, "q": q}, 0.01)
print(json.dumps(time.perf_counter() - t0))
"""


@pytest.mark.skipif(not os.environ.get("NNSPEC_SLOW"),
                    reason="four fresh compiles in subprocesses: set NNSPEC_SLOW=1")
def test_compile_time_does_not_depend_on_T(tmp_path):
    """Uncached (fresh NNSPEC_CACHE / NUMBA_CACHE_DIR) and cached (second
    process on the same cache), for T = 10 and T = 1000."""
    times = {}
    for T in (10, 1000):
        env = dict(os.environ, NNSPEC_CACHE=str(tmp_path / f"c{T}"),
                   NUMBA_CACHE_DIR=str(tmp_path / f"n{T}"))
        text = spec("elman", steps=str(T))
        for run in ("first", "cached"):
            out = subprocess.run([sys.executable, "-c", COMPILE, text, str(T)], env=env,
                                 capture_output=True, text=True, check=True)
            times[(T, run)] = json.loads(out.stdout.strip().splitlines()[-1])
    for run in ("first", "cached"):
        a, b = times[(10, run)], times[(1000, run)]
        assert max(a, b) < 1.5 * min(a, b), times
