"""nnspec.data: the bundled digits, the split, binding arrays to a network, user files."""
import numpy as np
import pytest

from nnspec import data
from nnspec.errors import DataError
from test_train_fakenet import FakeNet


def test_digits_bundled():
    d = data.DATASETS["digits"]()
    x, y = d["input"], d["target"]
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() == 1.0
    assert y.dtype == np.int64 and sorted(np.unique(y)) == list(range(10))
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_split_is_deterministic_stratified_and_sized():
    net = FakeNet()
    train, test = data.load("digits", net)
    train2, test2 = data.load("digits", net)
    assert len(train["x"]) == 1438 and len(test["x"]) == 359
    assert np.array_equal(test["x"], test2["x"]) and np.array_equal(train["label"], train2["label"])
    # every class is in the test set in proportion (20 % of each, rounded)
    counts = np.bincount(test["label"], minlength=10)
    assert counts.tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    # disjoint and complete
    allx = np.concatenate([train["x"], test["x"]])
    assert len(np.unique(allx, axis=0)) == len(np.unique(data.DATASETS["digits"]()["input"], axis=0))


def test_digits_reshaped_for_a_conv_net():
    train, test = data.load("digits", FakeNet(in_shape=(1, 8, 8)))
    assert train["x"].shape == (1438, 1, 8, 8) and train["x"].dtype == np.float32
    flat, _ = data.load("digits", FakeNet())
    assert np.array_equal(train["x"].reshape(1438, 64), flat["x"])


def test_shape_mismatch_names_array_and_shapes():
    with pytest.raises(DataError) as e:
        data.load("digits", FakeNet(in_shape=(1, 9, 9)))
    msg = str(e.value)
    assert "'x'" in msg and "[B, 1, 9, 9]" in msg and "[1797, 64]" in msg


def test_npz_by_name(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "d.npz"
    np.savez(p, x=rng.random((50, 8, 8)), label=rng.integers(0, 10, 50))
    train, test = data.load(p, FakeNet())
    assert train["x"].shape == (40, 64) and train["x"].dtype == np.float32
    assert train["label"].dtype == np.int64 and len(test["label"]) == 10


def test_npz_missing_array_lists_what_is_there(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, images=np.zeros((5, 64)), label=np.zeros(5, int))
    with pytest.raises(DataError, match=r"no array for the input 'x' \(arrays found: images, label\)"):
        data.load(p, FakeNet())


def test_npz_refuses_pickled_objects(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.array([{"a": 1}] * 3, dtype=object), label=np.zeros(3, int))
    with pytest.raises(DataError, match="Python objects"):
        data.load(p, FakeNet())


def test_mismatched_lengths(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 64)), label=np.zeros(4, int))
    with pytest.raises(DataError, match="'x' has 5, 'label' has 4"):
        data.load(p, FakeNet())


def test_class_out_of_range(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 64)), label=np.array([0, 1, 2, 10, 3]))
    with pytest.raises(DataError, match="holds class 10, but output 'y' has 10 classes"):
        data.load(p, FakeNet())


def test_non_integer_labels(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.zeros((5, 64)), label=np.array([0, 1, 2.5, 1, 3]))
    with pytest.raises(DataError, match="integer class indices"):
        data.load(p, FakeNet())


def _csv(path, header, rows):
    path.write_text("\n".join(([header] if header else []) + rows) + "\n")
    return path


ROWS = [f"{i},{i + 1},{i + 2},{i + 3},{i % 3}" for i in range(10)]


def test_csv_without_header_last_column_is_target(tmp_path):
    p = _csv(tmp_path / "d.csv", None, ROWS)
    train, test = data.load(p, FakeNet(in_shape=(4,), classes=3))
    assert train["x"].shape[1:] == (4,) and len(train["x"]) + len(test["x"]) == 10
    assert set(np.concatenate([train["label"], test["label"]])) == {0, 1, 2}


def test_csv_header_names_the_target_column_wherever_it_is(tmp_path):
    rows = [f"{i % 3},{i},{i + 1},{i + 2},{i + 3}" for i in range(10)]
    p = _csv(tmp_path / "d.csv", "label,a,b,c,d", rows)
    x = data.read(p, FakeNet(in_shape=(4,), classes=3))[0]
    assert x["label"].tolist() == [i % 3 for i in range(10)]     # the first column, by name
    assert x["x"][:, 0].tolist() == list(range(10))               # the rest: the input
    # columns named after the input: those, in index order; other columns left out
    p = _csv(tmp_path / "e.csv", "id,x_1,x_0,target", [f"9,{i + 1},{i},{i % 2}" for i in range(4)])
    x = data.read(p, FakeNet(in_shape=(2,), classes=2))[0]
    assert x["x"].tolist() == [[i, i + 1] for i in range(4)] and x["label"].tolist() == [0, 1, 0, 1]


def test_csv_missing_target_column_is_named(tmp_path):
    p = _csv(tmp_path / "d.csv", "a,b,c,d,cls", ROWS)
    with pytest.raises(DataError, match=r"no column for the target 'label'; the header has a, "
                                        r"b, c, d, cls\. Name the column 'label' \(or 'target'\)"):
        data.load(p, FakeNet(in_shape=(4,), classes=3))
    p = _csv(tmp_path / "e.csv", "a,b,c,d", [r[:r.rindex(",")] for r in ROWS])
    with pytest.raises(DataError, match="no column for the target 'label'"):
        data.load(p, FakeNet(in_shape=(4,), classes=3))
    p = _csv(tmp_path / "f.csv", None, [r[:r.rindex(",")] for r in ROWS])     # no header either
    with pytest.raises(DataError, match=r"4 columns, as many as the input 'x' takes: none is "
                                        r"left for the target 'label'"):
        data.load(p, FakeNet(in_shape=(4,), classes=3))


def test_csv_for_predicting_needs_no_target(tmp_path):
    from nnspec.data.files import read_path
    net = FakeNet(in_shape=(4,), classes=3)
    inputs = [r[:r.rindex(",")] for r in ROWS]
    for header, rows in (("a,b,c,d", inputs), (None, inputs), ("a,b,c,d,label", ROWS)):
        raw = read_path(_csv(tmp_path / "p.csv", header, rows), net=net, targets=False)
        x = data.bind(raw, net, "p.csv", require_targets=False)
        assert list(x) == ["x"] and x["x"][:, 0].tolist() == list(range(10))


def test_directory_with_given_split(tmp_path):
    np.savez(tmp_path / "train.npz", x=np.zeros((7, 64)), label=np.zeros(7, int))
    np.savez(tmp_path / "test.npz", x=np.ones((3, 64)), label=np.ones(3, int))
    train, test = data.load(tmp_path, FakeNet())
    assert len(train["x"]) == 7 and len(test["x"]) == 3 and test["x"].min() == 1


def test_unknown_name_suggests():
    with pytest.raises(DataError, match="did you mean 'digits'"):
        data.load("digit", FakeNet())


def test_default_text_is_the_packaged_corpus():
    # one corpus whatever the install: the file inside the package, never the docs
    from importlib.resources import files
    from nnspec.data.text import read_text, text_path
    packaged = files("nnspec.data") / "nnspec.txt"
    assert text_path("text") == packaged and text_path("text:") == packaged
    assert data.text_info("text")["file"] == str(packaged)
    assert read_text("text") == packaged.read_text(encoding="utf-8")
    assert len(read_text("text")) > 20_000        # enough for a character model's windows
