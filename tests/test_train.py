"""nnspec.train with a NumPy stand-in network: the loop, schedules, checkpoints,
resume, divergence, metrics and the safety of what it writes."""
import json
import math
import os

import numpy as np
import pytest

from nnspec.errors import TrainingError
from nnspec.train import TrainConfig, fit, load_checkpoint, lr_at
from nnspec.train.bundle import read_bundle, write_bundle
from test_train_fakenet import FakeNet


def test_config_from_meta_and_overrides():
    meta = {"loss": "loss", "optimizer": {"name": "adam", "lr": 0.01, "weight_decay": 1e-4},
            "schedule": {"name": "cosine"}, "batch": 128, "epochs": 5, "clip": 1.0,
            "data": "digits", "seed": 3}
    cfg = TrainConfig.from_meta(meta, epochs=7, lr=None)
    assert TrainConfig.from_meta({"optimizer": "adam"}, schedule="step").schedule == {"name": "step"}
    assert (cfg.optimizer, cfg.lr, cfg.hyper) == ("adam", 0.01, {"weight_decay": 1e-4})
    assert (cfg.epochs, cfg.batch, cfg.clip, cfg.seed) == (7, 128, 1.0, 3)
    assert cfg.schedule == {"name": "cosine"}
    assert TrainConfig.from_meta(None).lr == 0.1


def test_step_schedule():
    s = {"name": "step", "every": 2, "gamma": 0.5}
    assert [lr_at(s, 1.0, k * 10, 10, 60) for k in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    m = {"name": "step", "milestones": [1, 3], "gamma": 0.1}
    assert [lr_at(m, 1.0, e * 4, 4, 20) for e in range(5)] == pytest.approx([1, .1, .1, .01, .01])


def test_cosine_schedule():
    s = {"name": "cosine", "min_lr": 0.1}
    vals = [lr_at(s, 1.0, k, 10, 101) for k in range(101)]
    assert vals[0] == 1.0 and vals[50] == pytest.approx(0.55) and vals[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    w = {"name": "cosine", "warmup": 4}
    assert [lr_at(w, 1.0, k, 10, 100) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_unknown_schedule():
    with pytest.raises(TrainingError, match="did you mean 'cosine'"):
        lr_at({"name": "cosin"}, 1.0, 0, 1, 1)


def test_fit_learns_digits_and_writes_run_dir(tmp_path):
    net = FakeNet()
    out = tmp_path / "run"
    r = fit(net, "digits", epochs=4, out_dir=out, progress=False)
    assert r["test_accuracy"] > 0.9
    m = json.loads((out / "metrics.json").read_text())
    assert {"test_accuracy", "test_loss", "history", "train_loss", "epochs"} <= set(m)
    assert m["test_accuracy"] == r["test_accuracy"] and len(m["history"]) == 4
    assert m["examples"] == {"train": 1438, "test": 359}
    assert m["history"][-1]["step"] == 4 * math.ceil(1438 / 32)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ck = load_checkpoint(out / "checkpoint.npz")
    assert ck["epoch"] == 4 and np.array_equal(ck["model"]["fc.weight"], net.params["fc.weight"])
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


def _train_data(net):
    from nnspec import data
    return data.load("digits", net)


def test_batch_sizes_full_and_single(tmp_path):
    net = FakeNet()
    train, test = _train_data(net)
    small = ({k: v[:40] for k, v in train.items()}, test)
    r = fit(net, small, epochs=2, batch=10_000, progress=False)
    assert r["steps"] == 2                       # full batch: one step per epoch
    r = fit(FakeNet(), small, epochs=1, batch=1, progress=False)
    assert r["steps"] == 40                      # SGD: one step per example


def test_resume_is_bit_identical(tmp_path):
    whole = FakeNet()
    fit(whole, "digits", epochs=4, seed=5, out_dir=tmp_path / "a", progress=False)

    part = FakeNet()
    fit(part, "digits", epochs=2, seed=5, out_dir=tmp_path / "b", progress=False)
    resumed = FakeNet(seed=99)                   # different init: everything must come from the file
    r = fit(resumed, "digits", epochs=4, seed=5, out_dir=tmp_path / "b", resume=True,
            progress=False)
    for k in whole.params:
        assert np.array_equal(whole.params[k], resumed.params[k]), k
    assert np.array_equal(whole.state["fc.seen"], resumed.state["fc.seen"])
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in a] == [h["train_loss"] for h in r["history"]]


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match="does not exist"):
        fit(FakeNet(), "digits", epochs=1, out_dir=tmp_path, resume=True, progress=False)


def test_nan_stops_with_step_and_layer(tmp_path):
    net = FakeNet(nan_at_step=7)
    with pytest.raises(TrainingError) as e:
        fit(net, "digits", epochs=2, out_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "step 7 (epoch 1)" in msg and "layer fc" in msg and "nan" in msg


def test_does_not_overwrite_user_files(tmp_path):
    (tmp_path / "metrics.json").write_text("mine")
    with pytest.raises(TrainingError, match="not overwriting"):
        fit(FakeNet(), "digits", epochs=1, out_dir=tmp_path, progress=False)
    assert (tmp_path / "metrics.json").read_text() == "mine"


def test_atomic_write_keeps_old_file_when_refused(tmp_path):
    p = tmp_path / "ck.npz"
    write_bundle(p, "nnspec-checkpoint", {"w": np.arange(3)})
    before = p.read_bytes()
    bad = {"w": np.arange(3), "x": np.array([object()], dtype=object)}
    with pytest.raises(TypeError):
        write_bundle(p, "nnspec-checkpoint", bad)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_atomic_write_failure_midway(tmp_path, monkeypatch):
    p = tmp_path / "ck.npz"
    calls = []

    def failing_savez(f, **arrays):
        f.write(b"PK partial")
        calls.append(1)
        raise OSError("no space left on device")

    write_bundle(p, "nnspec-checkpoint", {"w": np.arange(3)})
    before = p.read_bytes()
    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError):
        write_bundle(p, "nnspec-checkpoint", {"w": np.arange(4)})
    assert calls and os.listdir(tmp_path) == ["ck.npz"] and p.read_bytes() == before


def test_bundle_round_trip_is_exact_and_pickle_free(tmp_path):
    p = tmp_path / "b.npz"
    tree = {"a": np.float32(1.1), "nested": {"m": [np.ones((2, 2)), 3, "s", None]},
            "rng": np.random.default_rng(1).bit_generator.state}
    write_bundle(p, "k", tree)
    kind, back = read_bundle(p)
    assert kind == "k" and back["a"].dtype == np.float32 and back["a"] == np.float32(1.1)
    assert back["nested"]["m"][1:] == [3, "s", None] and back["rng"] == tree["rng"]
    with np.load(p, allow_pickle=False) as f:       # readable without pickle
        assert all(f[k].dtype != object for k in f.files)


def test_progress_bar_on_a_terminal_only():
    import io
    from nnspec.train.progress import Bar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Bar(stream=stream)
        bar.update(1, 3, 5, 5, 0.25, 1234.0)
        bar.close()
    assert "\r" in tty.getvalue() and "loss 0.2500" in tty.getvalue() and "1,234 ex/s" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_resume_with_other_settings_says_so(tmp_path, capsys):
    fit(FakeNet(), "digits", epochs=1, batch=32, out_dir=tmp_path, progress=False)
    fit(FakeNet(), "digits", epochs=2, batch=64, out_dir=tmp_path, resume=True, progress=True)
    err = capsys.readouterr().err
    assert "resuming" in err and "batch 32 -> 64" in err
