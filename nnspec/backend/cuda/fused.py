"""A `fused` node (passes/fusion.py) as one CUDA kernel: the members' scalar
expressions (`Elementwise.expr`, as `member_expr` gives them) in a
grid-stride loop over the output, the same groups the CPU fuses.

    t0 = x0[k] + x1[(k // q1) % r1]      # x1: a bias [C] read along [B, C]
    t1 = max(t0, T(0))
    o[k] = t1

An input is read whole (`x[k]`), as a scalar (`x[0]`) or as a contiguous
block of the output's axes (`x[(k // q) % r]`, q and r given at launch since
they may hold the batch size).  NumPy's functions in an expression become
the device's (`np.exp` -> `math.exp`); one without a device form is a
DeviceError naming the op.  Each distinct kernel text is one module in the
disk cache (named by its hash, which covers the dtype and the device
architecture), so equal chains share a kernel.
"""
from __future__ import annotations

import ast
import functools

from ...errors import DeviceError
from ...passes.fusion import block_pattern, member_expr
from .. import cache
from .runtime import arch, watched

# NumPy's scalar functions -> the device's
DEVICE_FUNCTIONS = {
    "exp": "math.exp", "log": "math.log", "log1p": "math.log1p", "expm1": "math.expm1",
    "tanh": "math.tanh", "sqrt": "math.sqrt", "abs": "abs", "maximum": "max",
    "minimum": "min", "sign": "_sign",
}

HEAD = '''"""nnspec fused elementwise kernel, {dtype}, {arch}."""
import math

import numpy as np
from numba import cuda

T = np.{dtype}


@cuda.jit(device=True)
def _sign(x):
    return T(1) if x > T(0) else T(-1) if x < T(0) else x * T(0)


@cuda.jit(cache=True)
def fused({params}):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
'''


def device_expr(op: str, expr: str) -> str:
    """`expr` with NumPy's functions replaced by the device's."""
    class Sub(ast.NodeTransformer):
        def visit_Call(self, node):
            self.generic_visit(node)
            f = node.func
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
                    and f.value.id == "np":
                if f.attr not in DEVICE_FUNCTIONS:
                    raise DeviceError(f"op '{op}' has no CUDA kernel yet (its expression "
                                      f"calls np.{f.attr})")
                node.func = ast.parse(DEVICE_FUNCTIONS[f.attr], mode="eval").body
            return node
    return ast.unparse(Sub().visit(ast.parse(expr, mode="eval")))


def source(body: list, pats: list, dtype: str) -> str:
    """The kernel module's text for fused members `body` (passes/fusion.py's
    attrs["body"]) over inputs read as `pats` (block_pattern of each)."""
    reads, params, blocks = [], ["o", "n"], []
    for j, p in enumerate(pats):
        params.append(f"x{j}")
        if p[0] == "full":
            reads.append(f"x{j}[k]")
        elif p[0] == "scalar":
            reads.append(f"x{j}[0]")
        else:
            blocks += [f"q{j}", f"r{j}"]
            reads.append(f"x{j}[(k // q{j}) % r{j}]")
    params += blocks            # after the inputs, in their order: as `kernel` passes them
    lines = []
    for i, m in enumerate(body):
        expr = device_expr(m["op"], member_expr(m["op"], m["attrs"]))
        names = {v: (reads[int(a[2:])] if a.startswith("in") else a)
                 for v, a in zip(("a", "b", "c"), m["args"])}

        class Ren(ast.NodeTransformer):
            def visit_Name(self, node):
                if node.id in names:
                    return ast.parse(names[node.id], mode="eval").body
                return node
        lines.append(f"        t{i} = {ast.unparse(Ren().visit(ast.parse(expr, mode='eval')))}")
    lines.append(f"        o[k] = t{len(body) - 1}")
    return HEAD.format(dtype=dtype, arch=arch(), params=", ".join(params)) + "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _load(text: str):
    return watched(cache.load(f"cuda_{arch()}_fused", text)).fused


def kernel(body: list, in_shapes: list, out_shape, dtype: str):
    """(compiled kernel, the launch arguments after o, n and the inputs, as a
    function of the concrete output shape)."""
    pats = [block_pattern(s, out_shape) for s in in_shapes]
    fn = _load(source(body, pats, dtype))

    def extra(shape) -> list:
        args = []
        for p in pats:
            if p[0] == "block":
                lo, hi = p[1], p[2]
                q = r = 1
                for d in shape[hi + 1:]:
                    q *= d
                for d in shape[lo:hi + 1]:
                    r *= d
                args += [q, r]
        return args
    return fn, extra
