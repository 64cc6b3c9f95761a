"""The YAML form: the same AST as `.nn` text, located errors, and the zoo's
YAML twins lowering to the same graph as their `.nn` originals."""
import textwrap
from pathlib import Path

import pytest

import nnspec
from nnspec.errors import SpecError
from nnspec.frontend import ast
from nnspec.frontend.load import load_module
from nnspec.frontend.parser import parse
from nnspec.frontend.yaml_spec import parse_yaml

SPECS = Path(__file__).resolve().parent.parent / "specs"
TWINS = ["mlp", "lenet5", "resnet18", "lstm", "unet"]


def y(text):
    return parse_yaml(textwrap.dedent(text).lstrip("\n"), "t.yaml")


def n(text):
    return parse(textwrap.dedent(text).lstrip("\n"), "t.nn")


def same(yaml_text, nn_text):
    a, b = y(yaml_text), n(nn_text)
    assert a.items == b.items, f"\n{a.items}\n!=\n{b.items}"


# ---- the twins ------------------------------------------------------------------

@pytest.mark.parametrize("name", TWINS)
def test_twin_has_the_same_ast(name):
    nn_path, yaml_path = SPECS / f"{name}.nn", SPECS / "yaml" / f"{name}.yaml"
    if not nn_path.exists():
        pytest.skip(f"{nn_path} not written yet")
    a, _ = load_module(nn_path)
    b, _ = load_module(yaml_path, lib=[SPECS])      # the twins import ../lib/

    def resolved(m):   # imports are relative to each file
        return [ast.Import(str((Path(m.file).parent / i.path).resolve()))
                if isinstance(i, ast.Import) else i for i in m.items]
    assert resolved(a) == resolved(b)


@pytest.mark.parametrize("name", TWINS)
def test_twin_lowers_to_the_same_graph(name):
    nn_path, yaml_path = SPECS / f"{name}.nn", SPECS / "yaml" / f"{name}.yaml"
    if not nn_path.exists():
        pytest.skip(f"{nn_path} not written yet")
    try:
        g = nnspec.lower(str(nn_path))
    except SpecError as e:
        pytest.skip(f"{name}.nn does not lower yet: {e.message}")
    h = nnspec.lower(str(yaml_path), lib=[SPECS])
    assert h.hash() == g.hash()
    assert h.count("param") == g.count("param")


def test_twin_param_counts():
    want = {"lenet5": 61_706, "resnet18": 11_689_512, "unet": 31_030_658}
    for name, count in want.items():
        try:
            g = nnspec.lower(str(SPECS / "yaml" / f"{name}.yaml"), lib=[SPECS])
        except SpecError as e:
            pytest.skip(f"{name} does not lower yet: {e.message}")
        assert g.count("param") == count, name


# ---- statements, one each ---------------------------------------------------------

def test_inputs_outputs_and_chains():
    same("""
        network:
          name: net
          args: [hidden, {classes: 10}]
          body:
            - {input: x, shape: [1, 28, 28]}
            - {input: tok, dtype: int, shape: "[T]"}
            - h: [x, "dense(hidden, bias_init=1)", relu]
            - h2: h -> dense(3) -> relu
            - {output: h2}
            - {output: logits, value: [h, "dense(classes)"]}
        train:
          - {target: label, dtype: int}
          - loss: cross_entropy(logits, label)
          - optimizer: adam(lr = 0.001)
          - data: digits
          - batch: 32
        """, """
        network net(hidden, classes = 10) {
            input x: [1, 28, 28]
            input tok: int[T]
            h = x -> dense(hidden, bias_init=1) -> relu
            h2 = h -> dense(3) -> relu
            output h2
            output logits = h -> dense(classes)
        }
        train {
            target label: int
            loss = cross_entropy(logits, label)
            optimizer = adam(lr = 0.001)
            data = digits
            batch = 32
        }
        """)


def test_blocks_cells_consts_and_control_flow():
    same("""
        import: [lib/a.nn, lib/b.nn]
        consts: {width: 64, sizes: "[1, 2]"}
        blocks:
          two:
            args: [c, {act: relu}]
            inputs: [x]
            body:
              - a, b: x -> split(2)
              - return: [a -> act, b]
        cells:
          rnn:
            args: [n]
            inputs: x
            body:
              - {state: h, init: zeros(n)}
              - h[t]: tanh(dense(x[t], n) + h[t-1])
              - return: h
        network:
          name: net
          body:
            - {input: x, shape: [T, 4]}
            - for: i
              in: range(3)
              do:
                - x: x -> dense(4)
            - for: c
              in: [1, 2]
              do: []
            - if: width > 3
              then:
                - y: x
              else:
                if: width > 1
                then: [{y: x -> relu}]
                else: [{y: x -> tanh}]
            - {output: o, value: "y -> rnn(4, reverse=true) if width else y"}
        """, """
        import "lib/a.nn"
        import "lib/b.nn"
        width = 64
        sizes = [1, 2]
        block two(c, act = relu)(x) {
            a, b = x -> split(2)
            return a -> act, b
        }
        cell rnn(n)(x) {
            state h = zeros(n)
            h[t] = tanh(dense(x[t], n) + h[t-1])
            return h
        }
        network net {
            input x: [T, 4]
            for i in range(3) { x = x -> dense(4) }
            for c in [1, 2] { }
            if width > 3 { y = x } else if width > 1 { y = x -> relu } else { y = x -> tanh }
            output o = y -> rnn(4, reverse=true) if width else y
        }
        """)


def test_chain_list_items_may_be_chains_and_lists():
    a = y("""
        network:
          name: n
          body:
            - z: [[a, b], concat, dense(3) -> relu, "x -> y"]
        """)
    chain = a.items[0].body[0].value
    assert isinstance(chain, ast.Chain)
    assert [type(s).__name__ for s in chain.stages] == ["List", "Name", "Call", "Name",
                                                        "Name", "Name"]


def test_scalars_are_expression_text():
    a = y("""
        consts:
          a: 3
          b: 0.5
          c: true
          d: '"text"'
          e: digits
          f: "-2"
        """)
    values = {c.name: c.value for c in a.items}
    assert values["a"] == ast.Number(3) and values["b"] == ast.Number(0.5)
    assert values["c"] == ast.Bool(True) and values["d"] == ast.String("text")
    assert values["e"] == ast.Name("digits") and values["f"] == ast.Neg(ast.Number(2))


# ---- locations --------------------------------------------------------------------

def test_every_node_points_into_the_yaml():
    text = textwrap.dedent("""
        network:
          name: net
          body:
            - {input: x, shape: [64]}
            - h: x -> dense(32) -> relu
            - {output: y, value: "h + 1"}
            - z: >
                h
                  -> dense(3)
        """).lstrip("\n")
    m = parse_yaml(text, "t.yaml")
    net = m.items[0]
    assert (net.loc.line, net.loc.col) == (2, 9)
    inp, h, out, z = net.body
    assert (inp.loc.line, inp.loc.col) == (4, 15)
    assert (h.loc.line, h.loc.col) == (5, 7)
    dense = h.value.stages[1]
    assert (dense.loc.line, dense.loc.col) == (5, 15)
    assert dense.loc.source == text and dense.loc.source_line() == "    - h: x -> dense(32) -> relu"
    plus = out.value
    assert (plus.loc.line, plus.loc.col) == (6, 29)        # inside the quotes
    # a folded block scalar keeps each line's own position
    d3 = z.value.stages[1]
    assert (d3.loc.line, d3.loc.col) == (9, 14)


def test_multiline_plain_scalar_keeps_positions():
    text = "network:\n  name: n\n  body:\n    - z: x\n        -> dense(3)\n        -> rlu\n"
    m = parse_yaml(text, "t.yaml")
    last = m.items[0].body[0].value.stages[2]
    assert last == ast.Name("rlu") and (last.loc.line, last.loc.col) == (6, 12)


def test_syntax_error_inside_a_quoted_scalar_is_located():
    with pytest.raises(SpecError) as ei:
        y("""
            network:
              name: n
              body:
                - {output: y, value: "x -> dense(3,, 2)"}
            """)
    e = ei.value
    assert (e.loc.line, e.loc.col) == (4, 40)
    assert e.loc.source_line()[e.loc.col - 1] == ","


# ---- safety and structure ---------------------------------------------------------

def test_python_tags_are_not_constructed():
    text = "consts:\n  a: !!python/object/apply:os.system ['echo pwned']\n"
    with pytest.raises(SpecError) as ei:
        parse_yaml(text, "t.yaml")
    assert ei.value.loc.line == 2


def test_anchors_are_plain_reuse():
    m = y("""
        consts:
          a: &w 64
          b: *w
        """)
    assert m.items[0].value == m.items[1].value == ast.Number(64)


@pytest.mark.parametrize("text, line, col, message", [
    ("", 1, 1, "the YAML file is empty"),
    ("network: 3\n", 1, 10, "the network is a mapping"),
    ("network:\n  name: n\n", 1, 1, "the network needs the key 'body'"),
    ("network:\n  name: n\n  body: {a: 1}\n", 3, 9, "the network body is a list"),
    ("network:\n  name: [n]\n  body: []\n", 2, 9, "the network's name is a name"),
    ("network:\n  name: n\n  body:\n    - {a: 1, b: 2}\n", 4, 14, "an assignment is one key"),
    ("network:\n  name: n\n  body:\n    - {x y: 1}\n", 4, 8, "cannot assign to 'x y'"),
    ("network:\n  name: n\n  body:\n    - {output: 1, value: x}\n", 4, 16,
     "an output is a name, got '1'"),
    ("network:\n  name: n\n  args: [{a: 1, b: 2}]\n  body: []\n", 3, 10,
     "an argument with a default is one key"),
    ("blocks:\n  b:\n    inputs: [x]\n    body: []\n    args: c\n", 5, 11, "args is a list"),
    ("blocks:\n  b:\n    body: []\n", 2, 3, "block 'b' needs the key 'inputs'"),
    ("consts:\n  in: 3\n", 2, 3, "'in' is a keyword, not a name"),
    ("network:\n  name: n\n  body:\n    - {state: h}\n", 4, 7, "`state` needs the key 'init'"),
    ("network:\n  name: n\n  body:\n    - y: ''\n", 4, 10, "a value is empty"),
    ("network:\n  name: n\n  body:\n    - y: []\n", 4, 10, "a chain lists at least one value"),
    ("network:\n  name: n\n  body:\n    - 3\n", 4, 7, "a statement is a mapping, got '3'"),
])
def test_structure_errors(text, line, col, message):
    with pytest.raises(SpecError) as ei:
        parse_yaml(text, "t.yaml")
    e = ei.value
    assert message in e.message, e.render()
    assert (e.loc.file, e.loc.line, e.loc.col) == ("t.yaml", line, col), e.render()
