"""Elementwise ops: the scalar math of each is written once, as an expression.

    relu       "np.maximum(a, T(0))"
    sigmoid    "np.exp(np.minimum(a, T(0))) / (T(1) + np.exp(-np.abs(a)))"
    leaky_relu "np.maximum(a, T(0)) + T(alpha) * np.minimum(a, T(0))"

The expression convention (`Elementwise.expr`), shared by the NumPy reference,
the per-op CPU kernels generated below and the backend's fusion pass:

* `a`, `b`, `c` are the op's inputs in order (`arity` of them).  The same text
  must mean the same thing whether they are whole arrays (the reference) or
  scalars (a fused loop body), so use `np.maximum`, `np.minimum`, `np.exp`,
  `np.log`, `np.log1p`, `np.expm1`, `np.sqrt`, `np.tanh`, `np.abs`, `np.sign`,
  arithmetic, and comparisons multiplied in as 0/1 (`(a > T(0)) * b`); no
  `if`/`else`, no `np.where`.
* `T` is the scalar type of the computation (`np.float32` or `np.float64`,
  inside a kernel `out.dtype.type`).  Every numeric literal is written `T(2)`,
  never a bare `2` or `0.5`: in Numba a bare literal is int64 or float64 and
  would promote float32 code to float64.
* Any other free name is an attribute of the node (`alpha`), substituted as a
  Python float; the expression casts it itself, `T(alpha)`.  `Elementwise.params`
  lists those names with their defaults.

Binary ops broadcast as NumPy does (a bias [C, 1, 1] against [B, C, H, W], a
`const` of shape ()); their gradients reduce back with `sum_to`.  The kernels
here assume C-contiguous arrays.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .base import (Cuda, Map, Op, broadcast, cuda_kernel, flat, fmt, kernel, layer, prange, prod,
                   register)

_INPUTS = ("a", "b", "c")


class Elementwise(Op):
    """One elementwise op: `expr` over `a`, `b`, `c` (see the module docstring).
    `grad_rule(gb, node, g) -> [grad or None per input]` builds the gradient."""
    elementwise = True

    def __init__(self, name, arity, expr, grad_rule=None, params=None, differentiable=True):
        self.name, self.arity, self.expr = name, arity, expr
        self.params = dict(params or {})          # attr name -> default
        self.grad_rule = grad_rule
        self.differentiable = differentiable and grad_rule is not None
        self._code = compile(expr, f"<{name}>", "eval")
        self.kernel_fn = _make_kernel(name, arity, expr, tuple(self.params))

    def infer(self, attrs, shapes, dtypes):
        if len(shapes) != self.arity:
            raise ShapeError(f"{self.name}: takes {self.arity} inputs, got {len(shapes)}")
        out = tuple(shapes[0])
        for s in shapes[1:]:
            out = broadcast(self.name, out, tuple(s))
        for d in dtypes:
            if not str(d).startswith("float"):
                raise ShapeError(f"{self.name}: needs float inputs, got {d}")
        return out, dtypes[0]

    def attr_values(self, attrs) -> dict:
        return {k: float(attrs.get(k, v)) for k, v in self.params.items()}

    def reference(self, attrs, *xs):
        T = np.result_type(*xs).type
        env = {"np": np, "T": T, **self.attr_values(attrs)}
        env.update(zip(_INPUTS, (np.asarray(x) for x in xs)))
        with np.errstate(over="ignore", under="ignore"):
            return np.asarray(eval(self._code, env), dtype=T)

    def grad(self, gb, node, g):
        return self.grad_rule(gb, node, g)

    def kernel(self, attrs):
        return self.kernel_fn, tuple(self.attr_values(attrs).values())


# ---- kernel generation ------------------------------------------------------
# One loop per op, generated from its expression.  The code is compiled with this
# file's name so Numba's disk cache can locate it (and keys it by bytecode).

_TEMPLATE = '''
def ew_{name}({args}out{extra}):
    T = out.dtype.type
    o = out.reshape(-1)
    n = o.size
{flat}
    if {fast}:
{steps}
        for i in prange(n):
{loads_fast}
            o[i] = {expr}
    else:
        shp = _shape_of(out)
{strides}
        nd = shp.size
        inner = _inner_sizes(shp)
        for j in prange(n):
{zero}
            for ax in range(nd):
                q = (j // inner[ax]) % shp[ax]
{acc}
{loads_gen}
            o[j] = {expr}
'''


def _make_kernel(name, arity, expr, params):
    v = _INPUTS[:arity]
    ind = lambda k, lines: "\n".join(" " * k + s for s in lines)  # noqa: E731
    src = _TEMPLATE.format(
        name=name, expr=expr,
        args="".join(f"x{x}, " for x in v),
        extra="".join(f", {p}" for p in params),
        flat=ind(4, [f"f{x} = x{x}.reshape(-1)" for x in v]),
        fast=" and ".join(f"(f{x}.size == n or f{x}.size == 1)" for x in v),
        steps=ind(8, [f"m{x} = 1 if f{x}.size == n else 0" for x in v]),
        loads_fast=ind(12, [f"{x} = f{x}[i * m{x}]" for x in v]),
        strides=ind(8, [f"s{x} = _bstrides(x{x}, shp)" for x in v]),
        zero=ind(12, [f"i{x} = 0" for x in v]),
        acc=ind(16, [f"i{x} += q * s{x}[ax]" for x in v]),
        loads_gen=ind(12, [f"{x} = f{x}[i{x}]" for x in v]),
    )
    ns = globals()
    exec(compile(src, __file__, "exec"), ns)
    fn = ns[f"ew_{name}"]
    fn.__module__ = __name__
    return kernel(parallel=True)(fn)


@kernel
def _shape_of(x):
    s = np.empty(x.ndim, np.int64)
    for k in range(x.ndim):
        s[k] = x.shape[k]
    return s


@kernel
def _inner_sizes(shp):
    """inner[k] = prod(shp[k+1:]): the flat-index step of axis k."""
    inner = np.ones(shp.size, np.int64)
    for k in range(shp.size - 2, -1, -1):
        inner[k] = inner[k + 1] * shp[k + 1]
    return inner


@kernel
def _bstrides(x, shp):
    """Element strides of x read in an array of shape `shp` (NumPy's
    right-aligned broadcasting): 0 along axes where x has size 1."""
    nd = shp.size
    st = np.zeros(nd, np.int64)
    s = 1
    for k in range(x.ndim):
        ax = x.ndim - 1 - k
        if x.shape[ax] != 1:
            st[nd - 1 - k] = s
        s *= x.shape[ax]
    return st


# ---- gradient helpers -----------------------------------------------------------

def unbroadcast(gb, g, inp):
    """`g` summed back to the shape of input `inp` (a no-op when equal)."""
    if tuple(gb.graph.shape(g)) == tuple(gb.graph.shape(inp)):
        return g
    return gb.add("sum_to", (g, inp))


def _g_add(gb, node, g):
    return [unbroadcast(gb, g, x) if gb.wants(i) else None for i, x in enumerate(node.inputs)]


def _g_sub(gb, node, g):
    a, b = node.inputs
    return [unbroadcast(gb, g, a) if gb.wants(0) else None,
            unbroadcast(gb, gb.add("neg", (g,)), b) if gb.wants(1) else None]


def _g_mul(gb, node, g):
    a, b = node.inputs
    return [unbroadcast(gb, gb.add("mul", (g, b)), a) if gb.wants(0) else None,
            unbroadcast(gb, gb.add("mul", (g, a)), b) if gb.wants(1) else None]


def _g_div(gb, node, g):
    a, b = node.inputs
    return [unbroadcast(gb, gb.add("div", (g, b)), a) if gb.wants(0) else None,
            unbroadcast(gb, gb.add("div_grad_b", (g, a, b)), b) if gb.wants(1) else None]


def _on_input(op, **attrs):
    """Unary op whose gradient is `op(g, x)`."""
    return lambda gb, node, g: [gb.add(op, (g, node.inputs[0]),
                                       {k: node.attrs.get(k, v) for k, v in attrs.items()})]


def _on_output(op):
    """Unary op whose gradient is `op(g, y)`, y the op's own output."""
    return lambda gb, node, g: [gb.add(op, (g, node.id))]


def _g_leaky_relu(gb, node, g):
    """leaky_relu_grad(g, y) on the output, as relu's, where alpha >= 0: y > 0
    exactly where x > 0 and y <= 0 where x <= 0 (NaN in neither), the same
    mask bit for bit; a negative alpha turns x < 0 into y > 0, and the
    gradient reads x."""
    alpha = node.attrs.get("alpha", 0.01)
    src = node.id if alpha >= 0 else node.inputs[0]
    return [gb.add("leaky_relu_grad", (g, src), {"alpha": alpha})]


def _g_grad_op(op, **attrs):
    """Gradient of a helper `h(g, x) = g * f'(x)` with f' piecewise constant:
    linear in g (dg = h(g', x)) and flat in x almost everywhere."""
    def rule(gb, node, g):
        gi, x = node.inputs
        at = {k: node.attrs.get(k, v) for k, v in attrs.items()}
        return [unbroadcast(gb, gb.add(op, (g, x), at), gi) if gb.wants(0) else None, None]
    return rule


_E = Elementwise
for _op in [
    _E("add", 2, "a + b", _g_add),
    _E("sub", 2, "a - b", _g_sub),
    _E("mul", 2, "a * b", _g_mul),
    _E("div", 2, "a / b", _g_div),
    _E("neg", 1, "-a", lambda gb, n, g: [gb.add("neg", (g,))]),
    _E("identity", 1, "a", lambda gb, n, g: [g]),
    _E("square", 1, "a * a", _on_input("square_grad")),
    _E("exp", 1, "np.exp(a)", lambda gb, n, g: [gb.add("mul", (g, n.id))]),
    _E("log", 1, "np.log(a)", lambda gb, n, g: [gb.add("div", (g, n.inputs[0]))]),
    _E("sqrt", 1, "np.sqrt(a)", _on_output("sqrt_grad")),
    _E("abs", 1, "np.abs(a)", _on_input("abs_grad")),
    # relu's gradient reads its output (y > 0 exactly where x > 0, NaN in
    # neither): its input, a batch norm's output say, need not outlive the
    # forward (DenseNet-121's dense layers kept 0.5 GB of them at batch 8)
    _E("relu", 1, "np.maximum(a, T(0))", _on_output("relu_grad")),
    _E("leaky_relu", 1, "np.maximum(a, T(0)) + T(alpha) * np.minimum(a, T(0))",
       _g_leaky_relu, {"alpha": 0.01}),
    _E("elu", 1, "np.maximum(a, T(0)) + T(alpha) * np.expm1(np.minimum(a, T(0)))",
       _on_input("elu_grad", alpha=1.0), {"alpha": 1.0}),
    _E("sigmoid", 1, "np.exp(np.minimum(a, T(0))) / (T(1) + np.exp(-np.abs(a)))",
       _on_output("sigmoid_grad")),
    _E("tanh", 1, "np.tanh(a)", _on_output("tanh_grad")),
    _E("softplus", 1, "np.maximum(a, T(0)) + np.log1p(np.exp(-np.abs(a)))",
       _on_input("sigmoid_times")),
    # Gradient helpers; `a` is the incoming gradient.  Those whose value is
    # piecewise linear in `a` are differentiable, the rest are internal
    # (differentiable=False: no second derivatives through them).
    _E("relu_grad", 2, "a * (b > T(0))", _g_grad_op("relu_grad")),
    _E("abs_grad", 2, "a * np.sign(b)", _g_grad_op("abs_grad")),
    _E("leaky_relu_grad", 2, "a * ((b > T(0)) + T(alpha) * (b <= T(0)))",
       _g_grad_op("leaky_relu_grad", alpha=0.01), {"alpha": 0.01}),
    _E("square_grad", 2, "T(2) * a * b", lambda gb, n, g: [
        gb.add("square_grad", (g, n.inputs[1])) if gb.wants(0) else None,
        gb.add("square_grad", (g, n.inputs[0])) if gb.wants(1) else None]),
    _E("sqrt_grad", 2, "a / (T(2) * b)"),
    _E("elu_grad", 2,
       "a * ((b > T(0)) + T(alpha) * (b <= T(0)) * np.exp(np.minimum(b, T(0))))",
       params={"alpha": 1.0}),
    _E("sigmoid_grad", 2, "a * b * (T(1) - b)"),
    _E("tanh_grad", 2, "a * (T(1) - b * b)"),
    _E("sigmoid_times", 2, "a * np.exp(np.minimum(b, T(0))) / (T(1) + np.exp(-np.abs(b)))"),
    _E("div_grad_b", 3, "-a * b / (c * c)"),
]:
    register(_op)


# ---- fill_like ------------------------------------------------------------------

class FillLike(Op):
    """fill_like(x; value): an array of x's shape and dtype, every element
    `value` (autodiff's seed).  Its value does not depend on x's values."""
    name = "fill_like"
    arity = 1

    def infer(self, attrs, shapes, dtypes):
        return tuple(shapes[0]), dtypes[0]

    def reference(self, attrs, x):
        return np.full(x.shape, attrs.get("value", 0.0), dtype=x.dtype)

    def grad(self, gb, node, g):
        return [None]

    def kernel(self, attrs):
        return fill_like, (float(attrs.get("value", 0.0)),)

    def cuda(self, attrs, in_shapes, out_shape):
        # (a float fill_like is a member of a fused kernel; this runs the rest)
        return Cuda([Map(fill_like_cuda, prod(out_shape), [flat("out", out_shape)],
                         (float(attrs.get("value", 0.0)),))])


register(FillLike())


@cuda_kernel
def fill_like_cuda(k, out, value):
    out[k] = value


@kernel(parallel=True)
def fill_like(x, out, value):
    o = out.reshape(-1)
    v = out.dtype.type(value)
    for i in prange(o.size):
        o[i] = v


# ---- activation layers ---------------------------------------------------------

@layer("relu")
def relu(ctx, x):
    """Rectified linear unit, max(x, 0)."""
    return ctx.emit("relu", [x])


@layer("sigmoid")
def sigmoid(ctx, x):
    """Logistic sigmoid 1 / (1 + exp(-x)), computed without overflow."""
    return ctx.emit("sigmoid", [x])


@layer("tanh")
def tanh(ctx, x):
    """Hyperbolic tangent."""
    return ctx.emit("tanh", [x])


@layer("identity")
def identity(ctx, x):
    """The input unchanged (a named pass-through)."""
    return ctx.emit("identity", [x])


@layer("softplus")
def softplus(ctx, x):
    """log(1 + exp(x)), computed without overflow."""
    return ctx.emit("softplus", [x])


@layer("leaky_relu")
def leaky_relu(ctx, x, alpha=0.01):
    """max(x, 0) + alpha * min(x, 0): `leaky_relu(0.2)`."""
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        ctx.fail(f"leaky_relu: alpha must be a number, got {alpha!r}")
    return ctx.emit("leaky_relu", [x], {"alpha": float(alpha)})


@layer("elu")
def elu(ctx, x, alpha=1.0):
    """Exponential linear unit: x for x > 0, alpha * (exp(x) - 1) otherwise."""
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        ctx.fail(f"elu: alpha must be a number, got {alpha!r}")
    return ctx.emit("elu", [x], {"alpha": float(alpha)})


@layer("exp")
def exp(ctx, x):
    """Elementwise e^x."""
    return ctx.emit("exp", [x])


@layer("log")
def log(ctx, x):
    """Elementwise natural logarithm."""
    return ctx.emit("log", [x])


@layer("sqrt")
def sqrt(ctx, x):
    """Elementwise square root."""
    return ctx.emit("sqrt", [x])


@layer("square")
def square(ctx, x):
    """Elementwise x * x."""
    return ctx.emit("square", [x])


@layer("abs")
def abs_(ctx, x):
    """Elementwise |x|."""
    return ctx.emit("abs", [x])
