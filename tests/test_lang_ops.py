"""The layers and options real exported networks use (issue 17): pooling and
convolution padding per side and `same`/`same_lower`, pooling dilation,
`matmul` with batch broadcasting, softmax over any axis, `global_maxpool`,
`flatten(axis=)`, losses with class weights, `ignore_index` and `reduction`,
and a bidirectional cell's final states per direction.

Each op's kernel, reference and gradient are in the op table
(tests/opcases.py); here: the references against literal loops and formulas
(PyTorch's and ONNX's definitions, written out), what the spec layers emit,
and their located errors.  Shapes are tiny and odd; float64."""
import textwrap

import numpy as np
import pytest

from nnspec.errors import SpecError
from nnspec.frontend import check_file, load_graph
from nnspec.ops import get_op


def lower(text, **overrides):
    return load_graph(textwrap.dedent(text), set=overrides or None, dtype="float64")


def error(tmp_path, text):
    path = tmp_path / "bad.nn"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    errors = check_file(path)
    assert len(errors) == 1, errors
    e = errors[0]
    lines = e.render().splitlines()
    assert lines[0].startswith(f"{path}:{e.loc.line}:{e.loc.col}: error: ")
    assert lines[2].rstrip().endswith("^")
    return e


def node_of(g, op):
    (nid,) = g.ids(op)
    return g.node(nid)


# ---- pooling: padding per side, same / same_lower, dilation ---------------------

def naive_pool(x, k, s, d, pads, kind, include_pad=True):
    """Literal loops: taps at start + j d; padding never wins a max; the mean
    counts the taps inside the padded input (or only the real ones)."""
    B, C, H, W = x.shape
    (pt, pb), (pl, pr) = pads
    span = [d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1]
    Ho = (H + pt + pb - span[0]) // s[0] + 1
    Wo = (W + pl + pr - span[1]) // s[1] + 1
    y = np.zeros((B, C, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            vals, padded = [], 0
            for u in range(k[0]):
                for v in range(k[1]):
                    yy, xx = i * s[0] - pt + u * d[0], j * s[1] - pl + v * d[1]
                    if yy < H + pb and xx < W + pr:
                        padded += 1
                    if 0 <= yy < H and 0 <= xx < W:
                        vals.append(x[:, :, yy, xx])
            vals = np.stack(vals, -1)
            y[:, :, i, j] = vals.max(-1) if kind == "max" else \
                vals.sum(-1) / (padded if include_pad else vals.shape[-1])
    return y


@pytest.mark.parametrize("k,s,d,pads", [
    ([3, 2], [2, 1], [2, 3], [[2, 1], [0, 2]]),
    ([2, 3], [1, 2], [1, 1], [[1, 0], [0, 1]]),
    ([3, 3], [3, 2], [1, 2], [[0, 2], [2, 0]]),
])
def test_pools_against_loops(k, s, d, pads):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 8))
    attrs = {"kernel": k, "stride": s, "dilation": d, "pad": pads}
    np.testing.assert_allclose(get_op("maxpool").reference(attrs, x),
                               naive_pool(x, k, s, d, pads, "max"), rtol=1e-12)
    for incl in (True, False):
        at = {**attrs, "count_include_pad": incl}
        np.testing.assert_allclose(get_op("avgpool").reference(at, x),
                                   naive_pool(x, k, s, d, pads, "avg", incl), rtol=1e-12)


def onnx_same(n, k, s, d, lower_):
    """ONNX's auto_pad SAME_UPPER / SAME_LOWER, as its operator docs write it."""
    out = -(-n // s)
    total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
    small = total // 2
    return (total - small, small) if lower_ else (small, total - small)


@pytest.mark.parametrize("layer", ["maxpool", "avgpool"])
def test_pool_same_pads_as_onnx(layer):
    g = lower(f"""
        network n {{
            input x: [2, 7, 6]
            a = x -> {layer}(2, 2, pad=same)
            b = x -> {layer}([3, 2], [1, 2], pad=same_lower, dilation=[2, 1])
            c = x -> {layer}(3, 1, pad=[0, 2, 1, 1])
            output y = concat(flatten(a), flatten(b), flatten(c))
        }}
    """)
    (a, b, c) = [g.node(i) for i in g.ids(layer)]
    assert a.attrs["pad"] == [list(onnx_same(7, 2, 2, 1, False)), list(onnx_same(6, 2, 2, 1, False))]
    assert b.attrs["pad"] == [list(onnx_same(7, 3, 1, 2, True)), list(onnx_same(6, 2, 2, 1, True))]
    assert b.attrs["dilation"] == [2, 1] and "dilation" not in a.attrs
    assert c.attrs["pad"] == [[0, 2], [1, 1]]
    assert g.shape(a.id) == ("B", 2, 4, 3) and g.shape(b.id) == ("B", 2, 7, 3)
    assert g.shape(c.id) == ("B", 2, 7, 6)


def test_pools_in_3d():
    g = lower("""
        network n {
            input v: [2, 5, 7, 6]
            a = v -> maxpool([2, 3, 2], pad=same)
            output y = a -> avgpool(2, 1, pad=[0, 1, 1, 0, 0, 1], count_include_pad=false)
        }
    """)
    a, y = g.node(g.ids("maxpool")[0]), g.node(g.outputs["y"])
    assert g.shape(a.id) == ("B", 2, 3, 3, 3) and g.shape(y.id) == ("B", 2, 3, 3, 3)
    assert y.attrs["pad"] == [[0, 1], [1, 0], [0, 1]]
    x = np.random.default_rng(6).standard_normal((2, 2, 5, 7, 6))
    want = np.full((2, 2, 3, 3, 3), -np.inf)       # same: pads (0,1), (1,1), (0,0)
    xp = np.pad(x, [(0, 0), (0, 0), (0, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    for i, j, k in np.ndindex(3, 3, 3):
        want[:, :, i, j, k] = xp[:, :, 2 * i:2 * i + 2, 3 * j:3 * j + 3, 2 * k:2 * k + 2].max(
            axis=(2, 3, 4))
    np.testing.assert_allclose(run_ref(g, {"v": x}, ["y"])[0], get_op("avgpool").reference(
        y.attrs, want), rtol=1e-12)


def test_conv3d_layers():
    g = lower("""
        network n {
            input v: [2, 5, 7, 6]
            a = v -> conv3d(4, [3, 2, 3], stride=2, pad=same_lower)
            b = a -> conv3d(3, 1, pad=[1, 0, 0, 1, 0, 0], bias=false)
            output y = b -> conv3d_transpose(2, 2, stride=2, pad=[0, 1, 0, 0, 1, 0])
        }
    """)
    a, b = [g.node(i) for i in g.ids("conv")]
    y = g.node(g.outputs["y"])
    assert g.shape(a.inputs[1]) == (4, 2, 3, 2, 3) and g.shape(a.id) == ("B", 4, 3, 4, 3)
    assert b.attrs["pad"] == [[1, 0], [0, 1], [0, 0]] and g.shape(b.id) == ("B", 3, 4, 5, 3)
    # (n - 1) 2 - lo - hi + 2: 7, 10 and 5
    assert g.shape(y.inputs[1]) == (3, 2, 2, 2, 2) and g.shape(y.id) == ("B", 2, 7, 10, 5)


def test_conv_pads_per_side_and_same_lower():
    g = lower("""
        network n {
            input x: [2, 7, 6]
            a = x -> conv2d(3, [2, 3], pad=[1, 0, 2, 1])
            b = x -> conv2d(3, 2, stride=2, pad=same_lower)
            c = x -> conv2d_transpose(3, 3, stride=2, pad=[0, 1, 1, 0])
            output y = concat(flatten(a), flatten(b), flatten(c))
        }
    """)
    a, b = [g.node(i) for i in g.ids("conv")]
    assert a.attrs["pad"] == [[1, 0], [2, 1]] and g.shape(a.id) == ("B", 3, 7, 7)
    assert b.attrs["pad"] == ["same_lower"] * 2 and g.shape(b.id) == ("B", 3, 4, 3)
    c = node_of(g, "conv_transpose")
    # (n - 1) s - lo - hi + k: 6 * 2 - 1 + 3 = 14, 5 * 2 - 1 + 3 = 12
    assert c.attrs["pad"] == [[0, 1], [1, 0]] and g.shape(c.id) == ("B", 3, 14, 12)
    from nnspec.ops.base import pad_amounts
    assert pad_amounts("same_lower", 7, 2, 2, 1) == onnx_same(7, 2, 2, 1, True)
    assert pad_amounts("same", 7, 2, 2, 1) == onnx_same(7, 2, 2, 1, False)


@pytest.mark.parametrize("call,message", [
    ("maxpool(2, pad=[1, 2, 3])", "maxpool: pad must be an integer >= 0, a list of 2"),
    ("avgpool(2, pad=samee)", "pad must be one of valid, same, same_lower"),
    ("maxpool(2, dilation=0)", "maxpool: dilation must be an integer >= 1"),
    ("conv2d(4, 3, pad=[1, -1, 0, 0])", "conv2d: pad must be an integer >= 0"),
    ("maxpool(2, pad=[2, 0, 0, 0])", "a window would hold only padding"),
])
def test_pool_and_conv_padding_errors(tmp_path, call, message):
    e = error(tmp_path, f"""
        network n {{
            input x: [1, 8, 8]
            output y = x -> {call}
        }}
    """)
    assert message in e.message, e.render()
    assert e.loc.line == 3


# ---- matmul, softmax over an axis, global_maxpool, flatten(axis) -----------------

def run_ref(g, feeds, names):
    from nnspec.backend import numpy_ref
    ids = [g.outputs[n] for n in names]
    vals = numpy_ref.run(g, feeds, ids)
    return [vals[i] for i in ids]


def test_matmul_softmax_flatten_global_maxpool_layers():
    g = lower("""
        network n {
            input x: [3, 5, 4]
            input q: [1, 4, 2]
            output a = matmul(x, q)                # [B, 3, 5, 2]: q broadcast over 3
            output s = x -> softmax(axis=1)
            output l = x -> log_softmax(axis=-2)
            output m = x -> global_maxpool         # [B, 3]
            output f = x -> flatten(axis=2)        # [B, 3, 20]
            output f1 = x -> flatten               # [B, 60]
        }
    """)
    assert g.shape(g.outputs["a"]) == ("B", 3, 5, 2)
    assert g.shape(g.outputs["f"]) == ("B", 3, 20) and g.shape(g.outputs["f1"]) == ("B", 60)
    assert g.node(g.outputs["l"]).attrs == {"axis": 2}
    rng = np.random.default_rng(1)
    x, q = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((2, 1, 4, 2))
    a, s, l_, m, f = run_ref(g, {"x": x, "q": q}, ["a", "s", "l", "m", "f"])
    np.testing.assert_allclose(a, np.einsum("bhmk,bkn->bhmn", x, q[:, 0]), rtol=1e-12)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(s, e / e.sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(l_, x - np.log(np.exp(x).sum(2, keepdims=True)), rtol=1e-12)
    np.testing.assert_allclose(m, x.max(axis=(2, 3)))
    np.testing.assert_array_equal(f, x.reshape(2, 3, 20))
    # the last axis, however written, is the plain softmax's graph
    last = lower("""
        network n {
            input x: [3, 5]
            output y = x -> softmax(axis=2)
        }
    """)
    assert last.node(last.outputs["y"]).attrs == {}


@pytest.mark.parametrize("body,message", [
    ("output y = matmul(x, v)", "matmul: each input is a batch of matrices"),
    ("output y = matmul(x, w)", "differ in rank"),
    ("output y = matmul(x, x)", "inner sizes differ"),
    ("output y = x -> softmax(axis=0)", "softmax: axis must be an integer from 1 to 2"),
    ("output y = x -> log_softmax(axis=3)", "log_softmax: axis must be"),
    ("output y = x -> flatten(axis=0)", "flatten: axis must be an integer from 1 to 2"),
    ("output y = v -> global_maxpool", "global_maxpool: needs a [B, C, ...] input"),
])
def test_product_and_axis_errors(tmp_path, body, message):
    e = error(tmp_path, f"""
        network n {{
            input x: [3, 5]
            input v: [4]
            input w: [2, 5, 3]
            {body}
        }}
    """)
    assert message in e.message, e.render()
    assert e.loc.line == 5


# ---- losses: class weights, ignore_index, reduction ----------------------------

def torch_nll(logp, t, weight=None, ignore_index=-100, reduction="mean"):
    """torch.nn.functional.nll_loss as its documentation writes it:
    l_n = -w[y_n] x[n, y_n] 1{y_n != ignore_index}; mean = sum l_n / sum of
    w[y_n] 1{y_n != ignore_index}."""
    w = np.ones(logp.shape[-1]) if weight is None else np.asarray(weight, float)
    rows, ts = logp.reshape(-1, logp.shape[-1]), t.reshape(-1)
    ls, ws = [], []
    for r, y in zip(rows, ts):
        keep = y != ignore_index
        ws.append(w[y] if keep else 0.0)
        ls.append(-w[y] * r[y] if keep else 0.0)
    ls, ws = np.array(ls), np.array(ws)
    if reduction == "none":
        return ls.reshape(t.shape)
    return ls.sum() if reduction == "sum" else ls.sum() / ws.sum()


LOSS_NET = """
    network n(classes = 4) {
        input x: [5]
        input lab: int
        output z = x -> dense(classes)
        output per = cross_entropy(z, lab, weight=[1, 2.5, 0.5, 3], ignore_index=-100,
                                    reduction=none)
        output total = nll(log_softmax(z), lab, ignore_index=2, reduction=sum)
        output sq = mse(z, z * 0.5, reduction=none)
    }
    train {
        target label: int
        loss = cross_entropy(z, label, weight=[1, 2.5, 0.5, 3], ignore_index=-100)
    }
"""


@pytest.fixture(scope="module")
def loss_net():
    import nnspec
    return nnspec.compile(textwrap.dedent(LOSS_NET), dtype="float64", seed=1)


def test_losses_follow_pytorch(loss_net):
    """The compiled network (kernels, gradient) against PyTorch's formulas and
    the NumPy interpreter; ignored targets (-100, outside the classes) are
    never read."""
    from nnspec.backend import numpy_ref
    from nnspec.passes.autodiff import backward
    net, g = loss_net, loss_net.graph
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 5))
    label = np.array([0, -100, 3, 1, -100, 2, 1])
    lab = np.array([2, 0, 2, 3, 1, 1, 0])
    w = [1, 2.5, 0.5, 3]
    out = net.forward(x=x, lab=lab)
    z = out["z"]
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(out["per"], torch_nll(logp, lab, w, reduction="none"),
                               rtol=1e-12)
    np.testing.assert_allclose(out["total"], torch_nll(logp, lab, None, 2, "sum"), rtol=1e-12)
    np.testing.assert_allclose(out["sq"], (z * 0.5) ** 2, rtol=1e-12)
    loss, grads = net.gradients({"x": x, "lab": lab}, {"label": label})
    assert loss == pytest.approx(torch_nll(logp, label, w), rel=1e-12)
    gg, want = backward(g, g.meta["loss"], g.params)
    vals = numpy_ref.run(gg, {"x": x, "lab": lab, "label": label, **net.params},
                         list(want.values()))
    for p, gid in want.items():
        np.testing.assert_allclose(grads[p], vals[gid], rtol=1e-10, atol=1e-13, err_msg=p)
    # the weighted mean's gradient by finite differences of the formula
    W = net.params["z.weight"]
    d = rng.standard_normal(W.shape)

    def f(eps):
        zz = x @ (W + eps * d).T + net.params["z.bias"]
        return torch_nll(zz - np.log(np.exp(zz).sum(-1, keepdims=True)), label, w)
    assert np.sum(grads["z.weight"] * d) == pytest.approx((f(1e-6) - f(-1e-6)) / 2e-6,
                                                          rel=1e-6)


def test_mean_over_no_targets_is_nan_with_zero_gradient():
    """PyTorch: a mean over positions that are all ignored is NaN; the
    gradient reaches no position (zeros, not NaN)."""
    from nnspec.ops.loss import cross_entropy_grad
    z = np.random.default_rng(3).standard_normal((3, 4))
    t = np.array([-1, -1, -1])
    at = {"ignore_index": -1}
    assert np.isnan(get_op("cross_entropy").reference(at, z, t))
    for op, args in (("cross_entropy_grad", [np.array(1.0), z, t]),
                     ("nll_grad", [np.array(1.0), t, z])):
        np.testing.assert_array_equal(get_op(op).reference(at, *args), np.zeros((3, 4)))
    from test_ops import run_kernel
    assert np.isnan(run_kernel(get_op("cross_entropy"), at, [z, t], (), "float64"))
    got = run_kernel(get_op("cross_entropy_grad"), at, [np.array(1.0), z, t], z.shape, "float64")
    np.testing.assert_array_equal(got, np.zeros((3, 4)))
    del cross_entropy_grad


@pytest.mark.parametrize("call,message", [
    ("cross_entropy(z, label, weight=[1, 2])", "weight must be a list of 4 numbers >= 0"),
    ("cross_entropy(z, label, weight=[1, 2, 3, -1])", "weight must be a list of 4"),
    ("nll(z, label, ignore_index=1.5)", "nll: ignore_index must be an integer"),
    ("cross_entropy(z, label, reduction=avg)", "reduction must be one of mean, sum, none"),
])
def test_loss_option_errors(tmp_path, call, message):
    e = error(tmp_path, f"""
        network n {{
            input x: [5]
            output z = x -> dense(4)
        }}
        train {{
            target label: int
            loss = {call}
        }}
    """)
    assert message in e.message, e.render()
    assert e.loc.line == 7


# ---- a bidirectional cell's final states ----------------------------------------

BIRNN = """
    cell rnn(n)(x) {
        state h = zeros(n)
        h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
        return h
    }
    network n {
        input x: [5, 2]
        r = x -> rnn(3, direction=bidir, merge=%s)
        output y = r
        output h = r.h
        output hf = r.h_forward
        output hb = final(r, "h_backward")
        output first = final(r)
    }
"""


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_final_states(merge):
    g = lower(BIRNN % merge)
    x = np.random.default_rng(4).standard_normal((2, 5, 2))
    params = {p: np.random.default_rng(5).standard_normal(g.shape(p)) for p in g.params}
    y, h, hf, hb, first = run_ref(g, {"x": x, **params}, ["y", "h", "hf", "hb", "first"])
    assert g.shape(g.outputs["hf"]) == ("B", 3)
    # each way by hand: the forward way ends at the last step, the backward way
    # (its own weights, the `_reverse` layer) at the first
    fw_w = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("r.")}
    bw_w = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("r_reverse.")}

    def way(w, steps):
        names = sorted(w)                    # dense.bias, dense.weight, dense_1.weight
        b, wx, wh = (w[k] for k in names)
        s, seq = np.zeros((2, 3)), np.zeros((2, 5, 3))
        for t in steps:
            s = np.tanh(x[:, t] @ wx.T + b + s @ wh.T)
            seq[:, t] = s
        return s, seq
    f_last, f_seq = way(fw_w, range(5))
    b_last, b_seq = way(bw_w, range(4, -1, -1))
    np.testing.assert_allclose(hf, f_last, rtol=1e-12)
    np.testing.assert_allclose(hb, b_last, rtol=1e-12)
    if merge == "concat":
        np.testing.assert_allclose(y, np.concatenate([f_seq, b_seq], -1), rtol=1e-12)
        np.testing.assert_allclose(h, np.concatenate([f_last, b_last], -1), rtol=1e-12)
    else:
        np.testing.assert_allclose(y, f_seq + b_seq, rtol=1e-12)
        np.testing.assert_allclose(h, f_last + b_last, rtol=1e-12)
    np.testing.assert_array_equal(first, h)


def test_bidirectional_unknown_state_lists_the_finals(tmp_path):
    e = error(tmp_path, (BIRNN % "concat").replace("r.h_forward", "r.h_fwd"))
    assert "has no attribute 'h_fwd'" in e.message and "h_forward" in (e.hint or ""), e.render()
