"""ONNX export (nnspec/onnx/, docs/onnx.md): every spec of the zoo exports,
passes onnx.checker, and onnxruntime's outputs on random inputs equal the
network's own eval-mode forward within 1e-5 (relative to the output's
largest value), with perturbed weights and running statistics so that
every parameter matters.  Recurrent cells go out as ONNX's LSTM, GRU and
RNN nodes where they match them, else as a Scan.

Comparing with `net.forward` compiles each network's inference step, so the
default run compares a representative set; NNSPEC_SLOW=1 compares every
spec, the ImageNet networks at the reduced size their train sections set.
The recurrent specs (and WaveNet) are also compared, without compiling, with
the NumPy interpreter of the graph the exporter reads."""
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnspec  # noqa: E402
from nnspec.backend.numpy_ref import run  # noqa: E402
from nnspec.cli import main  # noqa: E402
from nnspec.data import is_text, load, text_info  # noqa: E402
from nnspec.onnx import ExportError, to_model  # noqa: E402
from nnspec.onnx.convert import inference_graph  # noqa: E402
from nnspec.train.commands import training_args  # noqa: E402

SLOW = os.environ.get("NNSPEC_SLOW") == "1"
SPECS = Path(__file__).resolve().parent.parent / "specs"
ZOO = sorted(SPECS.glob("*.nn")) + sorted(SPECS.glob("yaml/*.yaml"))
FAST = {"mlp.nn", "lenet5.nn", "cnn.nn", "maxout_mlp.nn", "resnet18.nn", "lstm.nn", "gru.nn",
        "elman_rnn.nn", "birnn.nn"}
RECURRENT = ["lstm.nn", "lstm_1997.nn", "lstm_peephole.nn", "lstm_adding.nn", "gru.nn",
             "elman_rnn.nn", "elman_adding.nn", "birnn.nn", "jordan_rnn.nn",
             "jordan_sequence.nn", "seq2seq.nn", "char_lstm.nn", "recursive_tree.nn"]
SMALL = {"hidden": 8, "embed": 8}
RTOL = 1e-5


def _lib(path):
    return [SPECS / "lib"] if path.parent.name == "yaml" else None


def _sets(path) -> dict:
    """The size `nnspec train` trains the spec at (the ImageNet networks'
    reduced inputs), with 8 recurrent units."""
    graph = nnspec.lower(path, lib=_lib(path))
    data = (graph.meta.get("train") or {}).get("data")
    sets = {}
    if data is not None:
        sets = training_args(graph, data, {}, text_info(data) if is_text(data) else None)
    sets.update({k: v for k, v in SMALL.items() if k in graph.meta.get("args", {})})
    return sets


def _network(path, **extra):
    net = nnspec.compile(path, set={**_sets(path), **extra}, lib=_lib(path))
    rng = np.random.default_rng(1)
    for v in net.params.values():
        v += rng.standard_normal(v.shape).astype(v.dtype) * 0.05
    for name, v in net.state.items():
        if name.endswith("running_mean"):
            v[...] = rng.standard_normal(v.shape) * 0.1
        elif name.endswith("running_var"):
            v[...] = rng.uniform(0.5, 1.5, v.shape)
    return net


def _inputs(net, path, batch=3, steps=5) -> dict:
    """Random floats; a network with integer inputs (ids, a tree) reads its
    own data set's examples."""
    rng = np.random.default_rng(2)
    names = [n for n in net.inputs if n not in net.teacher_only]
    if any(net.graph.dtype_of(n).startswith("int") for n in names):
        data = net.graph.meta["train"]["data"]
        arrays, _ = load(data.replace(")", ", limit=20)") if data.startswith("digits(")
                         else data, net)
        return {n: arrays[n][:batch] for n in names}
    return {n: rng.standard_normal((batch,) + tuple(steps if d == "T" else d for d in shape))
            .astype(net.dtype) for n, shape in net.inputs.items() if n in names}


def _session(model):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _onnx_outputs(model, feeds) -> dict:
    sess = _session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def _rel(got, want) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def _op_types(model) -> list:
    return [n.op_type for n in model.graph.node]


# ---- the zoo against the compiled forward ---------------------------------------------

def _zoo_marks(p):
    return [pytest.mark.skipif(p.name not in FAST and not SLOW,
                               reason="compiles the network: NNSPEC_SLOW=1")]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem if p.suffix == ".nn" else
                                               f"yaml-{p.stem}", marks=_zoo_marks(p))
                                  for p in ZOO])
def test_zoo_spec_exports_and_matches_the_forward(path, monkeypatch):
    monkeypatch.setenv("NNSPEC_DRIVER", "calls")       # kernels shared with other tests
    net = _network(path)
    model = to_model(net)                               # checked (full_check)
    feeds = _inputs(net, path)
    got = _onnx_outputs(model, feeds)
    want = net.forward(**feeds)
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert _rel(got[name], want[name]) <= RTOL, (name, _rel(got[name], want[name]))


# ---- recurrent cells --------------------------------------------------------------------

@pytest.mark.parametrize("spec", RECURRENT + ["wavenet.nn"])
def test_spec_matches_the_graph_it_exports(spec):
    """Every recurrent spec (and WaveNet), without compiling: onnxruntime
    against the NumPy interpreter of the eval-mode graph."""
    path = SPECS / spec
    net = _network(path)
    model = to_model(net)
    feeds = _inputs(net, path)
    graph = inference_graph(net)
    zeros = {n: net.blank(n, feeds) for n in [*net.forcing, *net.teacher_only]}
    want = run(graph, {**feeds, **zeros, **net.params, **net.state}, graph.outputs.values())
    got = _onnx_outputs(model, feeds)
    for name, nid in graph.outputs.items():
        assert _rel(got[name], want[nid]) <= RTOL, name


@pytest.mark.parametrize("spec, sets, op, attrs", [
    ("lstm.nn", {}, "LSTM", {}),
    ("lstm_adding.nn", {}, "LSTM", {}),
    ("lstm_peephole.nn", {}, "LSTM", {}),
    ("gru.nn", {}, "GRU", {"linear_before_reset": 0}),
    ("gru.nn", {"reset_after": True}, "GRU", {"linear_before_reset": 1}),
    ("elman_rnn.nn", {}, "RNN", {"activations": [b"Tanh"]}),
    ("birnn.nn", {}, "RNN", {}),
    ("lstm_1997.nn", {}, "Scan", {}),                 # no forget gate: not ONNX's LSTM
    ("jordan_rnn.nn", {}, "Scan", {}),                # the state is the output
    ("recursive_tree.nn", {}, "Scan", {}),            # a masked tree cell
])
def test_recurrent_cell_exports_as(spec, sets, op, attrs):
    net = _network(SPECS / spec, **sets)
    model = to_model(net)
    cells = [n for n in model.graph.node if n.op_type in ("LSTM", "GRU", "RNN", "Scan")]
    assert cells and {n.op_type for n in cells} == {op}
    for n in cells:
        got = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        for k, v in attrs.items():
            assert got[k] == v, k
    if spec == "lstm_peephole.nn":
        assert len(cells[0].input) == 8 and cells[0].input[7]        # P, the peepholes
    if spec == "birnn.nn":
        directions = [onnx.helper.get_attribute_value(a) for n in cells for a in n.attribute
                      if a.name == "direction"]
        assert sorted(directions) == [b"forward", b"reverse"]


def test_lstm_export_matches_the_compiled_forward():
    """The LSTM node, not just the graph: a batch of 4 sequences of 6 steps
    against `net.forward`, and the weights stacked in ONNX's i, o, f, c order."""
    net = _network(SPECS / "lstm.nn")
    model = to_model(net)
    lstm = next(n for n in model.graph.node if n.op_type == "LSTM")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    W = inits[lstm.input[1]][0]
    H = W.shape[0] // 4
    p = net.params
    # the spec's dense layers, in its order i, f, o, g, read concat(h, x)
    for k, layer in zip("iofc", ("rnn.dense", "rnn.dense_2", "rnn.dense_1", "rnn.dense_3")):
        block = slice("iofc".index(k) * H, ("iofc".index(k) + 1) * H)
        np.testing.assert_allclose(W[block], p[f"{layer}.weight"][:, H:], rtol=1e-6)
    x = np.random.default_rng(3).standard_normal((4, 8, 8)).astype("float32")
    got = _onnx_outputs(model, {"x": x})["logits"]
    assert _rel(got, net.forward(x=x)["logits"]) <= RTOL


def test_float64_cells_export_as_scans_onnxruntime_runs():
    net = nnspec.compile(SPECS / "gru.nn", dtype="float64", set={"hidden": 8})
    model = to_model(net)
    assert "Scan" in _op_types(model) and "GRU" not in _op_types(model)
    x = np.random.default_rng(6).standard_normal((2, 8, 8))
    want = run(inference_graph(net), {"x": x, **net.params}, ["logits"])["logits"]
    assert _rel(_onnx_outputs(model, {"x": x})["logits"], want) <= 1e-12


def test_teacher_forcing_inputs_are_zeros_inside_the_model():
    net = _network(SPECS / "jordan_sequence.nn")
    model = to_model(net)
    assert [i.name for i in model.graph.input] == ["x"]
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "time"


# ---- what does not export -------------------------------------------------------------------

UNPOOL = """network up(c = 2) {
    input x: [1, 8, 8]
    p, sw = x -> conv2d(c, 3, pad=same) -> maxpool(2, switches=true)
    output y = unpool(p, sw, 2)
}
"""


def test_an_op_without_onnx_equivalent_is_an_error_naming_the_layer(tmp_path, capsys):
    spec = tmp_path / "up.nn"
    spec.write_text(UNPOOL)
    net = nnspec.compile(spec)
    with pytest.raises(ExportError, match=r"layer 'maxpool' \(op maxpool_switches\) has no "
                                          r"ONNX equivalent"):
        to_model(net)
    out = tmp_path / "up.onnx"
    assert main(["export", str(spec), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "layer 'maxpool' (op maxpool_switches)" in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [spec]


# ---- the command and the method -------------------------------------------------------------

def test_export_command_with_checkpoint_weights(tmp_path, capsys):
    spec = SPECS / "lenet5.nn"
    net = _network(spec)
    net.save(tmp_path / "trained.nnc")
    out = tmp_path / "sub" / "lenet5.onnx"
    assert main(["export", str(spec), "--checkpoint", str(tmp_path / "trained.nnc"),
                 "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, v in net.params.items():
        np.testing.assert_array_equal(inits[name], v)
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 32)).astype("float32")
    want = run(inference_graph(net), {"x": x, **net.params}, ["logits"])["logits"]
    assert _rel(_onnx_outputs(model, {"x": x})["logits"], want) <= RTOL
    # a .nnc model as SPEC holds its weights: the same file
    again = tmp_path / "again.onnx"
    assert main(["export", str(tmp_path / "trained.nnc"), "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()


def test_export_command_options(tmp_path):
    out = tmp_path / "mlp.onnx"
    assert main(["export", str(SPECS / "mlp.nn"), "--set", "hidden=16", "--dtype", "float64",
                 "-o", str(out)]) == 0
    model = onnx.load(str(out))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert inits["dense.weight"].shape == (16, 64) and inits["dense.weight"].dtype == np.float64
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    x = np.ones((5, 64))
    assert _onnx_outputs(model, {"x": x})["logits"].shape == (5, 10)


def test_network_export_onnx(tmp_path):
    net = _network(SPECS / "maxout_mlp.nn")
    net.export_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert model.opset_import[0].version >= 17
    assert "Dropout" not in _op_types(model)                # eval mode: no dropout
    x = np.random.default_rng(5).standard_normal((3, 64)).astype("float32")
    want = run(inference_graph(net), {"x": x, **net.params, **net.state}, ["logits"])["logits"]
    assert _rel(_onnx_outputs(model, {"x": x})["logits"], want) <= RTOL
