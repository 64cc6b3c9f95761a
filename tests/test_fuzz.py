"""Mutated specs never crash the frontend, and never take long.

Zoo specs (and the YAML twins) are mutated at random: characters, tokens and
lines deleted, duplicated or swapped, numbers replaced, the text cut short,
and the hostile cases: nesting thousands deep, huge literals, long lines,
imports of directories, devices, FIFOs, files outside the spec's folder and
files over the size limit.  Checking a mutant must give no error or located
`SpecError`s (a line >= 1, the source line quoted with a caret under the
column), never another Python exception, within 2 s of CPU time, and the
CLI never prints a traceback.

A mutant whose AST is that of a mutant already lowered without error (a
comment or a space changed) is not lowered again: lowering is a function of
the AST, and skipping it keeps 5,000 mutants well under a minute.
"""
import os
import random
import re
import shutil
import time
from pathlib import Path

import pytest

from nnspec.cli import main
from nnspec.errors import SpecError
from nnspec.frontend import check_file, limits
from nnspec.frontend.load import check_modules, load_module

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
    os.mkfifo(d / "pipe.nn")                       # opening it to read would block
    (d / "zero.nn").symlink_to("/dev/zero")
    (d / "big.nn").write_text("# " + "x" * limits.MAX_FILE_BYTES + "\n")
    return d


SEEDS = _seeds()
NAMES = sorted(SEEDS)
TOKEN = re.compile(r"[A-Za-z_]\w*|\d+(?:\.\d*)?|->|\*\*|//|[=!<>]=|\S")
PUNCT = list("()[]{},:;=+-*/.\"'#<>%\\\t\n") + ["->", "**", " if ", " else ", "t-1", "T"]




def mutate(rng: random.Random, text: str, yaml: bool = False) -> str:
    """One random change to `text` (a YAML spec's when `yaml`)."""
    kind = rng.choice(["char", "token", "line", "number", "truncate", "insert", "char",
                       "token", "line", "deep", "huge", "long", "import"])
    if not text:
        return text
    i = rng.randrange(len(text) + 1)
    if kind == "truncate":
        return text[:i]
    if kind == "insert":
        return text[:i] + rng.choice(PUNCT) + text[i:]
    if kind == "deep":
        n = rng.choice([50, 99, 100, 101, 300, 3000])
        piece = rng.choice(DEEP)
        return text[:i] + piece * n + text[i:]
    if kind == "long":
        n = rng.choice([200, 5000, 20_000])       # characters; many tokens cost more
        piece = rng.choice(["# " + "x" * n + "\n", '"' + "s" * n + '"', "a" * n, " " * n,
                            "\t" * n, "9" * n, "\f\u2028" * (n // 4), ", 1" * (n // 10),
                            "->" * (n // 10)])
        return text[:i] + piece + text[i:]
    if kind == "import":
        line = f"import: '{rng.choice(IMPORTS)}'\n" if yaml else \
            f'import "{rng.choice(IMPORTS)}"\n'
        return line + text if rng.random() < 0.7 else text[:i] + "\n" + line + text[i:]
    if kind in ("number", "huge"):
        nums = list(re.finditer(r"\d+(\.\d+)?", text))
        if not nums:
            return text
        m = rng.choice(nums)
        pool = HUGE if kind == "huge" else NUMBERS
        return text[:m.start()] + rng.choice(pool) + text[m.end():]
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
    op = rng.choice(["delete", "duplicate", "swap"])
    s, e = rng.choice(spans)
    if op == "delete":
        return text[:s] + text[e:]
    if op == "duplicate":
        return text[:e] + text[s:e] + text[e:]
    (s1, e1), (s2, e2) = sorted([(s, e), rng.choice(spans)])
    if e1 > s2:
        return text
    return text[:s1] + text[s2:e2] + text[e1:s2] + text[s1:e1] + text[e2:]


DEEP = ["(", "[", "-", "relu(", "x + ", "x ** ", "{", "if true { ", "x if true else ",
        "not ", "dense(", "[1, "]
NUMBERS = ["0", "-1", "1", "3", "0.5", "1e9", "999999", "2.0", "100000000000000000000",
           "-0", "1e-9"]
HUGE = ["9" * 40, "9" * 41, "9" * 5000, "9" * 20_000, "1e400", "1e308 * 10", "9 ** 9 ** 9",
        "2 ** 64", "2 ** 62 * 2", "3 * 1000000", "1000000", "(1e300 * 1e300)", "0.0 / 0",
        "1e999999999", "10 ** 400"]
IMPORTS = ["lib", ".", "..", "/", "/dev/zero", "/dev/urandom", "/dev/null", "/dev/stdin",
           "/proc/self/environ", "/etc/passwd", "../../../../../../etc/passwd", "pipe.nn",
           "zero.nn", "big.nn", "seed.nn", "lib/blocks.nn", "mlp.nn", "missing.nn", "",
           "lib/../../x.nn"]


def mutants(n: int, seed: int = 0, names=NAMES):
    """`n` (name, text) pairs: seeds changed 1-3 times, small seeds drawn
    more often (parsing, most of a mutant's cost, grows with its size), YAML
    seeds less often (PyYAML's pure-Python composer makes one 5x dearer)."""
    rng = random.Random(seed)
    weights = [(200 + len(SEEDS[k])) ** -1.5 / (4 if k.endswith(".yaml") else 1)
               for k in names]
    for _ in range(n):
        name = rng.choices(names, weights)[0]
        text = SEEDS[name]
        for _ in range(rng.randint(1, 3)):
            text = mutate(rng, text, name.endswith((".yaml", ".yml")))
        yield name, text


CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def assert_located(errors, path):
    for e in errors:
        assert isinstance(e, SpecError)
        assert e.loc is not None and e.loc.line >= 1 and e.loc.col >= 1, e.render()
        text = e.render()
        assert "Traceback" not in text
        assert not CONTROL.search(text), repr(text)    # nothing that drives a terminal
        shown, col = e.loc.excerpt()
        if shown.strip():
            lines = text.splitlines()
            assert lines[1] == "    " + shown
            assert lines[2].rstrip().endswith("^") and len(lines[2].rstrip()) - 4 == col
            assert len(shown) <= 106                   # one line, trimmed


def _fingerprint(main, modules):
    """The AST without positions: two texts with the same fingerprint lower alike."""
    strip = re.compile(r"loc=Loc\([^)]*\)|source='(?:[^'\\]|\\.)*'|source=\"(?:[^\"\\]|\\.)*\"")
    return strip.sub("", repr((main.items, sorted(
        (k, m.file, m.items) for k, m in modules.items()))))


def check_mutant(workdir, name, text, lowered_ok=None):
    """Check one mutant written next to its seed (so imports resolve), within
    2 s of CPU time.  `lowered_ok`: fingerprints of mutants that lowered
    without error; one seen again is not lowered again."""
    suffix = ".yaml" if name.endswith((".yaml", ".yml")) else ".nn"
    path = (workdir / name).parent / f"_mutant{suffix}"
    path.write_text(text)
    t = time.process_time()
    fp = None
    try:
        if lowered_ok is None:
            errors = check_file(path, lib=[workdir])
        else:
            try:
                main, modules = load_module(path, lib=[workdir])
            except SpecError as e:
                errors = check_file(path, lib=[workdir]) if e.loc is None else [e]
            else:
                fp = _fingerprint(main, modules)
                errors = [] if fp in lowered_ok else check_modules(main, modules)
    except RecursionError:
        pytest.fail(f"RecursionError on:\n{text[:2000]}")
    seconds = time.process_time() - t
    assert seconds < 2.0, f"{seconds:.1f} s of CPU on:\n{text[:2000]}"
    if fp is not None and not errors:
        lowered_ok.add(fp)
    assert_located(errors, path)
    return path


def test_seeds_check_without_crashing(workdir):
    """The unmutated seeds give no error or located ones (the zoo may still
    name layers that are not registered yet)."""
    for name, text in SEEDS.items():
        check_mutant(workdir, name, text)


def test_5000_mutants_give_located_errors_quickly(workdir):
    ok: set = set()
    for name, text in mutants(5000):
        check_mutant(workdir, name, text, ok)
    assert len(ok) > 10          # some mutants are valid specs, and were lowered


def test_cli_never_prints_a_traceback(workdir, capsys):
    for name, text in mutants(150, seed=1):
        path = check_mutant(workdir, name, text)
        rc = main(["check", "-q", "--lib", str(workdir), str(path)])
        out = capsys.readouterr()
        assert rc in (0, 1), out.err
        assert "Traceback" not in out.err + out.out and "internal error" not in out.err
