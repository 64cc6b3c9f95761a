"""Faults from outside: hand-made `.nnc` files and checkpoints, killed and
concurrent runs, signals, divergence, running out of memory, data with NaN,
and the permissions of what training writes.  A file that is not what it
claims gives one line through the command line (exit 1), never a traceback,
an 'internal error' or an allocation the file asks for."""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.errors import TrainingError
from nnspec.train import save
from nnspec.train.bundle import META
from nnspec.train.checkpoint import load_checkpoint, save_checkpoint

MLP = str(Path(__file__).resolve().parent.parent / "specs" / "mlp.nn")


# ---- hand-made containers ------------------------------------------------------------

def members(path) -> dict:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, parts: dict) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, b in parts.items():
            z.writestr(n, b)
    return path


def npy(a) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array(f, np.asarray(a), allow_pickle=True)
    return f.getvalue()


def doc_of(parts) -> dict:
    return json.loads(str(np.lib.format.read_array(io.BytesIO(parts[META + ".npy"]))[()]))


def with_doc(parts, change) -> dict:
    doc = doc_of(parts)
    change(doc["tree"])
    return {**parts, META + ".npy": npy(np.array(json.dumps(doc)))}


def array_key(parts, name) -> str:
    """The zip member holding the weight `name` of a model or checkpoint."""
    tree = doc_of(parts)["tree"]
    weights = tree.get("weights") or tree["model"]
    return weights[name]["__array__"] + ".npy"


def lying_header(raw: bytes, shape) -> bytes:
    """An .npy member whose header claims `shape` over the original data."""
    f = io.BytesIO(raw)
    np.lib.format.read_magic(f)
    _, _, dtype = np.lib.format.read_array_header_1_0(f)
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": shape})
    return out.getvalue() + raw[f.tell():]


def deflate_bomb(path, parts, gib: float) -> Path:
    """`parts` with one more array, referenced from the tree's `data`, whose zip
    entry says it inflates to `gib` GiB: what a reader sees of a deflate bomb
    (its data is never read, so it need not be there)."""
    n = int(gib * 2**30) // 4
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        head, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
    parts = with_doc(parts, lambda t: t.update(data={"bomb": {"__array__": "bomb"}}))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, b in parts.items():
            z.writestr(name, b)
        info = zipfile.ZipInfo("bomb.npy")
        with z.open(info, "w", force_zip64=True) as f:
            f.write(head.getvalue() + bytes(4096))
        info.file_size = len(head.getvalue()) + 4 * n     # the central directory's claim
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A valid .nnc and checkpoint of the MLP with 8 hidden units (nothing compiled)."""
    d = tmp_path_factory.mktemp("small")
    net = nnspec.compile(MLP, set={"hidden": 8})
    save(net, d / "mlp.nnc", MLP, overrides={"hidden": 8})
    save_checkpoint(d / "checkpoint.npz", net, epoch=1, step=45, rng=np.random.default_rng(0),
                    history=[{"epoch": 1, "step": 45, "train_loss": 1.0, "seconds": 1.0}],
                    config={})
    return d


def nnc_case(case, d, good):
    parts = members(good)
    w = array_key(parts, "dense_1.weight")
    shape = np.lib.format.read_array(io.BytesIO(parts[w])).shape
    bad = d / f"{case}.nnc"
    if case == "text":
        bad.write_bytes(b"weights\n")
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    elif case == "no-meta":
        write_zip(bad, {k: v for k, v in parts.items() if not k.startswith(META)})
    elif case == "meta-not-json":
        write_zip(bad, {**parts, META + ".npy": npy(np.array("{'kind': nnspec"))})
    elif case == "meta-deep":
        write_zip(bad, {**parts, META + ".npy": npy(np.array("[" * 100_000 + "]" * 100_000))})
    elif case == "tree-deep":       # deep, within json's nesting limit even in a deep test stack
        write_zip(bad, with_doc(parts, lambda t: t.update(set=json.loads("[" * 400 + "]" * 400))))
    elif case == "meta-list":
        write_zip(bad, {**parts, META + ".npy": npy(np.array("[1, 2]"))})
    elif case == "meta-bytes":
        write_zip(bad, {**parts, META + ".npy": npy(np.arange(3))})
    elif case == "set-not-table":
        write_zip(bad, with_doc(parts, lambda t: t.update(set=[1, 2])))
    elif case == "sources-missing":
        write_zip(bad, with_doc(parts, lambda t: t.pop("sources")))
    elif case == "weights-not-arrays":
        write_zip(bad, with_doc(parts, lambda t: t["weights"].update({"dense_1.weight": 3})))
    elif case == "seed-text":
        write_zip(bad, with_doc(parts, lambda t: t.update(seed="zero")))
    elif case == "array-missing":
        write_zip(bad, {k: v for k, v in parts.items() if k != w})
    elif case == "header-3.6TiB":
        write_zip(bad, {**parts, w: lying_header(parts[w], (1_000_000, 1_000_000))})
    elif case == "header-short":
        write_zip(bad, {**parts, w: lying_header(parts[w], shape + (2,))})
    elif case == "object-dtype":
        write_zip(bad, {**parts, w: npy(np.array([object()] * 4, dtype=object))})
    elif case == "nan-weights":
        write_zip(bad, {**parts, w: npy(np.full(shape, np.nan, np.float32))})
    elif case == "int-weights":
        write_zip(bad, {**parts, w: npy(np.zeros(shape, np.int64))})
    elif case == "text-weights":
        write_zip(bad, {**parts, w: npy(np.full(shape, "w"))})
    elif case == "complex-weights":
        write_zip(bad, {**parts, w: npy(np.zeros(shape, np.complex64))})
    elif case == "hidden-1e7":
        write_zip(bad, with_doc(parts, lambda t: t.update(set={"hidden": 10**7})))
    elif case == "version-9":
        write_zip(bad, with_doc(parts, lambda t: t.update(version=9)))
    elif case == "dtype-float16":
        write_zip(bad, with_doc(parts, lambda t: t.update(dtype="float16")))
    elif case == "deflate-bomb":
        deflate_bomb(bad, parts, 6)
    else:
        raise AssertionError(case)
    return bad


NNC_CASES = {   # case -> what the message says
    "text": "not an nnspec", "truncated": "not an nnspec", "no-meta": "no __nnspec__",
    "meta-not-json": "not JSON", "meta-deep": "not JSON nnspec reads",
    "tree-deep": "nested too deeply|not JSON nnspec reads|'set' must be a table",
    "meta-list": "no kind and tree",
    "meta-bytes": "is not a string", "set-not-table": "'set' must be a table",
    "sources-missing": "'sources' is missing", "weights-not-arrays": "'weights' must be",
    "seed-text": "'seed' must be a whole number", "array-missing": "is missing",
    "header-3.6TiB": "3,600,000,000,000 bytes|4,000.0 GB|4.0 TB",
    "header-short": "declares [8, 8, 2]",
    "object-dtype": "dtype object", "nan-weights": "NaN", "int-weights": "int64 values",
    "text-weights": "dtype <U1", "complex-weights": "dtype complex64",
    "hidden-1e7": "hidden=10000000", "version-9": "version 9",
    "dtype-float16": "'dtype' must be 'float32' or 'float64'",
    "deflate-bomb": "6.4 GB",   # more than the network holds, or than is available
}


def one_line_error(capsys, argv, match: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "internal error" not in err
    assert len(err.splitlines()) == 1, err
    assert any(m in err for m in match.split("|")), err
    return err


@pytest.mark.parametrize("case", NNC_CASES)
def test_malformed_nnc_is_one_clear_line(case, small, tmp_path, capsys):
    bad = nnc_case(case, tmp_path, small / "mlp.nnc")
    one_line_error(capsys, ["eval", MLP, "--checkpoint", str(bad)], NNC_CASES[case])
    with pytest.raises(TrainingError):
        nnspec.load(bad)


def ck_case(case, d, good):
    parts = members(good)
    bad = d / f"{case}.npz"
    changes = {
        "negative-epoch": lambda t: t.update(epoch=-5),
        "negative-step": lambda t: t.update(step=-1),
        "epoch-text": lambda t: t.update(epoch="3"),
        "bool-step": lambda t: t.update(step=True),
        "version-2": lambda t: t.update(version=2),
        "no-version": lambda t: t.pop("version"),
        "model-missing": lambda t: t.pop("model"),
        "history-not-list": lambda t: t.update(history={"epoch": 1}),
        "history-text-loss": lambda t: t["history"][0].update(train_loss="low"),
        "optimizer-nameless": lambda t: t["optimizer"].pop("name"),
        "rng-list": lambda t: t.update(rng=[1, 2]),
        "tree-is-number": lambda t: t.clear(),
    }
    if case == "text":
        bad.write_bytes(b"epoch 3\n")
    elif case == "tree-is-number":
        doc = doc_of(parts)
        doc["tree"] = 7
        write_zip(bad, {**parts, META + ".npy": npy(np.array(json.dumps(doc)))})
    elif case == "nan-momentum":
        key = doc_of(parts)["tree"]["optimizer"]["slots"]["exp_avg"]["dense_1.weight"]
        write_zip(bad, {**parts, key["__array__"] + ".npy":
                        npy(np.full((8, 8), np.inf, np.float32))})
    else:
        write_zip(bad, with_doc(parts, changes[case]))
    return bad


CK_CASES = {
    "text": "not an nnspec checkpoint", "negative-epoch": "'epoch' must be a whole number >= 0",
    "negative-step": "'step' must be", "epoch-text": "'epoch' must be", "bool-step": "'step'",
    "version-2": "version 2 checkpoint", "no-version": "'version' is missing",
    "model-missing": "'model' is missing", "history-not-list": "'history' must be",
    "history-text-loss": "'history' must be",
    "optimizer-nameless": "(optimizer): 'name' is missing", "rng-list": "'rng' must be a table",
    "tree-is-number": "not a table",
}


@pytest.mark.parametrize("case", CK_CASES)
def test_malformed_checkpoint_is_one_clear_line(case, small, tmp_path, capsys):
    bad = ck_case(case, tmp_path, small / "checkpoint.npz")
    one_line_error(capsys, ["eval", MLP, "--checkpoint", str(bad)], CK_CASES[case])


def test_numpy_scalars_in_a_history_are_numbers(tmp_path):
    net = nnspec.compile(MLP, set={"hidden": 8})
    record = {"epoch": 1, "train_loss": np.float64(0.5), "test_accuracy": np.float32(0.9),
              "seconds": np.float64(1.0), "test_loss": None}
    save_checkpoint(tmp_path / "ck.npz", net, epoch=1, step=1, rng=np.random.default_rng(),
                    history=[record], config={})
    assert load_checkpoint(tmp_path / "ck.npz", net)["history"][0]["test_accuracy"] == \
        np.float32(0.9)


def test_checkpoint_that_is_not_one_does_not_mention_pickles(tmp_path, capsys):
    (tmp_path / "checkpoint.npz").write_text("12345678")
    err = one_line_error(capsys, ["eval", MLP, "--checkpoint", str(tmp_path)],
                         "not an nnspec checkpoint")
    assert "pickle" not in err


def test_resume_refuses_bad_optimizer_state_and_rng(small, tmp_path):
    from nnspec.train import fit
    from nnspec.train.checkpoint import restore
    net = nnspec.compile(MLP, set={"hidden": 8})
    run = tmp_path / "run"
    run.mkdir()
    write_zip(run / "checkpoint.npz", members(ck_case("nan-momentum", tmp_path,
                                                       small / "checkpoint.npz")))
    (run / ".nnspec-run").write_text("")
    with pytest.raises(TrainingError, match="optimizer state 'slots exp_avg dense_1.weight'"):
        fit(net, "digits", out_dir=run, resume=True, progress=False)
    ck = load_checkpoint(small / "checkpoint.npz", net)
    ck["rng"] = {"bit_generator": "MT19937", "state": "no"}
    with pytest.raises(TrainingError, match="shuffling state is not valid"):
        restore(net, ck, "ck")


# ---- the run directory: one run at a time, no leftovers, the umask ---------------------

def fake_fit(out, **kw):
    from nnspec.train import fit
    from test_train_fakenet import FakeNet
    return fit(kw.pop("net", None) or FakeNet(), "digits", epochs=kw.pop("epochs", 1),
               out_dir=out, progress=False, **kw)


def test_a_run_directory_in_use_is_refused(tmp_path):
    from nnspec.train.rundir import RunDir
    held = RunDir(tmp_path / "run")
    held.claim()
    with pytest.raises(TrainingError, match=f"is in use by pid {os.getpid()}"):
        fake_fit(tmp_path / "run")
    held.release()
    fake_fit(tmp_path / "run")
    fake_fit(tmp_path / "run", resume=True, epochs=2)     # each run let the directory go


def test_a_dead_runs_lock_is_no_obstacle(tmp_path):
    (tmp_path / ".nnspec-lock").write_text("999999999\n")
    fake_fit(tmp_path)
    assert (tmp_path / ".nnspec-lock").read_text() == f"{os.getpid()}\n"


def test_a_killed_writes_temporary_files_are_removed(tmp_path):
    fake_fit(tmp_path)
    left = [tmp_path / ".checkpoint.npz.k1ll3d.tmp", tmp_path / ".metrics.json.x.tmp"]
    for f in left:
        f.write_bytes(b"PK half")
    (tmp_path / "mine.tmp").write_text("not ours")
    fake_fit(tmp_path, resume=True, epochs=2)
    assert load_checkpoint(tmp_path / "checkpoint.npz")["epoch"] == 2
    assert not any(f.exists() for f in left) and (tmp_path / "mine.tmp").exists()


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(umask, tmp_path):
    before = os.umask(umask)
    try:
        fake_fit(tmp_path / "run")
        save(nnspec.compile(MLP, set={"hidden": 8}), tmp_path / "m.nnc", MLP)
    finally:
        os.umask(before)
    for f in ("run/checkpoint.npz", "run/metrics.json", "run/curves.png", "m.nnc"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~umask, f


# ---- divergence ------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")     # the stand-in's inf
def test_a_blow_up_on_an_epochs_last_step_is_not_checkpointed(tmp_path):
    from test_train_fakenet import FakeNet

    class BlowsUp(FakeNet):     # the loss is finite, the update it makes is not
        def train_step(self, inputs, targets, lr):
            loss = super().train_step(inputs, targets, lr)
            if self.steps == 2 * 45:            # the last step of epoch 2
                self.params["fc.weight"][0, 0] = np.inf
                self.velocity["fc.bias"][:] = np.nan
            return loss

    with pytest.raises(TrainingError) as e:
        fake_fit(tmp_path, net=BlowsUp(), epochs=3)
    msg = str(e.value)
    assert "diverged in epoch 2" in msg and "fc.weight" in msg and "velocity fc.bias" in msg
    assert "keeps epoch 1" in msg
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    assert ck["epoch"] == 1 and np.isfinite(ck["model"]["fc.weight"]).all()


def test_save_checkpoint_refuses_non_finite_state(tmp_path):
    net = nnspec.compile(MLP, set={"hidden": 8})
    net.params["dense.bias"][0] = np.nan
    with pytest.raises(TrainingError, match="not writing .* 'model dense.bias'"):
        save_checkpoint(tmp_path / "ck.npz", net, epoch=1, step=1, rng=np.random.default_rng(),
                        history=[], config={})
    assert not list(tmp_path.iterdir())


def test_a_loss_that_rises_by_orders_of_magnitude_is_warned_about(tmp_path, capsys):
    from test_train_fakenet import FakeNet

    class Explodes(FakeNet):    # finite, but from epoch 3 on 1e9 times larger
        def train_step(self, inputs, targets, lr):
            loss = super().train_step(inputs, targets, lr)
            return loss * (1e9 if self.steps > 2 * 45 else 1)

    r = fake_fit(tmp_path, net=Explodes(), epochs=4)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "in epoch 3" in err and "diverging" in err
    assert "in epoch 3" in r["history"][2]["warning"]
    fake_fit(tmp_path / "calm", epochs=3)
    assert "warning" not in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")     # the stand-in's NaN
def test_nan_in_the_data_names_the_examples_not_the_learning_rate(tmp_path):
    from nnspec import data
    from nnspec.train import fit
    from test_train_fakenet import FakeNet
    net = FakeNet()
    train, test = data.load("digits", net)
    train = {**train, "x": train["x"].copy()}
    train["x"][[17, 1000], 3] = np.nan
    with pytest.raises(TrainingError) as e:
        fit(net, (train, test), epochs=1, batch=2000, progress=False)
    msg = str(e.value)
    assert "'x' of training examples 17, 1000" in msg and "learning rate" not in msg


# ---- memory ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlp8():
    """The MLP with 8 hidden units, its training step compiled (shared)."""
    net = nnspec.compile(MLP, set={"hidden": 8})
    net._train = net._program("train")
    return net


def test_out_of_memory_says_what_fits(mlp8, monkeypatch):
    from nnspec import memory
    from nnspec.backend.cpu import CompiledStep
    from nnspec.train import fit

    def no_memory(self, batch, steps=1):
        raise MemoryError
    monkeypatch.setattr(CompiledStep, "arenas", no_memory)
    monkeypatch.setattr(memory, "available_bytes", lambda: memory.step_bytes(mlp8, 10) + 1)
    with pytest.raises(TrainingError) as e:
        fit(mlp8, "digits", epochs=1, batch=32, progress=False)
    need = memory.fmt_bytes(memory.step_bytes(mlp8, 32))
    assert f"needs {need} for batch 32" in str(e.value) and "try --batch 8" in str(e.value)


# ---- signals ---------------------------------------------------------------------------

def nnspec_child(tmp_path, code: str, argv: list, timeout=600):
    """Run `nnspec ARGV` in a child process after `code` (which sets up a signal)."""
    import subprocess
    import sys
    # as from a terminal: a shell's background job starts with SIGINT ignored,
    # which Python keeps (and so must nnspec)
    script = ("import os, signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
              + code
              + f"\nfrom nnspec.cli import main\nsys.exit(main({argv!r}))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(MLP).parents[1])})


@pytest.mark.parametrize("sig, rc, said", [("SIGINT", 130, "interrupted"),
                                           ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_command_line_imports(sig, rc, said, tmp_path):
    hook = f"""
class Hook:     # the signal arrives while build_parser imports the training commands
    def find_spec(self, name, path=None, target=None):
        if name == "nnspec.train.commands":
            os.kill(os.getpid(), signal.{sig})
        return None
sys.meta_path.insert(0, Hook())
"""
    r = nnspec_child(tmp_path, hook, ["train", MLP, "--set", "hidden=8"])
    assert r.returncode == rc and r.stderr.strip() == said, r.stderr


def test_sigterm_in_training_stops_with_a_valid_checkpoint(tmp_path, mlp8):
    kill = """
import nnspec.train.loop as loop
lr_at = loop.lr_at
def lr_at_then_term(schedule, lr, step, *rest):     # a few steps into epoch 2
    if step == 50:
        os.kill(os.getpid(), signal.SIGTERM)
    return lr_at(schedule, lr, step, *rest)
loop.lr_at = lr_at_then_term
"""
    r = nnspec_child(tmp_path, kill, ["train", MLP, "--set", "hidden=8", "--epochs", "3",
                                      "--out", "run", "--quiet"])
    assert r.returncode == 143, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().endswith("terminated")
    assert "stopped in epoch 2; run/checkpoint.npz holds epoch 1" in r.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz", mlp8)["epoch"] == 1
    assert not list((tmp_path / "run").glob(".*.tmp"))
