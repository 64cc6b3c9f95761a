"""`nnspec train | eval | predict | compile` and `.nnc` files, with the NumPy
stand-in network behind `nnspec.compile` (the plumbing, not the backend)."""
import json

import numpy as np
import pytest

import nnspec
from nnspec.cli import main
from nnspec.errors import SpecError, TrainingError
from nnspec.train import fit, load, save
from nnspec.train.inference import score
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
train {
    target label: int
    loss = cross_entropy(y, label)
    optimizer = sgd(lr = 0.5, momentum = 0.9)
    batch = 32
    epochs = 3
}
"""


@pytest.fixture
def spec(tmp_path, monkeypatch):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "blocks.nn").write_text(BLOCKS)
    (tmp_path / "tiny.nn").write_text(SPEC)

    def fake_compile(spec, *, dtype="float32", set=None, seed=0, **lib):
        net = FakeNet(seed=seed)
        train = net.graph.meta["train"]
        net.graph = nnspec.lower(spec, set=set, dtype=dtype, **lib)
        net.graph.meta["train"] = train
        net.graph.add("dense", ("x",), name="fc", shape=("B", 10), dtype="float32")
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


@pytest.mark.filterwarnings("error")             # the same graph: no "lowers differently"
def test_a_loaded_model_saves_again_without_its_spec_files(spec, tmp_path, monkeypatch):
    save(nnspec.compile(spec, set={"h": 16}), tmp_path / "m.nnc", spec, overrides={"h": 16})
    (tmp_path / "lib" / "blocks.nn").unlink()
    back = load(tmp_path / "m.nnc")
    monkeypatch.chdir(tmp_path / "lib")           # nothing to import from here
    save(back, tmp_path / "again.nnc")
    again = load(tmp_path / "again.nnc")
    assert again.graph.hash() == back.graph.hash() and again.graph.meta["args"] == {"h": 16}


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


@pytest.mark.parametrize("argv", [
    ["train", "tiny.nn", "--epochs", "0"], ["train", "tiny.nn", "--epochs", "-1"],
    ["train", "tiny.nn", "--epochs", "2.5"], ["train", "tiny.nn", "--batch", "0"],
    ["train", "tiny.nn", "--lr", "-0.1"], ["train", "tiny.nn", "--lr", "nan"],
    ["train", "tiny.nn", "--seed", "-1"], ["train", "tiny.nn", "--teacher-forcing", "1.5"],
    ["predict", "tiny.nn", "--checkpoint", "run", "--generate", "0"],
    ["predict", "tiny.nn", "--checkpoint", "run", "--generate", "-5"],
    ["predict", "tiny.nn", "--checkpoint", "run", "--temperature", "-1"],
    ["compile", "tiny.nn", "-o", "t.nnc", "--seed", "x"],
])
def test_numeric_options_are_checked(spec, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    out, err = capsys.readouterr()
    option = next(a for a in argv if a.startswith("--") and a != "--checkpoint")
    assert f"argument {option}: should be" in err and "wrote" not in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "t.nnc").exists()


def test_train_section_numbers_are_checked_where_they_are_set(spec, capsys):
    spec.write_text(SPEC.replace("batch = 32", "batch = 0"))
    assert main(["train", str(spec), "--quiet"]) == 1
    err = capsys.readouterr().err
    line = SPEC.splitlines().index("    batch = 32") + 1
    assert f"tiny.nn:{line}:13: error: train setting batch should be a whole number >= 1, " \
           f"got 0" in err
    spec.write_text(SPEC.replace("lr = 0.5", "lr = -0.5"))
    assert main(["train", str(spec), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "error: train setting lr should be a number > 0, got -0.5" in err
    assert "optimizer = sgd(lr = -0.5" in err                    # the line, with a caret


@pytest.mark.parametrize("kwargs", [{"epochs": -1}, {"epochs": 0}, {"batch": 0},
                                    {"lr": -0.1}, {"seed": -3}, {"clip": -1.0}])
def test_fit_arguments_are_checked(kwargs):
    with pytest.raises(TrainingError, match="should be"):
        fit(FakeNet(), "digits", progress=False, **kwargs)


def test_train_without_a_train_section_is_a_located_error(spec, tmp_path, capsys):
    spec.write_text(SPEC.split("train {")[0])
    assert main(["train", str(spec)]) == 1
    out, err = capsys.readouterr()
    assert "tiny.nn:2:9: error: network 'tiny' has no train section" in err
    assert "hint: add a `train { ... }` section" in err and "docs/language.md" in err
    assert "internal error" not in err and "epochs" not in err and out == ""
    assert not (tmp_path / "runs").exists()
    net = FakeNet()
    del net.graph.meta["train"]
    with pytest.raises(SpecError, match="no train section"):
        fit(net, "digits", progress=False)
    with pytest.raises(SpecError, match="no train section"):     # eval / net.evaluate
        score(net, "digits")


def test_a_nnc_model_is_a_spec_for_eval_and_predict(spec, tmp_path, capsys):
    assert main(["train", str(spec), "--epochs", "1", "--quiet", "--set", "h=8"]) == 0
    assert main(["compile", str(spec), "-o", "tiny.nnc", "--checkpoint", "runs/tiny"]) == 0
    assert main(["eval", str(spec), "--checkpoint", "runs/tiny"]) == 0
    capsys.readouterr()
    assert main(["eval", "tiny.nnc"]) == 0                  # spec and weights in one file
    by_model = capsys.readouterr().out
    assert main(["eval", str(spec), "--checkpoint", "tiny.nnc"]) == 0
    assert by_model == capsys.readouterr().out and "test accuracy" in by_model
    assert main(["eval", "tiny.nnc", "--checkpoint", "runs/tiny"]) == 0
    assert by_model == capsys.readouterr().out

    np.savez(tmp_path / "x.npz", x=nnspec.data.DATASETS["digits"]()["input"][:3])
    assert main(["predict", "tiny.nnc", "--input", "x.npz"]) == 0
    assert len(capsys.readouterr().out.split()) == 3

    assert main(["eval", "tiny.nnc", "--set", "h=4"]) == 1
    assert "its --set values and dtype are fixed" in capsys.readouterr().err
    assert main(["eval", "x.npz"]) == 1
    assert "cannot read x.npz" in capsys.readouterr().err     # the frontend's message
    (tmp_path / "x.nnc").write_text("network")
    assert main(["predict", "x.nnc", "--input", "x.npz"]) == 1
    assert "cannot read x.nnc: not a .nnc model" in capsys.readouterr().err
    assert main(["eval", "gone.nnc"]) == 1
    assert "cannot read gone.nnc: no such file" in capsys.readouterr().err
    assert main(["eval", str(spec)]) == 1
    assert "eval needs --checkpoint F" in capsys.readouterr().err
    for cmd in (["train", "tiny.nnc"], ["compile", "tiny.nnc", "-o", "b.nnc"]):
        assert main(cmd) == 1
        assert "compiled .nnc model" in capsys.readouterr().err


def test_predict_refuses_non_finite_inputs_unless_allowed(spec, tmp_path, capsys):
    assert main(["train", str(spec), "--epochs", "1", "--quiet"]) == 0
    x = nnspec.data.DATASETS["digits"]()["input"][:4].copy()
    x[1, 5] = np.nan
    x[3, 0] = np.inf
    np.savez(tmp_path / "x.npz", x=x)
    capsys.readouterr()
    assert main(["predict", str(spec), "--checkpoint", "runs/tiny", "--input", "x.npz"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "2 of 4 rows hold NaN or infinite inputs (rows 1, 3" in err
    assert "--allow-nonfinite" in err
    assert main(["predict", str(spec), "--checkpoint", "runs/tiny", "--input", "x.npz",
                 "--allow-nonfinite"]) == 0
    out, err = capsys.readouterr()
    classes = [int(c) for c in out.split()]
    assert classes[1] == classes[3] == -1 and classes[0] == 0 and classes[2] >= 0
    assert "warning: x.npz: 2 of 4 rows" in err
