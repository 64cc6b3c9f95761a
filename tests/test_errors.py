"""Every kind of spec error: where it points (file:line:col), where the caret
sits in the rendered text, and the hint.  Then the CLI: exit code 1, no
traceback."""
import subprocess
import sys
import textwrap

import pytest

from nnspec.cli import main
from nnspec.errors import SpecError
from nnspec.frontend import check_file
from nnspec.ops import all_layers


def check(tmp_path, text, name="bad.nn"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    errors = check_file(path)
    assert len(errors) == 1, errors
    return errors[0], path


def assert_error(e, path, line, col, message, hint=None, caret_text=None):
    """The location, the message, the caret under column `col` of the quoted
    source line, and the hint."""
    assert (e.loc.file, e.loc.line, e.loc.col) == (str(path), line, col), e.render()
    assert message in e.message, e.render()
    lines = e.render().splitlines()
    assert lines[0] == f"{path}:{line}:{col}: error: {e.message}"
    src, caret = lines[1], lines[2]
    assert src == "    " + e.loc.source_line()
    assert caret.rstrip().endswith("^") and len(caret.rstrip()) - 4 == col, e.render()
    if caret_text is not None:
        assert src[4 + col - 1:].startswith(caret_text), e.render()
    if hint is None:
        assert e.hint is None or "hint:" in e.render()
    else:
        assert e.hint is not None and hint in e.hint, e.render()
        assert f"hint: {e.hint}" in lines


def test_syntax_error(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = x -> dense(10
        }
    """)
    assert_error(e, p, 4, 1, "unexpected '}'; expected ')', ','", caret_text="}")


def test_syntax_error_hints_a_keyword(tmp_path):
    e, p = check(tmp_path, """
        network n {
            inptu x: [64]
        }
    """)
    assert_error(e, p, 2, 11, "unexpected 'x'", "did you mean the keyword 'input'?", "x")
    e, p = check(tmp_path, """
        netwrk n {
        }
    """)
    assert_error(e, p, 1, 8, "unexpected 'n'", "did you mean the keyword 'network'?")


def test_unexpected_character(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64] $
        }
    """)
    assert_error(e, p, 2, 19, "unexpected character '$'", caret_text="$")


def test_unknown_layer_did_you_mean(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = x -> dens(10)
        }
    """)
    assert_error(e, p, 3, 21, "unknown layer 'dens'", "did you mean 'dense'?", "dens(")


def test_unknown_name(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = xx -> dense(10)
        }
    """)
    assert_error(e, p, 3, 16, "unknown name 'xx'", "did you mean 'x'?", "xx")


def test_unknown_keyword_did_you_mean(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = x -> dense(10, bias_int=1)
        }
    """)
    assert_error(e, p, 3, 31, "layer 'dense' has no argument 'bias_int'",
                 "did you mean 'bias_init'?", "bias_int")


def test_block_unknown_keyword(tmp_path):
    e, p = check(tmp_path, """
        block unit(n, act = relu)(x) { return x -> dense(n) -> act }
        network m {
            input x: [4]
            output y = x -> unit(3, atc=tanh)
        }
    """)
    assert_error(e, p, 4, 29, "'unit' has no argument 'atc'", "did you mean 'act'?", "atc")


def test_wrong_argument_count(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = x -> dense(10, 3)
        }
    """)
    assert_error(e, p, 3, 21, "layer 'dense' takes 1 argument(s) besides its input, got 2",
                 caret_text="dense")
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            output y = x -> dense
        }
    """)
    assert_error(e, p, 3, 21, "layer 'dense' needs argument 'n'", caret_text="dense")


def test_shape_mismatch_names_the_sizes(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            input z: [32]
            output y = x + z
        }
    """)
    assert_error(e, p, 4, 18, "add", caret_text="+")
    assert "64" in e.message and "32" in e.message


def test_error_inside_a_block_shows_the_call_sites(tmp_path):
    e, p = check(tmp_path, """
        block inner(n)(x) {
            return x -> dense(n) -> relu(3)
        }
        block outer(n)(x) {
            return x -> inner(n)
        }
        network n {
            input x: [64]
            output y = x -> outer(4)
        }
    """)
    assert_error(e, p, 2, 29, "layer 'relu' takes 0 argument(s)", caret_text="relu(3)")
    text = e.render()
    assert f"{p}:5:17: note: in block 'inner', called from here" in text
    assert f"{p}:9:21: note: in block 'outer', called from here" in text
    assert text.index("'inner'") < text.index("'outer'")         # innermost first
    notes = text.splitlines()
    k = notes.index(f"{p}:9:21: note: in block 'outer', called from here")
    assert notes[k + 1] == "        output y = x -> outer(4)"
    assert notes[k + 2] == "    " + " " * 20 + "^"


def test_bad_enum_value(tmp_path):
    if "conv2d" not in all_layers():
        pytest.skip("conv2d not registered yet")
    e, p = check(tmp_path, """
        network n {
            input x: [1, 8, 8]
            output y = x -> conv2d(4, 3, pad=smae)
        }
    """)
    assert_error(e, p, 3, 21, "pad must be one of valid, same", "did you mean 'same'?")


def test_bad_cell_direction(tmp_path):
    e, p = check(tmp_path, """
        cell rnn(n)(x) { state h = zeros(n)
                         h[t] = tanh(dense(x[t], n) + h[t-1])
                         return h }
        network m { input x: [T, 4]
                    output y = x -> rnn(4, direction=bidr) }
    """)
    assert_error(e, p, 5, 29, "direction must be forward, reverse or bidir",
                 "did you mean 'bidir'?", "rnn(")


def test_import_missing(tmp_path):
    e, p = check(tmp_path, """
        import "lib/none.nn"
        network n { input x: [4]
                    output y = x }
    """)
    assert_error(e, p, 1, 1, "cannot import 'lib/none.nn': no such file",
                 "imports are relative to", 'import "lib/none.nn"')


def test_import_cycle(tmp_path):
    (tmp_path / "b.nn").write_text('import "a.nn"\nblock b()(x) { return x }\n')
    e, p = check(tmp_path, 'import "b.nn"\nblock a()(x) { return x }\n', name="a.nn")
    b = str(tmp_path / "b.nn")
    assert_error(e, b, 1, 1, "import cycle:", caret_text='import "a.nn"')
    assert e.message.endswith(f"{tmp_path / 'a.nn'} -> {b} -> {tmp_path / 'a.nn'}")


def test_bad_set_key(tmp_path, capsys):
    p = tmp_path / "net.nn"
    p.write_text("network n(width = 4) {\n    input x: [4]\n    output y = x -> dense(width)\n}\n")
    assert main(["inspect", str(p), "--set", "widht=3"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"{p}:1:9: error: network 'n' has no argument 'widht'"
    assert err.splitlines()[2] == "    " + " " * 8 + "^"
    assert "hint: did you mean 'width'?" in err and "Traceback" not in err


def test_missing_loss(tmp_path):
    e, p = check(tmp_path, """
        network n { input x: [4]
                    output y = x }
        train {
            batch = 32
        }
    """)
    assert_error(e, p, 3, 1, "the train section needs a loss", "loss = cross_entropy",
                 "train")


def test_unknown_train_setting(tmp_path):
    e, p = check(tmp_path, """
        network n { input x: [4]
                    output y = x }
        train { loss = mean(y)
                epoch = 3 }
    """)
    assert_error(e, p, 4, 9, "unknown train setting 'epoch'", "did you mean 'epochs'?")


def test_missing_output(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            y = x -> dense(10)
        }
    """)
    assert_error(e, p, 1, 9, "network 'n' has no output", "add `output NAME = ...`", "n {")


CELL_CALL = """
network n {
    input x: [T, 4]
    output y = x -> c(3)
}
"""


@pytest.mark.parametrize("body, line, col, message, hint", [
    ("state h = zeros(n)\n    h = x[t] -> dense(n)\n    return h",
     3, 5, "'h' is a state of this cell; assign it as h[t] = ...", None),
    ("state h = zeros(n)\n    h[t-1] = x[t] -> dense(n)\n    return h",
     3, 8, "a state is assigned at the current step", None),
    ("state h = zeros(n)\n    g = x[t] -> dense(n)\n    return g",
     2, 11, "cell state 'h' is never assigned", None),
    ("state h = zeros(n)\n    h[t] = dense(x[t], n) + h[t-2]\n    return h",
     3, 32, "a state is read at t or t-1", None),
    ("state h = zeros(n)\n    k[t] = dense(x[t], n)\n    h[t] = k\n    return h",
     3, 5, "'k' is not a declared state", "declare it first: state k = zeros(n)"),
    ("state h = zeros(n)\n    h[t] = dense(x[t], n)\n    h[t] = dense(x[t], n)\n    return h",
     4, 5, "state 'h' is assigned twice in one step", None),
    ("state h = zeros(n)\n    state h = zeros(n)\n    h[t] = dense(x[t], n)\n    return h",
     3, 11, "state 'h' is declared twice", None),
    ("state h = zeros(n)\n    y = h -> relu\n    h[t] = dense(x[t], n)\n    return h",
     3, 9, "state 'h' is read before it is assigned", "read the previous step as h[t-1]"),
])
def test_state_misuse(tmp_path, body, line, col, message, hint):
    e, p = check(tmp_path, f"cell c(n)(x) {{\n    {body}\n}}\n" + CELL_CALL)
    assert_error(e, p, line, col, message, hint)


def test_state_outside_a_cell(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [64]
            state h = zeros(3)
            output y = x
        }
    """)
    assert_error(e, p, 3, 11, "`state` declares a cell's state; it belongs in a `cell`")


def test_time_index_outside_a_cell(tmp_path):
    e, p = check(tmp_path, """
        network n {
            input x: [T, 4]
            output y = x[t]
        }
    """)
    assert_error(e, p, 3, 18, "unknown name 't'", caret_text="t]")


# ---- YAML ------------------------------------------------------------------------

YAML_NET = """
network:
  name: n
  body:
    - {input: x, shape: [64]}
"""


@pytest.mark.parametrize("tail, line, col, message, hint, caret_text", [
    ("    - {output: y, value: \"x -> dense(10, bias_int=1)\"}\n", 5, 42,
     "layer 'dense' has no argument 'bias_int'", "did you mean 'bias_init'?", "bias_int"),
    ("    - y: [x, dense(10), rleu]\n", 5, 25, "unknown layer 'rleu'", "did you mean 'relu'?",
     "rleu"),
    ("    - y: x -> dense(10 +)\n", 5, 25, "unexpected ')'", None, ")"),
    ("    - y = x -> dense(10)\n", 5, 7, "a statement is a mapping", "- NAME: VALUE", "y ="),
    ("    - {input: z, shap: [64]}\n", 5, 18, "unknown key 'shap' in `input`",
     "did you mean 'shape'?", "shap"),
    ("    - {for: i, in: \"range(2)\"}\n", 5, 7, "`for` needs the key 'do'", None, "{for"),
    ("    - h: >\n        x -> dense(3)\n          -> rleu\n", 7, 14, "unknown layer 'rleu'",
     "did you mean 'relu'?", "rleu"),
    ("    - {input: z, dtype: itn}\n", 5, 25, "dtype is int or float", "did you mean 'int'?",
     "itn"),
    ("    - {output: y}\n    - {output: y2, value: {a: 1}}\n", 6, 27,
     "an expression or a chain (a list), got a mapping", "quote expressions", "{a"),
])
def test_yaml_errors_point_into_the_yaml(tmp_path, tail, line, col, message, hint, caret_text):
    e, p = check(tmp_path, YAML_NET + tail, name="bad.yaml")
    assert_error(e, p, line, col, message, hint, caret_text)


def test_yaml_structure_errors(tmp_path):
    e, p = check(tmp_path, "netwrk:\n  name: n\n", name="bad.yaml")
    assert_error(e, p, 1, 1, "unknown top-level key 'netwrk'", "did you mean 'network'?")
    e, p = check(tmp_path, "network:\n  name: n\n  name: m\n  body: []\n", name="bad.yaml")
    assert_error(e, p, 3, 3, "key 'name' appears twice", "the first one is on line 2")
    e, p = check(tmp_path, "- a\n", name="bad.yaml")
    assert_error(e, p, 1, 1, "a YAML spec is a mapping, got a list")
    e, p = check(tmp_path, "network:\n  name: n\n  body:\n\t- {input: x}\n", name="bad.yaml")
    assert (e.loc.line, e.loc.col) == (4, 1) and e.message.startswith("YAML: ")
    assert e.hint == "YAML indents with spaces, not tabs"
    e, p = check(tmp_path, "network: {name: n, body: [\n", name="bad.yaml")
    assert e.message.startswith("YAML: ") and e.loc.line == 2


def test_yaml_error_in_a_block_shows_call_sites(tmp_path):
    e, p = check(tmp_path, """
        blocks:
          unit:
            args: [n]
            inputs: [x]
            body:
              - return: x -> dense(n) -> relu(3)
        network:
          name: m
          body:
            - {input: x, shape: [4]}
            - {output: y, value: "x -> unit(2)"}
    """, name="bad.yaml")
    assert_error(e, p, 6, 34, "layer 'relu' takes 0 argument(s)", caret_text="relu(3)")
    assert f"{p}:11:32: note: in block 'unit', called from here" in e.render()


# ---- the command line ------------------------------------------------------------

BAD = "network n {\n    input x: [64]\n    output y = x -> dens(10)\n}\n"


def test_cli_check_reports_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "bad.nn"
    bad.write_text(BAD)
    good = tmp_path / "good.nn"
    good.write_text(BAD.replace("dens(", "dense("))
    assert main(["check", str(good)]) == 0
    assert main(["check", str(good), str(bad)]) == 1
    out = capsys.readouterr()
    assert f"{good}: ok" in out.out
    assert out.err.startswith(f"{bad}:3:21: error: unknown layer 'dens'")
    assert "hint: did you mean 'dense'?" in out.err and "Traceback" not in out.err


def test_cli_missing_file_and_binary_file(tmp_path, capsys):
    assert main(["check", str(tmp_path / "none.nn")]) == 1
    (tmp_path / "bin.nn").write_bytes(b"\xff\xfe\x00network")
    assert main(["check", str(tmp_path / "bin.nn")]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "not a text file" in err and "Traceback" not in err


def test_cli_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("network:\n  name: n\n  body:\n    - {input: x, shape: [64]}\n"
                   "    - {output: y, value: \"x -> dens(10)\"}\n")
    r = subprocess.run([sys.executable, "-m", "nnspec.cli", "check", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.startswith(f"{bad}:5:32: error: unknown layer 'dens'")
    assert "Traceback" not in r.stderr + r.stdout


def test_spec_error_is_the_only_user_error():
    assert issubclass(SpecError, Exception)
    e = SpecError("boom")
    assert e.render() == "error: boom"
