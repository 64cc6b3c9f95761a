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
    return load_graph(textwrap.dedent(text), set=overrides or None)


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
