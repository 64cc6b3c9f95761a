"""Compiled steps that used to crash: one-input ops (softmax, reshape) in a
cell's step, and fused elementwise chains whose helper takes more arguments
than CPython passes one by one (codegen.pack_args), in a cell and in the
network.  Each checked against the NumPy reference: the forward (eval mode)
and one SGD step (train mode, lr 1: the update is minus the gradient)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.passes.autodiff import backward
from nnspec.passes.mode import specialise

pytest.importorskip("numba")
from nnspec.backend import codegen  # noqa: E402

SPECS = Path(__file__).resolve().parent.parent / "specs"


def check_against_reference(source: str, B: int = 3, T: int = 5, seed: int = 1, set=None):
    net = nnspec.compile(source, dtype="float64", seed=2, set=set)
    rng = np.random.default_rng(seed)
    fd = {}
    for name in list(net.inputs) + list(net.targets):
        shape = tuple(B if d == "B" else T if d == "T" else d for d in net.graph.shape(name))
        fd[name] = rng.standard_normal(shape)
    x = {k: fd[k] for k in net.inputs}
    y = {k: fd[k] for k in net.targets}
    got = net.forward(**x)
    g = specialise(net.graph, False)
    want = numpy_ref.run(g, {**x, **net.params}, list(g.outputs.values()))
    for k, nid in g.outputs.items():
        np.testing.assert_allclose(got[k], want[nid], rtol=1e-12, atol=1e-13, err_msg=k)
    gt = specialise(net.graph, True)
    gg, gids = backward(gt, gt.meta["loss"], gt.params)
    vals = numpy_ref.run(gg, {**fd, **net.params}, [*gids.values(), gt.meta["loss"]])
    before = {p: v.copy() for p, v in net.params.items()}
    net.set_optimizer("sgd")
    loss = net.train_step(x, y, lr=1.0)
    assert loss == pytest.approx(float(vals[gt.meta["loss"]]), rel=1e-12)
    for p, gn in gids.items():
        np.testing.assert_allclose(before[p] - net.params[p], vals[gn], rtol=1e-9,
                                   atol=1e-12, err_msg=p)
    return net


ONE_INPUT_OP = """
cell c(n)(x) {
    state h = zeros(n)
    h[t] = softmax(dense(x[t], n) + dense(h[t-1], n, bias=false))
    return h
}
network t {
    input x: [T, 3]
    y = x -> c(5)
    output s = y
}
train {
    target r: [T, 5]
    loss = mse(s, r)
}
"""


def test_one_input_op_in_a_cell_step():
    """A softmax in the step: the paired-loop writer read a second input of
    every op that was not fused before asking whether it was a product."""
    check_against_reference(ONE_INPUT_OP)


@pytest.mark.skipif(not os.environ.get("NNSPEC_SLOW"),
                    reason="a minute of compiling: set NNSPEC_SLOW=1 (by default "
                           "test_zoo_runs runs the spec's forward and training step)")
def test_lstm_peephole_spec():
    """specs/lstm_peephole.nn (reshapes and a depthwise conv1d in the step),
    at 5 units over an 8x8 digit."""
    text = (SPECS / "lstm_peephole.nn").read_text()
    text = text[:text.index("\ntrain {")]       # float targets: an exact train step
    check_against_reference(text + "\ntrain {\n    target r: [10]\n    loss = mse(logits, r)\n}\n",
                            set={"hidden": 5})


SIX = "\n    ".join(f"d{k} = dense(x[t], n)" for k in range(6))
LONG_CHAIN_CELL = f"""
cell c(n)(x) {{
    state h = zeros(n)
    {SIX}
    h[t] = tanh(d0 + d1 + d2 + d3 + d4 + d5 + h[t-1])
    return h
}}
network t {{
    input x: [T, 3]
    y = x -> c(4)
    output s = y
}}
train {{
    target r: [T, 4]
    loss = mse(s, r)
}}
"""


def test_long_fused_chain_in_a_cell_step():
    """Six products and their biases summed with the state: one fused loop
    whose inlined helper takes more than MAX_CALL_ARGS arguments."""
    net = check_against_reference(LONG_CHAIN_CELL)
    src = net._program("infer").source
    assert "_pk0_0" in src, "the chain's arguments were not packed"


@pytest.mark.parametrize("B,driver", [(3, "whole"), (11000, "whole"), (11000, "calls")])
def test_long_fused_chain_in_the_network(B, driver, monkeypatch):
    """A sum of 40 products: one fused loop of 80 inputs (products and biases);
    at 11,000 rows (33,000 values) its parallel variant runs, whose packed
    output once lost every write (codegen.pack_args)."""
    monkeypatch.setenv("NNSPEC_DRIVER", driver)
    terms = " + ".join(["dense(x, 3)"] * 40)
    net = check_against_reference(f"""
network t {{
    input x: [4]
    output s = tanh({terms})
}}
train {{
    target r: [3]
    loss = mse(s, r)
}}
""", B=B)
    assert "_pk0_0" in net._program("infer").source


def test_pack_args_nested_and_inlined():
    """Packing in tuples of tuples: a helper of 1,000 parameters inlined."""
    from numba import njit, prange
    n = 1000
    params = [f"a{j}" for j in range(n)]
    args = [f"x[{j}]" for j in range(n)]
    ps, xs, lines = codegen.pack_args(params, args)
    assert len(ps) <= codegen.MAX_CALL_ARGS
    src = "\n".join([f"def helper({', '.join(ps)}):"] + ["    " + ln for ln in lines]
                    + [f"    return {' + '.join(params)}",
                       "def caller(x):", f"    return helper({', '.join(xs)})"])
    ns = {}
    exec(compile(src, "<packed>", "exec"), ns)
    ns["helper"] = njit(inline="always")(ns["helper"])
    caller = njit(ns["caller"])
    x = np.arange(n, dtype=np.float64)
    assert caller(x) == x.sum()
    # a parallel loop writing into an array taken out of a pack keeps its writes
    ps, xs, lines = codegen.pack_args(["n", "o"] + params[:40], ["n", "o"] + args[:40])
    src = "\n".join([f"def par({', '.join(ps)}):"] + ["    " + ln for ln in lines]
                    + ["    for k in prange(n):", f"        o[k] = k + {params[39]}"])
    ns = {"prange": prange}
    exec(compile(src, "<packed-parallel>", "exec"), ns)
    par = njit(parallel=True)(ns["par"])
    o = np.zeros(1000)
    par(*[eval(a, {"n": 1000, "o": o, "x": x}) for a in xs])
    np.testing.assert_array_equal(o, np.arange(1000) + x[39])
    assert codegen.pack_args(params[:30], args[:30]) == (params[:30], args[:30], [])
