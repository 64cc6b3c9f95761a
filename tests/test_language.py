"""Every construct of the language, parsed and lowered, checked on the graph it
builds.  One test per construct, in the order of docs/language.md."""
import textwrap

import pytest

from nnspec.frontend import load_graph
from nnspec.ops import all_layers


def lower(text, **overrides):
    return load_graph(textwrap.dedent(text), set=overrides or None)


def needs(*layers):
    missing = [n for n in layers if n not in all_layers()]
    if missing:
        pytest.skip(f"layer(s) not registered yet: {', '.join(missing)}")


def ops(g):
    return [n.op for n in g.nodes()]


def op_nodes(g, op):
    return [g.node(i) for i in g.ids(op)]


# ---- inputs, targets, outputs ---------------------------------------------------

def test_inputs_targets_and_types():
    g = lower("""
        network n {
            input x: [64]
            input img: [1, 28, 28]
            input tok: int[T]
            output y = x -> dense(10)
        }
        train {
            target label: int
            target mask: [10]
            loss = mean(y)
        }
    """)
    assert g.inputs == ["x", "img", "tok"]
    assert g.targets == ["label", "mask"]
    assert g.shape("x") == ("B", 64)
    assert g.shape("img") == ("B", 1, 28, 28)
    assert g.shape("tok") == ("B", "T") and g.dtype_of("tok") == "int64"
    assert g.shape("label") == ("B",) and g.dtype_of("label") == "int64"
    assert g.dtype_of("mask") == "float32"


def test_outputs_several_and_bare_name():
    g = lower("""
        network n {
            input x: [8]
            h = x -> dense(4)
            output h                      # an existing value
            output z = h -> relu
        }
    """)
    assert list(g.outputs) == ["h", "z"]
    assert g.node(g.outputs["z"]).op == "relu"
    assert g.node(g.outputs["h"]).op == "linear"


# ---- chains and named values ----------------------------------------------------

def test_chain_applies_stages_in_order():
    g = lower("""
        network n {
            input x: [64]
            output y = x -> dense(32) -> relu
                         -> dense(10) -> sigmoid
        }
    """)
    assert [o for o in ops(g) if o not in ("input", "param")] == \
        ["linear", "relu", "linear", "sigmoid"]
    assert g.shape(g.outputs["y"]) == ("B", 10)


def test_named_value_names_its_layer():
    g = lower("""
        network n {
            input x: [4]
            hidden = x -> dense(3)
            output y = hidden -> relu
        }
    """)
    assert "hidden" in g and g.node("hidden").op == "linear"
    assert g.shape("hidden.weight") == (3, 4)


def test_call_syntax_is_a_chain():
    a = lower("network n { input x: [4]\n output y = relu(dense(x, 3)) }")
    b = lower("network n { input x: [4]\n output y = x -> dense(3) -> relu }")
    assert a.hash() == b.hash()


# ---- DAGs -------------------------------------------------------------------------

def test_residual_add():
    g = lower("""
        block res(c)(x) {
            y = x -> dense(c) -> relu -> dense(c)
            return relu(x + y)
        }
        network n { input x: [16]
                    output y = x -> res(16) }
    """)
    add = op_nodes(g, "add")
    assert len(add) == 1 and "x" in add[0].inputs
    assert g.node(g.outputs["y"]).op == "relu"


def test_concat():
    needs("concat")
    g = lower("""
        network n {
            input x: [16]
            a = x -> dense(8)
            b = x -> dense(4)
            output y = concat(a, b)
        }
    """)
    assert g.shape(g.outputs["y"]) == ("B", 12)


def test_branches_and_multiple_outputs():
    g = lower("""
        network n {
            input x: [16]
            trunk = x -> dense(8) -> relu
            output cls = trunk -> dense(10)
            output box = trunk -> dense(4) -> sigmoid
        }
    """)
    relu = g.outputs and [n for n in g.ids("relu")][0]
    assert len(g.consumers(relu)) == 2
    assert g.shape(g.outputs["cls"]) == ("B", 10) and g.shape(g.outputs["box"]) == ("B", 4)


def test_unpack_returns_of_a_block():
    g = lower("""
        block two(n)(x) { return x -> dense(n), x -> dense(n) -> relu }
        network m { input x: [4]
                    a, b = x -> two(3)
                    output y = a + b }
    """)
    assert g.node(g.outputs["y"]).op == "add"


# ---- blocks -----------------------------------------------------------------------

def test_block_params_defaults_and_keywords():
    src = """
        block mlp(n, depth = 2, act = relu)(x) {
            for i in range(depth) { x = x -> dense(n) -> act }
            return x
        }
        network m(d = 2) { input x: [8]
                           output y = x -> mlp(5, depth=d) }
    """
    assert len(lower(src).ids("linear")) == 2
    assert len(lower(src, d=4).ids("linear")) == 4
    assert "y.dense.weight" in lower(src)       # named after the value, inside the block


def test_block_without_params_is_a_layer():
    g = lower("""
        block act()(x) { return x -> relu -> tanh }
        network m { input x: [4]
                    output y = x -> act -> act }
    """)
    assert ops(g).count("relu") == 2 and ops(g).count("tanh") == 2


def test_layer_values_share_weights():
    g = lower("""
        network m { input x: [8]
                    shared = dense(8)
                    a = x -> shared
                    b = a -> shared
                    output y = b -> dense(2) }
    """)
    lin = op_nodes(g, "linear")
    assert len(lin) == 3
    assert lin[0].inputs[1:] == lin[1].inputs[1:]          # same weight and bias
    assert len(g.params) == 4


def test_block_and_cell_values_share_every_weight_inside():
    g = lower("""
        block two(n)(x) { return x -> dense(n) -> relu -> dense(n) }
        cell rnn(n)(x) {
            state h = zeros(n)
            h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
            return h
        }
        network m {
            input x: [5]
            input s: [T, 3]
            b = two(5)
            y2 = x -> b -> b          # the same block value twice: one set of weights
            y3 = x -> two(5)          # a new call: new weights
            r = rnn(4)
            output o = y2 + y3
            output p = (s -> r) + (s -> r)
        }
    """)
    lin = op_nodes(g, "linear")
    assert lin[0].inputs[1:] == lin[2].inputs[1:] and lin[1].inputs[1:] == lin[3].inputs[1:]
    assert lin[4].inputs[1] != lin[0].inputs[1]
    loops = op_nodes(g, "loop")
    assert len(loops) == 2
    # both loops capture the same parameter nodes of the root graph
    assert loops[0].inputs[1:] == loops[1].inputs[1:]
    assert g.count("param") == 2 * (5 * 5 + 5) * 2 + (3 * 4 + 4 + 4 * 4)


def test_calling_again_makes_new_weights():
    g = lower("network m { input x: [8]\n output y = x -> dense(8) -> dense(8) }")
    assert len(g.params) == 4


def test_repetition():
    g = lower("""
        network m { input x: [8]
                    output y = x -> dense(8) * 3 }
    """)
    lin = op_nodes(g, "linear")
    assert len(lin) == 3 and len({n.inputs[1] for n in lin}) == 3   # fresh weights each


def test_repetition_of_a_bare_layer_name():
    g = lower("network m { input x: [8]\n output y = x -> dense(4) -> tanh * 3 }")
    assert [n.op for n in g.nodes()][-3:] == ["tanh", "tanh", "tanh"]


def test_repetition_of_a_block():
    g = lower("""
        block unit(n)(x) { return x -> dense(n) -> relu }
        network m(k = 4) { input x: [8]
                           output y = x -> unit(8) * k }
    """, k=5)
    assert len(g.ids("relu")) == 5 and len(g.params) == 10


# ---- computing on arguments ------------------------------------------------------

def test_for_if_ternary_and_arithmetic():
    src = """
        network m(depth = 3, wide = false) {
            input x: [8]
            h = x
            for i in range(depth) {
                h = h -> dense(4 * (i + 1)) -> relu
            }
            if wide { h = h -> dense(64) } else { h = h -> dense(2 ** 3) }
            output y = h -> (tanh if depth > 2 else sigmoid)
        }
    """
    g = lower(src)
    assert [g.shape(n)[1] for n in g.ids("linear")] == [4, 8, 12, 8]
    assert g.node(g.outputs["y"]).op == "tanh"
    g = lower(src, depth=1, wide=True)
    assert [g.shape(n)[1] for n in g.ids("linear")] == [4, 64]
    assert g.node(g.outputs["y"]).op == "sigmoid"


def test_else_if_and_consts():
    g = lower("""
        width = 6
        network m(kind = "b") {
            input x: [8]
            if kind == "a" { h = x -> dense(1) }
            else if kind == "b" { h = x -> dense(width // 2) }
            else { h = x -> dense(9) }
            output y = h
        }
    """)
    assert g.shape(g.outputs["y"]) == ("B", 3)
    g = lower("""
        network m(kind = "a") { input x: [8]
            output y = x -> dense(2 if kind == "a" else 5) }""")
    assert g.shape("y") == ("B", 2)


def test_imports(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.nn").write_text(
        "block unit(n)(x) { return x -> dense(n) -> relu }\n")
    main = tmp_path / "net.nn"
    main.write_text('import "lib/blocks.nn"\n'
                    "network m { input x: [8]\n output y = x -> unit(3) }\n")
    g = load_graph(main)
    assert g.shape(g.outputs["y"]) == ("B", 3) and "y.dense.weight" in g


# ---- cells ------------------------------------------------------------------------

RNN = """
cell rnn(n)(x) {
    state h = zeros(n)
    h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
    return h
}
"""


def loop_of(g, nid):
    node = g.node(nid)
    while node.op != "loop":
        node = g.node(node.inputs[0])
    return node


def test_cell_is_one_loop_node_with_a_body_graph():
    g = lower(RNN + "network m { input x: [T, 5]\n output y = x -> rnn(7) }")
    assert len(g.ids("loop")) == 1
    loop = loop_of(g, g.outputs["y"])
    body = loop.attrs["body"]
    assert g.shape(g.outputs["y"]) == ("B", "T", 7)
    assert body.shape("x[t]") == ("B", 5) and body.shape("h[t-1]") == ("B", 7)
    assert loop.attrs["states"] == [{"name": "h", "init": "zeros"}]
    assert {"tanh", "linear"} <= {n.op for n in body.nodes()}
    # the weights live in the outer graph and are captured by the step
    assert "y.dense.weight" in g and len(loop.attrs["captures"]) == 3


@pytest.mark.parametrize("steps", [1, 10, 1000])
def test_compile_size_does_not_grow_with_sequence_length(steps):
    g = lower(RNN + f"network m {{ input x: [{steps}, 5]\n output y = x -> rnn(7) }}")
    ref = lower(RNN + "network m { input x: [10, 5]\n output y = x -> rnn(7) }")
    assert len(g) == len(ref)
    assert len(loop_of(g, g.outputs["y"]).attrs["body"]) == \
        len(loop_of(ref, ref.outputs["y"]).attrs["body"])
    assert g.shape(g.outputs["y"]) == ("B", steps, 7)


def test_two_states_lstm_style():
    g = lower("""
        cell lstm(n)(x) {
            state h = zeros(n); state c = zeros(n)
            p = x[t] + dense(h[t-1], 4)
            c[t] = sigmoid(dense(p, n, bias_init=1)) * c[t-1] + tanh(dense(p, n))
            h[t] = sigmoid(dense(p, n)) * tanh(c[t])
            return h
        }
        network m { input x: [T, 4]
                    r = x -> lstm(6)
                    output last = r.c }
    """)
    loop = g.node(g.ids("loop")[0])
    assert [s["name"] for s in loop.attrs["states"]] == ["h", "c"]
    assert g.shape(g.outputs["last"]) == ("B", 6)
    assert g.node("r.dense_1.bias").attrs["init"] == 1      # the forget gate's bias


def test_stacked_cells():
    g = lower(RNN + "network m { input x: [T, 5]\n output y = x -> rnn(8) -> rnn(3) }")
    assert len(g.ids("loop")) == 2
    assert g.shape(g.outputs["y"]) == ("B", "T", 3)


def test_reverse_and_bidir():
    g = lower(RNN + "network m { input x: [T, 5]\n output y = x -> rnn(4, reverse=true) }")
    assert g.node(g.ids("loop")[0]).attrs["reverse"] is True
    g = lower(RNN + "network m { input x: [T, 5]\n"
                    " output y = x -> rnn(4, direction=bidir, merge=sum) }")
    loops = [g.node(i) for i in g.ids("loop")]
    assert [lp.attrs["reverse"] for lp in loops] == [False, True]
    assert loops[0].inputs[1:] != loops[1].inputs[1:]     # each direction has its weights
    assert g.shape(g.outputs["y"]) == ("B", "T", 4)


def test_bidir_concat():
    needs("concat")
    g = lower(RNN + "network m { input x: [T, 5]\n output y = x -> rnn(4, direction=bidir) }")
    assert g.shape(g.outputs["y"]) == ("B", "T", 8)


def test_init_from_another_cell_and_final_states():
    g = lower(RNN + """
        network m { input src: [T, 5]
                    input tgt: [T, 5]
                    enc = src -> rnn(6)
                    dec = tgt -> rnn(6, init=enc)
                    output a = final(dec)
                    output b = enc.h }
    """)
    enc, dec = (g.node(i) for i in g.ids("loop"))
    assert dec.attrs["states"] == [{"name": "h", "init": "input", "index": 0}]
    assert dec.inputs[1] == "enc.h"                  # the encoder's final state
    assert g.outputs["b"] == "enc.h" and g.shape(g.outputs["a"]) == ("B", 6)


def test_initial_state_from_an_input():
    g = lower("""
        network m { input x: [T, 5]
                    input h0: [6]
                    output y = x -> c2(6, h0=h0) }
        cell c2(n, h0)(x) {
            state h = h0
            h[t] = tanh(dense(x[t], n) + h[t-1])
            return h
        }
    """)
    loop = g.node(g.ids("loop")[0])
    assert loop.attrs["states"][0]["init"] == "input" and "h0" in loop.inputs


def test_tree_cell_sums_children_in_one_loop():
    g = lower("""
        cell tree_rnn(n)(x) {
            state h = zeros(n)
            h[t] = tanh(dense(x[t], n) + dense(children(h), n, bias=false))
            return h
        }
        network net(nodes = 15) {
            input tok: int[nodes]
            input parent: int[nodes]
            input mask: [nodes]
            r = tok -> embedding(8, 16) -> tree_rnn(32, parent=parent, mask=mask)
            output logits = final(r) -> dense(5)
        }
    """)
    (loop,) = op_nodes(g, "loop")
    assert [s["name"] for s in loop.attrs["states"]] == ["h", "children(h)"]
    assert len(loop.attrs["seq_inputs"]) == 3          # x[t], here[t], parent[t]
    body = loop.attrs["body"]
    assert body.shape("children(h)[t-1]") == ("B", 15, 32)
    assert sorted(ops(body)).count("vecmat") == 1 and "outer" in ops(body)
    assert ops(g).count("one_hot") == 2 and g.shape(g.outputs["logits"]) == ("B", 5)
    finals = [n for n in op_nodes(g, "loop_output") if n.attrs["kind"] == "final"]
    assert [n.id for n in finals] == [f"{loop.id}.h"]     # the sums stay hidden


# ---- initialisers and the train section ------------------------------------------

def test_per_layer_init_and_bias_init():
    g = lower("network m { input x: [4]\n"
              " output y = x -> dense(3, init=zeros, bias_init=0.5) -> dense(2, init=he) }")
    assert g.node("dense.weight").attrs["init"] == "zeros"
    assert g.node("dense.bias").attrs["init"] == 0.5
    assert g.node("y.weight").attrs["init"] == "he"


def test_train_section_keys():
    g = lower("""
        network m { input x: [4]
                    output y = x -> dense(3) }
        train {
            target t: [3]
            loss = mean(square(y - t))
            optimizer = sgd(lr = 0.1, momentum = 0.9)
            schedule = cosine(warmup = 2)
            batch = 16; epochs = 3; seed = 7; clip = 1.0
            data = digits
        }
    """)
    cfg = g.meta["train"]
    assert cfg["optimizer"] == {"name": "sgd", "lr": 0.1, "momentum": 0.9}
    assert cfg["schedule"] == {"name": "cosine", "warmup": 2}
    assert (cfg["batch"], cfg["epochs"], cfg["seed"], cfg["clip"]) == (16, 3, 7, 1.0)
    assert cfg["data"] == "digits"
    assert g.node(g.meta["loss"]).op == "mean" and g.shape(g.meta["loss"]) == ()


def test_network_arguments_from_set():
    src = "network m(width = 4) { input x: [2]\n output y = x -> dense(width) }"
    assert lower(src).shape("y") == ("B", 4)
    assert lower(src, width=9).shape("y") == ("B", 9)
    assert lower(src).meta["args"] == {"width": 4}


def test_cell_mask_and_bptt_options():
    g = lower("""
        cell rnn(n)(x) {
            state h = zeros(n)
            h[t] = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
            return h
        }
        network m {
            input s: [T, 3]
            input mask: [T]
            output y = s -> rnn(4, mask=mask, bptt=5)
        }
    """)
    (loop,) = op_nodes(g, "loop")
    assert loop.attrs["mask"] is True and loop.attrs["bptt"] == 5
    assert loop.inputs[-1] == "mask"


@pytest.mark.parametrize("opt, msg", [
    ("mask=tok", "mask is a float tensor"),
    ("mask=s", "mask has shape [B, T, 3]"),
    ("bptt=-1", "bptt takes a number of steps"),
])
def test_cell_mask_and_bptt_errors(opt, msg):
    from nnspec.errors import SpecError
    with pytest.raises(SpecError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        lower(f"""
            cell rnn(n)(x) {{
                state h = zeros(n)
                h[t] = tanh(dense(x[t], n))
                return h
            }}
            network m {{
                input s: [T, 3]
                input tok: int[T]
                output y = s -> rnn(4, {opt})
            }}
        """)
