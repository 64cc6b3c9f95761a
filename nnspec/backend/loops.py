"""Compiling a `loop` node for the CPU: one generated @njit function runs all
T steps (no Python call per step).

    src, name = loop_source(node)          # Python source of a module
    fn = load(src, name)                    # or cache.load(name, lambda: src)
    fn(seq..., init..., captures..., [mask], out_k..., final_s..., carry_s...)

The generated function (names: `v<j>` per body node, `h<s>` the running states):

    B, T = x_0.shape[0], x_0.shape[1]
    P<j> = <linear kernel>(x_0.reshape(B*T, F), W, b)     # hoisted input projection:
                                                          # one GEMM over all T*B rows
    v<j> = np.empty(<body shape with B>)                  # step buffers, allocated once
    h<s> = init or zeros
    for i in range(T):
        t = T - 1 - i if reverse else i
        c<s>[:, t] = h<s>                                 # carries, for the backward
        s<k>[:] = x_k[:, t]                               # step inputs (contiguous copy)
        v<j>[:] = P<j>[:, t]                              # hoisted projections
        mod.kernel(v.., v<j>, extras)                     # each body node, in order
        h<s> = mask blend(new state, h<s>);  out_k[:, t] = mask * output

Nothing in the source depends on T, so the compile time (and Numba's disk
cache entry) is the same for T = 10 and T = 10,000.  The body's ops are called
through their `@kernel` functions exactly as backend/codegen.py calls them.

`loop_grad` nodes: the same writer emits the backward body (the body's
`bwd` graph: forward recomputation + vector-Jacobian product) inside a
reversed `for` loop that accumulates the captures' gradients; see
`loop_grad_source`.
"""
from __future__ import annotations

import hashlib
import re
import sys

import numpy as np

from ..ops import get_op
from ..ops import linalg as _linalg
from ..ops.loop import n_inputs
from ..passes.fusion import block_pattern
from ..passes import dce
from ..passes.loop_body import (DERIVED, on_features, optimise as optimise_body, weight_like,
                                with_saved)


def _shape(shape) -> str:
    dims = [str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


# Loops whose products have fewer multiply-adds per batch row and step are
# not paired: a paired loop takes Numba about twice as long to compile (its
# parallel region: 28 -> 53 s for a first LSTM step), and small products gain
# little (waking the second thread costs about 150 us per call).
PAIR_MIN_ROW_MACS = 1 << 16

# a paired loop's function: only its prange is a parallel loop
PRANGE_ONLY = {"prange": True, "comprehension": False, "reduction": False, "inplace_binop": False,
               "setitem": False, "numpy": False, "stencil": False, "fusion": False}

COPY_HELPER = """
@njit(cache=True, inline='always')
def _cols(n0, n1, d, do, dld, s, so, sld):
    for a in range(n0):
        db, sb = do + a * dld, so + a * sld
        for b in range(n1):
            d[np.uint64(db + b)] = s[np.uint64(sb + b)]
"""


class _Writer:
    """Collects a function's lines.  With a `namer` (codegen's StepWriter) the
    function goes into the step module, sharing its imports and constants;
    without one it becomes a module of its own (`module`)."""

    def __init__(self, dtype: str, namer=None):
        self.lines: list[str] = []
        self.modules: dict[str, str] = {}
        self.consts: list[str] = []
        self.dtype = dtype
        self.namer = namer
        self.flats: dict[str, tuple] = {}   # buffer -> (flat view, its lines), per loop
        self.hoist_at = None                # where the open loop's flat views go
        # a paired loop (see _paired_function): the code before the threads' region, the
        # region's (self.lines while `pair`), the hoisted products it runs
        # first, and the multiply-adds of its products per batch row and step
        self.pair = False
        self.before: list[str] = []
        self.inner: list[str] = []
        self.deferred: list[tuple] = []
        self.deferred_w: list[tuple] = []   # derived weights, made first
        self.macs = 0

    def __call__(self, line="", ind=1):
        self.lines.append("    " * ind + line)

    def begin_region(self):
        """What follows runs in each of a paired loop's threads: thread _q of
        _nq, meeting the other at barriers.  The work is planned in _np parts
        (threads_for: two) whatever the number of threads that run it, and
        thread _q takes parts _p0:_p1, batch rows r0:r0+nb: a thread that
        runs alone (its partner late, or a step on one thread: cores.py)
        computes every part as two would, and gives the same bits."""
        self.before, self.lines, self.pair = self.lines, [], True
        self("_p0 = _q * _np // _nq")
        self("_p1 = (_q + 1) * _np // _nq")
        self("r0 = _p0 * B // _np")
        self("nb = _p1 * B // _np - r0")
        self("_k = 1")
        for fn, args in self.deferred_w:    # derived weights, split by rows
            self.parts(f"{fn}({', '.join(args)}", 1)
        if self.deferred_w:
            self.barrier(1)
        for fn, args in self.deferred:      # hoisted products, split by rows
            self.parts(f"{fn}({', '.join(args)}", 1)
        if self.deferred:
            self.barrier(1)

    def end_region(self):
        if self.macs < PAIR_MIN_ROW_MACS:
            raise _NoPair("small products")
        self.inner, self.lines, self.pair = self.lines, [], False

    def parts(self, call: str, ind: int):
        """`call` (a kernel call without its closing ", part, parts)") for
        each part of this thread's."""
        self("for _pp in range(_p0, _p1):", ind)
        self(f"{call}, _pp, _np)", ind + 1)

    def outer(self, line: str):
        """A line before the region (a buffer the threads share)."""
        self.before.append("    " + line)

    def barrier(self, ind: int):
        self(f"_k = {self.namer.module_alias('nnspec.backend.sync')}.barrier(_sy, _nq, _k)", ind)

    def only_first(self, line: str, ind: int, wait: bool = True):
        """A statement of the whole batch, on thread 0 between barriers (the
        first left out with `wait` false: the code before ends with one)."""
        if wait:
            self.barrier(ind)
        self("if _q == 0:", ind)
        self(line, ind + 1)
        self.barrier(ind)

    def open_loop(self):
        """Flat views asked for (`flat`) until `close_loop` are made here, once."""
        self.flats = {}
        self.hoist_at = len(self.lines)

    def close_loop(self):
        made = [ln for _, lines in self.flats.values() for ln in lines]
        self.lines[self.hoist_at:self.hoist_at] = ["    " + ln for ln in made]
        self.hoist_at = None

    def copy(self, dst: str, src: str, ind: int):
        """dst[:] = src for buffers of one step (one row of the whole size)."""
        d = self.flat(dst)[0]
        size = f"{d}n" if dst.endswith("[t]") else f"{d}.size"
        if not self.cols(dst, size, 0, src, size, 0, size, ind, rows="1"):
            if self.pair:
                self(f"{dst}[r0:r0 + nb] = {src}[r0:r0 + nb]", ind)
            else:
                self(f"{dst} = {src}" if dst.endswith("[t]") else f"{dst}[:] = {src}", ind)

    def cols(self, dst: str, dld, doff, src: str, sld, soff, width, ind: int,
             rows=None) -> bool:
        """dst[:, doff:doff+width] = src[:, soff:soff+width] over rows of
        length dld and sld, as a plain unsigned loop over the flat views
        (numba's slice assignment costs more than a small copy); False where
        a buffer has none."""
        d, do = self.flat(dst)
        s, so = self.flat(src)
        if self.namer is None or ".reshape" in d or ".reshape" in s:
            return False
        self.namer.add_helper("_cols", COPY_HELPER)
        if self.pair and rows == "1":       # one run of the whole batch: its rows' part
            part = f"({width}) // B"
            self(f"_cols(1, nb * {part}, {d}, {do} + {doff} + r0 * {part}, {dld}, "
                 f"{s}, {so} + {soff} + r0 * {part}, {sld})", ind)
            return True
        if rows is None:
            rows = f"{d}n // {dld}" if dst.endswith("[t]") else f"{d}.size // {dld}"
        if self.pair:                       # this thread's batch rows
            per = f"(({rows}) // B)"
            self(f"_cols(nb * {per}, {width}, {d}, {do} + {doff} + r0 * {per} * {dld}, {dld}, "
                 f"{s}, {so} + {soff} + r0 * {per} * {sld}, {sld})", ind)
            return True
        self(f"_cols({rows}, {width}, {d}, {do} + {doff}, {dld}, {s}, {so} + {soff}, {sld})",
             ind)
        return True

    def flat(self, name: str) -> tuple:
        """(flat array, offset) of a buffer inside the step loop: a time-major
        stack's step `X[t]` is (X's flat view, t times its step size), a buffer
        made before the loop its flat view; anything else a view per use."""
        m = re.fullmatch(r"(\w+)\[t\]", name)
        base = m.group(1) if m else name
        if self.hoist_at is None or not re.fullmatch(r"\w+", base):
            return f"{name}.reshape(-1)", "0"
        if base not in self.flats:
            fv = f"_f{len(self.flats)}"
            lines = [f"{fv} = {base}.reshape(-1)"]
            if m:
                lines.append(f"{fv}n = {fv}.size // max({base}.shape[0], 1)")
            self.flats[base] = (fv, lines)
        fv = self.flats[base][0]
        return fv, (f"t * {fv}n" if m else "0")

    def alias(self, fn) -> str:
        mod = sys.modules[fn.__module__]
        if self.namer is not None:
            return f"{self.namer.module_alias(mod.__name__)}.{fn.__name__}"
        if mod.__name__ not in self.modules:
            self.modules[mod.__name__] = f"_m{len(self.modules)}"
        return f"{self.modules[mod.__name__]}.{fn.__name__}"

    def literal(self, v) -> str:
        if self.namer is not None:
            return self.namer.literal(v)
        from .codegen import literal_source
        return literal_source(v, self.consts)

    def function(self, fname: str, args: list) -> str:
        self.lines = _drop_unread(self.lines)
        if self.inner:
            self.before = _drop_unread(self.before, self.inner + self.lines)
            return self._paired_function(fname, args)
        return ("@njit(cache=True, error_model='numpy')\n"
                + f"def {fname}({', '.join(args)}):\n" + "\n".join(self.lines) + "\n")

    def _paired_function(self, fname: str, args: list) -> str:
        """A paired loop as two functions: `fname` (the code before and after
        the region, and the region: two threads that shake hands,
        backend/sync.py, or one) and `fname_run` (what each thread runs),
        which gets every name made before the region that it uses."""
        # 0-d buffers (constants) become numbers when passed into the region:
        # one-element arrays instead
        for j, ln in enumerate(self.before):
            m = re.match(r"(\s*)(\w+) = np\.empty\(\(\), (.*)\)$", ln)
            if m:
                self.before[j] = f"{m.group(1)}{m.group(2)} = np.empty((1,), {m.group(3)})"
                self.inner = [x.replace(f"{m.group(2)}[()]", f"{m.group(2)}[0]")
                              for x in self.inner]
        # buffers of the region start on a cache line (sync.empty64)
        S = self.namer.module_alias("nnspec.backend.sync")
        self.before = [re.sub(r"^(\s*\w+ = )np\.empty\(", rf"\1{S}.empty64(", ln)
                       for ln in self.before]
        made = list(args)
        for ln in self.before:
            m = re.match(r"\s*(\w+)\s*=", ln)
            if m and m.group(1) not in made:
                made.append(m.group(1))
        used = set(re.findall(r"\b[A-Za-z_]\w*\b", "\n".join(self.inner)))
        params = ", ".join(x for x in made if x in used)
        run = f"{fname}_run"
        head = "@njit(cache=True, error_model='numpy')"
        # The function with the region also runs `run` alone: every function
        # that calls `run` links and optimises its code again (8 s for an LSTM's).
        # Its parallel options allow the prange alone: no array expression of the
        # code before the region becomes a parallel loop (a thread launch).
        src = [head, f"def {run}(_q, _nq, _np, _sy, {params}):"] + self.inner + [""]
        src += [f"@njit(cache=True, error_model='numpy', parallel={PRANGE_ONLY!r})",
                f"def {fname}({', '.join(args)}):"] + self.before
        # _np: the parts planned (by the planned thread count), and two threads
        # if this step runs on two (the pacer may run it on one, cores.py)
        src += [f"    _np = {S}.threads_for(B, T_ * B * {self.macs})",
                "    _sy = np.zeros(16, np.int64)",
                f"    _bt = {S}.blas_single(_np)",
                f"    if _np > 1 and {S}.real_threads() > 1:",
                "        for _p in prange(2):",
                "            _q = np.int64(_p)",      # one signature of `run` (not uint64)
                f"            _n = {S}.pair(_sy, _q)",
                "            if _n > 0:",
                f"                {run}(_q, _n, _np, _sy, {params})",
                "    else:",                          # (_q = 0, _nq = 1, typed as in the region)
                f"        {run}(_np - _np, _np - _np + 1, _np, _sy, {params})",
                f"    {S}.blas_restore(_bt)"]
        return "\n".join(src + self.lines) + "\n"

    def module(self, fn_src: str, doc: str) -> str:
        head = [f'"""{doc}  Generated by nnspec.backend.loops; do not edit."""',
                "import numpy as np", "from numba import njit",
                "from nnspec.backend.jit import compile_module"]
        for mod, a in self.modules.items():
            head += [f"import {mod} as {a}", f"compile_module({a})"]
        head += ["", f"T = np.{np.dtype(self.dtype).name}"] + self.consts + ["", ""]
        return "\n".join(head) + "\n" + fn_src + "\n"


def _drop_unread(lines: list, rest: list = ()) -> list:
    """Without the time-major copies of sequence inputs (xt_k = ...) and the
    step buffers (v<j> = np.empty(...)) that nothing reads, in `lines` or
    `rest` (a backward that never reads x; a slice read in place)."""
    text = "\n".join(list(lines) + list(rest))
    out = []
    for ln in lines:
        m = re.match(r"\s*(xt_\d+|v\d+) = np\.(?:ascontiguousarray|empty)\(", ln)
        if m and len(re.findall(rf"\b{m.group(1)}\b", text)) == 1:
            continue
        out.append(ln)
    return out


def _hoistable(body, node, step_ids, capture_ids) -> bool:
    """linear(x[t], W[, b]) with W, b captured: its rows for all steps can be
    computed before the loop in one GEMM."""
    return (node.op == "linear" and node.inputs[0] in step_ids
            and all(i in capture_ids for i in node.inputs[1:]))


def _dt(dtype) -> str:
    return "T" if str(dtype).startswith("float") else f"np.{dtype}"


def _prologue(w: _Writer, a: dict, graph, names: dict, defer: bool = False) -> dict:
    """Before the loop: B and T_, each sequence input time-major (xt_k
    [T_, B, ...], so step t is the contiguous block xt_k[t]), and the hoisted
    input projections (one GEMM over all T*B rows each, into [T_, B, out]).
    `graph` is the body or its backward graph (same ids for the forward
    part).  Returns hoisted node id -> its buffer; a hoisted value and a step
    input are named by their block at step t (no copy per step).  With `defer`
    (a paired loop) the projections run in the threads' region, half the rows
    each (w.deferred)."""
    w("B = x_0.shape[0]")
    w("T_ = x_0.shape[1]")
    for k, c in enumerate(a["captures"]):
        names[c] = f"p_{k}"
    _wcats(w, graph, names, defer)
    for k, sid in enumerate(a["seq_inputs"]):
        axes = (1, 0) + tuple(range(2, len(graph.shape(sid)) + 1))
        w(f"xt_{k} = np.ascontiguousarray(x_{k}.transpose({axes}))")
        names[sid] = f"xt_{k}[t]"
    step_ids, caps = set(a["seq_inputs"]), weight_like(graph, a["captures"])
    hoisted = {}
    for n in graph.nodes():
        if _hoistable(graph, n, step_ids, caps):
            k = a["seq_inputs"].index(n.inputs[0])
            fn, extra = get_op("linear").kernel(n.attrs)
            feat, out = graph.shape(n.inputs[0])[-1], graph.shape(n.id)[-1]
            P = f"P{len(hoisted)}"
            w(f"{P} = np.empty((T_,) + {_shape(graph.shape(n.id))}, T)  # hoisted: {n.id}")
            wargs = [f"xt_{k}.reshape(-1, {feat})"] + [names[i] for i in n.inputs[1:]]
            wargs.append(f"{P}.reshape(-1, {out})")
            w.macs += feat * out
            if defer:       # linear_rows(x, W, b (W[0] unused), has_bias, out)
                bias = len(n.inputs) == 3
                args = wargs[:2] + [wargs[2] if bias else f"{wargs[1]}[0]", repr(bias), wargs[-1]]
                w.deferred.append((w.alias(_linalg.linear_rows), args))
            else:
                w(f"{w.alias(fn)}({', '.join(wargs + [w.literal(e) for e in extra])})")
            hoisted[n.id] = P
            names[n.id] = f"{P}[t]"
    return hoisted


def _recipe(graph, nid):
    """A derived weight as (parts, transposed): concat_k(c_k[:, start_k:]),
    as wide as the weight (transposed or not), over [(capture c_k, start_k)];
    None when the chain is not of that form."""
    n = graph.node(nid)
    kind, a = n.attrs.get("kind"), n.attrs
    if kind not in DERIVED:
        return ([(nid, 0)], False) if len(graph.shape(nid)) == 2 else None
    subs = [_recipe(graph, p) for p in (a["parts"] if kind == "wcat" else [a["src"]])]
    if any(r is None or r[1] for r in subs):
        return None
    if kind == "wcat":
        return [x for r in subs for x in r[0]], False
    if kind == "wT":
        return subs[0][0], True
    return [(c, s + a["start"]) for c, s in subs[0][0]], False


def _wcats(w: _Writer, graph, names: dict, defer: bool = False):
    """The weights of merged, split and transposed GEMMs (passes/loop_body.py:
    `merge_gemms`, `split_concat`, `narrow_products`, `transpose_weights`), made once per
    call: those the graph reads, each in one pass from the captured weights
    (`linalg.gather_w`; with `defer`, in the paired region, half the rows
    per thread), else each after the weights it is made from."""
    used = {i for n in graph.nodes() for i in n.inputs}
    needed = [n.id for n in graph.nodes()
              if n.op == "input" and n.attrs.get("kind") in DERIVED and n.id in used]
    recipes = {nid: r for nid in needed if (r := _recipe(graph, nid)) is not None
               and all(c in names for c, _ in r[0])}
    if len(recipes) < len(needed):
        defer = False       # one made the old way may read a gathered one: none in the region
    for nid, r in recipes.items():
        names[nid] = f"wc{len(names)}"
        w(f"{names[nid]} = np.empty({_shape(graph.shape(nid))}, T)")
        parts = "(" + "".join(f"{names[c]}, " for c, _ in r[0]) + ")"
        args = [parts, w.literal(tuple(s for _, s in r[0])), repr(r[1]), names[nid]]
        if defer:
            w.deferred_w.append((w.alias(_linalg.gather_w), args))
        else:
            w(f"{w.alias(_linalg.gather_w)}({', '.join(args)}, 0, 1)")

    def make(nid):
        a = graph.node(nid).attrs
        if nid in names:
            return
        srcs = a["parts"] if a["kind"] == "wcat" else [a["src"]]
        for p in srcs:
            make(p)
        names[nid] = f"wc{len(names)}"
        if a["kind"] == "wcat":
            w(f"{names[nid]} = np.concatenate(({', '.join(names[p] for p in srcs)},))")
        elif a["kind"] == "wT":
            w(f"{names[nid]} = np.ascontiguousarray({names[a['src']]}.T)")
        else:
            w(f"{names[nid]} = np.ascontiguousarray({names[a['src']]}[:, {a['start']}:{a['stop']}])")
    for nid in needed:
        make(nid)


def _buffers(w: _Writer, graph, names: dict, hoisted: dict, skip=()) -> list:
    """A buffer per node the loop computes (allocated once, before the loop);
    returns the ids to emit, in order."""
    todo = []
    for n in graph.nodes():
        if n.op == "input" or n.id in hoisted or n.id in skip:
            continue
        if n.id not in names:       # else computed in place (a saved or stacked block)
            names[n.id] = f"v{len(names)}"
            w(f"{names[n.id]} = np.empty({_shape(n.shape)}, {_dt(n.dtype)})")
        todo.append(n.id)
    return todo


def _in_place_parts(w: _Writer, graph, names: dict, todo: list) -> tuple[dict, dict]:
    """Copies of columns a fused loop can do without (codegen.emit_fused's ldo
    and lds): ({fused id: (buffer, column offset, row length)} for a fused
    value only a concatenation of features reads, written straight into its
    columns; {slice id: the same} for a slice of features only fused loops
    read, read in place)."""
    if w.namer is None:
        return {}, {}
    sw, planned, out, ins = w.namer, set(todo), {}, {}

    def fits(m):
        return (m.op == "fused" and m.id in planned and sw.strided_ok(graph, m)
                and (not w.pair or _splittable(graph, m)))
    for sid in todo:
        sl = graph.node(sid)
        if (sl.op == "slice" and on_features(sl) and re.fullmatch(r"v\d+", names[sid])
                and re.fullmatch(r"\w+(\[t\])?", names[sl.inputs[0]])
                and isinstance(graph.shape(sl.inputs[0])[-1], int)
                and tuple(graph.shape(sl.inputs[0]))[:-1] == tuple(sl.shape)[:-1]
                and all(fits(graph.node(u)) for u in graph.consumers(sid))
                and sid not in graph.outputs.values()):
            ins[sid] = (names[sl.inputs[0]], sl.attrs["start"], graph.shape(sl.inputs[0])[-1])
    for cid in todo:
        c = graph.node(cid)
        if not (c.op == "colcat" or (c.op == "concat" and on_features(c))):
            continue
        if not isinstance(c.shape[-1], int) or not re.fullmatch(r"\w+(\[t\])?", names[cid]):
            continue
        off = 0
        for i in c.inputs:
            m = graph.node(i)
            if (fits(m) and c.inputs.count(i) == 1 and graph.consumers(i) == [cid]
                    and re.fullmatch(r"v\d+", names[i]) and i not in graph.outputs.values()
                    and tuple(m.shape)[:-1] == tuple(c.shape)[:-1]):
                out[i] = (names[cid], off, c.shape[-1])
            off += graph.shape(i)[-1]
    return out, ins


def _emit_body(w: _Writer, graph, names: dict, todo: list, ind: int):
    """Kernel calls for the nodes in `todo`, in order (every value named)."""
    in_place, read_in_place = _in_place_parts(w, graph, names, todo)
    for nid in todo:
        n = graph.node(nid)
        v = names[nid]
        w(f"# {n.id} = {n.op}", ind)
        if n.op == "const":
            w(f"{v}[()] = {w.literal(float(n.attrs['value']))}", ind)
            continue
        if n.op == "input":
            raise ValueError(f"loops: body input '{nid}' is not bound")
        if w.pair and n.op in ("slice", "concat", "colcat") and tuple(n.shape)[:1] != ("B",):
            raise _NoPair(n.id)     # copies split by batch rows
        if nid in read_in_place:        # its readers read the columns there
            continue
        if n.op == "slice" and on_features(n):
            src, k = names[n.inputs[0]], graph.shape(n.inputs[0])[-1]
            width = n.shape[-1]
            if not w.cols(v, width, 0, src, k, n.attrs["start"], width, ind):
                if w.pair:
                    raise _NoPair(n.id)
                w(f"{v}.reshape(-1, {width})[:] = {src}.reshape(-1, {k})"
                  f"[:, {n.attrs['start']}:{n.attrs['stop']}]", ind)
            continue
        # columns side by side: colcat, and a concat of features (plain copies,
        # not the concat kernel's parallel loop at every step)
        if n.op == "colcat" or (n.op == "concat" and on_features(n)):
            off = 0
            for i in n.inputs:
                k = graph.shape(i)[-1]
                if i in in_place:       # written there
                    off += k
                    continue
                if not w.cols(v, n.shape[-1], off, names[i], k, 0, k, ind):
                    if w.pair:
                        raise _NoPair(n.id)
                    w(f"{v}.reshape(-1, {n.shape[-1]})[:, {off}:{off + k}] = "
                      f"{names[i]}.reshape(-1, {k})", ind)
                off += k
            continue
        if n.op == "fused":
            if w.pair and not _splittable(graph, n):
                raise _NoPair(n.id)
            sw = w.namer
            sw.loop_fused += 1
            ins, lds = [], {}
            for j, i in enumerate(n.inputs):
                if i in read_in_place:
                    src, off, lds[j] = read_in_place[i]
                    fv, fo = w.flat(src)
                    ins.append((fv, f"{fo} + {off}"))
                else:
                    ins.append(w.flat(names[i]))
            ldo = None
            if nid in in_place:
                dst, off, ldo = in_place[nid]
                fv, fo = w.flat(dst)
                out = (fv, f"{fo} + {off}")
            else:
                out = w.flat(v)
            sw.emit_fused(w, n, ind, graph, ins, out, f"_lfused{sw.loop_fused}",
                          split=w.pair, ldo=ldo, lds=lds)
            continue
        if w.pair:
            _paired_linear(w, graph, n, names, ind)
            continue
        fn, extra = get_op(n.op).kernel(n.attrs)
        args = [names[i] for i in n.inputs] + [v] + [w.literal(e) for e in extra]
        w(f"{w.alias(fn)}({', '.join(args)})", ind)


class _NoPair(Exception):
    """A loop a paired loop cannot run (an op not split by batch rows)."""


def _splittable(graph, n) -> bool:
    """Whether a fused loop's outer range runs over the batch rows."""
    shape = tuple(n.shape)
    if not shape or shape[0] != "B":
        return False
    pats = [block_pattern(graph.shape(i), shape) for i in n.inputs]
    blocks = {p[1:] for p in pats if p[0] == "block"}
    return len(blocks) != 1 or next(iter(blocks))[0] >= 1


def _paired_linear(w: _Writer, graph, n, names: dict, ind: int):
    """x W^T (+ b) of a paired loop: each thread lays out its rows of x^T
    (the second half from a cache line on: linalg.pair_pad), then after a
    barrier computes its half of the output columns (ops/linalg.py).  A
    loop of one part (a split step's half: backend/split.py) does the same,
    without the pad: at 16 rows, 22-23 ms for the benchmark's LSTM step
    against 26-28 as x W^T in one product."""
    if n.op != "linear":          # one-input ops (reshape, softmax) included
        raise _NoPair(n.id)
    x, wt = n.inputs[0], n.inputs[1]
    xs, ys = tuple(graph.shape(x)), tuple(n.shape)
    if (len(xs) != 2 or xs[0] != "B" or not isinstance(xs[1], int)
            or len(ys) != 2 or not isinstance(ys[1], int) or len(graph.shape(wt)) != 2):
        raise _NoPair(n.id)
    k = len(w.before)
    xt, tmp = f"_xt{k}", f"_tm{k}"
    pad = f"{w.alias(_linalg.pair_pad)}(B, {np.dtype(w.dtype).itemsize})"
    w.outer(f"{xt} = np.empty(({xs[1]}, B + {pad}), T)")
    w.outer(f"{xt}[:] = T(0)")             # the pad columns: multiplied, never read
    w.outer(f"{tmp} = np.empty(({ys[1]}, B + {pad}), T)")
    ins = ", ".join(names[i] for i in n.inputs)
    w(f"{w.alias(_linalg.rows_t)}({names[x]}, {xt}, r0, r0 + nb)", ind)
    w.barrier(ind)
    part = _linalg.cols_part_bias if len(n.inputs) == 3 else _linalg.cols_part
    w.parts(f"{w.alias(part)}({xt}, {ins[len(names[x]) + 2:]}, {names[n.id]}, {tmp}", ind)
    w.barrier(ind)
    w.macs += xs[1] * ys[1]


def _blend(w: _Writer, m: str, new: str, old: str, dst: str, ind: int):
    """dst = m * new + (1 - m) * old, m [B] over the flat rows of [B, ...]."""
    w(f"_n, _o, _d = {new}.reshape(B, -1), {old}.reshape(B, -1), {dst}.reshape(B, -1)", ind)
    w("for _b in range(B):", ind)
    w(f"_mb = T({m}[_b])", ind + 1)
    w("for _j in range(_d.shape[1]):", ind + 1)
    w("_d[_b, _j] = _mb * _n[_b, _j] + (T(1) - _mb) * _o[_b, _j]", ind + 2)


def _scale_rows(w: _Writer, m: str, src: str, dst: str, ind: int, keep: bool = False):
    """dst = m * src (keep: dst = src + (1 - m) * dst), m [B] over rows."""
    w(f"_n, _d = {src}.reshape(B, -1), {dst}.reshape(B, -1)", ind)
    w("for _b in range(B):", ind)
    w(f"_mb = T({m}[_b])", ind + 1)
    w("for _j in range(_d.shape[1]):", ind + 1)
    if keep:
        w("_d[_b, _j] = _n[_b, _j] + (T(1) - _mb) * _d[_b, _j]", ind + 2)
    else:
        w("_d[_b, _j] = _mb * _n[_b, _j]", ind + 2)


def loop_args(a: dict) -> list:
    args = [f"x_{k}" for k in range(a["n_seq"])] + [f"i_{k}" for k in range(a["n_init"])]
    args += [f"p_{k}" for k in range(len(a["captures"]))] + (["mask"] if a.get("mask") else [])
    return args


def loop_function(node, dtype: str, fname: str = "run", namer=None,
                  saved=(), unused=()) -> tuple[str, _Writer]:
    """(source of the @njit function `fname`, its writer) running a `loop`
    node's forward: fname(seq..., init..., captures..., [mask], out..., final...,
    carry..., saved...) -- `saved`: body ids whose value at every step goes
    into a [T, B, ...] buffer for the backward (ops/loop.py); a saved value
    is computed in place, in its block at step t; `unused`: output indices
    nothing reads (the sequence of a cell whose final state alone is used),
    not written."""
    if namer is not None and not node.attrs.get("mask"):
        try:
            return _forward(node, dtype, fname, namer, saved, unused, pair=True)
        except _NoPair:
            pass
    return _forward(node, dtype, fname, namer, saved, unused, pair=False)


def _forward(node, dtype, fname, namer, saved, unused, pair: bool):
    a, body = node.attrs, node.attrs["body"]
    if namer is not None:
        body = optimise_body(body, list(body.outputs.values()) + list(saved), a["captures"])
    w = _Writer(dtype, namer)
    S, K = len(a["states"]), len(a["outputs"])
    args = loop_args(a) + [f"out_{k}" for k in range(K)] + [f"fin_{s}" for s in range(S)]
    args += [f"car_{s}" for s in range(S)] + [f"sv_{j}" for j in range(len(saved))]
    names = {}
    hoisted = _prologue(w, a, body, names, defer=pair)
    for s, (spec, cid) in enumerate(zip(a["states"], a["state_inputs"])):
        if spec["init"] == "input":
            w(f"h_{s} = i_{spec['index']}.copy()")
        else:
            w(f"h_{s} = np.zeros({_shape(body.shape(cid))}, T)")
        names[cid] = f"h_{s}"
    copied = []
    for j, nid in enumerate(saved):
        if nid in names:          # hoisted
            copied.append((j, nid))
        else:
            names[nid] = f"sv_{j}[t]"
    todo = _buffers(w, body, names, hoisted)
    if pair:
        w.begin_region()
    w.open_loop()
    w("for i in range(T_):")
    w("t = T_ - 1 - i" if a["reverse"] else "t = i", 2)
    for s in range(S):
        w.copy(f"car_{s}[t]", f"h_{s}", 2)
    _emit_body(w, body, names, todo, 2)
    for j, nid in copied:
        w.copy(f"sv_{j}[t]", names[nid], 2)
    new = [names[body.outputs["state:" + st["name"]]] for st in a["states"]]
    outs = [names[body.outputs[k]] for k in a["outputs"]]
    if a.get("mask"):
        w("m = mask[:, t]", 2)
        for k, o in enumerate(outs):
            if k in unused:
                continue
            w(f"_y = np.empty_like({o})", 2)
            _scale_rows(w, "m", o, "_y", 2)
            w(f"out_{k}[:, t] = _y", 2)
        for s, v in enumerate(new):
            w(f"_h = np.empty_like(h_{s})", 2)
            _blend(w, "m", v, f"h_{s}", "_h", 2)
            w(f"h_{s}[:] = _h", 2)
    else:
        for k, o in enumerate(outs):
            if k not in unused:
                w(f"out_{k}[r0:r0 + nb, t] = {o}[r0:r0 + nb]" if pair
                  else f"out_{k}[:, t] = {o}", 2)
        # all new states are computed before any carry buffer is overwritten;
        # a copy is needed only when a new state is another state's carry
        carried = {f"h_{s}" for s in range(S)}
        if carried & set(new):
            if pair:
                raise _NoPair("a state's carry")
            for s, v in enumerate(new):
                w(f"_h{s} = {v}.copy()", 2)
            new = [f"_h{s}" for s in range(S)]
        for s, v in enumerate(new):
            if v != f"h_{s}":
                w.copy(f"h_{s}", v, 2)
    w.close_loop()
    if pair:
        w.end_region()
    for s in range(S):
        w(f"fin_{s}[:] = h_{s}")
    return w.function(fname, args), w


def loop_source(node, dtype: str) -> tuple[str, str]:
    """(module source, module name) of the compiled forward of a `loop` node.
    The module defines `run(...)` with the signature in this file's docstring."""
    fn_src, w = loop_function(node, dtype)
    text = w.module(fn_src, f"nnspec loop {node.id}, {dtype}.")
    return text, "loop_" + hashlib.sha256(text.encode()).hexdigest()[:20]


def _after_loop(a: dict, bwd) -> tuple[dict, dict]:
    """Gradient terms that are sums over steps of a GEMM with a per-step
    cotangent G: dW = sum_t G[t]^T y[t] (y any per-step value), db =
    sum_t rows of G[t] (capture gradients), and dx[t] = G[t] W (a sequence
    gradient).  Stacking G over the steps turns each into one GEMM after the
    loop (T*B rows) instead of T small ones.  Returns (root output id ->
    (input position, nodes of its tree in order), G id -> stack index)."""
    n_seq, n_init = a["n_seq"], a["n_init"]
    cap0 = n_seq + n_init
    rows = set(a["seq_inputs"]) | set(a["state_inputs"])
    caps = set(a["captures"])

    def tree(nid, kind, out):
        n = bwd.node(nid)
        if n.op == "add" and len(n.inputs) == 2 and n.inputs[0] != n.inputs[1]:
            if not all(bwd.consumers(i) == [nid] for i in n.inputs):
                return False
            if not all(tree(i, kind, out) for i in n.inputs):
                return False
        elif kind == "cap" and n.op == "matmul" and n.attrs.get("ta") and not n.attrs.get("tb"):
            if n.inputs[1] in caps or n.inputs[0] in rows | caps:
                return False
        elif kind == "cap" and n.op == "sum_rows":
            if n.inputs[0] in rows | caps:
                return False
        elif kind == "seq" and n.op == "matmul" and not n.attrs.get("ta") and not n.attrs.get("tb"):
            if n.inputs[1] not in caps or n.inputs[0] in rows | caps:
                return False
        else:
            return False
        out.append(nid)
        return True

    roots, stacks = {}, {}
    for i in a["wants"]:
        nid = bwd.outputs.get(f"grad:{i}")
        if nid is None or bwd.consumers(nid) or (n_seq <= i < cap0):
            continue
        nodes = []
        if tree(nid, "seq" if i < n_seq else "cap", nodes):
            roots[nid] = (i, nodes)
            for m in nodes:
                n = bwd.node(m)
                if n.op == "add":
                    continue
                # G, and y of G^T y when it is not a sequence already
                for g in n.inputs[:1] + (n.inputs[1:] if n.attrs.get("ta") else ()):
                    if g not in stacks and g not in rows:
                        stacks[g] = len(stacks)
    return roots, stacks


def _merged_stacks(bwd, raw, post: dict, stacks: dict, taken) -> dict:
    """Column concatenations (colcat: the merged backward GEMM's operand, an
    LSTM's four gate gradients side by side) whose inputs are all stacked for
    the GEMMs after the loop, read there only as G^T y or row sums: the
    concatenation is stacked instead (computed in place, one [T, B, sum n]
    block), and after the loop one GEMM over it gives every G_k^T y as a row
    block (one [1024, 2048] x [2048, 320] product for an LSTM instead of four
    of 256 rows).  `taken`: values with a buffer of their own already (saved,
    step inputs).  Returns colcat id -> [(G_k, column offset, width)]."""
    readers: dict[str, list] = {}
    for _, nodes in post.values():
        for m in nodes:
            for x in raw.node(m).inputs:
                readers.setdefault(x, []).append(raw.node(m))
    out = {}
    for n in bwd.nodes():
        ins = list(n.inputs)
        if (n.op != "colcat" or len(set(ins)) != len(ins)
                or not all(g in stacks and g not in taken for g in ins)):
            continue
        ok = all((m.op == "matmul" and m.attrs.get("ta") and m.inputs[0] == g
                  and m.inputs[1] not in ins) or m.op == "sum_rows"
                 for g in ins for m in readers.get(g, []))
        if ok:
            off, cols = 0, []
            for g in ins:
                cols.append((g, off, bwd.shape(g)[-1]))
                off += bwd.shape(g)[-1]
            out[n.id] = cols
    return out


def loop_grad_function(node, dtype: str, fname: str = "run", namer=None) -> tuple[str, _Writer]:
    """(source, writer) of the @njit function running a `loop_grad` node:
    fname(seq..., init..., captures..., [mask], carry..., cotangent per seed...,
    gradient per wanted input...) -- see ops/loop.py LoopGrad for the meaning.

    Per step, in reverse: the step's inputs, carries and seeds go into
    buffers, the backward body (forward recomputation + vector-Jacobian
    product) runs, sequence gradients land in their [B, T, ...] slot,
    captures' gradients accumulate, and the state's cotangent moves one step
    back (masked steps pass it through; `bptt` windows cut it)."""
    if namer is not None and not node.attrs.get("mask"):
        try:
            return _backward(node, dtype, fname, namer, pair=True)
        except _NoPair:
            pass
    return _backward(node, dtype, fname, namer, pair=False)


def _backward(node, dtype: str, fname: str, namer, pair: bool):
    a, body, bwd = node.attrs, node.attrs["body"], node.attrs["bwd"]
    w = _Writer(dtype, namer)
    n_seq, n_init = a["n_seq"], a["n_init"]
    cap0 = n_seq + n_init
    n_in = n_inputs(a)
    S = len(a["states"])
    seeds, wants = list(a["seeds"]), list(a["wants"])
    args = loop_args(a) + [f"car_{s}" for s in range(S)]
    saved = list(a.get("saved", ()))
    args += [f"d_{j}" for j in range(len(seeds))] + [f"sv_{j}" for j in range(len(saved))]
    args += [f"g_{i}" for i in wants]
    names = {}
    raw = with_saved(bwd, saved)
    post, stacks = _after_loop(a, raw)
    roots = [raw.outputs[f"grad:{i}"] for i in wants + [n_in + s for s in range(S)]
             if f"grad:{i}" in raw.outputs and raw.outputs[f"grad:{i}"] not in post]
    # only what the in-loop results need; every input stays (the writer names them)
    bwd = dce.dead_code(raw, roots + list(stacks) + [n.id for n in raw.nodes()
                                                     if n.op == "input"])
    if namer is not None:
        skip = {m for _, nodes in post.values() for m in nodes}
        bwd = optimise_body(bwd, roots + list(stacks), a["captures"], skip)
    hoisted = _prologue(w, a, bwd, names, defer=pair)
    for j, nid in enumerate(saved):
        names[nid] = f"sv_{j}[t]"
    for s, cid in enumerate(a["state_inputs"]):
        names[cid] = f"car_{s}[t]"
    seed_ids = bwd.meta["seeds"]
    state_keys = ["state:" + st["name"] for st in a["states"]]
    out_keys = [k for k in seeds if k.startswith("out:")]
    for j, key in enumerate(state_keys + out_keys):
        sid = seed_ids[key]
        w(f"e_{j} = np.empty({_shape(bwd.shape(sid))}, T)")
        names[sid] = f"e_{j}"
    for s, key in enumerate(state_keys):
        w(f"gs_{s} = np.zeros({_shape(bwd.shape(seed_ids[key]))}, T)")
        if key in seeds:
            w(f"gs_{s}[:] = d_{seeds.index(key)}")
    for i in wants:
        w(f"g_{i}[...] = T(0)")
    # the stacked per-step values: a saved value's buffer, or GS<j> [T_, B, ...]
    # (computed in place unless the value is an input of the step)
    sv_of = {nid: f"sv_{j}" for j, nid in enumerate(saved)}
    merged = _merged_stacks(bwd, raw, post, stacks, set(sv_of) | set(names))
    in_merged = {}      # G_k -> (its concatenation's stack and width, G_k's columns)
    for c, (cid, cols) in enumerate(merged.items()):
        w(f"GC{c} = np.empty((T_,) + {_shape(bwd.shape(cid))}, T)  # {cid}, every step")
        names[cid] = f"GC{c}[t]"
        in_merged.update({g: (f"GC{c}", bwd.shape(cid)[-1], off, k) for g, off, k in cols})
    copied = []
    for g, j in stacks.items():
        if g not in sv_of and g not in in_merged:
            w(f"GS{j} = np.empty((T_,) + {_shape(bwd.shape(g))}, T)  # {g}, every step")
            if g in names:
                copied.append((g, j))
            else:
                names[g] = f"GS{j}[t]"
    skip = {m for _, nodes in post.values() for m in nodes}
    todo = _buffers(w, bwd, names, hoisted, skip)
    k = a.get("bptt") or 0
    if pair:
        w.begin_region()
    w.open_loop()
    w("for i in range(T_ - 1, -1, -1):")
    w("t = T_ - 1 - i" if a["reverse"] else "t = i", 2)
    if a.get("mask"):
        w("m = mask[:, t]", 2)
    for j, key in enumerate(state_keys + out_keys):
        src = f"gs_{j}" if j < S else f"d_{seeds.index(key)}[:, t]"
        if a.get("mask"):
            if j >= S:
                w(f"_src = np.ascontiguousarray({src})", 2)
                src = "_src"
            _scale_rows(w, "m", src, f"e_{j}", 2)
        else:
            w.copy(f"e_{j}", src, 2)
    _emit_body(w, bwd, names, todo, 2)
    for g, j in copied:
        w.copy(f"GS{j}[t]", names[g], 2)
    for i in wants:
        out = bwd.outputs.get(f"grad:{i}")
        if out is None or out in post:
            continue
        if i < n_seq:
            w(f"g_{i}[r0:r0 + nb, t] = {names[out]}[r0:r0 + nb]" if pair
              else f"g_{i}[:, t] = {names[out]}", 2)
        elif i >= cap0:
            if pair:
                raise _NoPair(out)
            w(f"g_{i} += {names[out]}", 2)
    zero = "[r0:r0 + nb] = T(0)" if pair else "[...] = T(0)"
    for s in range(S):
        gp = bwd.outputs.get(f"grad:{n_in + s}")
        if a.get("mask"):
            _scale_rows(w, "m", names[gp] if gp else f"np.zeros_like(gs_{s})", f"gs_{s}", 2,
                        keep=True)
        elif gp:
            w.copy(f"gs_{s}", names[gp], 2)
        else:
            w(f"gs_{s}{zero}", 2)
    if k:
        w(f"if i % {k} == 0 and i > 0:  # truncated BPTT: a window boundary", 2)
        for s in range(S):
            w(f"gs_{s}{zero}", 3)
    w.close_loop()
    initial = []
    for s, spec in enumerate(a["states"]):
        j = n_seq + spec["index"] if spec["init"] == "input" else None
        if j is not None and j in wants:
            initial.append(f"g_{j}[:] = gs_{s}")
    if not pair:
        for ln in initial:
            w(ln)
    else:           # the threads' rows of every step are written
        w.barrier(1)
    # after the loop: the stacked GEMMs (see _after_loop)
    big = {g: sv_of.get(g, f"GS{j}") for g, j in stacks.items() if g not in in_merged}
    big.update({sid: f"xt_{k}" for k, sid in enumerate(a["seq_inputs"])})
    big.update({cid: f"car_{s}" for s, cid in enumerate(a["state_inputs"])})
    big.update({c: f"p_{k}" for k, c in enumerate(a["captures"])})
    def call(n, args, add=True):
        fn, extra = get_op(n.op).kernel(n.attrs)
        line = f"{w.alias(fn)}({', '.join(args + [w.literal(e) for e in extra])})"
        if not pair:
            w(line)
            return
        if fn.__name__ in ("matmul_tn", "sum_rows") and not extra:
            # sums over every step's rows: a partial sum per thread, then added
            # (or, without `add`, left for the gradients to add: add_parts)
            parts = f"{args[-1]}p"
            w.outer(f"{parts} = np.empty((2,) + {args[-1]}.shape, T)")
            part = _linalg.matmul_tn_part if fn.__name__ == "matmul_tn" else _linalg.sum_rows_part
            w.parts(f"{w.alias(part)}({', '.join(args[:-1])}, {parts}", 1)
            w.barrier(1)
            if add:
                w.parts(f"{w.alias(_linalg.sum_parts)}({parts}, {args[-1]}", 1)
                w.barrier(1)
        elif not add:
            raise _NoPair(n.id)
        elif getattr(fn, "_nnspec_kernel", {}).get("parallel"):
            raise _NoPair(n.id)     # a parallel kernel inside the region
        else:
            w.only_first(line, 1, wait=False)

    def alloc(line):
        (w.outer if pair else w)(line)

    def merged_key(m):
        n = raw.node(m)
        if n.inputs and n.inputs[0] in in_merged:
            return (in_merged[n.inputs[0]][0], n.op) + tuple(n.inputs[1:])
        return None

    # a paired loop adds the threads' partial sums over a merged stack straight
    # into the captures' gradients where each row block is one (no sum first)
    straight = {}
    for root, (i, nodes) in post.items():
        for m in nodes:
            key = merged_key(m)
            if key is not None:
                ok = pair and nodes == [root] and i >= n_seq
                straight[key] = straight.get(key, True) and ok
    whole: dict[tuple, str] = {}    # (merged stack, op, other operand) -> its result
    done = set()
    for root, (i, nodes) in post.items():
        for m in nodes:
            n = raw.node(m)
            key = merged_key(m)
            if key is not None:
                # G_k^T y or G_k's row sums: once over the merged stack (every G_k
                # side by side), a row block per gradient
                gc, width, off, k = in_merged[n.inputs[0]]
                if key not in whole:
                    v = whole[key] = f"_W{len(whole)}"
                    other = tuple(raw.shape(x)[-1] for x in n.inputs[1:])
                    alloc(f"{v} = np.empty({_shape((width,) + other)}, T)")
                    w(f"# {m} = {n.op}, over all steps, every gate at once")
                    call(n, [gc] + [big[x] for x in n.inputs[1:]] + [v], add=not straight[key])
                if straight[key]:
                    w.parts(f"{w.alias(_linalg.add_parts)}({whole[key]}p, {off}, {k}, g_{i}", 1)
                    done.add(root)
                big[m] = f"{whole[key]}[{off}:{off + k}]"
                continue
            seq = i < n_seq
            v = f"_r{len(big)}"
            alloc(f"{v} = np.empty({'(T_,) + ' if seq else ''}{_shape(n.shape)}, T)")
            w(f"# {m} = {n.op}, over all steps")
            if n.op == "add":
                line = f"{v}[...] = {big[n.inputs[0]]} + {big[n.inputs[1]]}"
                if pair:
                    w.only_first(line, 1, wait=False)
                else:
                    w(line)
            else:
                call(n, [big[x] for x in n.inputs] + [v])
            big[m] = v
        if root in done:
            continue
        if i >= n_seq:
            line = f"g_{i} += {big[root]}"
        else:                       # time-major rows back to [B, T, ...]
            axes = (1, 0) + tuple(range(2, len(raw.shape(root)) + 1))
            line = f"g_{i}[...] = {big[root]}.transpose({axes})"
        if pair:            # after the region
            initial.append(line)
        else:
            w(line)
    if pair:
        w.end_region()
        for ln in initial:
            w(ln)
    return w.function(fname, args), w


def loop_grad_source(node, dtype: str) -> tuple[str, str]:
    fn_src, w = loop_grad_function(node, dtype)
    text = w.module(fn_src, f"nnspec loop_grad {node.id}, {dtype}.")
    return text, "loopgrad_" + hashlib.sha256(text.encode()).hexdigest()[:20]


def load(text: str, name: str):
    """Import generated source through the disk cache (backend/cache.py), so
    Numba's cache=True finds the machine code in the next process."""
    from . import cache
    return cache.load(name, lambda: text)


def run_loop(node, dtype: str, *xs):
    """Run a loop node compiled: returns the same dict as `Loop.reference`."""
    text, name = loop_source(node, dtype)
    mod = load(text, name)
    a, body = node.attrs, node.attrs["body"]
    B, T_ = xs[0].shape[:2]

    def arr(nid, time=None):
        s = tuple(B if d == "B" else d for d in body.shape(nid))
        if time == "seq":
            s = (s[0], T_) + s[1:]
        elif time == "carry":                  # time-major
            s = (T_,) + s
        dt = body.dtype_of(nid)
        return np.zeros(s, dtype if dt.startswith("float") else dt)
    outs = [arr(body.outputs[k], "seq") for k in a["outputs"]]
    fins = [arr(body.outputs["state:" + st["name"]]) for st in a["states"]]
    cars = [arr(c, "carry") for c in a["state_inputs"]]
    ins = [np.ascontiguousarray(x) for x in xs[:n_inputs(a)]]
    mod.run(*ins, *outs, *fins, *cars)
    return {"seq": outs, "final": fins, "carry": cars}


def run_loop_grad(node, dtype: str, *xs):
    """Run a loop_grad node compiled: returns the same dict as `LoopGrad.reference`."""
    text, name = loop_grad_source(node, dtype)
    mod = load(text, name)
    a = node.attrs
    ins = [np.ascontiguousarray(x) for x in xs]
    grads = {i: np.zeros(np.shape(xs[i]), dtype) for i in a["wants"]}
    mod.run(*ins, *grads.values())
    return {"grad": [grads.get(i) for i in range(n_inputs(a))]}


def emit_step(sw, body, n, ind: int) -> None:
    """codegen's hook: a `loop` / `loop_grad` node of the step graph becomes a
    helper function in the step module, called once per step with the
    buffers of its inputs and of its `loop_output` readers (which every
    result has: passes/loop_results.py)."""
    g = sw.g
    readers = {(r.attrs["kind"], r.attrs["index"]): r for r in map(g.node, g.consumers(n.id))}
    res = {key: f"v{sw.k(r.id)}" for key, r in readers.items()}
    kept = set(sw.b.roots) | set(g.outputs.values())
    a = n.attrs
    fname = f"_loop{sw.k(n.id)}"
    if n.op == "loop":
        saved = sorted(key for key in readers if key[0] == "saved")
        unused = {k for k in range(len(a["outputs"]))
                  if not g.consumers(readers[("seq", k)].id)
                  and readers[("seq", k)].id not in kept}
        src, _ = loop_function(n, sw.dtype, fname, sw,
                               [readers[key].attrs["node"] for key in saved], unused)
        outs = [res[("seq", k)] for k in range(len(a["outputs"]))]
        outs += [res[("final", s)] for s in range(len(a["states"]))]
        outs += [res[("carry", s)] for s in range(len(a["states"]))]
        outs += [res[key] for key in saved]
    else:
        src, _ = loop_grad_function(n, sw.dtype, fname, sw)
        outs = [res[("grad", i)] for i in a["wants"]]
    sw.helpers.lines += src.splitlines() + [""]
    sw.paired_loops += "prange(2)" in src
    args = [f"v{sw.k(i)}" for i in n.inputs] + outs
    body(f"{fname}({', '.join(args)})  # {n.id} = {n.op}", ind)


# entries stamped alike in every process (cache.guard_own)
from .cache import guard_own as _guard_own  # noqa: E402

_guard_own(sys.modules[__name__])
