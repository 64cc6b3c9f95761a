"""`nnspec train | eval | predict | compile` and `.nnc` files, with the NumPy
stand-in network behind `nnspec.compile` (the plumbing, not the backend)."""
import json

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.errors import TrainingError
from nnspec.train import load, save
from test_train_fakenet import FakeNet

BLOCKS = """\
block mlp2(h)(x) {
    return x -> dense(h) -> relu -> dense(10)
}
"""
SPEC = """\
import "lib/blocks.nn"
network tiny(h = 32) {
    input x: [64]
    output y = x -> mlp2(h)
}
"""


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.nn").write_text(BLOCKS)
    (tmp_path / "tiny.nn").write_text(SPEC)

    def fake_compile(spec, *, dtype="float32", set=None, seed=0):
        net = FakeNet(seed=seed)
        train = net.graph.meta["train"]
        net.graph = nnspec.lower(spec, set=set, dtype=dtype)
        net.graph.meta["train"] = train
        net.graph.add("dense", ("x",), name="fc", shape=("B", 10), dtype="float32")
        net.graph.input("label", ("B",), dtype="int64", kind="target")
        net.graph.outputs = {"y": "fc"}
        return net

    monkeypatch.setattr(nnspec, "compile", fake_compile)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "tiny.nn"


def test_nnc_round_trip_with_imports(spec, tmp_path):
    net = nnspec.compile(spec, set={"h": 16}, seed=3)
    net.params["fc.bias"][:] = np.arange(10)
    save(net, tmp_path / "m.nnc", spec, overrides={"h": 16}, seed=3)
    (tmp_path / "lib" / "blocks.nn").unlink()            # the file carries its imports
    back = load(tmp_path / "m.nnc")
    assert back.graph.meta["args"] == {"h": 16}
    for k, v in net.state_dict().items():
        assert np.array_equal(back.state_dict()[k], v)
    with np.load(tmp_path / "m.nnc", allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


def test_nnc_refuses_to_overwrite_other_files(spec, tmp_path):
    (tmp_path / "m.nnc").write_text("not ours")
    with pytest.raises(TrainingError, match="not overwriting"):
        save(nnspec.compile(spec), tmp_path / "m.nnc", spec)
    assert (tmp_path / "m.nnc").read_text() == "not ours"


def test_cli_train_eval_predict_compile(spec, tmp_path, capsys):
    assert main(["train", str(spec), "--epochs", "2", "--quiet", "--set", "h=8"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "runs/tiny/checkpoint.npz" in out
    m = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["test_accuracy"] > 0.85

    assert main(["train", str(spec), "--epochs", "3", "--quiet", "--resume"]) == 0
    assert json.loads((tmp_path / "runs/tiny/metrics.json").read_text())["epochs"] == 3
    capsys.readouterr()

    assert main(["eval", str(spec), "--checkpoint", "runs/tiny"]) == 0
    line = capsys.readouterr().out
    assert "test accuracy" in line and "(359 examples)" in line

    x = nnspec.data.DATASETS["digits"]()["input"][:5]
    np.savez(tmp_path / "x.npz", x=x)
    assert main(["predict", str(spec), "--checkpoint", "runs/tiny/checkpoint.npz",
                 "--input", "x.npz", "--output", "p.npz"]) == 0
    classes = [int(c) for c in capsys.readouterr().out.split()]
    assert classes == [0, 1, 2, 3, 4]                 # the first five digits
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        assert f["classes"].tolist() == classes and f["y"].shape == (5, 10)

    assert main(["compile", str(spec), "-o", "tiny.nnc", "--checkpoint", "runs/tiny"]) == 0
    assert "wrote tiny.nnc" in capsys.readouterr().out
    assert main(["eval", str(spec), "--checkpoint", "tiny.nnc"]) == 0
    assert line == capsys.readouterr().out             # same weights, same score


def test_cli_errors_are_messages(spec, capsys):
    assert main(["eval", str(spec), "--checkpoint", "nowhere.npz"]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err
    assert main(["train", str(spec), "--data", "digts", "--quiet"]) == 1
    assert "did you mean 'digits'" in capsys.readouterr().err


def test_eval_rebuilds_with_the_checkpoints_set_values(spec, tmp_path, capsys):
    assert main(["train", str(spec), "--epochs", "1", "--quiet", "--set", "h=8"]) == 0
    capsys.readouterr()
    assert main(["eval", str(spec), "--checkpoint", "runs/tiny"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["compile", str(spec), "-o", "t.nnc", "--checkpoint", "runs/tiny"]) == 0
    assert load(tmp_path / "t.nnc").graph.meta["args"]["h"] == 8
