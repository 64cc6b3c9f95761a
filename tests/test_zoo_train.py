"""The zoo trains: every spec has a train section whose default data is
bundled and fits it (`digits(size=..., channels=...)`, `shapes`, `tones`), so
`nnspec train specs/X.nn` needs no other argument.

A few epochs of every spec run from the command line on a few examples of its
default data: by default one spec of each task (classification, segmentation,
next sample), with NNSPEC_SLOW=1 all of them; NNSPEC_SLOW=1 also trains every
spec with no argument at all and checks the README's zoo table."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.cli import main as cli
from nnspec.data import DATASETS, is_text, load, read
from nnspec.data.images import resize
from nnspec.data.registry import parse
from nnspec.data.waves import mu_law, mu_law_inverse
from nnspec.errors import DataError, SpecError
from nnspec.train.commands import training_args

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
ZOO = sorted(SPECS.glob("*.nn"))
SLOW = os.environ.get("NNSPEC_SLOW") == "1"
# classification (the MLP, which README's first command trains too) and next
# sample (WaveNet), about 40 s each with a cold cache on two cores; U-Net's
# segmentation, LeNet-5 and the ImageNet networks take 40 s to minutes each,
# so they run with NNSPEC_SLOW=1 (every spec's forward and training step runs
# in tests/test_zoo_runs.py; segmentation's data and scores are tested below)
FAST = {"mlp.nn", "wavenet.nn"}


def lowered(tmp_path, text: str):
    p = tmp_path / "net.nn"
    p.write_text(text)
    return nnspec.lower(p)


NET = """network m(classes = 3, size = 4, width = 2) {
    input x: [1, size, size]
    output logits = x -> flatten -> dense(width) -> dense(classes)
}
"""


# ---- the train section's data options and args -------------------------------------

def test_data_call_is_the_data_sets_text_with_its_options(tmp_path):
    g = lowered(tmp_path, NET + """train {
    target label: int
    loss = cross_entropy(logits, label)
    data = digits(size = 2 * size, channels = 3, limit = 100)
    args = m(width = 5)
}""")
    assert g.meta["train"]["data"] == "digits(size=8, channels=3, limit=100)"
    assert g.meta["train"]["args"] == {"width": 5}


@pytest.mark.parametrize("setting, message", [
    ("data = digits(8)", "data takes a name with keyword options"),
    ("args = other(width = 5)", "args names this file's network, 'm'"),
    ("args = 5", "args names the network's arguments for training"),
])
def test_data_and_args_errors(tmp_path, setting, message):
    with pytest.raises(SpecError, match=re.escape(message)):
        lowered(tmp_path, NET + "train {\n    target label: int\n    loss = cross_entropy("
                "logits, label)\n    " + setting + "\n}")


def test_data_options_parse_and_are_checked():
    assert parse("digits(size=32, channels=3)") == ("digits", {"size": 32, "channels": 3})
    assert parse("digits") == ("digits", {})
    assert parse("my(1).npz") == ("my(1).npz", {})          # a file, not a set
    with pytest.raises(DataError, match="no option 'sise'.*did you mean 'size'"):
        parse("digits(sise=32)")
    with pytest.raises(DataError, match="should be a whole number >= 1"):
        read("digits(size=0)")


def test_training_args_come_from_args_then_data_unless_set(tmp_path):
    g = lowered(tmp_path, NET + """train {
    target label: int
    loss = cross_entropy(logits, label)
    data = digits(size = 8)
    args = m(width = 5)
}""")
    data = g.meta["train"]["data"]
    assert training_args(g, data, {}) == {"width": 5, "size": 8, "classes": 10}
    assert training_args(g, data, {"size": 16}) == {"width": 5, "classes": 10}
    assert training_args(g, "mine.npz", {}) == {"width": 5}     # --data: only args


# ---- the bundled sets --------------------------------------------------------------

def test_resize_is_bilinear_with_pixel_centres_aligned():
    x = np.array([[[0.0, 1.0], [2.0, 3.0]]])
    y = resize(x, 4)
    # output centre j sits at (j + 0.5) / 2 - 0.5 in the input: -0.25 (edge), 0.25, 0.75, 1.25
    np.testing.assert_allclose(y[0, 0], [0, 0.25, 0.75, 1], atol=1e-6)
    np.testing.assert_allclose(y[0, :, 0], [0, 0.5, 1.5, 2], atol=1e-6)
    np.testing.assert_allclose(resize(x, 2), x, atol=1e-6)


def test_digits_resized_and_repeated_into_channels():
    plain, _ = read("digits")
    big, _ = read("digits(size=16, channels=3, limit=50)")
    assert big["input"].shape == (50, 3, 16, 16) and big["input"].dtype == np.float32
    np.testing.assert_array_equal(big["target"], plain["target"][:50])
    np.testing.assert_array_equal(big["input"][:, 0], big["input"][:, 2])
    # the mean brightness survives the resize
    np.testing.assert_allclose(big["input"][:, 0].mean(axis=(1, 2)),
                               plain["input"][:50].mean(axis=1), atol=0.02)


def test_shapes_are_seeded_and_masks_mark_the_brighter_pixels():
    a, _ = read("shapes(size=40, limit=6)")
    b, _ = read("shapes(size=40, limit=3)")
    np.testing.assert_array_equal(a["input"][:3], b["input"])     # the first of more
    x, mask = a["input"][:, 0], a["target"]
    assert x.shape == mask.shape == (6, 40, 40) and set(np.unique(mask)) == {0, 1}
    assert x[mask == 1].mean() > x[mask == 0].mean() + 0.4


def test_tones_are_mu_law_levels_of_the_next_sample():
    d, _ = read("tones(length=64, limit=3)")
    x, nxt = d["input"], d["target"]
    assert x.shape == (3, 256, 64) and nxt.shape == (3, 64)
    np.testing.assert_array_equal(x.sum(axis=1), 1)          # one-hot
    np.testing.assert_array_equal(x.argmax(axis=1)[:, 1:], nxt[:, :-1])
    v = np.linspace(-1, 1, 101)
    assert np.abs(mu_law_inverse(mu_law(v)) - v).max() < 0.05
    assert mu_law(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


# ---- scores of channels-first outputs (U-Net, WaveNet) ---------------------------------

class MapNet:
    """A stand-in network whose output for example i is scores[i]: channels
    first, [B, C, ...], for int targets [B, ...]."""

    def __init__(self, scores: np.ndarray):
        from nnspec.ir import Graph
        g = Graph("map")
        g.input("x", ("B", 1))
        shape = scores.shape[2:]
        g.input("y", ("B",) + shape, dtype="int64", kind="target")
        g.add("dense", ("x",), name="fc", layer="fc", shape=("B",) + scores.shape[1:],
              dtype="float32")
        g.outputs["logits"] = "fc"
        self.graph, self.scores = g, scores
        self.inputs, self.targets, self.outputs = {"x": ("B", 1)}, {"y": ("B",) + shape}, ["logits"]

    def evaluate_batch(self, x, y):
        return 0.5, {"logits": self.scores[x["x"][:, 0].astype(int)]}


def score(scores, y):
    from nnspec.train.metrics import evaluate, task_of
    net = MapNet(np.asarray(scores, np.float64))
    data = {"x": np.arange(len(y), dtype=np.float32)[:, None], "y": np.asarray(y)}
    return task_of(net), evaluate(net, data)


def test_segmentation_is_scored_by_pixel_accuracy_and_foreground_iou():
    y = np.array([[[0, 1, 1], [1, 1, 0], [0, 0, 0]]])        # one 3x3 mask
    pred = np.array([[[1, 1, 0], [0, 1, 0], [0, 0, 0]]])     # right at 6 of 9 pixels
    scores = np.stack([1 - pred, pred], axis=1)              # [1, C=2, 3, 3], classes first
    task, r = score(scores, y)
    assert (task.kind, task.axis) == ("segmentation", 1)
    assert r["pixel_accuracy"] == pytest.approx(6 / 9)
    assert r["iou"] == pytest.approx(2 / 5)                  # both: 2 pixels; either: 5


def test_samples_are_scored_in_bits_per_sample():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 4, 5))               # [B, C=4, T=5]
    y = rng.integers(0, 4, (3, 5))
    task, r = score(scores, y)
    assert task.kind == "samples"
    logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    nll = -np.take_along_axis(logp, y[:, None], axis=1).mean()
    assert r["bits_per_sample"] == pytest.approx(nll / np.log(2))
    assert r["token_accuracy"] == pytest.approx(np.mean(scores.argmax(axis=1) == y))


# ---- every spec trains on bundled data ------------------------------------------------

def default_data(path: Path) -> str:
    return nnspec.lower(path).meta["train"]["data"]


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.name)
def test_every_spec_trains_on_bundled_data(path):
    g = nnspec.lower(path)
    assert g.meta.get("train"), f"{path.name} has no train section"
    data = g.meta["train"]["data"]
    assert is_text(data) or parse(data)[0] in DATASETS, f"{path.name}: data {data!r}"


def test_shapes_masks_are_cropped_to_the_network_output():
    class UNetLike:                   # an unpadded network: 40 in, 8 out
        targets = {"mask": ("B", 8, 8)}
    whole, _ = read("shapes(size=40, limit=2)")
    crop, _ = read("shapes(size=40, limit=2)", UNetLike())
    np.testing.assert_array_equal(crop["target"], whole["target"][:, 16:24, 16:24])
    assert crop["input"].shape == (2, 1, 40, 40)


def few(data: str, n: int) -> str:
    """The spec's data with only its first n examples."""
    name, opts = parse(data)
    if name not in ("digits", "shapes", "tones"):
        return data
    opts["limit"] = n
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.skipif(
    p.name not in FAST and not SLOW, reason="compiles for minutes: NNSPEC_SLOW=1"))
    for p in ZOO], ids=lambda p: p.name)
def test_spec_trains_a_few_steps_from_the_command_line(path, tmp_path):
    out = tmp_path / "run"
    args = ["train", str(path), "--epochs", "3", "--out", str(out), "--quiet"]
    data = default_data(path)
    if few(data, 40) != data:
        args += ["--data", few(data, 40)]
    assert cli(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    losses = [h["train_loss"] for h in m["history"]]
    # a few steps of an ImageNet recipe may swing (ResNet-50: 4.24, 4.11, 4.42),
    # but the loss falls below its first epoch's
    assert len(losses) == 3 and min(losses[1:]) < losses[0], losses
    assert m["test_loss"] is not None and np.isfinite(m["test_loss"])
    if m["task"] == "samples":          # WaveNet writes a waveform of its own
        import wave
        with wave.open(str(out / "generated.wav")) as w:
            assert w.getnframes() == 512        # an example's length: tones(length = 512)


# ---- NNSPEC_SLOW=1: the README's table -------------------------------------------------

def readme_zoo() -> dict:
    """spec -> (metric name, value) from the README's zoo table, or None for a
    row not measured yet."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        row = re.match(r"\| `(\w+\.nn)` \| [\d,]+ \|", line)
        if row:
            m = re.search(r"\| ([a-z ]+?) \*\*([\d.]+)(%?)\*\*", line)
            rows[row.group(1)] = m and (m.group(1), float(m.group(2)) / (100 if m.group(3) else 1))
    return rows


METRIC = {"accuracy": "test_accuracy", "pixel accuracy": "test_pixel_accuracy",
          "bits per sample": "test_bits_per_sample"}


def test_readme_lists_the_zoo_with_its_default_data():
    rows = readme_zoo()
    for name in ("lenet5.nn", "alexnet.nn", "zfnet.nn", "vgg16.nn", "googlenet.nn",
                 "inception_v3.nn", "resnet18.nn", "resnet50.nn", "densenet121.nn",
                 "xception.nn", "unet.nn", "wavenet.nn"):
        assert name in rows, f"README's zoo table has no row for {name}"
        assert rows[name] is None or rows[name][0] in METRIC, rows[name]
    line = next(x for x in (ROOT / "README.md").read_text().splitlines()
                if x.startswith("| `resnet18.nn` |"))
    assert "11,689,512" in line and "`digits(size = 32, channels = 3, limit = 512)`" in line


@pytest.mark.skipif(not SLOW, reason="trains every zoo network for minutes: NNSPEC_SLOW=1")
@pytest.mark.parametrize("name", sorted(k for k, v in readme_zoo().items() if v))
def test_default_training_reaches_the_readme_metric(name, tmp_path):
    metric, value = readme_zoo()[name]
    out = tmp_path / "run"
    assert cli(["train", str(SPECS / name), "--out", str(out), "--quiet"]) == 0
    got = json.loads((out / "metrics.json").read_text())[METRIC[metric]]
    tolerance = 0.1 if metric == "bits per sample" else 0.05
    assert abs(got - value) <= tolerance * max(1.0, value), (metric, got, value)
