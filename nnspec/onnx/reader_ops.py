"""One converter per ONNX op type: ``fn(reader, node)`` adds the node's layer
(reader.emit) or makes its output a view of an input (reader.alias).  Each is
registered with the attributes it reads; a node with any other attribute is
an error naming it (`Converter.check`).  `fold` evaluates nodes whose inputs
are constants, and the Shape arithmetic of a dynamic batch."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .reader import B, T, Unsupported

CONVERTERS: dict = {}


@dataclass
class Converter:
    fn: object
    attrs: tuple
    inputs: int

    def check(self, node, r) -> None:
        bad = [a.name for a in node.attribute if a.name not in self.attrs]
        if bad:
            raise Unsupported(", ".join(f"attribute '{a}' is not supported" for a in bad))
        if len([i for i in node.input if i]) > self.inputs:
            raise Unsupported(f"input '{node.input[self.inputs]}' (input {self.inputs + 1}) "
                              f"is not supported")


def op(*types, attrs=(), inputs=1):
    def register(fn):
        for t in types:
            CONVERTERS[t] = Converter(fn, tuple(attrs), inputs)
        return fn
    return register


# ---- text ---------------------------------------------------------------------------------

def num(x) -> str:
    """A float as the shortest text that reads back as the same float32."""
    s = str(np.float32(x))
    return s if any(c in s for c in ".einf") else s + ".0"


def ints(v) -> str:
    v = [int(a) for a in v]
    return str(v[0]) if len(set(v)) == 1 else "[" + ", ".join(map(str, v)) + "]"


def call(name: str, *args, **kwargs) -> str:
    parts = [str(a) for a in args] + [f"{k}={v}" for k, v in kwargs.items() if v is not None]
    return f"{name}({', '.join(parts)})" if parts else name


# ---- folding constants --------------------------------------------------------------------

NOT_FOLDED = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Multinomial", "Bernoulli")


def fold(r, node) -> bool:
    """Evaluate `node` now when it computes a constant; True if it did."""
    ins = [i for i in node.input if i]
    if node.op_type in NOT_FOLDED or any(i not in r.consts for i in ins):
        if node.op_type == "Shape" and ins and ins[0] not in r.consts:
            return _shape(r, node)
        return False
    if not node.output:
        return True
    vals = [r.consts[i] for i in ins]
    if any(v.dtype == object for v in vals):
        return _symbolic(r, node, vals)
    from onnx.reference import ReferenceEvaluator
    feeds = {i: r.consts[i] for i in ins}
    try:
        outs = ReferenceEvaluator(node, opsets={"": r.opset}).run(None, feeds)
    except Exception as e:      # noqa: BLE001
        raise Unsupported(f"evaluating it on its constant inputs failed: {e}") from None
    for name, v in zip(node.output, outs):
        if name:
            r.consts[name] = np.asarray(v)
    return True


def _shape(r, node) -> bool:
    s = r.shape(node.input[0])
    dims = [B] + [d if isinstance(d, int) else T for d in s[1:]]
    a = r.attrs(node)
    dims = dims[a.get("start", 0):a.get("end", len(dims))]
    r.consts[node.output[0]] = _settle(np.array(dims, dtype=object))
    return True


def _settle(v: np.ndarray) -> np.ndarray:
    """An object array without the batch or time symbol as int64."""
    return v if any(isinstance(d, str) for d in v.ravel()) else v.astype(np.int64)


def _symbolic(r, node, vals) -> bool:
    """Shape arithmetic over arrays holding the batch symbol "B"."""
    a, t = r.attrs(node), node.op_type
    x = vals[0]
    if t in ("Cast", "Identity"):
        out = x
    elif t == "Gather":
        out = np.take(x, np.asarray(vals[1], np.int64), axis=a.get("axis", 0))
    elif t in ("Unsqueeze", "Squeeze"):
        axes = a.get("axes") if len(vals) < 2 else list(np.asarray(vals[1]).ravel())
        if t == "Unsqueeze":
            out = np.expand_dims(x, tuple(int(k) for k in axes))
        else:
            out = np.squeeze(x, None if axes is None else tuple(int(k) for k in axes))
    elif t == "Concat":
        out = np.concatenate([np.atleast_1d(v).astype(object) for v in vals], axis=a["axis"])
    elif t == "Slice" and x.ndim == 1:
        starts, ends = (int(np.asarray(v).ravel()[0]) for v in vals[1:3])
        steps = int(np.asarray(vals[4]).ravel()[0]) if len(vals) > 4 else 1
        out = x[starts:ends:steps]
    elif t == "ConstantOfShape":
        # zeros of a batch-sized shape: a Scan's initial state (reader_scan.py)
        from onnx.numpy_helper import to_array
        if "value" in a and np.any(to_array(a["value"])):
            raise Unsupported("a ConstantOfShape of the batch size other than zeros is not "
                              "supported")
        r.alias(node.output[0], node.output[0], "zeros",
                f"zeros of shape {[str(d) for d in x.ravel()]}")
        return True
    else:
        raise Unsupported("computes with the batch size (from Shape) in a way nnspec's "
                          "importer does not follow")
    r.consts[node.output[0]] = _settle(np.asarray(out, dtype=object))
    return True


# ---- pass-through -------------------------------------------------------------------------

@op("Identity")
def _identity(r, node):
    base, view, info = r.view(node.input[0])
    r.data(node.input[0], accept=(view,))
    r.alias(node.output[0], base, view, info)


@op("Dropout", attrs=("seed", "ratio"), inputs=3)
def _dropout(r, node):
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("output 'mask' is not supported (inference: dropout is the identity)")
    if r.has(node, 2) and bool(np.asarray(r.const(node.input[2], "training_mode"))):
        raise Unsupported("input 'training_mode' = true is not supported")
    r.alias(node.output[0], r.data(node.input[0]))


# ---- elementwise ----------------------------------------------------------------------------

UNARY = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "Softplus": "softplus",
         "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs"}


@op(*UNARY)
def _unary(r, node):
    r.emit(node, UNARY[node.op_type], [r.data(node.input[0])])


@op("Neg")
def _neg(r, node):
    r.emit(node, "-{0}", [r.data(node.input[0])], stage=False)


@op("LeakyRelu", attrs=("alpha",))
def _leaky_relu(r, node):
    alpha = r.attrs(node).get("alpha", 0.01)
    r.emit(node, call("leaky_relu", num(alpha)), [r.data(node.input[0])])


@op("Elu", attrs=("alpha",))
def _elu(r, node):
    alpha = r.attrs(node).get("alpha", 1.0)
    r.emit(node, call("elu", num(alpha)) if alpha != 1.0 else "elu", [r.data(node.input[0])])


@op("Pow", inputs=2)
def _pow(r, node):
    e = np.asarray(r.const(node.input[1], "exponent")).ravel()
    if e.size != 1 or float(e[0]) != 2.0:
        raise Unsupported(f"exponent {e.tolist()} is not supported (only 2: square)")
    r.emit(node, "square", [r.data(node.input[0])])


@op("Clip", attrs=("min", "max"), inputs=3)
def _clip(r, node):
    a = r.attrs(node)
    lo, hi = a.get("min"), a.get("max")
    if r.has(node, 1):
        lo = float(np.asarray(r.const(node.input[1], "min")))
    if r.has(node, 2):
        hi = float(np.asarray(r.const(node.input[2], "max")))
    x = r.data(node.input[0])
    if lo is not None and hi is not None:
        r.emit(node, call("onnx_clip", num(lo), num(hi)), [x], defs=("onnx_clip",))
    elif lo is not None:
        r.emit(node, f"relu({{0}} - {num(lo)}) + {num(lo)}", [x], stage=False)
    elif hi is not None:
        r.emit(node, f"{{0}} - relu({{0}} - {num(hi)})", [x], stage=False)
    else:
        r.alias(node.output[0], x)


BINARY = {"Add": "+", "Sub": "-", "Mul": "*", "Div": "/"}


@op(*BINARY, inputs=2)
def _binary(r, node):
    sym = BINARY[node.op_type]
    a, b = node.input[0], node.input[1]
    if r.is_const(a) or r.is_const(b):
        k = 0 if r.is_const(a) else 1
        c = np.asarray(r.consts[node.input[k]])
        if c.size == 0 or c.dtype == object or np.any(c != c.ravel()[0]):
            raise Unsupported(f"constant operand '{node.input[k]}' of shape {list(c.shape)} "
                              f"is not supported (a scalar is; a constant tensor is a "
                              f"layer's weight only after MatMul or Conv)")
        x = r.data(node.input[1 - k])
        v = num(c.ravel()[0])
        text = f"{v} {sym} {{0}}" if k == 0 else f"{{0}} {sym} {v}"
        r.emit(node, text, [x], stage=False)
        return
    r.emit(node, f"{{0}} {sym} {{1}}", [r.data(a), r.data(b)], stage=False)


@op("Sum", inputs=1 << 20)
def _sum(r, node):
    xs = [r.data(i) for i in node.input]
    r.emit(node, " + ".join(f"{{{k}}}" for k in range(len(xs))), xs, stage=False)


# ---- softmax, reshaping ---------------------------------------------------------------------

def _axis(r, name, axis) -> int:
    rank = len(r.shape(name))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise Unsupported("axis 0 (the batch axis) is not supported")
    return axis


@op("Softmax", "LogSoftmax", attrs=("axis",))
def _softmax(r, node):
    rank = len(r.shape(node.input[0]))
    axis = r.attrs(node).get("axis", -1 if r.opset >= 13 else 1)
    axis = _axis(r, node.input[0], axis)
    if r.opset < 13 and axis != rank - 1:
        raise Unsupported(f"axis {axis} before opset 13 (a softmax over the flattened "
                          f"trailing axes) is not supported")
    name = "softmax" if node.op_type == "Softmax" else "log_softmax"
    r.emit(node, call(name, axis=axis) if axis != rank - 1 else name, [r.data(node.input[0])])


@op("Flatten", attrs=("axis",))
def _flatten(r, node):
    axis = r.attrs(node).get("axis", 1)
    if axis == 1 and r.view(node.input[0])[1] == "[B, 2, H]":
        return _join(r, node, [0, -1])
    if axis != 1:
        raise Unsupported(f"attribute 'axis' = {axis} is not supported (only 1: axis 0 and "
                          f"axes over 1 merge the batch axis with others)")
    r.emit(node, "flatten", [r.data(node.input[0])])


def _reshape_to(r, node, x, out_example) -> None:
    """`x` reshaped to [B, *out_example] (ints)."""
    src = r.example_shape(node.input[0])
    if list(out_example) == [int(np.prod(src))] and len(src) > 1:
        r.emit(node, "flatten", [x])
    else:
        r.emit(node, call("reshape", "[" + ", ".join(map(str, out_example)) + "]"), [x])


@op("Reshape", attrs=("allowzero",), inputs=2)
def _reshape(r, node):
    if r.view(node.input[0])[1] in JOINED:
        return _join(r, node, list(np.asarray(r.const(node.input[1], "shape")).ravel()))
    x = r.data(node.input[0])
    shape = list(np.asarray(r.const(node.input[1], "shape")).ravel())
    src = r.shape(node.input[0])
    first = shape[0] if shape else None
    if not (first == B or first in (0, -1) and -1 not in shape[1:]
            or isinstance(src[0], int) and first == src[0]):
        raise Unsupported(f"shape {[str(d) for d in shape]} does not keep the batch axis first")
    rest = []
    for i, d in enumerate(shape[1:], 1):
        if d == B:
            raise Unsupported("moves the batch size to another axis")
        if d == T:
            raise Unsupported("a shape holding the time axis' size (from Shape) is not "
                              "supported")
        if int(d) == 0 and not r.attrs(node).get("allowzero", 0):
            d = src[i]
        rest.append(int(d))
    known = int(np.prod(r.example_shape(node.input[0])))
    if first == -1 and int(np.prod(rest)) != known:
        raise Unsupported(f"shape {[str(d) for d in shape]} changes the batch size")
    if -1 in rest:
        known = int(np.prod(r.example_shape(node.input[0])))
        rest[rest.index(-1)] = known // max(1, -int(np.prod(rest)))
    _reshape_to(r, node, x, rest)


@op("Squeeze", "Unsqueeze", attrs=("axes",), inputs=2)
def _squeeze(r, node):
    axes = r.attrs(node).get("axes")
    if r.has(node, 1):
        axes = list(np.asarray(r.const(node.input[1], "axes")).ravel())
    base, view, info = r.view(node.input[0])
    # the views of an LSTM/GRU/RNN node's outputs (reader_cells.py)
    if node.op_type == "Squeeze" and view == "[T, 1, B, H]" and list(axes) == [1]:
        r.data(node.input[0], accept=(view,))
        return r.alias(node.output[0], base, "time-major", info)
    if node.op_type == "Squeeze" and view == "[1, B, H]" and list(axes) == [0]:
        r.data(node.input[0], accept=(view,))
        return r.alias(node.output[0], base)
    if node.op_type == "Unsqueeze" and view is None and [int(a) for a in axes] == [0] \
            and len(r.shape(node.input[0])) == 2:
        # an LSTM's initial_h from a [B, H] value (Squeeze takes it back)
        return r.alias(node.output[0], r.data(node.input[0]), "[1, B, H]",
                       "a [B, H] value unsqueezed at axis 0")
    x = r.data(node.input[0])
    out = r.shape(node.output[0]) if node.output[0] in r.shapes else None
    rank = len(r.shape(node.input[0])) + (len(axes) if node.op_type == "Unsqueeze" else 0)
    if axes is None or any(int(a) % rank == 0 for a in axes):
        raise Unsupported(f"axes {axes} include the batch axis (or are not given)")
    if out is None or not all(isinstance(d, int) for d in out[1:]):
        src = list(r.example_shape(node.input[0]))
        for a in sorted(int(a) % rank for a in axes):
            if node.op_type == "Unsqueeze":
                src.insert(a - 1, 1)
            else:
                src.pop(a - 1)
        out = [None] + src
    _reshape_to(r, node, x, list(out[1:]))


@op("Transpose", attrs=("perm",))
def _transpose(r, node):
    perm = list(r.attrs(node).get("perm", []))
    base, view, info = r.view(node.input[0])
    if (view, tuple(perm)) in TRANSPOSED:
        r.data(node.input[0], accept=(view,))
        return r.alias(node.output[0], base, TRANSPOSED[view, tuple(perm)], info)
    if perm == [1, 0, 2] and view == "time-major":
        r.data(node.input[0], accept=(view,))
        return r.alias(node.output[0], base)
    x = r.data(node.input[0])
    if perm == [1, 0, 2]:
        return r.alias(node.output[0], x, "time-major", "a sequence transposed to [T, B, F]")
    if not perm or perm[0] != 0:
        raise Unsupported(f"attribute 'perm' = {perm} moves the batch axis")
    r.emit(node, call("transpose", *perm), [x])


@op("Concat", attrs=("axis",), inputs=1 << 20)
def _concat(r, node):
    axis = _axis(r, node.input[0], r.attrs(node)["axis"])
    xs = [r.data(i) for i in node.input]
    refs = ", ".join(f"{{{k}}}" for k in range(len(xs)))
    r.emit(node, f"concat({refs}{'' if axis == 1 else f', axis={axis}'})", xs, stage=False)


@op("Slice", inputs=5)
def _slice(r, node):
    get = [list(np.asarray(r.const(node.input[k])).ravel()) if r.has(node, k) else None
           for k in range(1, 5)]
    starts, ends, axes, steps = get
    axes = axes or list(range(len(starts)))
    if len(starts) != 1 or (steps and int(steps[0]) != 1):
        raise Unsupported("only a slice of one axis with step 1 is supported")
    if r.view(node.input[0])[1] == "[2, B, H]":
        start, stop = int(starts[0]), int(ends[0])
        start, stop = (v + 2 if v < 0 else v for v in (start, stop))
        if int(axes[0]) != 0 or start not in (0, 1) or min(stop, 2) != start + 1:
            raise Unsupported("a slice of a bidirectional node's Y_h other than one "
                              "direction ([0:1] or [1:2] of axis 0) is not supported")
        way = _way(r, node, start)
        return r.alias(node.output[0], way, "[1, B, H]", "a final state")
    x = r.data(node.input[0])
    axis = _axis(r, node.input[0], int(axes[0]))
    size = r.shape(node.input[0])[axis]
    start, stop = int(starts[0]), int(ends[0])
    stop = None if stop >= (size if isinstance(size, int) else 2 ** 62) else stop
    r.emit(node, call("slice", start, stop=stop, axis=axis if axis != 1 else None), [x])


def _reduce_axes(r, node):
    a = r.attrs(node)
    axes = a.get("axes")
    if r.has(node, 1):
        axes = list(np.asarray(r.const(node.input[1], "axes")).ravel())
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return None
        raise Unsupported("no axes: reduces over the batch axis")
    return [_axis(r, node.input[0], int(k)) for k in axes]


@op("ReduceMean", "ReduceSum", "ReduceMax", attrs=("axes", "keepdims", "noop_with_empty_axes"),
    inputs=2)
def _reduce(r, node):
    axes = _reduce_axes(r, node)
    x = r.data(node.input[0])
    if axes is None:
        return r.alias(node.output[0], x)
    name = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max"}[node.op_type]
    keep = "true" if r.attrs(node).get("keepdims", 1) else None
    r.emit(node, call(name, axes="[" + ", ".join(map(str, axes)) + "]", keepdims=keep), [x])


# ---- the outputs of a bidirectional LSTM/GRU/RNN node (reader_cells.py) ---------------------

# Y [T, 2, B, H] transposed as PyTorch does before joining the two directions;
# Y_h [2, B, H] to [B, 2, H]
TRANSPOSED = {("[T, 2, B, H]", (0, 2, 1, 3)): "[T, B, 2, H]",
              ("[T, 2, B, H]", (2, 0, 1, 3)): "[B, T, 2, H]",
              ("[2, B, H]", (1, 0, 2)): "[B, 2, H]"}
# a view whose last two axes (direction, unit) a reshape joins: -> what it gives
JOINED = {"[T, B, 2, H]": "time-major", "[B, T, 2, H]": None, "[B, 2, H]": None}


def _join(r, node, shape) -> None:
    """A reshape joining the two directions' units: the cell's sequence
    (merge=concat), time-major or not, or its joined final state `r.h`."""
    base, view, info = r.view(node.input[0])
    src = r.shape(node.input[0])
    lead = [d if d in (0, -1, B) else int(d) for d in shape[:-1]]
    last = int(shape[-1]) if shape else None
    ok = len(shape) == len(src) - 1 and last in (-1, 2 * src[-1]) and all(
        d in (0, B) or d == s or d == -1 and last != -1 for d, s in zip(lead, src))
    if not ok:
        raise Unsupported(f"a reshape of a bidirectional node's output {view} to "
                          f"{[str(d) for d in shape]} is not supported (only joining the "
                          f"two directions' units into the last axis)")
    r.data(node.input[0], accept=(view,))
    if view == "[B, 2, H]":
        return r.alias(node.output[0], info[2])
    r.alias(node.output[0], base, JOINED[view], "a sequence transposed to [T, B, F]"
            if JOINED[view] else None)


def _way(r, node, k: int) -> str:
    """Direction k of a bidirectional node's Y_h or Y_c: r.h_forward (0) or
    r.h_backward (1)."""
    r.data(node.input[0], accept=("[2, B, H]",))
    return r.view(node.input[0])[2][k]


@op("Gather", attrs=("axis",), inputs=2)
def _gather(r, node):
    axis = r.attrs(node).get("axis", 0)
    view = r.view(node.input[0])[1]
    if view in ("[1, B, H]", "[2, B, H]"):          # a final state of an LSTM/GRU/RNN node
        k = np.asarray(r.const(node.input[1], "indices"))
        size = int(view[1])
        if axis != 0 or k.ndim != 0 or not -size <= int(k) < size:
            raise Unsupported(f"a Gather from a {view} final state other than one direction "
                              f"(a scalar index of axis 0) is not supported")
        if view == "[1, B, H]":
            return r.alias(node.output[0], r.data(node.input[0], accept=(view,)))
        return r.alias(node.output[0], _way(r, node, int(k) % 2))
    if not (r.is_const(node.input[0]) or node.input[0] in r.bind):
        raise Unsupported("a Gather from a computed value is not supported (a lookup in a "
                          "constant table is an embedding)")
    table = np.asarray(r.const(node.input[0], "data"))
    if axis != 0 or table.ndim != 2:
        raise Unsupported(f"a Gather along axis {axis} of a {table.ndim}-d table is not "
                          f"supported (an embedding: axis 0 of a 2-d table)")
    ids = r.data(node.input[1])
    if np.dtype(r.dtypes.get(node.input[1], np.float32)).kind not in "iu":
        raise Unsupported(f"indices '{node.input[1]}' must be integers (token ids)")
    r.emit(node, call("embedding", *table.shape), [ids], weights=[table.copy()])


# ---- dense layers -----------------------------------------------------------------------------

@op("Gemm", attrs=("alpha", "beta", "transA", "transB"), inputs=3)
def _gemm(r, node):
    a = r.attrs(node)
    if a.get("transA", 0):
        raise Unsupported("attribute 'transA' = 1 is not supported (it would transpose the "
                          "batch axis)")
    x = r.data(node.input[0])
    w = np.asarray(r.const(node.input[1], "B")) * a.get("alpha", 1.0)
    w = w if a.get("transB", 0) else w.T
    weights = [w]
    if r.has(node, 2):
        c = np.asarray(r.const(node.input[2], "C")) * a.get("beta", 1.0)
        if c.size not in (1, w.shape[0]):
            raise Unsupported(f"input 'C' of shape {list(c.shape)} is not supported (a bias: "
                              f"a scalar or [N])")
        weights.append(np.broadcast_to(c, (1, w.shape[0])).reshape(-1).copy())
    _dense(r, node, x, weights)


def _dense(r, node, x, weights, output=None):
    bias = None if len(weights) == 2 else "false"
    r.emit(node, call("dense", weights[0].shape[0], bias=bias), [x], weights=weights,
           output=output)


@op("MatMul", inputs=2)
def _matmul(r, node):
    if not r.is_const(node.input[1]) and node.input[1] not in r.bind:
        a, b = r.data(node.input[0]), r.data(node.input[1])
        return r.emit(node, "matmul({0}, {1})", [a, b], stage=False)
    w = np.asarray(r.const(node.input[1], "B"))
    if w.ndim != 2:
        raise Unsupported(f"a constant B of shape {list(w.shape)} is not supported (2-D: "
                          f"a dense layer)")
    x = r.data(node.input[0])
    weights, out = [w.T.copy()], None
    add = r.only_consumer(node.output[0])
    if add is not None and add.op_type == "Add":
        other = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        c = r.consts.get(other)
        if c is not None and c.dtype != object and c.size == w.shape[1] \
                and c.shape[-1:] == (w.shape[1],):
            weights.append(np.asarray(c).reshape(-1).copy())
            out = add.output[0]
            r.skip.add(id(add))
    _dense(r, node, x, weights, output=out)


# ---- convolution, pooling, normalisation -------------------------------------------------------

def _pad_text(r, node, rank):
    """The `pad=` of a conv or pool: None (valid), a mode, an int or per side."""
    a = r.attrs(node)
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    extra = r.view(node.input[0])
    extra = extra[2] if extra[1] == "zero-padded" else [0] * (2 * rank)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if any(extra):
            raise Unsupported("a Pad before a node with auto_pad is not supported")
        return "same" if auto == "SAME_UPPER" else "same_lower"
    pads = list(a.get("pads", [0] * (2 * rank))) if auto != "VALID" else [0] * (2 * rank)
    pads = [int(p) + int(e) for p, e in zip(pads, extra)]
    if not any(pads):
        return None
    if pads[:rank] == pads[rank:]:
        return ints(pads[:rank])
    return "[" + ", ".join(str(v) for k in range(rank) for v in (pads[k], pads[rank + k])) + "]"


def _spatial(a, key, rank, default=1):
    v = list(a.get(key, [default] * rank))
    return None if all(d == default for d in v) else ints(v)


CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


@op("Conv", attrs=CONV_ATTRS, inputs=3)
def _conv(r, node):
    a = r.attrs(node)
    w = np.asarray(r.const(node.input[1], "W"))
    rank = w.ndim - 2
    if rank not in (1, 2, 3):
        raise Unsupported(f"a {rank}-d convolution is not supported")
    x = r.data(node.input[0], accept=("zero-padded",))
    weights = [w] + ([np.asarray(r.const(node.input[2], "B"))] if r.has(node, 2) else [])
    text = call(f"conv{rank}d", w.shape[0], ints(w.shape[2:]), stride=_spatial(a, "strides", rank),
                pad=_pad_text(r, node, rank), dilation=_spatial(a, "dilations", rank),
                groups=a.get("group", 1) if a.get("group", 1) != 1 else None,
                bias=None if len(weights) == 2 else "false")
    r.emit(node, text, [x], weights=weights)


@op("ConvTranspose", attrs=CONV_ATTRS + ("output_padding",), inputs=3)
def _conv_transpose(r, node):
    a = r.attrs(node)
    auto = a.get("auto_pad", b"NOTSET")
    if auto not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise Unsupported(f"attribute 'auto_pad' = {auto.decode()} is not supported (give pads)")
    w = np.asarray(r.const(node.input[1], "W"))
    rank, g = w.ndim - 2, a.get("group", 1)
    if rank not in (1, 2, 3):
        raise Unsupported(f"a {rank}-d transposed convolution is not supported")
    x = r.data(node.input[0])
    weights = [w] + ([np.asarray(r.const(node.input[2], "B"))] if r.has(node, 2) else [])
    pad = _pad_text(r, node, rank)
    text = call(f"conv{rank}d_transpose", w.shape[1] * g, ints(w.shape[2:]),
                stride=_spatial(a, "strides", rank), pad=pad,
                output_padding=_spatial(a, "output_padding", rank, 0),
                dilation=_spatial(a, "dilations", rank), groups=g if g != 1 else None,
                bias=None if len(weights) == 2 else "false")
    r.emit(node, text, [x], weights=weights)


@op("MaxPool", "AveragePool", attrs=("auto_pad", "ceil_mode", "dilations", "kernel_shape",
                                     "pads", "strides", "storage_order", "count_include_pad"))
def _pool(r, node):
    a = r.attrs(node)
    if len(node.output) > 1 and node.output[1]:
        raise Unsupported("output 'Indices' is not supported")
    if a.get("storage_order", 0):
        raise Unsupported("attribute 'storage_order' = 1 is not supported")
    k = list(a["kernel_shape"])
    rank = len(k)
    avg = node.op_type == "AveragePool"
    padded = r.view(node.input[0])[1] == "zero-padded"
    if padded and not (avg and a.get("count_include_pad", 0)):
        raise Unsupported("a Pad before it (zeros would enter the window) is not supported")
    x = r.data(node.input[0], accept=("zero-padded",))
    stride = list(a.get("strides", [1] * rank))
    pad = _pad_text(r, node, rank)
    text = call("avgpool" if avg else "maxpool", ints(k),
                stride=None if stride == k else ints(stride), pad=pad,
                dilation=_spatial(a, "dilations", rank),
                ceil_mode="true" if a.get("ceil_mode", 0) else None,
                count_include_pad="false" if avg and not a.get("count_include_pad", 0)
                and (pad is not None or a.get("ceil_mode", 0)) else None)
    r.emit(node, text, [x])


@op("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(r, node):
    s = r.example_shape(node.input[0])
    name = "global_avgpool" if node.op_type == "GlobalAveragePool" else "global_maxpool"
    ones = ", ".join(["1"] * (len(s) - 1))
    r.emit(node, f"{name} -> reshape([{s[0]}, {ones}])", [r.data(node.input[0])])


@op("Pad", attrs=("mode", "pads", "value"), inputs=4)
def _pad(r, node):
    a = r.attrs(node)
    mode = a.get("mode", b"constant")
    pads = a.get("pads")
    if r.has(node, 1):
        pads = list(np.asarray(r.const(node.input[1], "pads")).ravel())
    value = a.get("value", 0.0)
    if r.has(node, 2):
        value = float(np.asarray(r.const(node.input[2], "constant_value")).ravel()[0])
    if r.has(node, 3):
        raise Unsupported("input 'axes' is not supported")
    rank = len(pads) // 2
    if mode not in (b"constant", "constant") or value != 0 or any(pads[:2]) \
            or any(pads[rank:rank + 2]):
        raise Unsupported("only zero padding of the spatial axes, read by a Conv, is supported")
    x = r.data(node.input[0])
    spatial = [int(p) for p in pads[2:rank]] + [int(p) for p in pads[rank + 2:]]
    r.alias(node.output[0], x, "zero-padded", spatial)


@op("BatchNormalization", attrs=("epsilon", "momentum", "training_mode", "spatial"), inputs=5)
def _batchnorm(r, node):
    a = r.attrs(node)
    if a.get("training_mode", 0) or len([o for o in node.output if o]) > 1:
        raise Unsupported("training mode (outputs running_mean, running_var) is not supported")
    if not a.get("spatial", 1):
        raise Unsupported("attribute 'spatial' = 0 is not supported")
    rank = len(r.shape(node.input[0]))
    if rank not in (2, 3, 4):
        raise Unsupported(f"a {rank}-d input is not supported (nnspec's batchnorm: 2 to 4)")
    weights = [np.asarray(r.const(node.input[k], n))
               for k, n in enumerate(("scale", "B", "mean", "var"), 1)]
    eps, momentum = a.get("epsilon", 1e-5), 1 - a.get("momentum", 0.9)
    text = call("batchnorm", momentum=num(momentum) if abs(momentum - 0.1) > 1e-6 else None,
                eps=num(eps) if abs(eps - 1e-5) > 1e-9 else None)
    r.emit(node, text, [r.data(node.input[0])], weights=weights)


from . import reader_cells, reader_scan  # noqa: E402,F401  (register LSTM, GRU, RNN; Scan)
