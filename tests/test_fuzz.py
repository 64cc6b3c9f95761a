"""Mutated specs never crash the frontend.

Zoo specs (and the YAML twins) are mutated at random: characters, tokens and
lines deleted, duplicated or swapped, numbers replaced, the text cut short.
Checking a mutant must give no error or located `SpecError`s (a line >= 1,
the source line quoted with a caret under the column), never another Python
exception, and the CLI never prints a traceback.
"""
import re
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnspec.cli import main
from nnspec.errors import SpecError
from nnspec.frontend import check_file

SPECS = Path(__file__).resolve().parent.parent / "specs"

# Every construct in one file, with built-in layers only, so the fuzzer has a
# rich seed even before the zoo is complete.
SEED = """\
import "lib/blocks.nn"
width = 8
block unit(n, act = relu)(x) {
    y = x -> dense(n) -> act
    return y + x if n == 8 else y
}
cell rnn(n)(x) {
    state h = zeros(n); state c = zeros(n)
    p = x[t] + h[t-1]
    c[t] = sigmoid(dense(p, n, bias_init=1)) * c[t-1] + tanh(dense(p, n))
    h[t] = sigmoid(dense(p, n)) * tanh(c[t])
    return h
}
network net(classes = 10, depth = 2, wide = false) {
    input x: [8]
    input s: [T, 8]
    r = s -> rnn(8) -> rnn(8, reverse=true)
    q = s -> rnn(8, direction=bidir, merge=sum, init=r)
    h = x -> unit(width) * 2 -> dense(16, init=he)
    for i in range(depth) { h = h -> dense(16 * (i + 1)) -> relu }
    if wide { h = h -> dense(64) } else if depth > 3 { h = h } else { h = h -> tanh }
    shared = dense(16); a = h -> shared; b = a -> shared
    output logits = (a + b - 1) * 2 -> dense(classes)
    output last = final(q, h) + r.c -> mean(1)
}
train {
    target label: int
    loss = mean(logits)
    optimizer = adam(lr = 0.001); schedule = cosine(warmup = 2)
    batch = 32; epochs = 5; data = digits
}
"""


def _seeds():
    out = {"seed.nn": SEED}
    for p in sorted(SPECS.glob("*.nn")) + sorted((SPECS / "yaml").glob("*.y*ml")):
        out[str(p.relative_to(SPECS))] = p.read_text()
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of specs/ (imports resolve in it) plus the seed."""
    d = tmp_path_factory.mktemp("fuzz")
    if SPECS.exists():
        shutil.copytree(SPECS, d, dirs_exist_ok=True)
    (d / "seed.nn").write_text(SEED)
    return d


SEEDS = _seeds()
NAMES = sorted(SEEDS)
TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?|->|\*\*|//|[=!<>]=|\S")
PUNCT = list("()[]{},:;=+-*/.\"'#<>%\\\t\n") + ["->", "**", " if ", " else ", "t-1", "T"]


@st.composite
def mutants(draw, names=NAMES):
    name = draw(st.sampled_from(names))
    text = SEEDS[name]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(_mutation(text))
    return name, text


@st.composite
def _mutation(draw, text):
    kind = draw(st.sampled_from(["char", "token", "line", "number", "truncate", "insert"]))
    if not text:
        return text
    if kind == "truncate":
        return text[:draw(st.integers(0, len(text)))]
    if kind == "insert":
        i = draw(st.integers(0, len(text)))
        return text[:i] + draw(st.sampled_from(PUNCT)) + text[i:]
    if kind == "number":
        nums = list(re.finditer(r"\d+(\.\d+)?", text))
        if not nums:
            return text
        m = draw(st.sampled_from(nums))
        new = draw(st.sampled_from(["0", "-1", "1", "3", "0.5", "1e9", "999999", "2.0",
                                    "100000000000000000000", "-0", "1e-9"]))
        return text[:m.start()] + new + text[m.end():]
    if kind == "char":
        spans = [(i, i + 1) for i in range(len(text))]
    elif kind == "token":
        spans = [m.span() for m in TOKEN.finditer(text)]
    else:
        spans, i = [], 0
        for line in text.splitlines(keepends=True):
            spans.append((i, i + len(line)))
            i += len(line)
    if not spans:
        return text
    op = draw(st.sampled_from(["delete", "duplicate", "swap"]))
    a = draw(st.integers(0, len(spans) - 1))
    s, e = spans[a]
    if op == "delete":
        return text[:s] + text[e:]
    if op == "duplicate":
        return text[:e] + text[s:e] + text[e:]
    b = draw(st.integers(0, len(spans) - 1))
    (s1, e1), (s2, e2) = sorted([spans[a], spans[b]])
    if e1 > s2:
        return text
    return text[:s1] + text[s2:e2] + text[e1:s2] + text[s1:e1] + text[e2:]


def assert_located(errors, path):
    for e in errors:
        assert isinstance(e, SpecError)
        assert e.loc is not None and e.loc.line >= 1 and e.loc.col >= 1, e.render()
        text = e.render()
        assert "Traceback" not in text
        if e.loc.source_line().strip():
            lines = text.splitlines()
            assert lines[1] == "    " + e.loc.source_line()
            assert lines[2].rstrip().endswith("^")


def check_mutant(workdir, name, text):
    suffix = ".yaml" if name.endswith((".yaml", ".yml")) else ".nn"
    # next to the original, so `import "lstm.nn"` and `import "../lib/..."` resolve
    path = (workdir / name).parent / f"_mutant{suffix}"
    path.write_text(text)
    try:
        errors = check_file(path)
    except RecursionError:
        pytest.fail(f"RecursionError on:\n{text}")
    assert_located(errors, path)
    return path


FUZZ = settings(max_examples=500, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def test_seeds_check_without_crashing(workdir):
    """The unmutated seeds give no error or located ones (the zoo may still
    name layers that are not registered yet)."""
    for name, text in SEEDS.items():
        check_mutant(workdir, name, text)


@FUZZ
@given(m=mutants())
def test_mutated_specs_give_located_errors(workdir, m):
    check_mutant(workdir, *m)


@FUZZ
@given(m=mutants(names=["seed.nn"] + [n for n in NAMES if n.startswith("yaml/")]))
def test_mutated_seed_and_yaml(workdir, m):
    check_mutant(workdir, *m)


@settings(FUZZ, max_examples=300)
@given(m=mutants())
def test_cli_never_prints_a_traceback(workdir, m, capsys):
    path = check_mutant(workdir, *m)
    rc = main(["check", "-q", str(path)])
    out = capsys.readouterr()
    assert rc in (0, 1), out.err
    assert "Traceback" not in out.err + out.out and "internal error" not in out.err
