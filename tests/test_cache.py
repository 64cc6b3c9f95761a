"""The disk cache (backend/cache.py): a private directory, modules named by
the hash of their text and checked before import, entries that fail to load
rebuilt, other versions pruned, `nnspec cache`, and the compile notice."""
import io
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from nnspec.backend import cache
from nnspec.cli import main

ROOT = Path(__file__).resolve().parent.parent

# a tiny MLP on the bundled digits: the one spec in this file that compiles a step
SPEC = """
network tiny_cached(hidden = 8) {
    input x: [64]
    output logits = x -> dense(hidden) -> relu -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    batch = 256
    epochs = 1
    data = digits
}
"""

KERNEL = """
from numba import njit

@njit(cache=True)
def f(x):
    return x + 1
"""


@pytest.fixture
def where(tmp_path, monkeypatch):
    """A fresh cache root of this test's own."""
    d = tmp_path / "cache"
    monkeypatch.setenv("NNSPEC_CACHE", str(d))
    cache._dirs.clear()
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _forget(mod) -> None:
    sys.modules.pop(mod.__name__, None)


# ---- the directory ------------------------------------------------------------

def test_cache_is_created_private_in_a_directory_per_version(where):
    d = cache.cache_dir()
    assert d == where / cache.version_tag()
    assert _mode(where) == 0o700 and _mode(d) == 0o700


def test_a_cache_writable_by_others_is_refused(where, capsys):
    where.mkdir(mode=0o700)
    where.chmod(0o777)
    with pytest.raises(cache.CacheError, match="writable by others"):
        cache.cache_dir()
    with pytest.raises(cache.CacheError, match="writable by others"):
        cache.load("t", "X = 1\n")
    assert main(["cache", "info"]) == 1
    assert "writable by others (mode 0777)" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 1          # nor emptied
    assert "refusing" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a directory to another user needs root")
def test_a_cache_owned_by_another_user_is_refused(where):
    where.mkdir(mode=0o700)
    os.chown(where, 65534, -1)
    with pytest.raises(cache.CacheError, match="belongs to another user"):
        cache.cache_dir()


def test_a_cache_that_is_a_file_is_refused(where, tmp_path, capsys):
    where.write_text("")
    with pytest.raises(cache.CacheError, match="not a directory"):
        cache.cache_dir()
    spec = tmp_path / "tiny.nn"
    spec.write_text(SPEC)
    assert main(["train", str(spec), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert f"the cache {where} is not a directory" in err and "internal error" not in err


def test_a_cache_that_cannot_be_created_compiles_into_a_temporary_directory(
        tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NNSPEC_CACHE", str(tmp_path / "file" / "cache"))
    cache._dirs.clear()
    mod = cache.load("t_uncreatable", "X = 1\n")
    _forget(mod)
    assert mod.X == 1
    assert not Path(mod.__file__).is_relative_to(tmp_path)
    err = capsys.readouterr().err
    assert "cannot be created" in err and "every run compiles again" in err
    cache._dirs.clear()
    cache.cache_dir()                      # said once
    assert capsys.readouterr().err == ""


def test_a_read_only_cache_works_and_says_so_once(where, monkeypatch, capsys):
    cache.cache_dir()
    cache._dirs.clear()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p).is_relative_to(where)
                        else real(p, m, **k))
    mod = cache.load("t_read_only", "X = 1\n")
    _forget(mod)
    assert mod.X == 1 and not Path(mod.__file__).is_relative_to(where)
    assert "read-only" in capsys.readouterr().err


def test_checking_a_spec_neither_makes_nor_reads_the_cache(where, tmp_path, capsys):
    spec = tmp_path / "tiny.nn"
    spec.write_text(SPEC)
    assert main(["check", str(spec)]) == 0
    assert not where.exists()
    where.mkdir()
    where.chmod(0o777)                    # refused for compiling, not needed for checking
    assert main(["check", str(spec)]) == 0


# ---- module names -------------------------------------------------------------

def test_a_module_is_named_by_its_text_and_a_changed_file_is_rewritten(where, capsys,
                                                                       monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)     # as Python runs by default
    mod = cache.load("t_named", "X = 1\n")
    _forget(mod)
    path = Path(mod.__file__)
    assert path.name == f"t_named_{cache.digest_of(path.read_text())}.py"
    assert _mode(path) == 0o600
    assert not list(path.parent.glob(f"__pycache__/{path.stem}*.pyc"))   # only the text runs
    path.write_text("X = 2  # planted\n")
    again = cache.load("t_named", "X = 1\n")
    _forget(again)
    assert again.X == 1
    assert "does not match its name" in capsys.readouterr().err
    assert "planted" not in path.read_text()


def test_a_changed_callee_changes_the_module_name(where, monkeypatch):
    text = "import nnspec.ops.elementwise as m\n"
    before = cache.header(text)
    assert before == cache.header(text)
    real = cache._file_digest
    monkeypatch.setattr(cache, "_file_digest", lambda p: "changed" if p.name == "base.py"
                        else real(p))          # a file elementwise.py imports
    cache._closure_hash.cache_clear()
    try:
        assert cache.header(text) != before
    finally:
        cache._closure_hash.cache_clear()


def test_a_layout_constant_of_model_py_changes_the_step_name(where, monkeypatch):
    """_ALIGN (the parameter layout's alignment) used to be left out of the key:
    a changed value reused the old machine code."""
    import nnspec
    from nnspec import model
    names = []
    for align in (16, 32):
        monkeypatch.setattr(model, "_ALIGN", align)
        net = nnspec.compile(SPEC)
        names.append(net._program("infer").name)
    assert names[0] != names[1]


# ---- Numba's files ------------------------------------------------------------

@pytest.mark.parametrize("damage", ["empty index", "garbage index", "truncated data"])
def test_a_damaged_numba_cache_entry_is_rebuilt(where, capsys, damage):
    mod = cache.load("t_kernel", KERNEL)
    assert mod.f(1) == 2                  # compiled and saved
    _forget(mod)
    pyc = Path(mod.__file__).parent / "__pycache__"
    index, = pyc.glob("*.nbi")
    data, = pyc.glob("*.nbc")
    if damage == "empty index":
        index.write_bytes(b"")
    elif damage == "garbage index":
        index.write_bytes(os.urandom(200))
    else:
        data.write_bytes(data.read_bytes()[:50])
    again = cache.load("t_kernel", KERNEL)
    _forget(again)
    assert _announced(again.f).startswith("compiling the training step")
    assert "could not be loaded" in capsys.readouterr().err
    fresh = cache.load("t_kernel", KERNEL)    # and the rebuilt entry loads
    _forget(fresh)
    assert _announced(fresh.f).startswith("loaded the compiled training step from")
    assert fresh.f.stats.cache_hits and "could not" not in capsys.readouterr().err


def test_a_cache_removed_before_the_compile_is_made_again_private(where):
    mod = cache.load("t_removed", KERNEL)
    _forget(mod)
    shutil.rmtree(where)
    assert mod.f(1) == 2                 # compiled, and saved in the cache made again
    pyc = Path(mod.__file__).parent / "__pycache__"
    assert list(pyc.glob("*.nbi")) and list(pyc.glob("*.nbc"))
    assert {_mode(p) for p in (where, pyc.parent, pyc)} == {0o700}


def test_a_kernel_is_stamped_with_the_compiled_code_its_module_imports(monkeypatch):
    """reduce.py's kernels call elementwise.py's index helpers, and Numba
    stamps a cache entry with its own file only: a changed elementwise.py
    must not reuse reduce.py's machine code.  errors.py holds no compiled
    code: changing it must not recompile every kernel."""
    from nnspec.ops import reduce
    fn = next(f for f in vars(reduce).values() if getattr(f, "_nnspec_kernel", None))
    fn = getattr(fn, "py_func", fn)
    stamps = {}
    real = cache._file_digest
    for changed in (None, "errors.py", "elementwise.py"):
        monkeypatch.setattr(cache, "_file_digest",
                            lambda p, c=changed: "changed" if p.name == c else real(p))
        cache._closure_hash.cache_clear()
        stamps[changed] = cache.recovering_cache(fn)._cache_file._source_stamp
    cache._closure_hash.cache_clear()
    assert stamps[None] == stamps["errors.py"] != stamps["elementwise.py"]


def _announced(f) -> str:
    """What training says around a first call of `f` (which returns 2)."""
    from nnspec.backend import notice
    out = io.StringIO()
    previous = notice.show_compiles(True, out)
    try:
        with notice.compiling("train"):
            assert f(1) == 2
    finally:
        notice.show_compiles(*previous)
    return out.getvalue()


# ---- housekeeping -------------------------------------------------------------

def test_other_versions_are_pruned_a_day_after_their_last_use(where):
    where.mkdir(mode=0o700)
    old, recent = where / "v0.0.1-numba0.50.0-py39", where / "v0.0.2-numba0.50.0-py39"
    legacy = [where / "step_mlp_train_0123.py", where / "grammar-start.lark.cache"]
    for p in (old, recent):
        p.mkdir()
    for p in legacy:
        p.write_text("")
    day_ago = time.time() - cache.PRUNE_AFTER - 60
    for p in [old] + legacy:
        os.utime(p, (day_ago, day_ago))
    (where / "notes.txt").write_text("")      # not ours to remove
    os.utime(where / "notes.txt", (day_ago, day_ago))
    cache.cache_dir()
    assert not old.exists() and not any(p.exists() for p in legacy)
    assert recent.exists() and (where / "notes.txt").exists()


def test_cache_info_and_clear(where, capsys):
    cache.load("t_info", "X = 1\n")
    (where / "v0.0.1-numba0.50.0-py39").mkdir()
    assert main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(where) in out and f"{cache.version_tag()}: 1 modules" in out
    assert "v0.0.1-numba0.50.0-py39" in out
    assert main(["cache", "clear"]) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert [p.name for p in where.iterdir()] == []


# ---- the compile notice -------------------------------------------------------

def test_training_says_it_compiles_then_that_it_loaded_the_step(where, tmp_path, capsys):
    spec = tmp_path / "tiny.nn"
    spec.write_text(SPEC)
    run = ["train", str(spec), "--out"]
    assert main(run + [str(tmp_path / "run1")]) == 0
    err = capsys.readouterr().err
    d = cache.cache_dir()
    assert f"compiling the training step (first run only; cached in {d}) ..." in err
    assert "compiled the training step in" in err     # not a terminal: no redrawn line
    assert main(run + [str(tmp_path / "run2")]) == 0
    err = capsys.readouterr().err
    assert f"loaded the compiled training step from {d}" in err
    assert "compiling" not in err
    assert main(run + [str(tmp_path / "run3"), "--quiet"]) == 0
    assert "compiled" not in capsys.readouterr().err


def test_on_a_terminal_the_elapsed_time_counts_up(where, monkeypatch):
    from numba.core import event

    from nnspec.backend import notice

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    out = Terminal()
    monkeypatch.setattr(notice, "EVERY", 0.01)
    previous = notice.show_compiles(True, out)
    try:
        with notice.compiling("train"), event.trigger_event("numba:compile"):
            for _ in range(1000):            # until the time was redrawn once
                if "\r" in out.getvalue():
                    break
                time.sleep(0.01)
    finally:
        notice.show_compiles(*previous)
    head = f"compiling the training step (first run only; cached in {cache.cache_dir()}) ..."
    lines = out.getvalue().split("\r")
    assert lines[0] == head and len(lines) >= 3
    assert all(ln.startswith(head + " ") and ln.rstrip("\n").endswith(" s") for ln in lines[1:])
    assert out.getvalue().endswith(" s\n")


def test_two_processes_compile_a_step_once(tmp_path):
    # both train the same spec into a fresh cache at once: one compiles each
    # step while the other waits on its lock, then loads it
    import subprocess
    (tmp_path / "t.nn").write_text(SPEC.replace("tiny_cached", "tiny_locked"))
    env = dict(os.environ, NNSPEC_CACHE=str(tmp_path / "cache"))
    runs = [subprocess.Popen([sys.executable, "-m", "nnspec", "train", str(tmp_path / "t.nn"),
                              "--out", str(tmp_path / f"run{i}")], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in runs]
    assert all(p.returncode == 0 for p in runs), errs
    both = "".join(errs)
    assert both.count("compiled the training step") == 1, both
    assert both.count("loaded the compiled training step") == 1, both


SGD_CALL = r"""
import json, sys, types
import numpy as np
from nnspec.backend import cache, optim
if sys.argv[1] == "guarded":          # as a step module that imports optim does
    step = types.ModuleType("nnspec_gen_step")
    step.optim = optim
    cache._guard(step)
p, g, b = (np.zeros(7, np.float32) for _ in range(3))
hp = np.zeros(8, np.float32)
optim.sgd(p, g, b, hp, np.float32(1), False)
print(json.dumps([sum(optim.sgd.stats.cache_hits.values()),
                  sum(optim.sgd.stats.cache_misses.values())]))
"""


def test_every_process_stamps_the_optimizers_entries_alike(tmp_path):
    """A process that calls the SGD kernel directly (a precompile worker, a
    program run by the NumPy interpreter) and one whose step module imports
    optim load each other's entries: they once stamped them differently and
    compiled the SGD kernels again in every other process."""
    import json
    import subprocess
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    env.pop("NUMBA_DISABLE_JIT", None)

    def run(mode):
        r = subprocess.run([sys.executable, "-c", SGD_CALL, mode], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout.strip().splitlines()[-1])

    assert run("direct") == [0, 1]          # compiled and saved
    assert run("guarded") == [1, 0]         # loaded
    assert run("direct") == [1, 0]
