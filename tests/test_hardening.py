"""A spec is untrusted input: every limit ends in a located error that names
it, imports stay under the spec's folder and the library folders, a file
planted in a shared cache is never loaded, and paths are paths."""
import os
import pickle
import subprocess
import sys
import time
import textwrap
from pathlib import Path

import pytest

import nnspec
from nnspec.cli import main
from nnspec.errors import Loc, SpecError
from nnspec.frontend import check_file, limits
from nnspec.frontend.load import is_spec_text, read_spec_path

NET = "network n {{\n    input x: [8]\n    output y = {}\n}}\n"


def check(tmp_path, text, name="bad.nn"):
    """The one located error of `text`, checked within a CPU-time bound."""
    path = tmp_path / name
    path.write_text(text)
    t = time.process_time()
    errors = check_file(path)
    assert time.process_time() - t < 2.0, "checking took too long"
    assert len(errors) == 1, errors
    e = errors[0]
    assert e.loc is not None and e.loc.file == str(path) and e.loc.line >= 1, e.render()
    assert "Traceback" not in e.render()
    return e


# ---- nesting, numbers, sizes ------------------------------------------------------

@pytest.mark.parametrize("expr", [
    "[" * 15_000 + "x" + "]" * 15_000,
    "-" * 30_000 + "x",
    "x" + " + x" * 7_000,
    "x" + " ** 2" * 6_000,
    "relu(" * 3_000 + "x" + ")" * 3_000,
    "x if true else " * 2_000 + "x",
])
def test_deep_nesting_is_a_located_error(tmp_path, expr):
    e = check(tmp_path, NET.format(expr))
    assert "nested too deeply" in e.message and "MAX_DEPTH" in e.hint, e.render()
    assert e.loc.line == 3


def test_brackets_count_as_nesting_and_stop_the_parser_early(tmp_path):
    e = check(tmp_path, NET.format("(" * 90 + "relu3(x)" + ")" * 90))
    assert "unknown layer 'relu3'" in e.message and e.loc.col == 106, e.render()
    e = check(tmp_path, NET.format("(" * 15_000 + "x" + ")" * 15_000))
    # the network's `{` is level 1, so the 100th parenthesis is the first too many
    assert "nested too deeply" in e.message and e.loc.col == 16 + 99, e.render()


def test_deep_blocks_are_a_located_error(tmp_path):
    body = "if true { " * 200 + "y = x" + " }" * 200
    e = check(tmp_path, f"network n {{\n input x: [8]\n {body}\n output y = x\n}}\n")
    assert "nested too deeply" in e.message and e.loc.line == 3


def test_file_size_limit(tmp_path):
    text = NET.format("x") + "# " + "x" * limits.MAX_FILE_BYTES + "\n"
    e = check(tmp_path, text)
    assert "cannot read" in e.message and f"{limits.MAX_FILE_BYTES:,}" in e.message
    assert "MAX_FILE_BYTES" in e.hint


@pytest.mark.parametrize("literal, message, limit", [
    ("9" * 5000, "at most", "MAX_DIGITS"),         # int() refuses > 4,300 digits
    ("1" + "0" * 30, "larger than the limit", "MAX_INT"),
    ("1e400", "too large for a float", None),
])
def test_number_literals(tmp_path, literal, message, limit):
    e = check(tmp_path, NET.format(f"x -> dense({literal})"))
    assert message in e.message and e.loc.line == 3, e.render()
    assert (limit in e.hint) if limit else True


@pytest.mark.parametrize("expr, message, limit", [
    ("x -> dense(9 ** 9 ** 9)", "larger than the limit", None),
    ("x -> dense(2 ** 62 * 4)", "integer too large", "MAX_INT"),
    ("x -> dense(8) * 1000000", "repeated at most", "MAX_REPEAT"),
    ("(x -> dense(10)) * 1e400", "too large for a float", None),
    ("(x -> dense(10)) * (1e300 * 1e300)", "not a finite number", None),
    ("x -> dense(len([1] * 1000000000))", "items", "MAX_ITEMS"),
    ("x -> dense(len(range(10 ** 12)))", "range of", None),
    ("x -> dense(floor(1e300))", "integer too large", "MAX_INT"),
])
def test_computed_values_are_bounded(tmp_path, expr, message, limit):
    e = check(tmp_path, NET.format(expr))
    assert message in e.message and e.loc.line == 3, e.render()
    if limit:
        assert limit in e.hint


def test_for_iterations_are_counted_over_all_loops(tmp_path):
    body = "for i in range(1000) { for j in range(1000) { z = 1 } }"
    e = check(tmp_path, f"network n {{\n input x: [8]\n {body}\n output y = x\n}}\n")
    assert "iterations" in e.message and "MAX_ITERATIONS" in e.hint and e.loc.line == 3


def test_node_count_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_NODES", 500)
    e = check(tmp_path, NET.format("x -> dense(8) * 1000"))
    assert "more than 500 nodes" in e.message and "MAX_NODES" in e.hint and e.loc.line == 3


def test_limits_come_from_the_environment(tmp_path):
    env = dict(os.environ, NNSPEC_MAX_REPEAT="3")
    p = tmp_path / "r.nn"
    p.write_text(NET.format("x -> dense(8) * 4"))
    out = subprocess.run([sys.executable, "-m", "nnspec.cli", "check", str(p)], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "repeated at most 3 times" in out.stderr, out.stderr


# ---- YAML -------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("network: " + "[" * 10_000 + "]" * 10_000 + "\n", "nested too deeply"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n"
        for i in range(9)), "aliases expanded"),
    ("network: &a [*a]\n", "an alias refers to a node that holds it"),
])
def test_yaml_limits(tmp_path, text, message):
    e = check(tmp_path, text, "bad.yaml")
    assert message in e.message, e.render()


# ---- the quoted line --------------------------------------------------------------

@pytest.mark.parametrize("sep", ["\f", "\u2028", "\x85", "\v"])
def test_caret_quotes_the_line_the_parser_counts(tmp_path, sep):
    text = f"network n {{ # a{sep}b\n    input x: [8]\n    output y = x -> dense(8) -> relu3\n}}\n"
    e = check(tmp_path, text)
    lines = e.render().splitlines()
    assert e.loc.line == 3 and lines[1] == "        output y = x -> dense(8) -> relu3"
    assert lines[2].index("^") == lines[1].index("relu3")


def test_a_long_line_is_quoted_trimmed_around_the_column(tmp_path):
    pad = "a" * 5_000
    e = check(tmp_path, NET.format(f'x -> dense(8, init="{pad}") -> relu3 # {pad}'))
    quoted, caret = e.render().splitlines()[1:3]
    assert len(quoted) < 120 and quoted.endswith("...")
    assert quoted[caret.index("^"):].startswith("relu3")


def test_control_characters_are_not_echoed(tmp_path):
    e = check(tmp_path, NET.format("x -> relu3 # \x1b[2J\x07"))
    assert "\x1b" not in e.render() and "\x07" not in e.render()


def test_a_huge_token_is_quoted_trimmed(tmp_path):
    e = check(tmp_path, NET.format("x x" + "y" * 20_000))
    assert len(e.message) < 200, e.message


# ---- imports ------------------------------------------------------------------------

def imports(tmp_path, path, **kw):
    return check(tmp_path, f'import "{path}"\n' + NET.format("x"), **kw)


@pytest.mark.parametrize("target", ["/proc/self/environ", "/etc/passwd", "/dev/zero",
                                    "/dev/urandom", "../outside.nn"])
def test_imports_outside_the_spec_folder_are_refused(tmp_path, target, monkeypatch):
    monkeypatch.setenv("NNSPEC_SECRET", "hunter2")
    (tmp_path / "outside.nn").write_text("block b(n)(x) { return x }\n")
    d = tmp_path / "spec"
    d.mkdir()
    e = imports(d, target)
    assert "outside the spec's folder" in e.message and e.loc.line == 1, e.render()
    text = e.render()
    assert "hunter2" not in text and "root:" not in text and len(text.splitlines()) == 4


def test_a_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "zero.nn").symlink_to("/dev/zero")
    (tmp_path / "pw.nn").symlink_to("/etc/passwd")
    assert "outside" in imports(tmp_path, "zero.nn").message
    assert "outside" in imports(tmp_path, "pw.nn").message


def test_import_a_directory_a_fifo_a_huge_file(tmp_path):
    (tmp_path / "lib").mkdir()
    assert "is a directory" in imports(tmp_path, "lib").message
    os.mkfifo(tmp_path / "pipe.nn")                  # opening it for reading would block
    assert "not a regular file" in imports(tmp_path, "pipe.nn").message
    (tmp_path / "big.nn").write_text("# " + "x" * limits.MAX_FILE_BYTES)
    e = imports(tmp_path, "big.nn")
    assert "larger than" in e.message and "MAX_FILE_BYTES" in e.hint
    (tmp_path / "notes.txt").write_text("block b(n)(x) { return x }\n")
    assert "not a spec" in imports(tmp_path, "notes.txt").message


def test_library_folders_from_lib_and_nnspec_path(tmp_path, monkeypatch):
    lib = tmp_path / "shared"
    lib.mkdir()
    (lib / "blocks.nn").write_text("block unit(n)(x) { return x -> dense(n) }\n")
    d = tmp_path / "proj"
    d.mkdir()
    spec = d / "net.nn"
    spec.write_text('import "blocks.nn"\n' + NET.format("x -> unit(3)"))
    assert "no such file" in check_file(spec)[0].message
    assert check_file(spec, lib=[lib]) == []
    g = nnspec.lower(spec, lib=[lib])
    assert g.shape(g.outputs["y"]) == ("B", 3)
    assert main(["check", "--lib", str(lib), str(spec)]) == 0
    monkeypatch.setenv("NNSPEC_PATH", str(lib))
    assert check_file(spec) == [] and main(["check", str(spec)]) == 0
    # a sibling folder is reachable when a library folder holds both
    spec.write_text('import "../shared/blocks.nn"\n' + NET.format("x -> unit(3)"))
    monkeypatch.delenv("NNSPEC_PATH")
    assert "outside" in check_file(spec)[0].message
    assert check_file(spec, lib=[tmp_path]) == []


def test_each_imported_file_is_read_once(tmp_path, monkeypatch):
    """Diamonds of imports: each file parsed once, not once per path to it."""
    (tmp_path / "m0.nn").write_text("block b0(n)(x) { return x }\n")
    for i in range(1, 30):
        (tmp_path / f"m{i}.nn").write_text(f'import "m{i - 1}.nn"\nimport "./m{i - 1}.nn"\n')
    spec = tmp_path / "net.nn"
    spec.write_text('import "m29.nn"\n' + NET.format("x -> b0(1)"))
    from nnspec.frontend import load
    reads = []
    real = load.read_module
    monkeypatch.setattr(load, "read_module",
                        lambda text, file: reads.append(file) or real(text, file))
    assert check_file(spec) == []
    # every file once: 31, not the 2^29 paths through the diamonds
    assert len(reads) == 31 and len(set(reads)) == 31, reads


# ---- the grammar cache ------------------------------------------------------------

class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_grammar_cache_is_never_loaded(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    marker = tmp_path / "pwned"
    for name in ("grammar-start.lark.cache", "grammar-expr.lark.cache"):
        with open(cache / name, "wb") as f:
            f.write(b"0" * 64 + b"\n")
            pickle.dump(_Planted(str(marker)), f)
    spec = tmp_path / "n.nn"
    spec.write_text(NET.format("x"))
    env = dict(os.environ, NNSPEC_CACHE=str(cache), XDG_CACHE_HOME=str(cache),
               HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "nnspec.cli", "check", str(spec)],
                         env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()


def test_the_grammar_cache_is_trusted_only_when_ours(tmp_path):
    from nnspec.frontend.parser import _ours, grammar_cache
    f = tmp_path / "c"
    f.write_bytes(b"")
    f.chmod(0o644)
    assert _ours(f)
    f.chmod(0o664)
    assert not _ours(f)                          # a group could have written it
    (tmp_path / "link").symlink_to(f)
    assert not _ours(tmp_path / "link")
    where = grammar_cache("start")
    pkg = Path(nnspec.__file__).resolve().parent
    assert where is None or where.parent == pkg / "frontend" / "__pycache__"


# ---- shapes ---------------------------------------------------------------------------

def test_concat_along_the_batch_axis_is_a_check_time_error(tmp_path):
    text = "network n {\n  input x: [8]\n  a = x -> dense(4)\n  output y = concat(a, x, axis=0)\n}\n"
    e = check(tmp_path, text)
    assert "batch axis" in e.message and e.loc.line == 4, e.render()


def test_concat_along_time_is_a_check_time_error(tmp_path):
    text = "network n {\n  input s: [T, 8]\n  output y = concat(s, s, axis=1)\n}\n"
    e = check(tmp_path, text)
    assert "dynamic axis" in e.message and e.loc.line == 3, e.render()


# ---- files without a network ------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n# nothing\n", "width = 3\n"])
def test_a_file_with_neither_network_nor_blocks(tmp_path, text, capsys):
    e = check(tmp_path, text)
    assert e.message == "this file defines no network and no blocks"
    p = tmp_path / "bad.nn"
    assert main(["check", str(p)]) == 1 and main(["inspect", str(p)]) == 1
    err = capsys.readouterr().err
    assert err.count("defines no network and no blocks") == 2, err


def test_a_library_of_blocks_checks_but_does_not_inspect(tmp_path, capsys):
    p = tmp_path / "lib.nn"
    p.write_text("block unit(n)(x) { return x -> dense(n) }\n")
    assert check_file(p) == []
    assert main(["inspect", str(p)]) == 1
    assert "defines no network" in capsys.readouterr().err
    q = tmp_path / "reexport.nn"                   # importing blocks makes a library too
    q.write_text('import "lib.nn"\n')
    assert check_file(q) == []


# ---- layer names ------------------------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("h = x -> dense(8) -> relu", "h = relu(dense(x, 8))"),
    ("h = x -> dense(8) -> dense(4)", "h = dense(dense(x, 8), 4)"),
    ("h = x -> dense(8) -> tanh -> dense(4)", "h = dense(tanh(dense(x, 8)), 4)"),
])
def test_a_named_value_names_the_layer_that_makes_it(a, b):
    spec = "network n {{ input x: [8]\n {}\n output y = h }}"
    ga, gb = nnspec.lower(spec.format(a)), nnspec.lower(spec.format(b))
    assert ga.hash() == gb.hash()
    names = [lay["name"] for lay in ga.meta["layers"]]
    assert names[-1] == "h", names
    if "dense(4)" in a:
        assert "h.weight" in ga.params and "dense.weight" in ga.params


# ---- paths and text ----------------------------------------------------------------------

@pytest.mark.parametrize("name, reason", [
    ("specs_mlp", "no such file"), ("adir", "directory"), ("m.nnc", "compiled network"),
    ("notes.txt", "not a spec"), ("m.NN", "not a spec")])
def test_a_command_line_spec_is_always_a_path(tmp_path, capsys, name, reason):
    (tmp_path / "adir").mkdir()
    for f in ("m.nnc", "notes.txt", "m.NN"):
        (tmp_path / f).write_text(NET.format("x"))
    path = str(tmp_path / name)
    for argv in (["check", path], ["inspect", path], ["graph", path, "-o",
                                                      str(tmp_path / "g.dot")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"cannot read {path}: " in err and reason in err, err
    with pytest.raises(SpecError, match=f"cannot read .*{reason}"):
        read_spec_path(path)


def test_the_python_api_rule_for_text_and_paths(tmp_path):
    assert is_spec_text("network n { input x: [4]\n output y = x }")
    assert is_spec_text("network n { input x: [4]; output y = x }")
    assert not is_spec_text("specs/mlp") and not is_spec_text(str(tmp_path / "a.nn"))
    g = nnspec.lower("network n { input x: [4]; output y = x -> dense(2) }")
    assert g.shape("y") == ("B", 2) and g.meta["file"] == "<spec>"
    with pytest.raises(SpecError, match="cannot read specs/mlp: no such file"):
        nnspec.compile("specs/mlp")
    p = tmp_path / "one.nn"                        # a one-line file is still read as a file
    p.write_text("network n { input x: [4]; output y = x }")
    assert nnspec.lower(p).meta["file"] == str(p)
    assert nnspec.lower(str(p)).meta["source"] == p.read_text()


def test_spec_text_has_the_file_size_limit():
    with pytest.raises(SpecError, match="a spec is at most"):
        nnspec.lower("network n {\n" + " " * limits.MAX_FILE_BYTES + "}")


def test_loc_counts_lines_by_newline_only():
    loc = Loc("f", 2, 1, "a\fb\r\nsecond\u2028line\nthird")
    assert loc.source_line() == "second\u2028line"
    assert loc.excerpt()[0] == "second?line"
    assert Loc("f", 1, 1, "a\r\nb").source_line() == "a"


def test_a_nnc_spec_imports_only_the_files_stored_with_it(tmp_path, monkeypatch):
    """Loading a .nnc writes its sources to a temporary folder: its spec may
    import those files, nothing from $NNSPEC_PATH or elsewhere."""
    from nnspec.train import nnc
    secret = tmp_path / "lib" / "secret.nn"
    secret.parent.mkdir()
    secret.write_text("block b(n)(x) { return x }\n")
    spec = "network n { input x: [4]; output y = x -> dense(2) }"
    net = nnspec.compile(spec)
    hostile = {"main": "net.nn", "files": {"net.nn": f'import "{secret}"\n{spec}'}}
    monkeypatch.setattr(nnc, "spec_sources", lambda s: hostile)
    nnc.save(net, tmp_path / "m.nnc")
    monkeypatch.setenv("NNSPEC_PATH", str(secret.parent))
    with pytest.raises(SpecError, match="outside the spec's folder"):
        nnspec.load(tmp_path / "m.nnc")


def test_blocks_nested_deeply_are_a_located_error_with_a_short_trace(tmp_path):
    lines = ["block b0(n)(x) { return x -> dense(n) }"]
    lines += [f"block b{i}(n)(x) {{ return x -> b{i - 1}(n) }}" for i in range(1, 400)]
    e = check(tmp_path, "\n".join(lines) + "\nnetwork m { input x: [4]\n output y = x -> b399(3) }\n")
    assert "blocks nested too deeply" in e.message and "MAX_CALL_DEPTH" in e.hint, e.render()
    assert len(e.render().splitlines()) < 50 and "more call sites" in e.render()
