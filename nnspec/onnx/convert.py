"""A network's inference graph as an ONNX model.

    model = to_model(net)          # onnx.ModelProto, checked  (nnspec.onnx.to_model)
    export(net, "model.onnx")      # written atomically

What is exported is the graph the inference program compiles before its
fusion passes: `passes.pipeline.REFERENCE_PIPELINE` with kind "infer" (the
float dtype cast, batch norm and dropout in eval mode, the loss and what
only it reads removed).  Each IR node becomes the ONNX nodes its converter
in `CONVERTERS` writes: ``fn(e, node, xs) -> ONNX name``, `xs` the ONNX
names of its inputs, `e` the `Emitter` of the graph it goes into.
Recurrent cells (`loop`) are in cells.py.  The batch axis "B" becomes the
dim_param "batch" and a time axis "T" "time".  The weights are the network's
current parameters and state, as initializers named like its state dict.

Inputs a teacher-forced cell reads (its 0/1 mask and the teacher-only
inputs) are zeros at inference, as `Network.forward` makes them: the model
computes those zeros itself and does not take them as inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..ops.base import known, pad_amounts
from ..passes.pipeline import REFERENCE_PIPELINE, build
from . import cells
from .emit import IR_VERSION, OPSET, Emitter, ExportError, value_info

INT64_MAX = np.iinfo(np.int64).max


def inference_graph(net):
    """The eval-mode forward graph the exporter walks (unfused)."""
    return build(net.graph, "infer", net.dtype, passes=REFERENCE_PIPELINE).graph


def to_model(net, *, check: bool = True) -> onnx.ModelProto:
    graph = inference_graph(net)
    e = Emitter()
    zeros = set(net.forcing) | set(net.teacher_only)
    inputs = [n for n in graph.inputs if n not in zeros]
    # reserve the model's input and output names; an output named like its node
    # is that node's own output (no Identity)
    e.used.update(inputs)
    e.used.update(name for name, nid in graph.outputs.items() if name != nid)
    for nid in inputs:
        for axis, d in enumerate(graph.shape(nid)):
            if isinstance(d, str):
                e.dim_sources.setdefault(d, (nid, axis))
    weights = {**net.params, **net.state}
    for nid in inputs:
        e.names[nid] = nid
    for nid in zeros & set(graph.ids("input")):
        e.names[nid] = e.fill(graph.shape(nid), 0, graph.dtype_of(nid), nid)
    convert(e, graph, weights)
    outputs = []
    for name, nid in graph.outputs.items():
        value = e.names[nid]
        if value != name:
            e.op("Identity", [value], name, out=name)
        outputs.append(value_info(name, graph.dtype_of(nid), graph.shape(nid)))
    g = helper.make_graph(e.nodes, graph.name,
                          [value_info(n, graph.dtype_of(n), graph.shape(n)) for n in inputs],
                          outputs, initializer=e.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nnspec", producer_version=_version())
    model.ir_version = IR_VERSION
    if check:
        check_model(model)
    return model


def check_model(model) -> None:
    """onnx.checker, with ONNX's shape inference (full_check)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported model fails onnx.checker: {err}") from None


def export(net, path) -> None:
    """Write `net`'s inference graph to `path` (atomically: nothing is written
    when the export fails)."""
    from ..train.bundle import atomic_write
    data = to_model(net).SerializeToString()
    atomic_write(path, lambda f: f.write(data))


def _version() -> str:
    from .. import __version__
    return __version__


# ---- the walk ---------------------------------------------------------------------

def convert(e: Emitter, graph, weights: dict) -> None:
    """Every node of `graph` not yet named in `e`, in topological order."""
    for n in graph.nodes():
        if n.id in e.names or n.op in ("param", "state"):
            continue                # weights: made when read (_Inputs)
        fn = CONVERTERS.get(n.op)
        if fn is None:
            what = f"layer '{n.layer}'" if n.layer else f"node '{n.id}'"
            raise ExportError(f"{what} (op {n.op}) has no ONNX equivalent in nnspec's "
                              f"exporter")
        e.names[n.id] = fn(e, n, _Inputs(e, n.inputs, weights), graph, weights)


class _Inputs:
    """A node's inputs' ONNX names, a weight's initializer made at its first
    read (so that one only an eval-mode dropout reads is not stored)."""

    def __init__(self, e, ids, weights):
        self.e, self.ids, self.weights = e, ids, weights

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(len(self.ids))[i]]
        nid, names = self.ids[i], self.e.names
        if nid not in names:
            names[nid] = self.e.const(self.weights[nid], nid)
        return names[nid]


def _same(op_type, **fixed):
    """An op whose inputs and attributes map one to one."""
    def conv(e, n, xs, graph, weights):
        return e.op(op_type, xs, n.id, **fixed)
    return conv


def _attr_op(op_type, **names):
    """An op with one ONNX attribute per IR attr: onnx name -> (IR name, default)."""
    def conv(e, n, xs, graph, weights):
        return e.op(op_type, xs, n.id, **{k: float(n.attrs.get(a, d))
                                          for k, (a, d) in names.items()})
    return conv


def _const(e, n, xs, graph, weights):
    return e.const(np.asarray(n.attrs["value"], dtype=n.dtype), "const")


def _identity(e, n, xs, graph, weights):
    return xs[0]


def _square(e, n, xs, graph, weights):
    return e.op("Mul", [xs[0], xs[0]], n.id)


def _mul(e, n, xs, graph, weights):
    # eval-mode dropout: x * ones
    for i, j in ((0, 1), (1, 0)):
        if graph.node(n.inputs[j]).op == "dropout_mask":
            return xs[i]
    return e.op("Mul", xs, n.id)


def _dropout_mask(e, n, xs, graph, weights):
    if n.attrs.get("training", True):
        raise ExportError(f"layer '{n.layer}' (op dropout_mask) is in training mode")
    if all(graph.node(c).op == "mul" for c in graph.consumers(n.id)):
        return None                 # every reader is x * mask: x itself (_mul)
    return e.fill(graph.shape(n.id), 1, n.dtype, n.id)


def _linear(e, n, xs, graph, weights):
    if len(graph.shape(n.inputs[0])) == 2:
        return e.op("Gemm", xs, n.id, transB=1)
    wt = e.op("Transpose", [xs[1]], f"{n.id}.weight_t", perm=[1, 0])
    y = e.op("MatMul", [xs[0], wt], n.id if len(xs) == 2 else f"{n.id}.mm")
    return e.op("Add", [y, xs[2]], n.id) if len(xs) == 3 else y


def _matmul(e, n, xs, graph, weights):
    if n.attrs.get("ta"):
        raise ExportError(f"layer '{n.layer}' (op matmul with ta) has no ONNX equivalent "
                          f"in nnspec's exporter")
    b = e.op("Transpose", [xs[1]], f"{n.id}.b_t", perm=[1, 0]) if n.attrs.get("tb") else xs[1]
    return e.op("MatMul", [xs[0], b], n.id)


def _batch_matmul(e, n, xs, graph, weights):
    ab = []
    for x, nid, t in zip(xs, n.inputs, ("ta", "tb")):
        rank = len(graph.shape(nid))
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
        ab.append(e.op("Transpose", [x], f"{n.id}.{t}", perm=perm) if n.attrs.get(t) else x)
    return e.op("MatMul", ab, n.id)


def _softmax(op_type):
    def conv(e, n, xs, graph, weights):
        return e.op(op_type, xs, n.id, axis=int(n.attrs.get("axis", -1)))
    return conv


def _pads(n, graph):
    """ONNX pads ([starts..., ends...]) or an auto_pad for a conv's pad attr."""
    x, w = graph.shape(n.inputs[0]), graph.shape(n.inputs[1])
    lo, hi = [], []
    for p, size, k, s, d in zip(n.attrs["pad"], x[2:], w[2:], n.attrs["stride"],
                                n.attrs["dilation"]):
        if isinstance(p, (list, tuple)):
            a, b = p
        elif p in ("same", "same_lower") and not known(size):
            return {"auto_pad": "SAME_UPPER" if p == "same" else "SAME_LOWER"}
        else:
            a, b = pad_amounts(p, size, k, s, d)
        lo.append(int(a))
        hi.append(int(b))
    return {"pads": lo + hi}


def _conv(e, n, xs, graph, weights):
    return e.op("Conv", xs, n.id, kernel_shape=list(graph.shape(n.inputs[1])[2:]),
                strides=list(n.attrs["stride"]), dilations=list(n.attrs["dilation"]),
                group=int(n.attrs.get("groups", 1)), **_pads(n, graph))


def _conv_transpose(e, n, xs, graph, weights):
    pairs = [[p, p] if isinstance(p, int) else list(p) for p in n.attrs["pad"]]
    return e.op("ConvTranspose", xs, n.id, kernel_shape=list(graph.shape(n.inputs[1])[2:]),
                strides=list(n.attrs["stride"]), dilations=list(n.attrs["dilation"]),
                group=int(n.attrs.get("groups", 1)),
                output_padding=list(n.attrs.get("output_padding", [0] * len(pairs))),
                pads=[int(p[0]) for p in pairs] + [int(p[1]) for p in pairs])


def _pool(op_type):
    def conv(e, n, xs, graph, weights):
        a = n.attrs
        pairs = [[p, p] if isinstance(p, int) else list(p) for p in a["pad"]]
        extra = {}
        if op_type == "AveragePool":
            extra["count_include_pad"] = int(a.get("count_include_pad", True))
        if a.get("dilation"):
            extra["dilations"] = list(a["dilation"])
        return e.op(op_type, xs, n.id, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                    pads=[int(p[0]) for p in pairs] + [int(p[1]) for p in pairs],
                    ceil_mode=int(bool(a.get("ceil_mode", False))), **extra)
    return conv


def _batchnorm(e, n, xs, graph, weights):
    if n.attrs.get("training", True):
        raise ExportError(f"layer '{n.layer}' (op batchnorm) is in training mode")
    return e.op("BatchNormalization", xs, n.id, epsilon=float(n.attrs.get("eps", 1e-5)))


def _reduce(op_type):
    def conv(e, n, xs, graph, weights):
        axes = n.attrs.get("axes")
        ins = list(xs) if axes is None else [xs[0], e.ints(*([axes] if isinstance(axes, int)
                                                             else axes))]
        return e.op(op_type, ins, n.id, keepdims=int(bool(n.attrs.get("keepdims", False))))
    return conv


def _reshape(e, n, xs, graph, weights):
    if len(xs) == 2:
        like = e.op("Shape", [xs[1]], f"{n.id}.like")
        return e.op("Reshape", [xs[0], like], n.id)
    # 0 copies the batch axis from the input
    return e.op("Reshape", [xs[0], e.ints(0, *n.attrs["shape"])], n.id)


def _concat(e, n, xs, graph, weights):
    return e.op("Concat", xs, n.id, axis=int(n.attrs.get("axis", 1)))


def _slice(e, n, xs, graph, weights):
    start, stop = n.attrs.get("start"), n.attrs.get("stop")
    return e.op("Slice", [xs[0], e.ints(0 if start is None else start),
                          e.ints(INT64_MAX if stop is None else stop),
                          e.ints(n.attrs.get("axis", 1))], n.id)


def _take(e, n, xs, graph, weights):
    index = e.const(np.asarray(n.attrs.get("index", -1), np.int64), "index")
    return e.op("Gather", [xs[0], index], n.id, axis=int(n.attrs.get("axis", 1)))


def _transpose(e, n, xs, graph, weights):
    return e.op("Transpose", xs, n.id, perm=[int(p) for p in n.attrs["perm"]])


def _embedding(e, n, xs, graph, weights):
    return e.op("Gather", [xs[1], xs[0]], n.id, axis=0)


def _one_hot(e, n, xs, graph, weights):
    # ONNX's OneHot counts a negative id from the end; here it is a row of zeros
    ids = e.op("Unsqueeze", [xs[0], e.ints(-1)], f"{n.id}.ids")
    hit = e.op("Equal", [ids, e.const(np.arange(n.attrs["k"], dtype=np.int64), "range")],
               f"{n.id}.hit")
    return e.op("Cast", [hit], n.id, to=helper.np_dtype_to_tensor_dtype(np.dtype(n.dtype)))


def _positions(e, n, xs, graph, weights):
    shape = graph.shape(n.inputs[0])
    axis = n.attrs.get("axis", 1) % len(shape)
    full = e.op("Shape", [xs[0]], f"{n.id}.shape")
    size = e.op("Gather", [full, e.const(np.asarray(axis, np.int64), "axis")], f"{n.id}.size")
    idx = e.op("Range", [e.const(np.asarray(0, np.int64)), size,
                         e.const(np.asarray(1, np.int64))], f"{n.id}.range")
    along = [1] * len(shape)
    along[axis] = -1
    idx = e.op("Reshape", [idx, e.ints(*along)], f"{n.id}.along")
    return e.op("Expand", [idx, full], n.id)


def _unsqueeze(e, x, axes, hint):
    return e.op("Unsqueeze", [x, e.ints(*axes)], hint) if axes else x


def _vecmat(e, n, xs, graph, weights):       # w [B, N], x [B, N, ...] -> [B, ...]
    rank = len(graph.shape(n.inputs[1]))
    w = _unsqueeze(e, xs[0], range(2, rank), f"{n.id}.w")
    prod = e.op("Mul", [w, xs[1]], f"{n.id}.prod")
    return e.op("ReduceSum", [prod, e.ints(1)], n.id, keepdims=0)


def _outer(e, n, xs, graph, weights):        # w [B, N], y [B, ...] -> [B, N, ...]
    rank = len(graph.shape(n.inputs[1])) + 1
    w = _unsqueeze(e, xs[0], range(2, rank), f"{n.id}.w")
    y = _unsqueeze(e, xs[1], [1], f"{n.id}.y")
    return e.op("Mul", [w, y], n.id)


def _matvec(e, n, xs, graph, weights):       # x [B, N, ...], y [B, ...] -> [B, N]
    rank = len(graph.shape(n.inputs[0]))
    y = _unsqueeze(e, xs[1], [1], f"{n.id}.y")
    prod = e.op("Mul", [xs[0], y], f"{n.id}.prod")
    return e.op("ReduceSum", [prod, e.ints(*range(2, rank))], n.id, keepdims=0)


CONVERTERS = {
    "const": _const,
    "add": _same("Add"), "sub": _same("Sub"), "mul": _mul, "div": _same("Div"),
    "neg": _same("Neg"), "identity": _identity, "square": _square,
    "exp": _same("Exp"), "log": _same("Log"), "sqrt": _same("Sqrt"), "abs": _same("Abs"),
    "relu": _same("Relu"), "sigmoid": _same("Sigmoid"), "tanh": _same("Tanh"),
    "softplus": _same("Softplus"),
    "leaky_relu": _attr_op("LeakyRelu", alpha=("alpha", 0.01)),
    "elu": _attr_op("Elu", alpha=("alpha", 1.0)),
    "softmax": _softmax("Softmax"), "log_softmax": _softmax("LogSoftmax"),
    "linear": _linear, "matmul": _matmul, "batch_matmul": _batch_matmul,
    "conv": _conv, "conv_transpose": _conv_transpose,
    "maxpool": _pool("MaxPool"), "avgpool": _pool("AveragePool"),
    "batchnorm": _batchnorm, "dropout_mask": _dropout_mask,
    "sum": _reduce("ReduceSum"), "mean": _reduce("ReduceMean"), "max": _reduce("ReduceMax"),
    "reshape": _reshape, "concat": _concat, "slice": _slice, "take": _take,
    "transpose": _transpose,
    "embedding": _embedding, "one_hot": _one_hot, "positions": _positions,
    "vecmat": _vecmat, "outer": _outer, "matvec": _matvec,
    "loop": cells.loop, "loop_output": cells.loop_output,
}
