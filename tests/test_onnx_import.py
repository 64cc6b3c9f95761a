"""ONNX import (nnspec/onnx/importer.py, docs/onnx.md) and ONNX's own backend
node tests over nnspec (nnspec/onnx/backend.py, conformance.py).

Round trips: a zoo spec exported (to_model) and imported again has the
original's graph (ops, shapes, parameter shapes of the eval-mode forward;
for recurrent cells the loop's results, as an ONNX LSTM's weights are laid
out differently from the spec's dense layers) and the imported spec's
outputs equal onnxruntime's.  Outputs are computed by the NumPy interpreter
of the graph, without compiling; the node tests too, unless NNSPEC_SLOW=1,
which also runs each through the compiled backend."""
import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import nnspec  # noqa: E402
from nnspec.cli import main  # noqa: E402
from nnspec.onnx import OnnxImportError, to_model  # noqa: E402
from nnspec.onnx.backend import NnspecBackend  # noqa: E402
from nnspec.onnx.conformance import EXCLUDED, run_case, selected  # noqa: E402
from nnspec.onnx.importer import import_model  # noqa: E402
from nnspec.passes.pipeline import REFERENCE_PIPELINE, build  # noqa: E402

SLOW = os.environ.get("NNSPEC_SLOW") == "1"
SPECS = Path(__file__).resolve().parent.parent / "specs"
ZOO = [("mlp.nn", {"hidden": 16}), ("lenet5.nn", {}), ("cnn.nn", {}),
       ("resnet18.nn", {"size": 32, "classes": 10}), ("lstm.nn", {"hidden": 8}),
       ("gru.nn", {"hidden": 8}), ("gru.nn", {"hidden": 8, "reset_after": True}),
       ("elman_rnn.nn", {"hidden": 8}), ("lstm_peephole.nn", {"hidden": 6}),
       ("birnn.nn", {"hidden": 6}), ("seq2seq.nn", {"hidden": 6, "embed": 5}),
       # the feed-forward zoo at the smallest input each allows, 10 classes
       ("alexnet.nn", {"size": 64, "classes": 10}), ("zfnet.nn", {"size": 64, "classes": 10}),
       ("vgg16.nn", {"size": 32, "classes": 10}),
       ("googlenet.nn", {"size": 80, "classes": 10}),          # with the auxiliary heads
       ("inception_v3.nn", {"size": 75, "classes": 10, "aux": False}),
       ("inception_v3.nn", {"size": 299, "classes": 10}),     # the auxiliary head: 299
       ("resnet50.nn", {"size": 32, "classes": 10}),
       ("densenet121.nn", {"size": 32, "classes": 10}),
       ("xception.nn", {"size": 71, "classes": 10}),
       ("unet.nn", {"size": 188, "width": 2}),
       ("wavenet.nn", {"quant": 8, "length": 16, "channels": 4, "skip": 8, "stacks": 2,
                       "layers": 3}),
       ("maxout_mlp.nn", {"hidden": 16, "pieces": 3}),
       ("yaml/lenet5.yaml", {}), ("yaml/lstm.yaml", {"hidden": 8}),
       ("yaml/mlp.yaml", {"hidden": 16}), ("yaml/resnet18.yaml", {"size": 32, "classes": 10}),
       ("yaml/unet.yaml", {"size": 188, "width": 2}),
       # recurrent specs exported as LSTM and RNN nodes
       ("lstm_adding.nn", {"steps": 6, "hidden": 8}),
       ("elman_adding.nn", {"steps": 6, "hidden": 8}),
       ("char_lstm.nn", {"vocab": 12, "embed": 5, "hidden": 8}),
       # cells exported as a Scan
       ("lstm_1997.nn", {"hidden": 8}), ("jordan_rnn.nn", {"hidden": 8}),
       ("jordan_sequence.nn", {"hidden": 8}),
       # a tree cell (parent=, mask=, children(h)) exported as a Scan
       ("recursive_tree.nn", {"hidden": 8, "embed": 5})]
# the largest networks: NNSPEC_SLOW=1 (seconds each in the NumPy interpreter)
HEAVY = {"vgg16", "xception", "inception_v3"}
SKIPPED = ("identity", "dropout_mask")


def _network(spec, sets):
    lib = [SPECS / "lib"] if spec.startswith("yaml/") else None
    net = nnspec.compile(SPECS / spec, set=sets, lib=lib)
    rng = np.random.default_rng(1)
    for v in net.params.values():
        v += rng.standard_normal(v.shape).astype(v.dtype) * 0.05
    for name, v in net.state.items():
        v[...] = rng.uniform(0.5, 1.5, v.shape) if name.endswith("var") else \
            rng.standard_normal(v.shape) * 0.1
    return net


def _infer(graph):
    return build(graph, "infer", graph.dtype, passes=REFERENCE_PIPELINE).graph


def canonical(graph) -> tuple:
    """The eval-mode forward as (op, shape) in order, and the parameter shapes;
    eval-mode dropout (x * a mask of ones) and identities left out."""
    g = _infer(graph)
    masks = set(g.ids("dropout_mask"))
    ops, params = [], []
    for n in g.nodes():
        if n.op in ("param", "state"):
            if n.shape:                       # () : dropout's step counter
                params.append((n.op, n.shape))
        elif n.op not in ("input", "const") + SKIPPED and not (n.op == "mul" and
                                                               set(n.inputs) & masks):
            ops.append((n.op, n.shape))
    return ops, sorted(params)


def _feeds(model, batch=3, steps=5):
    """Random inputs: floats, or token ids (int inputs) below 5."""
    rng = np.random.default_rng(2)
    feeds = {}
    for i in model.graph.input:
        shape = [batch if d.dim_param == "batch" else steps if d.dim_param else d.dim_value
                 for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.integers(0, 5, shape) \
            if i.type.tensor_type.elem_type == onnx.TensorProto.INT64 else \
            rng.standard_normal(shape).astype("float32")
    return feeds


def _trees(feeds, seed=5):
    """A tree cell's inputs as trees: each example's k nodes numbered children
    first (parent[j] > j, the root's -1), the padding after them masked 0."""
    rng = np.random.default_rng(seed)
    b, n = feeds["parent"].shape
    parent, mask = np.full((b, n), -1, np.int64), np.zeros((b, n), np.float32)
    for i in range(b):
        k = n if i == 0 else int(rng.integers(1, n + 1))
        parent[i, :k - 1] = [rng.integers(j + 1, k) for j in range(k - 1)]
        mask[i, :k] = 1
    return {**feeds, "parent": parent, "mask": mask}


def _ort(model, feeds):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = ort.InferenceSession(model.SerializeToString(), opts,
                             providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def _imported_outputs(imp, feeds):
    from nnspec.backend.numpy_ref import run
    g = _infer(imp.graph)
    got = run(g, {**imp.feeds(feeds), **imp.weights}, list(g.outputs.values()))
    return {o: got[g.outputs[name]] for o, name in imp.outputs.items()}


def _weights(model) -> int:
    """The values of an ONNX model's float initializers (not shapes, axes or
    scalars: a scalar is a literal of the spec, as a masked cell's zeros)."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE) and t.dims)


def _rel(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# ---- round trips -----------------------------------------------------------------------------

def _zoo_id(spec, sets) -> str:
    path = Path(spec)
    name = path.stem if path.suffix == ".nn" else f"yaml-{path.stem}"
    return name + ("-reset_after" if sets.get("reset_after") else "") \
        + ("-noaux" if sets.get("aux") is False else "")


@pytest.mark.parametrize("spec, sets", [
    pytest.param(s, k, id=_zoo_id(s, k), marks=[pytest.mark.skipif(
        _zoo_id(s, k) in HEAVY and not SLOW, reason="a large network: NNSPEC_SLOW=1")])
    for s, k in ZOO])
def test_import_of_an_export_gives_the_spec_back(spec, sets):
    net = _network(spec, sets)
    model = to_model(net)
    imp = import_model(model)
    nnspec.lower(imp.text)                            # the text lowers on its own
    ops, params = canonical(net.graph)
    ops2, params2 = canonical(imp.graph)
    if any(op == "loop" for op, _ in ops):
        # a cell's weights are ONNX's stacked W, R, B: compare what the loop gives
        ops = [o for o in ops if o[0] != "loop"]
        ops2 = [o for o in ops2 if o[0] != "loop"]
        assert ops2 == ops
        n_onnx = _weights(model)
        assert sum(int(np.prod(s)) for _, s in params2) == n_onnx
    else:
        assert ops2 == ops and params2 == params
    feeds = _feeds(model)
    if "parent" in feeds:
        feeds = _trees(feeds)
    want, got = _ort(model, feeds), _imported_outputs(imp, feeds)
    for name in want:
        assert got[name].shape == want[name].shape
        assert _rel(got[name], want[name]) <= 1e-5, name


RECURRENT_ZOO = {"lstm_peephole.nn": ({"hidden": 6}, "rnn = x -> onnx_lstm_peephole(6)"),
                 "birnn.nn": ({"hidden": 6}, "y = x -> onnx_rnn(6, direction=bidir)"),
                 "seq2seq.nn": ({"hidden": 6, "embed": 5}, " -> onnx_lstm(6, init=enc)")}


@pytest.mark.parametrize("spec", RECURRENT_ZOO)
def test_recurrent_zoo_specs_import_as_written_and_export_again(spec):
    """Peepholes, a cell run both ways (nnspec exports it as a forward and a
    reverse node) and a decoder starting from the encoder's states are written
    as the zoo spec writes them, and export to the same ONNX nodes again."""
    sets, line = RECURRENT_ZOO[spec]
    model = to_model(_network(spec, sets))
    imp = import_model(model)
    assert line in imp.text

    def cells(m):           # op, direction and inputs after B ("dec.initial_h", "rnn.P")
        return [(n.op_type, [a.s for a in n.attribute if a.name == "direction"],
                 [i.split(".")[-1] for i in n.input[4:] if i])
                for n in m.graph.node if n.op_type in ("LSTM", "GRU", "RNN")]
    assert cells(to_model(imp.network())) == cells(model)


def test_scan_cells_import_as_cells_and_export_again():
    """A cell exported as a Scan comes back as a cell whose step is the Scan's
    body; a teacher-forced cell's zero teacher is read as zeros."""
    model = to_model(_network("lstm_1997.nn", {"hidden": 4}))
    imp = import_model(model)
    assert "cell onnx_scan1()(x) {" in imp.text and "    state c = zeros(4)" in imp.text
    assert "    c[t] = c[t-1] + " in imp.text and "    return h" in imp.text
    assert "rnn = x -> onnx_scan1\n" in imp.text and "rnn.h -> dense(10)" in imp.text
    assert [n.op_type for n in to_model(imp.network()).graph.node].count("Scan") == 1
    imp = import_model(to_model(_network("jordan_sequence.nn", {"hidden": 4})))
    assert "input prev" not in imp.text and "output y = x -> onnx_scan1" in imp.text


def test_a_reversed_scan_is_a_reversed_cell():
    """In float64 every cell exports as a Scan: birnn's reverse way scans from the end."""
    net = nnspec.compile(SPECS / "birnn.nn", set={"hidden": 6}, dtype="float64")
    model = to_model(net)
    imp = import_model(model)
    assert "y_reverse = x -> onnx_scan2(reverse=true)" in imp.text
    feeds = {k: v.astype("float64") for k, v in _feeds(model).items()}
    want, got = _ort(model, feeds), _imported_outputs(imp, feeds)
    assert _rel(got["logits"], want["logits"]) <= 1e-9


def test_scan_nodes_nnspec_cannot_express_are_errors_per_node():
    from onnx import helper
    model = to_model(_network("lstm_1997.nn", {"hidden": 4}))
    scan = next(n for n in model.graph.node if n.op_type == "Scan")
    axes = next(a for a in scan.attribute if a.name == "scan_input_axes")
    axes.CopyFrom(helper.make_attribute("scan_input_axes", [0]))
    with pytest.raises(OnnxImportError, match=f"node '{scan.name}' \\(op Scan\\): attribute "
                                              f"'scan_input_axes' = \\[0\\] is not supported"):
        import_model(model)
    axes.CopyFrom(helper.make_attribute("scan_input_axes", [1]))
    tanh = next(n for n in scan.attribute[0].g.node if n.op_type == "Tanh")
    tanh.op_type = "Sin"
    with pytest.raises(OnnxImportError) as e:
        import_model(model)
    assert f"node '{scan.name}' (op Scan): its body cannot be imported: node '{tanh.name}' " \
           f"(op Sin): op Sin is not supported" in str(e.value)


def test_a_masked_scan_is_a_cell_with_mask(tmp_path):
    """A cell applied with mask= exports as a Scan whose body keeps the state and
    emits zeros where the mask is 0 (Where): it is imported with mask= again."""
    spec = tmp_path / "masked.nn"
    spec.write_text("cell el(n)(x) {\n    state h = zeros(n)\n"
                    "    h[t] = tanh(dense(concat(x[t], h[t-1]), n))\n    return h\n}\n"
                    "network masked {\n    input x: [6, 3]\n    input mask: [6]\n"
                    "    r = x -> el(4, mask=mask)\n    output y = r\n"
                    "    output last = r.h -> dense(2)\n}\n")
    model = to_model(nnspec.compile(spec))
    imp = import_model(model)
    assert "output y = x -> onnx_scan1(mask=mask)" in imp.text
    feeds = _feeds(model)
    feeds["mask"] = (np.arange(6) < np.array([[6], [3], [1]])).astype("float32")
    want, got = _ort(model, feeds), _imported_outputs(imp, feeds)
    for name in want:
        assert _rel(got[name], want[name]) <= 1e-5, name


def _tree_model():
    return to_model(_network("recursive_tree.nn", {"hidden": 4, "embed": 3}))


def test_a_tree_cell_imports_with_parent_mask_and_children():
    """A tree cell's Scan (one-hot positions and parents computed before it, the
    children's sums a [B, N, n] state, padding masked with Where) comes back as
    the cell applied with parent= and mask=, reading children(h), and exports
    as the same nodes again."""
    model = _tree_model()
    imp = import_model(model)
    assert "r = embedding_ -> onnx_scan1(parent=parent, mask=mask)" in imp.text
    assert " = children(h)\n" in imp.text and imp.text.count("    state ") == 1
    assert "output logits = r.h -> dense(5)" in imp.text
    again = to_model(imp.network())
    assert [n.op_type for n in again.graph.node] == [n.op_type for n in model.graph.node]
    body = [a.g for n in again.graph.node for a in n.attribute if a.name == "body"][0]
    assert [n.op_type for n in body.node] == [n.op_type for n in model.graph.node[
        [n.op_type for n in model.graph.node].index("Scan")].attribute[0].g.node]


def test_a_child_sum_tree_lstm_without_a_mask(tmp_path):
    """Two states summed over the children (Tai et al.'s child-sum Tree-LSTM),
    no mask: both sums are read back as children(h), children(c)."""
    spec = tmp_path / "tl.nn"
    spec.write_text("cell tlstm(n)(x) {\n    state h = zeros(n)\n    state c = zeros(n)\n"
                    "    i = sigmoid(dense(concat(x[t], children(h)), n))\n"
                    "    f = sigmoid(dense(concat(x[t], children(h)), n))\n"
                    "    c[t] = i * tanh(dense(x[t], n)) + f * children(c)\n"
                    "    h[t] = tanh(c[t]) * i\n    return h\n}\n"
                    "network tl {\n    input x: [7, 3]\n    input parent: int[7]\n"
                    "    r = x -> tlstm(4, parent=parent)\n    output y = r.h -> dense(2)\n}\n")
    net, rng = nnspec.compile(spec), np.random.default_rng(1)
    for v in net.params.values():       # zero biases would be one shared initializer
        v += rng.standard_normal(v.shape).astype(v.dtype) * 0.05
    imp = _check_import(to_model(net))
    assert "r = x -> onnx_scan1(parent=parent)" in imp.text
    assert " = children(h)\n" in imp.text and " = children(c)\n" in imp.text


def test_altered_tree_patterns_are_errors():
    """Nodes like a tree cell's but not nnspec's are not read as one: one-hots
    computed otherwise are errors for their nodes, a Scan reading nnspec's
    one-hots whose body differs an error naming the Scan and what differs."""
    from onnx import numpy_helper
    model = _tree_model()
    eq = next(n for n in model.graph.node if n.name == "parent.onehot.hit/Equal")
    model.graph.initializer.append(numpy_helper.from_array(np.arange(1, 16), "shifted"))
    eq.input[1] = "shifted"                      # parent + 1 where nnspec has parent
    with pytest.raises(OnnxImportError) as e:
        import_model(model)
    assert "node 'parent.positions/Expand' (op Expand)" in str(e.value)
    assert "node 'parent.onehot.hit/Equal' (op Equal)" in str(e.value)

    def body_error(alter) -> str:
        model = _tree_model()
        scan = next(n for n in model.graph.node if n.op_type == "Scan")
        alter({n.name: n for n in scan.attribute[0].g.node})
        with pytest.raises(OnnxImportError) as e:
            import_model(model)
        assert str(e.value).count("node '") == 1
        return str(e.value).split("node 'r/Scan' (op Scan): ")[1]

    def sub(nodes):
        nodes["r/children(h)[t]/Add"].op_type = "Sub"   # the sums take h away
    assert body_error(sub).startswith("state 'r/children(h)[t-1]' is read as a tree's "
                                      "children's sums, but its new value is not nnspec's")

    def keep(nodes):
        nodes["r/children(h)/ReduceSum"].attribute[0].i = 1
    assert body_error(keep).startswith("body input 'r/here[t]' (the one-hot of the node's "
                                       "position) is read other than as nnspec's children(h)")

    def unmasked(nodes):
        nodes["r/h.masked/Where"].input[2] = "r/r.tanh"
    assert body_error(unmasked).startswith("body output 'r/state:h' is not masked as nnspec's "
                                           "cells are")


def test_resnet_repeats_fold_into_a_block():
    imp = import_model(to_model(_network("resnet18.nn", {"size": 32, "classes": 10})))
    assert "block unit1()(x) {" in imp.text and "-> unit1 * 2" in imp.text
    g = imp.graph
    assert len(g.ids("conv")) == 20 and len(g.ids("batchnorm")) == 20


def test_a_softmax_output_trains_as_nll(tmp_path):
    spec = tmp_path / "p.nn"
    spec.write_text("network p {\n    input x: [6]\n    output probs = x -> dense(4) -> "
                    "softmax\n}\n")
    imp = import_model(to_model(nnspec.compile(spec)))
    assert "loss = nll(log(probs), label)" in imp.text and "target label: int" in imp.text


# ---- the command ------------------------------------------------------------------------------

def test_import_command_check_inspect_train(tmp_path, capsys):
    model = tmp_path / "mlp.onnx"
    # perturbed weights: the exporter stores equal small constants (zero biases) once,
    # and an imported layer has weights of its own
    _network("mlp.nn", {"hidden": 16}).export_onnx(model)
    out = tmp_path / "net" / "mlp.nn"
    assert main(["import", str(model), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["mlp.nn", "mlp.npz"]
    n_onnx = _weights(onnx.load(str(model)))
    assert main(["check", str(out)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    import json
    info = json.loads(capsys.readouterr().out)
    assert info["trainable_params"] == n_onnx
    # the weights are the network's state_dict
    net = nnspec.compile(out)
    net.load_state_dict(dict(np.load(out.with_suffix(".npz"))))
    x = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")
    want = _ort(onnx.load(str(model)), {"x": x})["logits"]
    assert _rel(_imported_outputs(import_model(onnx.load(str(model))), {"x": x})["logits"],
                want) <= 1e-5
    run = tmp_path / "run"
    assert main(["train", str(out), "--data", "digits(limit=96)", "--epochs", "1",
                 "--out", str(run), "--quiet"]) == 0
    assert (run / "checkpoint.npz").exists()


def test_import_command_nnc(tmp_path):
    model = tmp_path / "lenet5.onnx"
    net = _network("lenet5.nn", {})
    net.export_onnx(model)
    out = tmp_path / "lenet5.nn"
    assert main(["import", str(model), "-o", str(out), "--nnc"]) == 0
    loaded = nnspec.load(out.with_suffix(".nnc"))
    imp = import_model(onnx.load(str(model)))
    for k, v in imp.weights.items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)


def _bad_model():
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="sine"),
             helper.make_node("Relu", ["a"], ["b"], name="fine"),
             helper.make_node("LeakyRelu", ["x"], ["c"], name="odd", alpha=0.1, gamma=2.0),
             helper.make_node("Add", ["b", "c"], ["y"], name="sum")]
    return helper.make_model(helper.make_graph(nodes, "bad", [x], [y]),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_unsupported_nodes_are_listed_one_per_node(tmp_path, capsys):
    with pytest.raises(OnnxImportError) as e:
        import_model(_bad_model())
    msg = str(e.value)
    assert "node 'sine' (op Sin): op Sin is not supported" in msg
    assert "node 'odd' (op LeakyRelu): attribute 'gamma' is not supported" in msg
    assert msg.count("node '") == 2                      # not the nodes after them
    src = tmp_path / "bad.onnx"
    onnx.save(_bad_model(), str(src))
    assert main(["import", str(src), "-o", str(tmp_path / "bad.nn")]) == 1
    err = capsys.readouterr().err
    assert "node 'sine'" in err and "node 'odd'" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_pytorch_style_flatten_through_shape_folds_to_reshape():
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((6, 18))
                                .astype("float32"), "fc.weight")
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["flat"], name="/flatten/Reshape"),
             helper.make_node("Clip", ["flat", "lo", "hi"], ["r6"], name="/act/Clip"),
             helper.make_node("Gemm", ["r6", "fc.weight"], ["y"], name="/fc/Gemm", transB=1)]
    consts = [numpy_helper.from_array(np.asarray(v, dt), n) for n, v, dt in
              (("zero", 0, np.int64), ("axes", [0], np.int64), ("minus1", [-1], np.int64),
               ("lo", 0.0, np.float32), ("hi", 6.0, np.float32))]
    model = helper.make_model(helper.make_graph(nodes, "torch", [x], [y], [w] + consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    imp = import_model(model)
    assert "flatten" in imp.text and "onnx_clip(0.0, 6.0)" in imp.text
    assert "fc = " in imp.text or "output y = " in imp.text
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 2, 3, 3)).astype("float32") * 5}
    assert _rel(_imported_outputs(imp, feeds)["y"], _ort(model, feeds)["y"]) <= 1e-5


# ---- ONNX's backend node tests ---------------------------------------------------------------

CASES = selected()


def test_every_exclusion_is_a_case_of_an_implemented_op():
    names = {c.name for c, _ in CASES}
    assert set(EXCLUDED) <= names


@pytest.mark.parametrize("case", [c for c, _ in CASES], ids=[c.name for c, _ in CASES])
def test_onnx_node_case(case):
    why = run_case(case, compiled=False)
    if case.name in EXCLUDED:
        assert why is not None, f"{case.name} passes: take it off the exclusion list"
    else:
        assert why is None, why
    if SLOW and why is None:
        assert run_case(case, compiled=True) is None


def test_backend_interface_runs_a_model():
    from onnx.backend.base import BackendRep
    model = to_model(nnspec.compile(SPECS / "mlp.nn", set={"hidden": 8}))
    rep = NnspecBackend.prepare(model, reference=True)
    assert isinstance(rep, BackendRep)
    x = np.random.default_rng(0).standard_normal((2, 64)).astype("float32")
    (y,) = rep.run([x])
    assert _rel(y, _ort(model, {"x": x})["logits"]) <= 1e-5
    assert NnspecBackend.supports_device("CPU")


# ---- recurrent nodes built by hand ------------------------------------------------------------

def _recurrent_model(kind, hidden=3, features=4, *, direction="forward", attrs=None,
                     peepholes=False, initial=None, batch="batch", outputs="seq"):
    """X [B, T, F] -Transpose-> one LSTM/GRU/RNN node, its Y and Y_h back as
    PyTorch writes them: a bidirectional Y -Transpose [0, 2, 1, 3], Reshape
    [0, 0, -1], Transpose-> [B, T, 2H], its Y_h -Transpose, Reshape-> [B, 2H]
    ("h") and Gather(-1) -> the reverse way's [B, H] ("h_last").  `initial`:
    state -> "input" (a graph input [1, B, H]), "unsqueezed" (an input [B, H]
    unsqueezed) or an array (a constant)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    D = 2 if direction == "bidirectional" else 1
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype("float32") * 0.5, n)
             for n, s in (("W", (D, G * hidden, features)), ("R", (D, G * hidden, hidden)),
                          ("B", (D, 2 * G * hidden)))]
    if peepholes:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((D, 3 * hidden)).astype("float32"), "P"))
    ins = [helper.make_tensor_value_info("x", f32, [batch, "time", features])]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])]
    node_in = ["xt", "W", "R", "B", ""]
    for s in ("h", "c")[:2 if kind == "LSTM" else 1]:
        how = (initial or {}).get(s)
        if how is None:
            node_in.append("")
        elif isinstance(how, np.ndarray):
            inits.append(numpy_helper.from_array(how.astype("float32"), f"{s}0"))
            node_in.append(f"{s}0")
        elif how == "input":
            ins.append(helper.make_tensor_value_info(f"{s}0", f32, [D, batch, hidden]))
            node_in.append(f"{s}0")
        else:
            ins.append(helper.make_tensor_value_info(f"{s}0", f32, [batch, hidden]))
            nodes.append(helper.make_node("Unsqueeze", [f"{s}0", "axes0"], [f"{s}0_1"]))
            node_in.append(f"{s}0_1")
    if peepholes:
        node_in += [""] * (7 - len(node_in)) + ["P"]
    while node_in[-1] == "":
        node_in.pop()
    n_out = 3 if kind == "LSTM" else 2
    nodes.append(helper.make_node(kind, node_in, ["Y", "Y_h", "Y_c"][:n_out], name="rnn",
                                  hidden_size=hidden, direction=direction, **(attrs or {})))
    consts = [numpy_helper.from_array(np.asarray(v, np.int64), n) for n, v in
              (("axes0", [0]), ("axes1", [1]), ("join", [0, 0, -1]), ("join2", [0, -1]),
               ("last", -1))]
    outs = []
    if D == 2:
        nodes += [helper.make_node("Transpose", ["Y"], ["Yt"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", ["Yt", "join"], ["Yj"]),
                  helper.make_node("Transpose", ["Yj"], ["seq"], perm=[1, 0, 2]),
                  helper.make_node("Transpose", ["Y_h"], ["Ht"], perm=[1, 0, 2]),
                  helper.make_node("Reshape", ["Ht", "join2"], ["h"]),
                  helper.make_node("Gather", ["Y_h", "last"], ["h_last"], axis=0)]
        outs += [("seq", ["batch", "time", 2 * hidden]), ("h", ["batch", 2 * hidden]),
                 ("h_last", ["batch", hidden])]
    else:
        nodes += [helper.make_node("Squeeze", ["Y", "axes1"], ["Ys"]),
                  helper.make_node("Transpose", ["Ys"], ["seq"], perm=[1, 0, 2]),
                  helper.make_node("Squeeze", ["Y_h", "axes0"], ["h"])]
        outs += [("seq", ["batch", "time", hidden]), ("h", ["batch", hidden])]
    outs = [helper.make_tensor_value_info(n, f32, [batch if d == "batch" else d
                                                   for d in s]) for n, s in outs]
    read = {i for node in nodes for i in node.input}
    consts = [c for c in consts if c.name in read]
    return helper.make_model(helper.make_graph(nodes, "recurrent", ins, outs, inits + consts),
                             opset_imports=[helper.make_opsetid("", 18)])


def _check_import(model, *, batch=3, not_weights=0):
    """The import checks, has the ONNX file's parameter count (less `not_weights`:
    a constant zero start state) and onnxruntime's outputs."""
    imp = import_model(model)
    nnspec.lower(imp.text)
    n = sum(int(np.prod(np.shape(w))) for w in imp.weights.values())
    assert n == _weights(model) - not_weights
    feeds = _feeds(model, batch=batch)
    want, got = _ort(model, feeds), _imported_outputs(imp, feeds)
    for name in want:
        assert got[name].shape == want[name].shape, name
        assert _rel(got[name], want[name]) <= 1e-5, name
    return imp


BIDIRECTIONAL = [("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("LSTM", {}),
                 ("RNN", {"activations": ["Relu", "Relu"]})]


@pytest.mark.parametrize("kind, attrs", BIDIRECTIONAL,
                         ids=["gru", "gru-lbr", "lstm-peepholes", "rnn-relu"])
def test_a_bidirectional_node_is_a_cell_run_both_ways(kind, attrs):
    model = _recurrent_model(kind, direction="bidirectional", attrs=attrs,
                             peepholes=kind == "LSTM")
    imp = _check_import(model)
    assert "direction=bidir)" in imp.text
    assert ".h_backward" in imp.text and ".h_forward" not in imp.text   # only what is read
    assert len(imp.graph.ids("loop")) == 2
    # exported again: a forward and a reverse node of the same op
    again = [n for n in to_model(imp.network()).graph.node if n.op_type == kind]
    assert [a.s for n in again for a in n.attribute if a.name == "direction"] == \
        [b"forward", b"reverse"]


def test_a_peephole_lstm_starts_from_given_states():
    # initial_h a graph input [1, B, H] (the spec's input [B, H]); initial_c a [B, H]
    # input unsqueezed
    model = _recurrent_model("LSTM", peepholes=True,
                             initial={"h": "input", "c": "unsqueezed"})
    imp = _check_import(model)
    assert "onnx_lstm_peephole(3, h0=h0, c0=c0)" in imp.text
    assert "input h0: [3]" in imp.text and imp.squeezed == ("h0",)
    # a constant start: zeros are the cell's own start
    model = _recurrent_model("LSTM", peepholes=True, batch=3,
                             initial={"c": np.zeros((1, 3, 3)), "h": "input"})
    imp = _check_import(model, not_weights=9)
    assert "onnx_lstm_peephole(3, h0=h0)" in imp.text


def test_a_cell_starts_from_another_nodes_final_states():
    """Y_h and Y_c of one node as the next one's initial_h and initial_c (an
    encoder and a decoder): `init=`; from one of them only, `h0=`."""
    from onnx import helper, numpy_helper
    model = _recurrent_model("LSTM")
    g = model.graph
    rng = np.random.default_rng(4)
    g.initializer.extend(numpy_helper.from_array(rng.standard_normal(s).astype("float32")
                                                 * 0.5, n)
                         for n, s in (("W2", (1, 12, 3)), ("R2", (1, 12, 3)), ("B2", (1, 24))))
    dec = helper.make_node("LSTM", ["Ytm", "W2", "R2", "B2", "", "Y_h", "Y_c"],
                           ["Y2", "Y_h2"], name="dec", hidden_size=3)
    # the decoder reads the encoder's Y, time-major as it is
    g.node.extend([helper.make_node("Squeeze", ["Y", "axes1"], ["Ytm"]), dec,
                   helper.make_node("Squeeze", ["Y_h2", "axes0"], ["h2"])])
    g.output.append(helper.make_tensor_value_info("h2", onnx.TensorProto.FLOAT, ["batch", 3]))
    imp = _check_import(model)
    assert "dec = seq -> onnx_lstm(3, init=seq)" in imp.text
    next(n for n in g.node if n.name == "dec").input[6] = ""     # c starts from zeros
    imp = _check_import(model)
    assert "dec = seq -> onnx_lstm(3, h0=h)" in imp.text


def test_recurrent_attributes_nnspec_cannot_express_are_errors_per_node():
    from onnx import helper
    cases = {"layout": ({"layout": 1}, "attribute 'layout' = 1 is not supported"),
             "clip": ({"clip": 2.0}, "attribute 'clip' is not supported"),
             "activations": ({"activations": ["Sigmoid", "Tanh", "Relu"]},
                             "attribute 'activations' = ['Sigmoid', 'Tanh', 'Relu'] is not "
                             "supported")}
    for what, (attrs, msg) in cases.items():
        with pytest.raises(OnnxImportError) as e:
            import_model(_recurrent_model("LSTM", attrs=attrs))
        assert f"node 'rnn' (op LSTM): {msg}" in str(e.value), what
    model = _recurrent_model("GRU")
    model.graph.input.append(helper.make_tensor_value_info("lens", onnx.TensorProto.INT32,
                                                           ["batch"]))
    model.graph.node[1].input.append("lens")                 # input 4: sequence_lens
    with pytest.raises(OnnxImportError, match="node 'rnn' \\(op GRU\\): input "
                                              "'sequence_lens' is not supported"):
        import_model(model)
    model = _recurrent_model("LSTM", batch=3, initial={"h": np.ones((1, 3, 3))})
    with pytest.raises(OnnxImportError, match="node 'rnn' \\(op LSTM\\): input 'initial_h' "
                                              "is a nonzero constant"):
        import_model(model)
