"""Every op of the table (tests/opcases.py) through the compiled CPU backend:
the whole-step program (passes, fusion, memory plan, generated module) against
the NumPy interpreter, forward in float64 and float32, and the gradients of
the case's parameters (its unbatched float inputs) in float64.

The step runs as Python calling the compiled kernels and fused loops
(`whole=False`: the same generated code without the outer @njit), which keeps
a table of a few hundred programs quick to compile; tests/test_backend.py
compiles whole steps."""
from __future__ import annotations

import os

import numpy as np
import pytest

from nnspec.backend import numpy_ref
from nnspec.backend.cpu import compile_program
from nnspec.ir import BATCH, Graph
from nnspec.model import _layout
from nnspec.ops import get_op
from nnspec.passes.autodiff import backward

from opcases import CASES, Case

TOL = {"float32": dict(rtol=3e-5, atol=3e-5), "float64": dict(rtol=1e-11, atol=1e-12)}
UNCOMPILED = {"loop", "loop_output", "loop_grad"}     # recurrences run on the reference


def sample(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [a.sample(rng, dtype) for a in case.args]


def build(case: Case, xs, dtype):
    """Batched args become inputs, unbatched float args params, the rest
    (unbatched ints) inputs; loss = sum(op(...) * r)."""
    g = Graph("case", dtype)
    ids, params = [], {}
    for i, (a, x) in enumerate(zip(case.args, xs)):
        if a.batched or a.dtype != "float":
            shape = ((BATCH,) + x.shape[1:]) if a.batched else x.shape
            ids.append(g.input(f"x{i}", shape, dtype=str(x.dtype)))
        else:
            ids.append(g.param(f"p{i}", x.shape, trainable=a.grad, init="zeros"))
            params[ids[-1]] = x
    y = g.add(case.op, ids, case.attrs, name="y")
    g.outputs["y"] = y
    if str(g.dtype_of(y)).startswith("float"):
        r = g.input("r", g.shape(y), kind="target")
        g.meta["loss"] = g.add("sum", (g.add("mul", (y, r)),), name="loss")
    return g, ids, y, params


def compiled(g, kind, dtype, params, feeds, training=None):
    playout, np_ = _layout(g, g.params)
    slayout, ns = _layout(g, g.state)
    P, S = np.zeros(max(np_, 1), dtype), np.zeros(max(ns, 1), dtype)
    for nid, v in params.items():
        lay, arena = (playout, P) if nid in playout else (slayout, S)
        off, shape = lay[nid]
        arena[off:off + v.size] = v.ravel()
    G = np.zeros_like(P)
    prog = compile_program(g, kind, dtype, playout, slayout, whole=False,
                           training=training)
    hp = np.zeros(8, dtype)
    loss, ok = prog(P, S, G, np.zeros_like(P), np.zeros_like(P), hp, feeds)
    return prog, loss, G, playout


# Every case of the op table goes through test_ops against the kernels
# directly; here the generated programs are checked on one case per op
# (NNSPEC_SLOW=1 runs every case, in both dtypes).
SLOW = os.environ.get("NNSPEC_SLOW") == "1"


def one_per_op(cases):
    if SLOW:
        return list(cases)
    seen, out = set(), []
    for c in cases:
        if c.op not in seen:
            seen.add(c.op)
            out.append(c)
    return out


def _skip_uncompiled(case):
    if case.op in UNCOMPILED:
        pytest.skip("recurrences are not compiled (reference fallback)")


@pytest.mark.parametrize("dtype", ["float64", "float32"] if SLOW else ["float32"])
@pytest.mark.parametrize("case", one_per_op(CASES), ids=lambda c: c.id)
def test_forward_matches_reference(case, dtype):
    _skip_uncompiled(case)
    xs = sample(case, dtype)
    g, ids, y, params = build(case, xs, dtype)
    feeds = {i: x for i, x in zip(ids, xs) if i not in params}
    feeds = {k: v for k, v in feeds.items()}
    ref = numpy_ref.run(g, {**feeds, **params}, [y])[y]
    prog, _, _, _ = compiled(g, "infer", dtype, params, feeds,
                             training=case.attrs.get("training"))
    batch = next((x.shape[0] for a, x in zip(case.args, xs) if a.batched), 1)
    got = prog.value(y, batch) if y in prog.plan.slots else None
    assert got is not None, f"{case.id}: output not in the work arena"
    np.testing.assert_allclose(got, ref, **TOL[dtype], err_msg=case.id)


@pytest.mark.parametrize("case", one_per_op(
    [c for c in CASES if get_op(c.op).differentiable
     and any(not a.batched and a.dtype == "float" and a.grad for a in c.args)]),
                         ids=lambda c: c.id)
def test_param_gradients_match_reference(case):
    _skip_uncompiled(case)
    dtype = "float64"
    xs = sample(case, dtype, seed=1)
    g, ids, y, params = build(case, xs, dtype)
    feeds = {i: x for i, x in zip(ids, xs) if i not in params}
    batch = next((x.shape[0] for a, x in zip(case.args, xs) if a.batched), 1)
    shape = tuple(batch if d == BATCH else d for d in g.shape(y))
    feeds["r"] = np.random.default_rng(2).standard_normal(shape)
    gg, grads = backward(g, g.meta["loss"], g.params)
    want = numpy_ref.run(gg, {**feeds, **params}, list(grads.values()) + [g.meta["loss"]])
    prog, loss, G, playout = compiled(g, "grad", dtype, params, feeds,
                                      training=case.attrs.get("training"))
    assert loss == pytest.approx(float(want[g.meta["loss"]]), rel=1e-10, abs=1e-10)
    for p, gn in grads.items():
        off, shp = playout[p]
        got = G[off:off + int(np.prod(shp))].reshape(shp)
        np.testing.assert_allclose(got, want[gn], **TOL[dtype], err_msg=f"{case.id}: {p}")
