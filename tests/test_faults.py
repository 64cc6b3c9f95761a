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
from nnspec.train.checkpoint import save_checkpoint

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
    "meta-not-json": "not JSON", "meta-list": "no kind and tree",
    "meta-bytes": "is not a string", "set-not-table": "'set' must be a table",
    "sources-missing": "'sources' is missing", "weights-not-arrays": "'weights' must be",
    "seed-text": "'seed' must be a whole number", "array-missing": "is missing",
    "header-3.6TiB": "3,600,000,000,000 bytes|4,000.0 GB|4.0 TB",
    "header-short": "declares [8, 8, 2]",
    "object-dtype": "dtype object", "nan-weights": "NaN", "int-weights": "int64 values",
    "text-weights": "dtype <U1", "complex-weights": "dtype complex64",
    "hidden-1e7": "hidden=10000000", "version-9": "version 9",
    "dtype-float16": "'dtype' must be 'float32' or 'float64'",
    "deflate-bomb": "hold 6.4 GB",
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
    "optimizer-nameless": "(optimizer): 'name' is missing", "rng-list": "'rng' must be a table",
    "tree-is-number": "not a table",
}


@pytest.mark.parametrize("case", CK_CASES)
def test_malformed_checkpoint_is_one_clear_line(case, small, tmp_path, capsys):
    bad = ck_case(case, tmp_path, small / "checkpoint.npz")
    one_line_error(capsys, ["eval", MLP, "--checkpoint", str(bad)], CK_CASES[case])


def test_checkpoint_that_is_not_one_does_not_mention_pickles(tmp_path, capsys):
    (tmp_path / "checkpoint.npz").write_text("12345678")
    err = one_line_error(capsys, ["eval", MLP, "--checkpoint", str(tmp_path)],
                         "not an nnspec checkpoint")
    assert "pickle" not in err


def test_resume_refuses_bad_optimizer_state_and_rng(small, tmp_path):
    from nnspec.train import fit
    from nnspec.train.checkpoint import load_checkpoint, restore
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
