"""Sequence training as a user meets it: metrics chosen per task, bits per
character, text data and its vocabulary in checkpoints, sampling, and
free-running (greedy, autoregressive) decoding of seq2seq models."""
import json
import math

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.data import load, text_info
from nnspec.data.sequences import START, copy
from nnspec.errors import DataError
from nnspec.ir import Graph
from nnspec.train import fit, load_checkpoint
from nnspec.train.decode import free_running, generate
from nnspec.train.metrics import evaluate, task_of

SPECS = "specs/"
TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 12


@pytest.fixture
def text_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT)
    return f


def small(name, **sets):
    return nnspec.compile(SPECS + name, set=sets or None)


# ---- which metrics --------------------------------------------------------------

def test_metrics_fit_the_task(text_file):
    assert task_of(small("lstm.nn", hidden=4)).kind == "classification"
    reg = task_of(small("lstm_adding.nn", hidden=4, steps=6))
    assert (reg.kind, reg.target, reg.output) == ("regression", "sum", "y")
    s2s = task_of(small("seq2seq.nn", hidden=4, embed=4))
    assert (s2s.kind, s2s.decoder_input, s2s.start, s2s.output) == ("seq2seq", "prev", START,
                                                                      "logits")
    info = text_info(f"text:{text_file}")
    lm = small("char_lstm.nn", hidden=4, embed=4, vocab=len(info["chars"]))
    assert task_of(lm, info=info).kind == "lm"
    assert task_of(lm).kind == "tokens"            # int [B, T] targets without a text
    assert task_of(lm, info=info).metrics == ("token_accuracy", "bpc")


class TableNet:
    """A stand-in whose outputs are fixed arrays indexed by the 'i' input."""

    def __init__(self, out, target_shape, target_dtype, loss_layer):
        g = Graph("table")
        g.input("i", ("B",), dtype="int64")
        g.input("y", ("B",) + target_shape, dtype=target_dtype, kind="target")
        g.add("dense", ("i",), name="out", shape=("B",) + out.shape[1:], dtype="float32")
        g.add("sub", ("out", "y"), name=loss_layer, layer=loss_layer, shape=(), dtype="float32")
        g.outputs["o"] = "out"
        g.meta["train"] = {"loss": loss_layer}
        self.graph, self.out = g, out
        self.inputs, self.targets, self.outputs = {"i": ()}, {"y": target_shape}, ["o"]

    def evaluate_batch(self, xb, yb):
        return 0.0, {"o": self.out[xb["i"]]}


def test_bpc_is_cross_entropy_in_bits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=(7, 5))
    net = TableNet(logits, (5,), "int64", "cross_entropy")
    r = evaluate(net, {"i": np.arange(7), "y": y}, batch=3,
                 task=task_of(net, info={"unigram_bits": 2.0}))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = -np.mean(np.log2(np.take_along_axis(p, y[..., None], -1)))
    assert r["bpc"] == pytest.approx(want, rel=1e-6)
    assert r["token_accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    uniform = TableNet(np.zeros((7, 5, 4), np.float32), (5,), "int64", "cross_entropy")
    r = evaluate(uniform, {"i": np.arange(7), "y": y}, task=task_of(uniform, info={"unigram_bits": 2.0}))
    assert r["bpc"] == pytest.approx(2.0)                  # log2(4): knows nothing


def test_mse_and_the_predict_the_mean_baseline():
    pred = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
    y = np.array([[1.5], [2.0], [2.0], [5.0]], np.float32)
    net = TableNet(pred, (1,), "float32", "mse")
    task = task_of(net, train={"y": np.array([[0.0], [2.0]])})     # training mean 1
    assert task.kind == "regression" and task.output == "o"
    r = evaluate(net, {"i": np.arange(4), "y": y}, task=task)
    assert r["mse"] == pytest.approx(np.mean((pred - y) ** 2))
    assert r["baseline_mse"] == pytest.approx(np.mean((1.0 - y) ** 2))
    assert r["accuracy"] is None


# ---- text data, generation, checkpoints ------------------------------------------

def test_text_data_windows_split_by_position(text_file):
    info = text_info(f"text:{text_file}")
    assert info["chars"] == sorted(set(TEXT))
    net = small("char_lstm.nn", hidden=4, embed=4, vocab=len(info["chars"]))
    train, test = load(f"text:{text_file}", net)
    assert train["x"].shape[1] == 64 and test["next"].shape[1] == 64     # bptt = 64
    chars = info["chars"]
    first = "".join(chars[i] for i in train["x"][0])
    assert first == TEXT[:64]
    assert "".join(chars[i] for i in train["next"][0]) == TEXT[1:65]
    cut = round(len(TEXT) * 0.8)
    assert "".join(chars[i] for i in test["x"][0]) == TEXT[cut:cut + 64]
    with pytest.raises(DataError, match="not in the vocabulary"):
        load(f"text:{text_file}", net, chars=chars[1:])


def test_generation_is_seeded_and_uses_only_the_vocabulary(text_file, monkeypatch):
    # the sampler, on programs the NumPy interpreter runs (the command line
    # generates from a compiled one below)
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")
    chars = text_info(f"text:{text_file}")["chars"]
    net = small("char_lstm.nn", hidden=8, embed=4, vocab=len(chars))
    a = generate(net, chars, "the ", 30, temperature=1.0, seed=3)
    b = generate(net, chars, "the ", 30, temperature=1.0, seed=3)
    c = generate(net, chars, "the ", 30, temperature=1.0, seed=4)
    assert a == b and a != c and len(a) == 30 and set(a) <= set(chars)
    assert generate(net, chars, "the ", 5, temperature=0) == generate(net, chars, "the ", 5,
                                                                      temperature=0, seed=9)
    with pytest.raises(DataError, match="never saw"):
        generate(net, chars, "Z", 3)


def test_checkpoint_keeps_the_vocabulary_and_cli_generates(text_file, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tmp_path)
    spec = str(nnspec_root() / "specs" / "char_lstm.nn")
    assert main(["train", spec, "--data", f"text:{text_file}", "--epochs", "1", "--quiet",
                 "--set", "hidden=8", "--set", "embed=4", "--out", "run"]) == 0
    out = capsys.readouterr().out
    assert "bpc" in out and "unigram" in out
    ck = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert ck["data"]["chars"] == sorted(set(TEXT))
    assert ck["set"]["vocab"] == len(set(TEXT))           # sized to the file
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["task"] == "lm" and m["test_bpc"] > 0
    assert m["unigram_bits"] == pytest.approx(text_info(f"text:{text_file}")["unigram_bits"])

    assert main(["predict", spec, "--checkpoint", "run", "--generate", "25",
                 "--prompt", "the ", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert main(["predict", spec, "--checkpoint", "run", "--generate", "25",
                 "--prompt", "the ", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    assert first.startswith("the ") and len(first.rstrip("\n")) >= 29
    assert main(["eval", spec, "--checkpoint", "run", "--data", f"text:{text_file}"]) == 0
    assert "bpc" in capsys.readouterr().out
    assert main(["compile", spec, "--checkpoint", "run", "-o", "m.nnc"]) == 0   # keeps the vocabulary
    capsys.readouterr()
    assert main(["predict", spec, "--checkpoint", "m.nnc", "--generate", "25",
                 "--prompt", "the ", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first


def nnspec_root():
    from pathlib import Path
    return Path(nnspec.__file__).resolve().parents[1]


# ---- free-running decoding -------------------------------------------------------

class Reverser:
    """A seq2seq stand-in for reversal that reads its decoder input: at step
    t it answers src[T-1-t] only if the decoder input at t is what teacher
    forcing would put there (START, then the true tokens); else token 0.
    With `slip`, example 0 gets step 0 wrong."""

    def __init__(self, vocab, slip=False):
        self.vocab, self.slip = vocab, slip
        self.inputs, self.outputs = {"src": ("T",), "prev": ("T",)}, ["logits"]

    def forward(self, src, prev):
        want = np.concatenate([np.full((len(src), 1), START), src[:, ::-1][:, :-1]], axis=1)
        tok = np.where(prev == want, src[:, ::-1], 0)
        if self.slip:
            tok[0, 0] = (tok[0, 0] + 1) % self.vocab
        return {"logits": np.eye(self.vocab)[tok]}


@pytest.mark.parametrize("slip", [False, True])
def test_free_running_equals_teacher_forcing_only_for_a_perfect_model(slip):
    d = copy(6, 5, vocab=7, reverse=True, seed=0)
    net = Reverser(7, slip)
    teacher = net.forward(d["src"], d["prev"])["logits"].argmax(-1)
    free = free_running(net, {"src": d["src"], "prev": d["prev"]}, "prev", START, "logits",
                        batch=6 if slip else 4)       # the slip is row 0 of every batch
    if not slip:
        np.testing.assert_array_equal(teacher, d["next"])
        np.testing.assert_array_equal(free, teacher)
    else:
        # teacher forcing hides the slip after step 0; free running carries it on
        assert np.sum(teacher != d["next"]) == 1
        assert np.all(free[0, 1:] == 0) and np.all(free[1:] == d["next"][1:])


def test_free_running_on_a_compiled_seq2seq():
    net = small("seq2seq.nn", hidden=8, embed=4)
    d = copy(5, 10, reverse=True, seed=1)
    free = free_running(net, {"src": d["src"], "prev": d["prev"]}, "prev", START, "logits")
    teacher = net.forward(src=d["src"], prev=d["prev"])["logits"].argmax(-1)
    np.testing.assert_array_equal(free[:, 0], teacher[:, 0])     # same START, same step 0
    dec = np.concatenate([np.full((5, 1), START), free[:, :-1]], axis=1)
    again = net.forward(src=d["src"], prev=dec)["logits"].argmax(-1)
    np.testing.assert_array_equal(again, free)                   # a fixed point of its own feed


def test_seq2seq_fit_reports_both_accuracies(monkeypatch):
    # fit's metrics, on programs the NumPy interpreter runs (nothing to
    # compile); the compiled seq2seq runs in test_free_running_on_a_compiled_seq2seq
    # and tests/test_zoo_runs.py
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")
    net = small("seq2seq.nn", hidden=8, embed=4)
    train, test = load("reverse", net)
    r = fit(net, ({k: v[:256] for k, v in train.items()}, {k: v[:64] for k, v in test.items()}),
            epochs=1, progress=False)
    assert r["task"] == "seq2seq"
    for k in ("test_token_accuracy", "test_free_running_accuracy", "train_token_accuracy"):
        assert 0 <= r[k] <= 1
    assert r["test_accuracy"] is None and math.isfinite(r["test_loss"])
