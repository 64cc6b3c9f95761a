"""Seeing inside a trained network (nnspec.viz, `nnspec visualize`): the
deconvnet's projection against a NumPy deconvnet, projections inside the
receptive fields `inspect` reports, saliency against finite differences,
maps and filters, and the command's pictures and errors."""
import os
import struct

import numpy as np
import pytest

import nnspec
from nnspec import viz
from nnspec.cli import main
from nnspec.errors import DataError, SpecError
from nnspec.inspect import field_box, receptive_fields
from nnspec.passes.deconv import project
from nnspec.viz import draw

# one convolution (stride 2, padding 1), one ReLU, one max pool, in float64
ONE = """
network one(classes = 3) {
    input x: [2, 11, 11]
    f = x -> conv2d(3, 3, stride=2, pad=1) -> relu -> maxpool(2)
    output logits = f -> flatten -> dense(classes)
}
"""

TINY = """
network tiny(classes = 10) {
    input x: [1, 8, 8]
    f = x -> conv2d(4, 3, pad=same) -> relu -> maxpool(2)
          -> conv2d(6, 3) -> relu -> maxpool(2)
    output logits = f -> flatten -> dense(classes)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = adam(lr = 0.02)
    batch = 32
    epochs = 2
    data = digits(limit = 300)
}
"""


@pytest.fixture(scope="module")
def one():
    net = nnspec.compile(ONE, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    net.params["conv2d.bias"][...] = rng.normal(size=3) * 0.1
    return net


# ---- a NumPy deconvnet for ONE ---------------------------------------------------------

def _conv(x, w, b, s, p):
    C, H, W = x.shape
    O, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    n = (H + 2 * p - k) // s + 1
    y = np.empty((O, n, n))
    for o in range(O):
        for i in range(n):
            for j in range(n):
                y[o, i, j] = (xp[:, i * s:i * s + k, j * s:j * s + k] * w[o]).sum() + b[o]
    return y


def _conv_transposed(y, w, s, p, size):
    """Each value spread back through the filter it was made with."""
    O, n, _ = y.shape
    k = w.shape[2]
    out = np.zeros((w.shape[1], size + 2 * p, size + 2 * p))
    for o in range(O):
        for i in range(n):
            for j in range(n):
                out[:, i * s:i * s + k, j * s:j * s + k] += y[o, i, j] * w[o]
    return out[:, p:p + size, p:p + size]


def _numpy_deconv(net, x, unit):
    w, b = net.params["conv2d.weight"], net.params["conv2d.bias"]
    a = np.maximum(_conv(x, w, b, 2, 1), 0)                  # [3, 6, 6]
    pooled = a.reshape(3, 3, 2, 3, 2).max(axis=(2, 4))       # [3, 3, 3]
    i, j = np.unravel_index(np.argmax(pooled[unit]), (3, 3))
    window = a[unit, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
    di, dj = np.unravel_index(np.argmax(window), (2, 2))     # the switch
    unpooled = np.zeros_like(a)
    unpooled[unit, 2 * i + di, 2 * j + dj] = pooled[unit, i, j]
    return _conv_transposed(np.maximum(unpooled, 0), w, 2, 1, 11), a


def test_projection_equals_numpy_deconvnet(one):
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(4, 2, 11, 11))
    for unit in range(3):
        got = viz.deconv(one, "f", xs, unit)
        assert got.shape == xs.shape and got.dtype == np.float64
        for x, g in zip(xs, got):
            want, _ = _numpy_deconv(one, x, unit)
            assert np.abs(want).max() > 0
            np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-14)
    one_example = viz.deconv(one, "f", xs[0], 1)       # no batch axis in, none out
    np.testing.assert_array_equal(one_example, viz.deconv(one, "f", xs[:1], 1)[0])


def test_maps_and_filters_are_the_layers_arrays(one):
    x = np.random.default_rng(2).normal(size=(2, 11, 11))
    _, relu = _numpy_deconv(one, x, 0)
    np.testing.assert_allclose(viz.maps(one, "relu", x), relu, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(viz.maps(one, "f", x[None])[0],
                               relu.reshape(3, 3, 2, 3, 2).max(axis=(2, 4)), rtol=1e-12)
    np.testing.assert_array_equal(viz.filters(one), one.params["conv2d.weight"])
    np.testing.assert_array_equal(viz.filters(one, "conv2d"), one.params["conv2d.weight"])
    with pytest.raises(DataError, match="is a relu, not a convolution.*conv2d"):
        viz.filters(one, "relu")


def test_saliency_is_the_gradient_of_the_class_score(one):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 11, 11))
    s = viz.saliency(one, x, 1)
    assert s.shape == x.shape
    h = 1e-6
    eye = np.eye(x.size).reshape((x.size,) + x.shape)
    scores = viz.maps(one, "logits", np.concatenate([x + h * eye, x - h * eye]))[:, 1]
    fd = (scores[:x.size] - scores[x.size:]) / (2 * h)
    np.testing.assert_allclose(s.reshape(-1), fd, rtol=1e-5, atol=1e-8)
    guess = int(viz.predicted(one, x))
    np.testing.assert_array_equal(viz.saliency(one, x), viz.saliency(one, x, guess))
    with pytest.raises(DataError, match="classes 0..2"):
        viz.saliency(one, x, 3)


def test_unknown_layer_is_located_with_a_suggestion(one):
    with pytest.raises(SpecError) as e:
        viz.deconv(one, "reluu", np.zeros((2, 11, 11)), 0)
    assert "no layer named 'reluu'" in str(e.value)
    assert e.value.loc is not None and e.value.hint == \
        "did you mean 'relu'? (the layer marked above)"
    with pytest.raises(DataError, match="units 0..2"):
        viz.deconv(one, "f", np.zeros((2, 11, 11)), 3)


# ---- projections stay inside the receptive field ---------------------------------------

def _random_spec(rng, linear: bool) -> str:
    """A chain of 2-3 convolutions with random kernel, stride, dilation and
    padding (ReLUs and a max pool unless `linear`)."""
    while True:
        size = int(rng.integers(14, 21))
        stages = []
        for i in range(int(rng.integers(2, 4))):
            k, s, d = int(rng.integers(2, 4)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
            pad = rng.choice(["valid", "same", "1"])
            stages.append(f"conv2d(3, {k}, stride={s}, dilation={d}, pad={pad})")
            if not linear:
                stages.append("relu")
                if i == 0:
                    stages.append("maxpool(2, stride=1)" if rng.random() < 0.5 else "maxpool(2)")
        text = (f"network r(classes = 2) {{\n    input x: [2, {size}, {size}]\n"
                f"    output y = x -> {' -> '.join(stages)}\n}}\n")
        try:
            g = nnspec.lower(text)
        except SpecError:               # a map smaller than a kernel: draw again
            continue
        if all(d >= 2 for d in g.shape(g.outputs["y"])[2:]):
            return text


def _check_support(p, box, linear):
    """p [C, H, W] is zero outside box; with `linear`, a box inside the image
    is the bounding box of p's support.  Whether p is non-zero."""
    inside = np.zeros(p.shape[1:], bool)
    inside[tuple(slice(max(lo, 0), hi) for lo, hi in box)] = True
    support = (np.abs(p) > 0).any(axis=0)
    assert not (support & ~inside).any(), (box, np.argwhere(support & ~inside)[:3])
    if linear and all(lo >= 0 and hi <= n for (lo, hi), n in zip(box, p.shape[1:])):
        rows, cols = np.nonzero(support)      # no ReLU, no pool: the corners are reached
        assert [(rows.min(), rows.max() + 1), (cols.min(), cols.max() + 1)] == box
    return support.any()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_projection_lies_inside_the_receptive_field(seed):
    rng = np.random.default_rng(seed)
    linear = seed % 2 == 1
    net = nnspec.compile(_random_spec(rng, linear), dtype="float64", seed=seed)
    node = net.graph.outputs["y"]
    field = receptive_fields(net.graph, starts=True)[node]
    x = rng.normal(size=(3,) + tuple(net.inputs["x"]))
    top = viz.strongest(net, "y", x, units=3, top=2)        # each input's strongest position
    seen = sum(_check_support(top.projections[k, n], top.boxes[k][n], linear)
               for k in range(3) for n in range(2))
    assert seen >= 3
    for unit in range(3):                                   # and anywhere
        pos = tuple(int(rng.integers(0, n)) for n in net.graph.shape(node)[2:])
        for p in viz.deconv(net, "y", x, unit, position=pos):
            _check_support(p, field_box(field, pos), linear)


def test_the_pass_replaces_pools_relus_and_convolutions():
    g = nnspec.lower("specs/zfnet.nn", set={"size": 64, "classes": 10})
    p = project(g, "conv_relu_2.relu")
    back = [n for n in p.nodes() if n.id.startswith("d/")]
    ops = [n.op for n in back]
    assert ops.count("unpool") == 2 and ops.count("maxpool_switches") == 2
    assert ops.count("conv_grad_input") == 3 and ops.count("relu") == 3
    assert not {"relu_grad", "conv_grad_weight", "sum"} & set(ops)     # no bias, no mask
    assert all(n.attrs["add"] for n in back if n.op == "unpool")
    assert p.shape(p.outputs["projection"]) == g.shape("x")
    # saliency: the same walk with every op's own gradient
    assert "relu_grad" in {n.op for n in project(g, "conv_relu_2.relu", rectify=False).nodes()}


def test_the_pass_through_batchnorm_dropout_avgpool_and_add():
    g = nnspec.lower("""
network b {
    input x: [2, 8, 8]
    h = x -> conv2d(4, 3, pad=same, bias=false) -> batchnorm -> relu
    s = h + (h -> conv2d(4, 1))
    output y = s -> avgpool(2) -> dropout(0.5) -> flatten -> dense(3)
}""")
    p = project(g, "y")
    ops = {n.op: n for n in p.nodes() if n.id.startswith("d/")}
    assert ops["batchnorm_grad"].attrs["training"] is False     # gamma / sqrt(var + eps)
    assert {"avgpool_grad", "reshape", "relu", "conv_grad_input", "add"} <= set(ops)


# ---- the command, on a network trained on the digits ------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("viz")
    spec = d / "tiny.nn"
    spec.write_text(TINY)
    before = os.environ.get("NNSPEC_DRIVER")
    os.environ["NNSPEC_DRIVER"] = "calls"         # kernels compiled once, not a whole step
    try:
        assert main(["train", str(spec), "--out", str(d / "run"), "--quiet"]) == 0
    finally:
        if before is None:
            os.environ.pop("NNSPEC_DRIVER")
        else:
            os.environ["NNSPEC_DRIVER"] = before
    return spec, d / "run"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    return struct.unpack(">II", data[16:24])


def test_visualize_deconv_grid(trained, tmp_path, capsys):
    spec, run = trained
    out = tmp_path / "d.png"
    assert main(["visualize", str(spec), "--checkpoint", str(run), "--layer", "relu_1",
                 "--units", "3", "--top", "4", "-o", str(out)]) == 0
    assert _png_size(out) == draw.grid_size(3, 8, group=2)
    text = capsys.readouterr().out
    rows = [line for line in text.splitlines() if line.strip().startswith("unit ")]
    assert len(rows) == 3 and all(row.count("(input ") == 4 for row in rows)
    assert f"wrote {out}" in text


def test_strongest_inputs_are_the_strongest(trained):
    spec, run = trained
    from nnspec.train.checkpoint import load_trained
    net, _ = load_trained(run / "checkpoint.npz",
                          lambda sets, dtype: nnspec.compile(spec, set=sets, dtype=dtype))
    x = np.random.default_rng(5).random((40, 1, 8, 8)).astype(np.float32)
    top = viz.strongest(net, "relu_1", x, units=2, top=3)
    peaks = viz.maps(net, "relu_1", x).reshape(40, 6, -1).max(axis=2)
    assert top.units == sorted(np.argsort(-peaks.max(axis=0), kind="stable")[:2].tolist())
    for k, u in enumerate(top.units):
        np.testing.assert_array_equal(top.values[k], np.sort(peaks[:, u])[::-1][:3])
        assert set(top.inputs[k]) <= set(np.flatnonzero(peaks[:, u] >= top.values[k, -1]))
    assert top.projections.shape == (2, 3, 1, 8, 8)


@pytest.mark.parametrize("method, extra, cells", [
    ("maps", ["--layer", "relu", "--index", "3"], (2, 2)),
    ("filters", [], (2, 2)),
    ("saliency", ["--index", "2"], (1, 2)),
])
def test_visualize_other_methods(trained, tmp_path, method, extra, cells):
    spec, run = trained
    out = tmp_path / f"{method}.png"
    assert main(["visualize", str(spec), "--checkpoint", str(run), "--method", method,
                 *extra, "-o", str(out)]) == 0
    assert _png_size(out) == draw.grid_size(*cells)


def test_visualize_errors(trained, tmp_path, capsys):
    spec, run = trained
    base = ["visualize", str(spec), "--checkpoint", str(run), "-o", str(tmp_path / "e.png")]
    assert main(base + ["--layer", "relu_9"]) == 1
    err = capsys.readouterr().err
    assert f"{spec}:5:30: error: no layer named 'relu_9' in network tiny" in err
    assert "did you mean 'relu_1'?" in err and "Traceback" not in err
    assert main(base) == 1
    assert "--method deconv needs --layer NAME" in capsys.readouterr().err
    assert main(base[:-1] + [str(tmp_path / "e.jpg"), "--layer", "f"]) == 1
    assert "needs a .png name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
