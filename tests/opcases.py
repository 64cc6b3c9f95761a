"""The table of op cases `tests/test_ops.py` runs: every registered op, with
odd sizes and each of its options.

An input is `X(shape)` (an activation: axis 0 is the batch, "B" in the graph),
`P(shape)` (a parameter or other unbatched array), `I(shape, high)` (int64 in
[0, high), never differentiated), and `kind="pos"` for inputs that must be
positive (log, sqrt) or `kind="away"` for values kept away from 0 (div).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Arg:
    shape: tuple
    batched: bool = False
    dtype: str = "float"          # float | int64
    kind: str = "normal"          # normal | pos | away | const
    high: int = 0                 # ints: values in [0, high)
    grad: bool = True             # differentiate with respect to it

    def sample(self, rng, dtype):
        if self.dtype == "int64":
            return rng.integers(0, self.high, size=self.shape).astype(np.int64)
        x = rng.standard_normal(self.shape)
        if self.kind == "pos":
            x = np.abs(x) + 0.5
        elif self.kind == "away":
            x = np.sign(x) * (np.abs(x) + 0.5)
        elif self.kind == "unit":     # in (0.05, 0.95)
            x = 0.05 + 0.9 * rng.random(self.shape)
        elif self.kind == "count":    # a step counter: a small whole number
            x = rng.integers(0, 1000, size=self.shape).astype(float)
        return x.astype(dtype)


def X(*shape, **kw) -> Arg:
    return Arg(tuple(shape), batched=True, **kw)


def P(*shape, **kw) -> Arg:
    return Arg(tuple(shape), **kw)


def I(*shape, high, batched=True) -> Arg:  # noqa: E743
    return Arg(tuple(shape), batched=batched, dtype="int64", high=high, grad=False)


@dataclass(frozen=True)
class Case:
    op: str
    attrs: dict
    args: tuple
    note: str = ""
    fd: bool = True                       # check the gradient by finite differences
    extra: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.note}" if self.note else self.op


def conv(nd, stride=1, dilation=1, pad="valid", groups=1, bias=False, **kw):
    """conv attrs: per-axis lists from ints; pad a mode, an int, or per-axis."""
    per = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * nd  # noqa: E731
    pads = [[p, p] if isinstance(p, int) else p for p in per(pad)]
    return dict(stride=per(stride), dilation=per(dilation), pad=pads, groups=groups,
                bias=bias, **kw)


def tconv(nd, stride=1, dilation=1, pad=0, output_padding=0, groups=1, bias=False):
    per = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * nd  # noqa: E731
    return dict(stride=per(stride), dilation=per(dilation), pad=per(pad),
                output_padding=per(output_padding), groups=groups, bias=bias)


def CA(op, args, note, attrs, fd=True) -> Case:
    return Case(op, attrs, tuple(args), note, fd)


def conv_family(note, x, w, attrs):
    """conv, and its two gradient ops on matching shapes."""
    from nnspec.ops.conv import conv_out_shape
    out = conv_out_shape("conv", attrs, x, w)
    cases = [CA("conv", [X(*x), P(*w)] + ([P(w[0])] if attrs["bias"] else []), note, attrs)]
    if not attrs["bias"]:
        cases += [CA("conv_grad_input", [X(*out), P(*w), X(*x, grad=False)], note, attrs),
                  CA("conv_grad_weight", [X(*x), X(*out), P(*w, grad=False)], note, attrs)]
    return cases


def pool(nd, k, stride=None, pad=0, **kw):
    per = lambda v: list(v) if isinstance(v, (list, tuple)) else [v] * nd  # noqa: E731
    return dict(kernel=per(k), stride=per(k if stride is None else stride), pad=per(pad), **kw)


def pool_family(note, x, attrs):
    from nnspec.ops.pool import pool_shape
    out = pool_shape("pool", attrs, x)
    plane = int(np.prod(x[2:]))
    return [CA("maxpool", [X(*x)], note, attrs),
            CA("maxpool_switches", [X(*x)], note, attrs),
            CA("avgpool", [X(*x)], note, attrs),
            CA("avgpool_grad", [X(*out), X(*x, grad=False)], note, attrs),
            CA("unpool", [X(*out), Arg(out, True, "int64", high=plane, grad=False),
                          X(*x, grad=False)], note + "-like", {}),
            CA("unpool", [X(*out), Arg(out, True, "int64", high=plane, grad=False),
                          X(*x, grad=False)], note + "-like-add", {"add": True})]


def bn_family(note, x, training):
    c = x[1]
    ps = [P(c), P(c), P(c, grad=False), P(c, kind="pos", grad=False)]
    at = dict(momentum=0.1, eps=1e-5, training=training)
    gat = dict(eps=1e-5, training=training)
    return [CA("batchnorm", [X(*x)] + ps, note, at),
            CA("batchnorm_grad", [X(*x), X(*x)] + [P(c), P(c), P(c, kind="pos")], note + "-input",
               {**gat, "part": "input"}),
            CA("batchnorm_grad", [X(*x), X(*x)] + [P(c), P(c), P(c, kind="pos")], note + "-weight",
               {**gat, "part": "weight"})]


def C(op, args, note="", fd=True, **attrs) -> Case:
    return Case(op, attrs, tuple(args), note, fd)


# Ops whose behaviour is a whole subgraph, tested elsewhere rather than by this
# table (their kernels come from the code generator): the recurrences in
# test_loop*.py, and `fused` (the fusion pass's chains of the ops above) in
# test_backend.py.
ELSEWHERE = {"loop", "loop_grad", "loop_output", "fused"}

UNARY = ["neg", "identity", "square", "exp", "relu", "sigmoid", "tanh", "softplus", "abs"]

LOSS_OPTIONS = [      # (the ignored classes are among each case's sampled targets)
    ("weight", {"weight": [0.5, 2.0, 1.0, 3.0]}),
    ("weight-ignore", {"weight": [0.5, 2.0, 1.0, 3.0], "ignore_index": 0}),
    ("ignore-sum", {"ignore_index": 1, "reduction": "sum"}),
    ("weight-ignore-none", {"weight": [1.5, 0.5, 2.0, 1.0], "ignore_index": 1,
                            "reduction": "none"}),
]

CASES = [
    # ---- elementwise -----------------------------------------------------------
    *[C(op, [X(3, 5)]) for op in UNARY],
    C("log", [X(3, 5, kind="pos")]),
    C("sqrt", [X(2, 7, kind="pos")]),
    C("leaky_relu", [X(3, 5)], alpha=0.2),
    C("leaky_relu", [X(3, 5)], "negative-alpha", alpha=-0.3),
    C("leaky_relu", [X(3, 5)], "zero-alpha", alpha=0.0),
    C("elu", [X(3, 5)], alpha=0.7),
    C("add", [X(3, 5), X(3, 5)], "same"),
    C("add", [X(2, 3, 4, 5), P(3, 1, 1)], "bias-chw"),
    C("add", [P(), X(2, 3)], "scalar-left"),
    C("sub", [X(2, 3, 4), P(4)], "row"),
    C("sub", [X(3, 1), P(1, 4)], "outer"),
    C("mul", [X(2, 3, 5), P(3, 1)], "mid"),
    C("mul", [X(2, 3), P()], "scalar"),
    C("div", [X(2, 3, 5), P(5, kind="away")], "row"),
    C("div", [X(3, 4), X(3, 4, kind="away")], "same"),
    C("relu_grad", [X(3, 5), X(3, 5)]),
    C("abs_grad", [X(3, 5), X(3, 5)]),
    C("leaky_relu_grad", [X(3, 5), X(3, 5)], alpha=0.3),
    C("square_grad", [X(3, 5), X(3, 5)]),
    C("sqrt_grad", [X(3, 5), X(3, 5, kind="pos")]),
    C("elu_grad", [X(3, 5), X(3, 5)], alpha=0.5),
    C("sigmoid_grad", [X(3, 5), X(3, 5, kind="unit")]),
    C("tanh_grad", [X(3, 5), X(3, 5, kind="unit")]),
    C("sigmoid_times", [X(3, 5), X(3, 5)]),
    C("div_grad_b", [X(3, 5), X(3, 5), X(3, 5, kind="away")]),
    C("fill_like", [X(3, 4)], value=2.5),
    C("fill_like", [I(3, 4, high=5)], "int", fd=False, value=3.0),
    # ---- reductions ------------------------------------------------------------
    C("sum", [X(3, 4, 5)], "all"),
    C("sum", [X(3, 4, 5)], "axes02", axes=[0, 2]),
    C("sum", [X(3, 4, 5)], "neg-keep", axes=[-1], keepdims=True),
    C("mean", [X(3, 4, 5)], "axis1", axes=1),
    C("mean", [X(3, 4, 5)], "all-keep", keepdims=True),
    C("max", [X(3, 4, 5)], "axis2", axes=[2]),
    C("max", [X(3, 4, 5)], "axes01-keep", axes=[0, 1], keepdims=True),
    C("max_mask", [X(3, 4, 5)], axes=[1]),
    C("sum_to", [X(2, 3, 4), P(3, 1)], "mid"),
    C("sum_to", [X(2, 3, 4), P(3, 1)], "mean", mean=True),
    C("sum_to", [X(2, 3), X(2, 1, grad=False)], "batched-like"),
    C("broadcast_like", [P(4), X(3, 4, grad=False)], "rows"),
    C("broadcast_like", [X(3, 1), X(3, 5, grad=False)], "col-mean", mean=True),
    C("broadcast_like", [X(5), X(5, 3, 4, grad=False)], "axes", axes=[1, 2]),
    # ---- linalg ----------------------------------------------------------------
    C("linear", [X(3, 5), P(4, 5), P(4)], "bias", bias=True),
    C("linear", [X(2, 3, 5), P(4, 5)], "nobias-seq", bias=False),
    C("matmul", [X(3, 5), P(5, 4)], "nn"),
    C("matmul", [X(3, 5), P(4, 5)], "nt", tb=True),
    C("matmul", [X(3, 5), X(3, 4)], "tn", ta=True),
    C("sum_rows", [X(3, 4, 5)]),
    # the spec's matmul(a, b): NumPy's, the leading axes broadcast
    C("batch_matmul", [X(2, 3, 4), X(2, 4, 5)], "batched"),
    C("batch_matmul", [X(2, 3, 1, 4), X(2, 1, 4, 5)], "bcast-both"),
    C("batch_matmul", [X(2, 3, 2, 5), P(5, 3)], "param-b"),
    C("batch_matmul", [X(2, 4, 3), X(2, 4, 5)], "ta", ta=True),
    C("batch_matmul", [X(2, 3, 4), X(2, 5, 4)], "tb", tb=True),
    C("batch_matmul", [X(2, 1, 4, 3), X(2, 3, 5, 4)], "ta-tb-bcast", ta=True, tb=True),
    # ---- convolution -------------------------------------------------------------
    *conv_family("1d-valid", (2, 3, 9), (4, 3, 3), conv(1)),
    *conv_family("1d-bias", (2, 3, 9), (4, 3, 3), conv(1, bias=True)),
    *conv_family("1d-causal-dil2", (2, 2, 8), (3, 2, 3), conv(1, dilation=2, pad="causal")),
    *conv_family("1d-same-stride2", (2, 3, 9), (2, 3, 4), conv(1, stride=2, pad="same")),
    *conv_family("1d-full", (1, 2, 5), (3, 2, 3), conv(1, pad="full")),
    *conv_family("2d-valid", (2, 3, 7, 6), (4, 3, 3, 2), conv(2)),
    *conv_family("2d-bias-pad1", (2, 3, 5, 6), (4, 3, 3, 3), conv(2, pad=1, bias=True)),
    *conv_family("2d-same-stride2", (2, 2, 7, 8), (3, 2, 3, 3), conv(2, stride=2, pad="same")),
    *conv_family("2d-same-even-k", (1, 2, 6, 5), (2, 2, 4, 2), conv(2, pad="same")),
    *conv_family("2d-stride-dil", (2, 2, 9, 9), (3, 2, 3, 2),
                 conv(2, stride=[2, 1], dilation=[1, 2], pad=[[1, 0], [2, 1]])),
    *conv_family("2d-asym-1x7", (1, 2, 4, 11), (3, 2, 1, 7), conv(2, pad=[0, 3])),
    *conv_family("2d-groups2", (2, 4, 6, 5), (6, 2, 3, 3), conv(2, groups=2, pad="same")),
    *conv_family("2d-depthwise", (2, 3, 6, 5), (6, 1, 3, 3), conv(2, groups=3, stride=2)),
    # 16 or more channels per group: the forward runs channels-last (im2row)
    *conv_family("2d-c16-pad1", (3, 16, 5, 6), (3, 16, 3, 3), conv(2, pad=1, bias=True)),
    *conv_family("2d-c16-groups2-s2-dil", (2, 32, 7, 6), (4, 16, 3, 2),
                 conv(2, groups=2, stride=2, dilation=[1, 2], pad=[[1, 0], [2, 1]])),
    # 16 or more channels per group on both sides, stride 1: the input gradient runs
    # as the channels-last forward of g with the kernels flipped (not where the
    # padding would add over half the work: the valid case)
    *conv_family("2d-c16-o16-asym-dil", (2, 16, 6, 7), (16, 16, 3, 2),
                 conv(2, dilation=[2, 1], pad=[[1, 3], [0, 1]])),
    *conv_family("2d-c32-groups2-same", (2, 32, 5, 5), (32, 16, 3, 3),
                 conv(2, groups=2, pad="same")),
    *conv_family("1d-c16-causal-dil2", (2, 16, 9), (16, 16, 3), conv(1, dilation=2, pad="causal")),
    *conv_family("2d-c16-full", (1, 16, 4, 3), (16, 16, 2, 3), conv(2, pad="full")),
    *conv_family("2d-c16-valid", (2, 16, 6, 6), (16, 16, 3, 3), conv(2)),
    # 1x1, stride 1, no padding, one group: one GEMM per image in NCHW (conv's
    # _pointwise), with and without bias, 1-d and 2-d; strided 1x1 goes by rows
    *conv_family("2d-pointwise", (3, 5, 3, 4), (7, 5, 1, 1), conv(2)),
    *conv_family("2d-pointwise-c16-bias", (2, 17, 2, 3), (9, 17, 1, 1), conv(2, bias=True)),
    *conv_family("1d-pointwise", (2, 4, 5), (3, 4, 1), conv(1, pad="same")),
    *conv_family("2d-1x1-s2", (2, 16, 5, 4), (6, 16, 1, 1), conv(2, stride=2)),
    # more than 64 output channels (ROWS_BY_PIXEL_MAX_O): the channels-last
    # product is [o, pixel]; in the input gradient too (72 input channels)
    *conv_family("2d-c72-o72-pad1", (2, 72, 3, 4), (72, 72, 3, 3), conv(2, pad=1, bias=True)),
    CA("conv_transpose", [X(2, 16, 4, 5), P(16, 16, 3, 3)], "2d-c16-p1", tconv(2, pad=1)),
    CA("conv_transpose", [X(2, 3, 4, 5), P(3, 2, 3, 3)], "2d-s2-p1-op1",
       tconv(2, stride=2, pad=1, output_padding=1)),
    CA("conv_transpose", [X(2, 4, 3, 4), P(4, 1, 2, 3), P(2)], "2d-groups2-bias-dil",
       tconv(2, stride=[1, 2], dilation=[2, 1], groups=2, bias=True)),
    CA("conv_transpose", [X(2, 3, 6), P(3, 2, 4)], "1d-s3", tconv(1, stride=3, pad=1)),
    CA("conv_transpose", [X(2, 3, 4, 3), P(3, 2, 3, 3), P(2)], "2d-sides-s2",
       tconv(2, stride=2, pad=[[0, 2], [1, 0]], output_padding=[1, 0], bias=True)),
    *conv_family("2d-same-lower-s2", (2, 2, 7, 8), (3, 2, 2, 3),
                 conv(2, stride=2, pad="same_lower")),
    *conv_family("1d-same-lower-dil2", (2, 3, 8), (2, 3, 2), conv(1, dilation=2,
                                                                 pad="same_lower")),
    # 3-d (direct loops)
    *conv_family("3d-bias-same", (2, 2, 4, 5, 3), (3, 2, 3, 2, 2), conv(3, pad="same",
                                                                      bias=True)),
    *conv_family("3d-sides-s2-dil-groups2", (1, 4, 5, 6, 5), (2, 2, 2, 3, 2),
                 conv(3, stride=[2, 1, 2], dilation=[1, 2, 1], groups=2,
                      pad=[[1, 0], [0, 2], [1, 1]])),
    CA("conv_transpose", [X(2, 3, 3, 2, 4), P(3, 2, 2, 3, 2), P(2)], "3d-s2-sides-bias",
       tconv(3, stride=[2, 1, 2], pad=[[0, 1], 1, [1, 0]], output_padding=[1, 0, 0],
             bias=True)),
    CA("conv_transpose", [X(1, 4, 2, 3, 2), P(4, 1, 2, 2, 3)], "3d-groups2-dil",
       tconv(3, dilation=[2, 1, 1], groups=2)),
    # ---- pooling -----------------------------------------------------------------
    *pool_family("2d-k2", (2, 3, 6, 7), pool(2, 2)),
    *pool_family("2d-k3s2-pad1-ceil", (2, 2, 7, 8), pool(2, 3, 2, 1, ceil_mode=True)),
    *pool_family("2d-asym-overlap", (1, 2, 5, 7), pool(2, [2, 3], [1, 2])),
    *pool_family("1d-k3s2-pad1", (2, 3, 9), pool(1, 3, 2, 1)),
    CA("avgpool", [X(2, 2, 7, 8)], "exclude-pad-ceil",
       pool(2, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    CA("avgpool_grad", [X(2, 2, 4, 5), X(2, 2, 7, 8, grad=False)], "exclude-pad-ceil",
       pool(2, 3, 2, 1, ceil_mode=True, count_include_pad=False)),
    # padding per side (ONNX's pads; same and same_lower resolve to these) and dilation
    *pool_family("2d-sides-dil", (2, 2, 7, 8), pool(2, [3, 2], [2, 1], [[2, 1], [0, 2]],
                                                   dilation=[2, 3])),
    *pool_family("2d-same-lower-s2", (1, 2, 7, 6), pool(2, 2, 2, [[1, 0], [0, 0]])),
    *pool_family("1d-dil2-ceil", (2, 3, 9), pool(1, 3, 2, [[0, 1]], dilation=[2],
                                                 ceil_mode=True)),
    # 3-d (volumes, video)
    *pool_family("3d-k2", (1, 2, 4, 5, 4), pool(3, 2)),
    *pool_family("3d-sides-dil-ceil", (2, 1, 5, 4, 6), pool(3, [2, 3, 2], [2, 1, 2],
                                                           [[1, 0], [1, 1], [0, 1]],
                                                           dilation=[2, 1, 1], ceil_mode=True)),
    CA("avgpool", [X(2, 2, 7, 8)], "exclude-pad-sides-dil",
       pool(2, 3, 2, [[2, 1], [1, 2]], dilation=[2, 1], count_include_pad=False)),
    CA("avgpool_grad", [X(2, 2, 3, 5), X(2, 2, 7, 8, grad=False)], "exclude-pad-sides-dil",
       pool(2, 3, 2, [[2, 1], [1, 2]], dilation=[2, 1], count_include_pad=False)),
    CA("unpool", [X(2, 3, 3, 3), Arg((2, 3, 3, 3), True, "int64", high=36, grad=False)],
       "size", {"size": [6, 6]}),
    CA("gather_switches", [X(2, 3, 6, 6), Arg((2, 3, 3, 3), True, "int64", high=36)], "", {}),
    CA("gather_switches", [X(2, 3, 6, 6), Arg((2, 3, 3, 3), True, "int64", high=36)], "add",
       {"add": True}),
    # ---- shape -------------------------------------------------------------------
    C("reshape", [X(2, 3, 4)], "flatten", shape=[12]),
    C("reshape", [X(2, 3, 4)], "minus1", shape=[4, -1]),
    C("reshape", [X(2, 12), X(2, 3, 4, grad=False)], "like"),
    C("concat", [X(2, 3, 4), X(2, 5, 4)], "axis1", axis=1),
    C("concat", [X(2, 3, 4), X(2, 3, 1)], "last", axis=-1),
    C("slice", [X(2, 7, 3)], "mid", axis=1, start=2, stop=5),
    C("slice", [X(2, 7, 3)], "neg", axis=-1, start=-2, stop=None),
    C("unslice", [X(2, 3, 3), X(2, 7, 3, grad=False)], "", axis=1, start=2, stop=5),
    C("take", [X(2, 5, 3)], "last", axis=1, index=-1),
    C("take", [X(2, 5, 3)], "first-axis2", axis=2, index=0),
    C("untake", [X(2, 3), X(2, 5, 3, grad=False)], "", axis=1, index=-1),
    C("transpose", [X(2, 3, 4)], "021", perm=[0, 2, 1]),
    C("transpose", [X(2, 3, 4, 5)], "1302", perm=[1, 3, 0, 2]),
    # ---- normalisation, dropout --------------------------------------------------
    *bn_family("2d-train", (5, 3), True),
    *bn_family("1d-eval", (3, 2, 5), False),
    *bn_family("nchw-train", (2, 3, 4, 5), True),
    *bn_family("nchw-eval", (2, 3, 2, 3), False),
    C("batchnorm_stat", [X(4, 3, 5), P(3)], "mean", stat="mean", momentum=0.1),
    C("batchnorm_stat", [X(4, 3, 2, 2), P(3, kind="pos")], "var", stat="var", momentum=0.3),
    C("batchnorm_stat", [X(4, 3), P(3)], "eval", stat="var", training=False),
    # sync_bn's pieces (passes/sync_bn.py; one process: comm all zeros).  Their
    # gradient is batchnorm_synced's whole-graph rule, which assumes the sums
    # are x's: tests/test_sync_bn.py checks it against batchnorm's
    *[C("bn_sums", [X(*x)] + extra, f"{kind}-{note}", kind=kind)
      for x, note in (((5, 3), "2d"), ((2, 3, 4, 5), "nchw"))
      for kind, extra in (("x", []), ("sq", [P(2, 3, kind="pos")]))],
    C("bn_sums", [X(4, 3, 5), X(4, 3, 5), P(2, 3, kind="pos")], "grad-ncl", kind="grad"),
    *[C("batchnorm_synced", [X(*x), P(3), P(3), P(2, 3, kind="pos"), P(3, kind="pos"),
                             I(8, high=1, batched=False)], note, fd=False, eps=1e-5)
      for x, note in (((5, 3), "2d"), ((2, 3, 4, 5), "nchw"))],
    # the split form of a training batchnorm in one process: no comm
    C("batchnorm_synced", [X(2, 3, 5), P(3), P(3), P(2, 3, kind="pos"), P(3, kind="pos")],
      "split", fd=False, eps=1e-5, synced=False),
    *[C("batchnorm_synced_grad", [X(2, 3, 5), X(2, 3, 5), P(3), P(2, 3, kind="pos"),
                                  P(3, kind="pos"), P(2, 3)], part, part=part, eps=1e-3)
      for part in ("input", "weight", "bias")],
    C("bn_synced_stat", [P(2, 3, kind="pos"), P(3, kind="pos"), P(3)], "mean", stat="mean",
      momentum=0.1),
    C("bn_synced_stat", [P(2, 3, kind="pos"), P(3, kind="pos"), P(3)], "var", stat="var",
      momentum=0.3),
    C("allreduce", [X(3, 4), I(8, high=1, batched=False)], "one-process"),
    C("allreduce", [X(2, 3, 5), I(8, high=1, batched=False)], "weighted", fd=False,
      weighted=True),
    C("dropout_mask", [X(6, 7, grad=False), P(kind="count", grad=False)], "train",
      p=0.3, seed=12345, training=True),
    C("dropout_mask", [X(3, 4, grad=False), P(kind="count", grad=False)], "eval",
      p=0.5, seed=1, training=False),
    # ---- integer indices, per-example matrix-vector products ----------------------
    C("one_hot", [I(2, 5, high=6)], "", k=4),           # ids 4 and 5 lie outside: zeros
    C("positions", [X(2, 3, 4, grad=False)], "axis1", axis=1),
    C("positions", [I(2, 5, high=3)], "last", axis=-1),
    C("vecmat", [X(2, 5), X(2, 5, 3)]),
    C("vecmat", [X(2, 4), X(2, 4, 2, 3)], "rank4"),
    C("outer", [X(2, 5), X(2, 3)]),
    C("outer", [X(2, 4), X(2, 2, 3)], "rank4"),
    C("matvec", [X(2, 5, 3), X(2, 3)]),
    C("matvec", [X(2, 4, 2, 3), X(2, 2, 3)], "rank4"),
    # ---- embedding, losses ---------------------------------------------------------
    C("embedding", [I(3, high=7), P(7, 4)], "1d"),
    C("embedding", [I(2, 5, high=6), P(6, 3)], "seq"),
    C("embedding_grad", [X(2, 5, 3), I(2, 5, high=6), P(6, 3, grad=False)]),
    C("one_hot", [I(2, 5, high=6)], "seq", k=5),      # id 5 is out of range: a row of zeros
    C("softmax", [X(3, 5)]),
    C("softmax", [X(2, 3, 4)], "seq"),
    C("log_softmax", [X(3, 5)]),
    C("log_softmax", [X(2, 3, 4)], "seq"),
    C("softmax_grad", [X(3, 5), X(3, 5, kind="unit")]),
    C("log_softmax_grad", [X(3, 5), X(3, 5)]),
    C("softmax", [X(2, 3, 4)], "axis1", axis=1),
    C("log_softmax", [X(2, 3, 5, 2)], "axis2", axis=2),
    C("softmax_grad", [X(2, 3, 4), X(2, 3, 4, kind="unit")], "axis1", axis=1),
    C("log_softmax_grad", [X(2, 5, 3), X(2, 5, 3)], "axis1", axis=1),
    C("cross_entropy", [X(4, 5), I(4, high=5)]),
    C("cross_entropy", [X(2, 3, 4), I(2, 3, high=4)], "seq"),
    C("cross_entropy_grad", [P(), X(4, 5), I(4, high=5)]),
    C("nll", [X(4, 5), I(4, high=5)]),
    C("nll", [X(2, 3, 4), I(2, 3, high=4)], "seq"),
    C("nll_grad", [P(), I(4, high=5), X(4, 5, grad=False)]),
    # class weights, ignore_index, reduction (PyTorch's semantics)
    *[C(op, [X(5, 4), I(5, high=4)], note, **at) for op in ("cross_entropy", "nll")
      for note, at in LOSS_OPTIONS],
    *[C(op, [X(2, 3, 4), I(2, 3, high=4)], "seq-" + note, **at)
      for op in ("cross_entropy", "nll") for note, at in LOSS_OPTIONS[1:2]],
    *[C("cross_entropy_grad", [X(5) if at.get("reduction") == "none" else P(), X(5, 4),
                               I(5, high=4)], note, **at) for note, at in LOSS_OPTIONS],
    *[C("nll_grad", [X(5) if at.get("reduction") == "none" else P(), I(5, high=4),
                     X(5, 4, grad=False)], note, **at) for note, at in LOSS_OPTIONS],
]
