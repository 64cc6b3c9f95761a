"""Python source for one compiled step: a module whose `step` function runs a
whole program (forward, backward, optimizer update) in one Numba call.

    step(P, S, G, M, V, hp, W_<dtype>..., <inputs>...) -> (loss, ok)

    P  parameters (flat arena)      S  state (running statistics)
    G  parameter gradients (P's layout)      M, V  optimizer slots (P's layout)
    hp hyper-parameters (backend/optim.py)   W_<dtype>  work arenas (passes/memory.py)

Every value is a slice of one of those arrays, cut at offsets baked into the
code (batch-scaled ones as `offset * B`), so the Python side passes the same
handful of arrays every step.  Op kernels are called as `module.fn`
attributes of the op modules (compiled by `backend.jit.compile_module`);
elementwise groups become loops generated here, with typed constants (`T(1)`,
never `1.0`) so float32 code stays float32.
"""
from __future__ import annotations

import ast
import hashlib
import sys

import numpy as np

from ..ops import get_op
from . import kernels
from ..passes.fusion import block_pattern, member_expr

PAR_MIN_EW = 1 << 15       # elementwise loops at least this long run in parallel
PAR_MIN_EW_EXAMPLE = 2048  # ... if they have at least this many elements per example
PAR_MIN_WORK = 1 << 20     # steps of fewer multiply-adds run on one thread: waking a
                           # second one costs more than it saves (and far more when the
                           # machine is busy)
BLAS_OPS = ("linear", "matmul")  # ops whose kernels are one threaded BLAS product
PAR_MIN_LOOP_STEP = 1 << 20  # a loop's steps count towards that only when one step
                             # (all its examples) is at least this: smaller GEMMs lose
                             # more to waking the second thread at every step than they gain

# float32 tanh and sigmoid in fused loops: a rational minimax fit,
# tanh(x) ~ x P(x^2) / Q(x^2) on |x| <= 9 (beyond, tanh rounds to +-1 in
# float32), fitted for this backend.  Only multiply-adds and one division,
# so LLVM vectorises the loop: 0.15 ns per element against 2 ns for libm's
# expf-based forms.  Error <= 3.6e-7 absolute and relative (about 6 ulp);
# sigmoid(x) = (1 + tanh(x / 2)) / 2 has absolute error <= 2e-7 (its relative
# error grows below sigmoid(x) ~ 1e-6, i.e. x < -14).  float64 keeps libm.
FAST32 = """
@njit(inline='always')
def _tanh32(x):
    x = min(max(x, T(-9)), T(9))
    u = x * x
    p = T(1) + u * (T(0.13381036) + u * (T(0.0034956001) + u * (T(2.060926e-05)
                                                              + u * T(1.335488e-08))))
    q = T(1) + u * (T(0.4671435) + u * (T(0.025877029) + u * (T(0.00032856534)
                                                            + u * T(7.7766538e-07))))
    return min(max(x * p / q, T(-1)), T(1))


@njit(inline='always')
def _sigmoid32(x):
    return T(0.5) + T(0.5) * _tanh32(T(0.5) * x)
"""
FAST32_OPS = {"tanh": "_tanh32(a)", "sigmoid": "_sigmoid32(a)"}   # op -> float32 expression

# Reductions the step calls instead of the general reduction kernel (emit_channel_sum,
# emit_trailing); StepWriter.shared_kernel names them by their text.
CHANSUM = """\
@njit(cache=True, error_model='numpy', fastmath=True)
def KERNEL_(x, out, mean):
    nb, nc, ns = x.shape
    for c in range(nc):
        out[c] = T(0)
    for b in range(nb):
        for c in range(nc):
            s = T(0)
            for i in range(ns):
                s += x[b, c, i]
            out[c] += s
    if mean:
        r = T(1) / T(nb * ns)
        for c in range(nc):
            out[c] *= r
"""
ROWSUM = """\
@njit(cache=True, error_model='numpy', fastmath=True)
def KERNEL_(x, out, mean):
    r = T(1) / T(x.shape[1]) if mean else T(1)
    for i in range(x.shape[0]):
        s = T(0)
        for j in range(x.shape[1]):
            s += x[i, j]
        out[i] = s * r
"""
ROWSPREAD = """\
@njit(cache=True, error_model='numpy')
def KERNEL_(g, out, mean):
    r = T(1) / T(out.shape[1]) if mean else T(1)
    for i in range(out.shape[0]):
        v = g[i] * r
        for j in range(out.shape[1]):
            out[i, j] = v
"""


def work_estimate(graph) -> tuple[int, int, int, int, int]:
    """(multiply-adds per example, fixed ones, those of loops per example,
    the largest loop step's per example, those of BLAS products per example)
    of one run of the graph: each op's `macs`, or one per output element; a
    loop counts its body once per step (T from its input, 32 when symbolic),
    its backward twice."""
    per_ex = fixed = loops = step = gemm = 0
    for n in graph.nodes():
        if n.op in ("input", "param", "state", "const"):
            continue
        if n.op in ("loop", "loop_grad"):
            T = graph.shape(n.inputs[0])[1]
            steps = T if isinstance(T, int) else 32
            b_ex, b_fixed, _, _, b_gemm = work_estimate(n.attrs["body"])
            k = 2 if n.op == "loop_grad" else 1
            loops += k * steps * b_ex
            gemm += k * steps * b_gemm
            step = max(step, k * b_ex)
            fixed += b_fixed
            continue
        ins = [graph.shape(i) for i in n.inputs]
        m = 0
        if n.op != "fused":
            try:
                m = int(get_op(n.op).macs(n.attrs, ins, n.shape) or 0)
            except Exception:
                m = 0
        size = 1
        for d in n.shape:
            size *= d if isinstance(d, int) else 1
        m = max(m, size * len(n.attrs.get("body", [0])))
        batched = any("B" in s for s in ins + [n.shape])
        if batched:
            per_ex += m
            if n.op in BLAS_OPS:
                gemm += m
        else:
            fixed += m
    return per_ex, fixed, loops, step, gemm


def _prod_expr(dims) -> str:
    n, sym = 1, []
    for d in dims:
        if isinstance(d, int):
            n *= d
        else:
            sym.append(_dim(d))
    parts = sym + ([str(n)] if n != 1 or not sym else [])
    return " * ".join(parts)


def _dim(d) -> str:
    """A symbolic axis in generated code: B, and T_ for the time axis (T is
    the dtype)."""
    return "T_" if d == "T" else str(d)


def literal_source(v, consts: list) -> str:
    """A kernel argument written as source: numbers (floats as T(...)), None,
    strings, tuples of these; an array becomes a module constant appended to
    `consts` (its name returned)."""
    if isinstance(v, (bool, np.bool_)):
        return repr(bool(v))
    if isinstance(v, (int, np.integer)):
        return repr(int(v))
    if isinstance(v, (float, np.floating)):
        return f"T({float(v)!r})"
    if v is None or isinstance(v, str):
        return repr(v)
    if isinstance(v, (tuple, list)):
        items = [literal_source(x, consts) for x in v]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(v, np.ndarray):
        name = f"_K{len(consts)}"
        dt = f"np.{v.dtype.name}"
        if v.size == 0:
            consts.append(f"{name} = np.zeros({_shape_expr(v.shape)}, {dt})")
        else:
            consts.append(f"{name} = np.array({v.tolist()!r}, dtype={dt})")
        return name
    raise TypeError(f"codegen: cannot write kernel argument {v!r} as source")


# CPython compiles a call with more than 30 positional arguments (its
# STACK_USE_GUIDELINE) as f(*args) (CALL_FUNCTION_EX), which Numba cannot
# inline ("Calling a closure with *args is unsupported"): a fused loop's
# helper with more parameters takes them packed in tuples of at most
# PACK_ARGS (nested when there are more than MAX_CALL_ARGS tuples) and
# takes them out first, one index at a time.  Not `a, b, o = pack`: with
# parallel=True, Numba 0.68 drops a prange loop's writes into an array that
# came out of a tuple by unpacking (WaveNet's sum of 30 skips came out
# zero); `o = pack[2]` keeps them (tests/test_backend.py).
MAX_CALL_ARGS = 30
PACK_ARGS = 16


def pack_args(params: list, args: list) -> tuple[list, list, list]:
    """(parameters, call arguments, unpacking lines) of a helper whose call
    would take more than MAX_CALL_ARGS arguments; unchanged below that."""
    assert len(params) == len(args), (params, args)
    lines, level = [], 0
    while len(params) > MAX_CALL_ARGS:
        ps, xs, ls = [], [], []
        for c in range(0, len(params), PACK_ARGS):
            name = f"_pk{level}_{c // PACK_ARGS}"
            ps.append(name)
            xs.append(f"({', '.join(args[c:c + PACK_ARGS])},)")
            ls.extend(f"{p} = {name}[{i}]" for i, p in enumerate(params[c:c + PACK_ARGS]))
        lines, params, args, level = ls + lines, ps, xs, level + 1
    return params, args, lines


def _call(name: str, args: list) -> str:
    return f"{name}({', '.join(pack_args(args, args)[1])})"


def _outer_range(outer: str, split: bool) -> list:
    """A loop body's fused loop range over `outer` (an expression): all of it,
    or with `split` the part of a paired loop's thread (batch rows r0:r0+nb)."""
    if split:
        return [f"r0 * ({outer}) // B", f"(r0 + nb) * ({outer}) // B"]
    return ["0", outer]


def _shape_expr(shape) -> str:
    dims = [_dim(d) for d in shape]
    if not dims:
        return "()"
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


class Source:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str = "", indent: int = 0):
        self.lines.append("    " * indent + line if line else "")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class StepWriter:
    """Writes the module for one `Build` (passes/pipeline.py) and the parameter
    layout: `playout` / `slayout` map leaf id -> (offset, shape)."""

    def __init__(self, b, playout: dict, slayout: dict, inputs: list, optimizer=None,
                 whole: bool = True):
        self.b, self.g, self.plan = b, b.graph, b.plan
        self.playout, self.slayout = playout, slayout
        self.inputs = inputs
        self.optimizer = optimizer or {}
        self.whole = whole
        self.dtype = b.dtype
        self.tname = f"np.{np.dtype(self.dtype).name}"
        self.modules: dict[str, str] = {}     # module name -> alias
        self.consts: list[str] = []           # module-level constant definitions
        self.helpers = Source()
        self.kernels: dict[str, str] = {}     # shared kernel name -> its text (shared_kernel)
        self.loop_fused = 0                   # helpers written for loop bodies (_lfused<k>)
        self.paired_loops = 0                 # loops run by two threads (backend/loops.py)
        self.var: dict[str, int] = {}
        self.arenas = sorted(set(self.plan.fixed) | set(self.plan.per_example))

    # ---- naming --------------------------------------------------------------
    def k(self, nid: str) -> int:
        if nid not in self.var:
            self.var[nid] = len(self.var)
        return self.var[nid]

    def arg_name(self, nid: str) -> str:
        return f"x_{self.inputs.index(nid)}"

    def add_helper(self, name: str, text: str) -> None:
        """Helper functions (`text`, defining `name`) written into the module once."""
        if f"def {name}(" not in self.helpers.text():
            self.helpers.lines += text.splitlines()

    def shared_kernel(self, text: str) -> str:
        """The name under which the step calls the kernel `text` defines as
        `KERNEL_` (and `KERNEL_p`, its parallel variant): `_k<hash of text>`,
        so equal kernels are one.  A whole step writes it into its module
        once; a step of calls (`whole=False`) imports it from a module of its
        own in the cache, shared by every step of every network that uses it
        (compiled once per signature, kernels.py)."""
        h = hashlib.sha256(f"{self.dtype}\n{text}".encode()).hexdigest()[:16]
        name = f"_k{h}"
        if name not in self.kernels:
            self.kernels[name] = text.replace("KERNEL_", name)
        return name

    def module_alias(self, modname: str) -> str:
        if modname not in self.modules:
            self.modules[modname] = f"_m{len(self.modules)}"
        return self.modules[modname]

    def literal(self, v) -> str:
        return literal_source(v, self.consts)

    # ---- where each value lives ------------------------------------------------
    def flat(self, nid: str) -> tuple[str, str]:
        """(array expression of the value's flat storage, its length expression)."""
        n = self.g.node(nid)
        size = _prod_expr(n.shape)
        if n.op == "input":
            return f"{self.arg_name(nid)}.reshape(-1)", size
        if n.op == "param":
            off, _ = self.playout[nid]
            return f"P[{off}:{off} + {size}]", size
        if n.op == "state":
            off, _ = self.slayout[nid]
            return f"S[{off}:{off} + {size}]", size
        if nid in getattr(self.plan, "pinned_grads", ()):
            param = next(p for p, gn in self.b.grads.items() if gn == nid)
            off, _ = self.playout[param]
            return f"G[{off}:{off} + {size}]", size
        s = self.plan.slots[nid]
        arena = f"W_{s.dtype}"
        fixed = self.plan.fixed.get(s.dtype, 0)
        if getattr(s, "time", False):     # [B, T, ...]: after the per-example part
            per_ex = self.plan.per_example.get(s.dtype, 0)
            start = f"{fixed} + {per_ex} * B + {s.offset} * B * T_"
        elif s.batch:
            start = f"{fixed} + {s.offset} * B" if fixed else f"{s.offset} * B"
        else:
            start = str(s.offset)
        return f"{arena}[{start}:{start} + {size}]", size

    # ---- the step --------------------------------------------------------------
    def write(self) -> str:
        body = Source()
        ind = 1
        names = {}
        order = list(self.g.nx.nodes)
        for nid in order:
            n = self.g.node(nid)
            if n.op in ("param", "state", "input"):
                continue
            names[nid] = self.k(nid)
        # views: flat f_k and shaped v_k of every value read or written
        used = set(order)
        for nid in order:
            n = self.g.node(nid)
            k = self.k(nid)
            if nid not in used:
                continue
            if n.dtype == "loop":       # a loop's results live in its loop_output readers
                continue
            if n.op == "input":
                body(f"f{k} = {self.arg_name(nid)}.reshape(-1)  # {nid}", ind)
                body(f"v{k} = {self.arg_name(nid)}", ind)
                continue
            expr, _ = self.flat(nid)
            body(f"f{k} = {expr}  # {nid}", ind)
            body(f"v{k} = f{k}.reshape({_shape_expr(n.shape)})", ind)
        body()
        for nid in order:
            n = self.g.node(nid)
            if n.op in ("input", "param", "state"):
                continue
            self.emit_node(body, n, ind)
        self.emit_tail(body, ind)
        return self.module_text(body)

    def emit_node(self, body: Source, n, ind: int):
        k = self.k(n.id)
        if n.op == "const":
            cast = self.tname if str(n.dtype).startswith("float") else f"np.{n.dtype}"
            body(f"f{k}[0] = {cast}({n.attrs['value']!r})  # const", ind)
            return
        if n.op == "fused":
            self.emit_fused(body, n, ind)
            return
        if n.op in ("loop", "loop_grad", "loop_output"):
            if n.op != "loop_output":     # readers are views the loop writes
                from . import loops
                loops.emit_step(self, body, n, ind)
            return
        if self.emit_channel_sum(body, n, ind) or self.emit_trailing(body, n, ind):
            return
        fn, extra = get_op(n.op).kernel_for(n.attrs, [self.g.shape(i) for i in n.inputs],
                                            n.shape)
        mod = sys.modules[fn.__module__]
        if getattr(mod, fn.__name__, None) is not fn and not hasattr(getattr(mod, fn.__name__, None), "py_func"):
            raise RuntimeError(f"{n.op}: kernel {fn.__name__} is not a global of {mod.__name__}")
        alias = self.module_alias(mod.__name__)
        args = [f"v{self.k(i)}" for i in n.inputs] + [f"v{k}"]
        args += [self.literal(e) for e in extra]
        body(f"{alias}.{fn.__name__}({', '.join(args)})  # {n.id} = {n.op}", ind)

    # ---- specialised kernels ---------------------------------------------------
    def emit_channel_sum(self, body: Source, n, ind: int) -> bool:
        """sum over every axis but 1 of a [B, C, ...] value (a conv bias's
        gradient, a batch norm's shift): one blocked loop, where the general
        reduction kernel indexes each element through a mask."""
        if n.op not in ("sum", "mean") or len(n.inputs) != 1:
            return False
        x = self.g.shape(n.inputs[0])
        if len(x) < 3 or x[0] != "B" or not all(isinstance(d, int) for d in x[1:]):
            return False
        axes = n.attrs.get("axes")
        axes = [axes] if isinstance(axes, int) else list(axes or [])
        axes = sorted(a % len(x) for a in axes)
        if axes != [0] + list(range(2, len(x))) or tuple(n.shape) != (x[1],):
            return False
        C, S = x[1], _prod_expr(x[2:])
        k = self.k(n.id)
        name = self.shared_kernel(CHANSUM)
        body(f"{name}(f{self.k(n.inputs[0])}.reshape((B, {C}, {S})), f{k}, "
             f"{n.op == 'mean'})  # {n.id} = {n.op} over all axes but 1", ind)
        return True

    def emit_trailing(self, body: Source, n, ind: int) -> bool:
        """sum/mean over the trailing axes k.. of a [B, ...] value (a global
        average pool), and its adjoint broadcast_like (g spread back over
        them): loops over [rows, columns]."""
        if n.op in ("sum", "mean") and len(n.inputs) == 1:
            x = self.g.shape(n.inputs[0])
            spread = False
        elif n.op == "broadcast_like" and n.attrs.get("axes") is not None:
            x = tuple(n.shape)
            spread = True
        else:
            return False
        if len(x) < 2 or x[0] != "B" or not all(isinstance(d, int) for d in x[1:]):
            return False
        axes = n.attrs.get("axes")
        axes = [axes] if isinstance(axes, int) else list(axes or [])
        axes = sorted(a % len(x) for a in axes)
        if not axes or axes[0] < 1 or axes != list(range(axes[0], len(x))):
            return False
        if n.attrs.get("keepdims") or tuple(n.shape if not spread else self.g.shape(
                n.inputs[0])) != tuple(x[:axes[0]]):
            return False
        R, S = _prod_expr(x[:axes[0]]), _prod_expr(x[axes[0]:])
        mean = n.op == "mean" or (spread and bool(n.attrs.get("mean")))
        k, a = self.k(n.id), self.k(n.inputs[0])
        if spread:
            name = self.shared_kernel(ROWSPREAD)
            body(f"{name}(f{a}, f{k}.reshape(({R}, {S})), {mean})  # {n.id} = {n.op}", ind)
        else:
            name = self.shared_kernel(ROWSUM)
            body(f"{name}(f{a}.reshape(({R}, {S})), f{k}, {mean})  # {n.id} = {n.op}", ind)
        return True

    # ---- fused elementwise loops --------------------------------------------
    def emit_fused(self, body: Source, n, ind: int, graph=None, ins=None, out=None,
                   name=None, split=False, ldo=None, lds=None):
        """A `fused` node: its loop as a helper, and the call.  By default the
        node is the step graph's (flat views f<k>); a loop body passes its
        own graph, (flat array, offset) pairs for the inputs and the output, and
        a helper name (serial, inlined, indexing each array from its offset: the
        loop makes its flat views once, not a view per argument per step; its
        outer loop runs over a range s:e, the whole or, with `split`, the batch
        rows r0:r0+nb of a paired loop's thread, backend/loops.py).  With
        `ldo` (a loop body's, where `strided_ok`) the output is a block of
        columns of a wider buffer, rows `ldo` apart: a concatenation's part
        written in place; with `lds` (input index -> row length), so are those
        inputs: slices of features read in place."""
        graph = graph or self.g
        out_shape = tuple(n.shape)
        pats = [block_pattern(graph.shape(i), out_shape) for i in n.inputs]
        if ldo is not None or lds:
            return self._emit_strided(body, n, ind, pats, ins, out, name, split,
                                      ldo or _dim(out_shape[-1]), lds or {})
        blocks = {p[1:] for p in pats if p[0] == "block"}
        k = self.k(n.id)
        in_loop = name is not None
        if in_loop:
            ins = [x for pair in ins for x in pair]
        ins = ins or [f"f{self.k(i)}" for i in n.inputs]
        out = list(out) if in_loop else [f"f{k}"]
        total = _prod_expr(out_shape)
        if len(blocks) == 1:
            lo, hi = next(iter(blocks))
            n0 = _prod_expr(out_shape[:lo])
            n1 = _prod_expr(out_shape[lo:hi + 1])
            n2 = _prod_expr(out_shape[hi + 1:])
            sizes = [n0, n1] if n2 == "1" else [n0, n1, n2]
        else:
            sizes = [total]
            for p, i in zip(pats, n.inputs):
                if p[0] == "block":
                    lo, hi = p[1:]
                    sizes += [_prod_expr(out_shape[hi + 1:]), _prod_expr(out_shape[lo:hi + 1])]
        par = self.parallel_worth(out_shape) and not in_loop
        if in_loop:
            self.write_fused(name, n, pats, len(blocks) == 1, par, rows=len(sizes) == 2,
                             inline=True, offsets=True)
        else:       # a step's loop: one kernel per distinct text (shared_kernel)
            helpers, self.helpers = self.helpers, Source()
            self.write_fused("KERNEL_", n, pats, len(blocks) == 1, par, rows=len(sizes) == 2)
            text, self.helpers = self.helpers.text(), helpers
            name = self.shared_kernel(text)
        if in_loop:     # the outer loop's range s:e instead of its length
            outer = f"({sizes[0]}) * ({sizes[1]})" if len(sizes) == 3 else sizes[0]
            sizes = _outer_range(outer, split) + sizes[1:]
        args = sizes + out + ins
        what = f"# {n.id} = fused {'+'.join(n.attrs['ops'])}"
        if par:
            body(f"if {total} >= {PAR_MIN_EW}:  {what}", ind)
            body(_call(f"{name}p", args), ind + 1)
            body("else:", ind)
            body(_call(name, args), ind + 1)
        else:
            body(f"{_call(name, args)}  {what}", ind)

    @staticmethod
    def strided_ok(graph, n) -> bool:
        """Whether a fused loop can run over rows and columns with strides
        (`emit_fused`'s ldo and lds): every input read whole, as a scalar, or
        as a block of the last axis alone (a bias)."""
        shape = tuple(n.shape)
        if not shape or not isinstance(shape[-1], int):
            return False
        last = len(shape) - 1
        for i in n.inputs:
            p = block_pattern(graph.shape(i), shape)
            if p is None or (p[0] == "block" and p[1:] != (last, last)):
                return False
        return True

    def _emit_strided(self, body, n, ind, pats, ins, out, name, split, ldo, lds):
        """A loop body's fused loop over rows and columns, its output and the
        inputs of `lds` in columns of wider buffers (write_fused's lds)."""
        self.write_fused(name, n, pats, True, False, rows=True, inline=True, offsets=True,
                         lds=lds)
        rng = _outer_range(_prod_expr(tuple(n.shape)[:-1]), split)
        flat_ins = [x for j, pair in enumerate(ins)
                    for x in (list(pair) + ([str(lds[j])] if j in lds else []))]
        call = _call(name, rng + [_dim(n.shape[-1])] + list(out) + [str(ldo)] + flat_ins)
        body(f"{call}  # {n.id} = fused {'+'.join(n.attrs['ops'])}, in place", ind)

    @staticmethod
    def parallel_worth(shape) -> bool:
        """Whether a loop over `shape` gets a parallel variant: only values of
        at least PAR_MIN_EW_EXAMPLE elements per example (feature maps), as
        parallel loops cost much more to compile and an MLP's activations
        are too small to gain from them."""
        n = 1
        for d in shape:
            n *= d if isinstance(d, int) else 1
        return n >= (PAR_MIN_EW_EXAMPLE if "B" in shape else PAR_MIN_EW)

    def fused_body(self, n) -> list[str]:
        lines = []
        for j, m in enumerate(n.attrs["body"]):
            if self.dtype == "float32" and m["op"] in FAST32_OPS:
                expr = FAST32_OPS[m["op"]]
            else:
                expr = member_expr(m["op"], m["attrs"])
            ren = {v: (f"x{a[2:]}" if a.startswith("in") else a)
                   for v, a in zip(("a", "b", "c"), m["args"])}

            class R(ast.NodeTransformer):
                def visit_Name(self, node):
                    if node.id in ren:
                        return ast.copy_location(ast.Name(ren[node.id], ast.Load()), node)
                    return node
            lines.append(f"t{j} = {ast.unparse(R().visit(ast.parse(expr, mode='eval')))}")
        lines.append(f"o[k] = t{len(n.attrs['body']) - 1}")
        return lines

    def write_fused(self, name, n, pats, nested: bool, par: bool, rows: bool = False,
                    inline: bool = False, offsets: bool = False, lds=None):
        """nested: one broadcast block (a bias) read once per run of the inner
        loop; rows: that block is the trailing axes, so the inner loop runs
        along it (vectorised) instead of over a run of length 1; inline: the
        helper is inlined into its caller (a loop body's, where a call per
        step and op costs more than a small loop's work); offsets: each array
        comes with the offset it is read (written) from, and indices are
        unsigned (a signed one stops LLVM vectorising); lds (with offsets, a
        loop over rows a0 and columns a1): the output's rows are `ldo` apart,
        and so are those of the inputs in lds, `ld<j>` apart (columns of
        wider buffers, emit_fused)."""
        nin = len(n.inputs)
        strided = lds is not None
        lds = lds or {}

        def at(j, e):
            if not offsets:
                return f"i{j}[{e}]"
            return f"i{j}[np.uint64(io{j} + {e})]"

        ins = ", ".join((f"i{j}, io{j}" + (f", ld{j}" if j in lds else "")) if offsets
                        else f"i{j}" for j in range(nin))
        h = self.helpers
        loads_full = [f"x{j} = {at(j, f'a0 * ld{j} + a1' if j in lds else 'k')}"
                      for j, p in enumerate(pats) if p[0] == "full"]
        loads_scalar = [f"x{j} = {at(j, '0')}" for j, p in enumerate(pats) if p[0] == "scalar"]
        body = self.fused_body(n)
        if offsets:
            dst = "ob + a1" if strided else "oo + k"
            body = body[:-1] + [body[-1].replace("o[k] =", f"o[np.uint64({dst})] =", 1)]
        o = ("o, oo, ldo" if strided else "o, oo") if offsets else "o"

        def define(params: str):        # the def line (parameters packed: pack_args)
            ps, _, unpack = pack_args(params.split(", "), params.split(", "))
            h(f"def {name}{suffix}({', '.join(ps)}):")
            for ln in unpack:
                h(ln, 1)

        for suffix, par in (("", False), ("p", True))[:2 if par else 1]:
            rng = "prange" if par else "range"
            inl = ", inline='always'" if inline else ""
            h(f"@njit(cache=True, error_model='numpy'{', parallel=True' if par else ''}{inl})")
            start = "s, " if offsets else ""      # the outer loop's range s:n0
            if (nested and rows) or strided:
                define(f"{start}n0, n1, {o}, {ins}")
                for ln in loads_scalar:
                    h(ln, 1)
                h(f"for a0 in {rng}({start}n0):", 1)
                h("base = a0 * n1", 2)
                if strided:
                    h("ob = oo + a0 * ldo", 2)
                h("for a1 in range(n1):", 2)
                h("k = base + a1", 3)
                for j, p in enumerate(pats):
                    if p[0] == "block":
                        h(f"x{j} = {at(j, 'a1')}", 3)
                for ln in loads_full + body:
                    h(ln, 3)
            elif nested:
                if offsets:     # the range of a0 * n1 + a1
                    define(f"s, e, n1, n2, {o}, {ins}")
                else:
                    define(f"n0, n1, n2, {o}, {ins}")
                for ln in loads_scalar:
                    h(ln, 1)
                h(f"for a01 in {rng}({'s, e' if offsets else 'n0 * n1'}):", 1)
                h("a1 = a01 % n1", 2)
                for j, p in enumerate(pats):
                    if p[0] == "block":
                        h(f"x{j} = {at(j, 'a1')}", 2)
                h("base = a01 * n2", 2)
                h("for a2 in range(n2):", 2)
                h("k = base + a2", 3)
                for ln in loads_full + body:
                    h(ln, 3)
            else:
                extra = "".join(f", q{j}, r{j}" for j, p in enumerate(pats) if p[0] == "block")
                define(f"{start}n{extra}, {o}, {ins}")
                for ln in loads_scalar:
                    h(ln, 1)
                h(f"for k in {rng}({start}n):", 1)
                for j, p in enumerate(pats):
                    if p[0] == "block":
                        h(f"x{j} = {at(j, f'(k // q{j}) % r{j}')}", 2)
                for ln in loads_full + body:
                    h(ln, 2)
            h()

    # ---- after the graph: gradients, state, optimizer ------------------------
    def emit_tail(self, body: Source, ind: int):
        b = self.b
        pinned = getattr(self.plan, "pinned_grads", set())
        for p, gn in b.grads.items():
            if gn not in pinned:
                off, shape = self.playout[p]
                size = _prod_expr(shape)
                body(f"G[{off}:{off} + {size}] = f{self.k(gn)}  # grad of {p}", ind)
        for s, nid in b.updates.items():
            off, shape = self.slayout[s]
            body(f"S[{off}:{off} + {_prod_expr(shape)}] = f{self.k(nid)}  # new {s}", ind)
        loss = self.g.meta.get("loss") if b.kind != "infer" else None
        if loss is not None and loss in self.var:
            body(f"loss = f{self.k(loss)}[0]", ind)
        else:
            body("loss = T(0)", ind)
        body("ok = np.isfinite(loss)", ind)
        if b.kind == "train":
            opt = self.optimizer.get("name", "sgd")
            body("scale = T(1)", ind)
            body("if ok:", ind)
            body(f"clip = hp[{_hp('CLIP')}]", ind + 1)
            body("if clip > T(0):", ind + 1)
            body("sq = _opt.sumsq(G)", ind + 2)
            body("ok = np.isfinite(sq)", ind + 2)
            body("c = clip / (np.sqrt(sq) + T(1e-6))", ind + 2)
            body("if c < T(1):", ind + 2)
            body("scale = c", ind + 3)
            body("if ok:", ind)
            if opt == "sgd":
                nesterov = bool(self.optimizer.get("nesterov", False))
                body(f"_opt.sgd(P, G, M, hp, scale, {nesterov})", ind + 1)
            elif opt in ("adam", "adamw"):
                body(f"_opt.adam(P, G, M, V, hp, scale, {opt == 'adamw'})", ind + 1)
            else:
                raise ValueError(f"unknown optimizer '{opt}'")
        body("return loss, ok", ind)

    def module_text(self, body: Source) -> str:
        head = Source()
        head(f'"""nnspec step: graph {self.g.name}, program {self.b.kind}, {self.dtype}.')
        head("Generated by nnspec.backend.codegen; do not edit (the cache key is in the name)."
             '"""')
        head("import numpy as np")
        head("from numba import njit, prange")
        head("from nnspec.backend.jit import compile_module")
        head("import nnspec.backend.optim as _opt")
        for mod, alias in self.modules.items():
            head(f"import {mod} as {alias}")
            head(f"compile_module({alias})")
        head()
        head(f"T = {self.tname}")
        head(f"PAIRED_LOOPS = {self.paired_loops}  # loops whose products run on two threads")
        head()
        head()
        head.lines += FAST32.splitlines()
        for c in self.consts:
            head(c)
        head()
        head()
        if self.whole:
            for text in self.kernels.values():
                head.lines += text.splitlines() + [""]
        else:
            head("from nnspec.backend import kernels as _kernels")
            for name, text in self.kernels.items():
                src = kernels.module_source(self.dtype, text)
                head(f"_kmod = _kernels.load({src!r})")
                head(f"{name} = _kmod.{name}")
                if f"def {name}p(" in text:
                    head(f"{name}p = _kmod.{name}p")
            head()
        head.lines += self.helpers.lines
        args = ["P", "S", "G", "M", "V", "hp"] + [f"W_{d}" for d in self.arenas]
        args += [f"x_{j}" for j in range(len(self.inputs))]
        if self.whole:
            head("@njit(cache=True, error_model='numpy', nogil=True)")
        head(f"def step({', '.join(args)}):")
        batched = [j for j, n in enumerate(self.inputs)
                   if self.g.shape(n) and self.g.shape(n)[0] == "B"]
        head(f"B = x_{batched[0]}.shape[0]" if batched else "B = 1", 1)
        timed = [j for j, n in enumerate(self.inputs) if tuple(self.g.shape(n))[:2] == ("B", "T")]
        head(f"T_ = x_{timed[0]}.shape[1]" if timed else "T_ = 1", 1)
        head.lines += body.lines
        return head.text()


def _hp(name: str) -> int:
    from . import optim
    return getattr(optim, name)


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
