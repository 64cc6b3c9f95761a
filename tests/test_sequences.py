"""Built-in sequence tasks: deterministic with a seed, shaped and typed as
documented, and correct by construction (checked against the definition)."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec.data import DATASETS
from nnspec.data.sequences import START, adding, char_lm, copy, unigram_bits
from nnspec.errors import DataError


def test_adding_shapes_and_target():
    d = adding(50, 12, seed=3)
    x, s = d["x"], d["sum"]
    assert x.shape == (50, 12, 2) and x.dtype == np.float32
    assert s.shape == (50, 1) and s.dtype == np.float32
    assert np.all((x[..., 0] >= 0) & (x[..., 0] <= 1))
    assert np.all(x[..., 1].sum(axis=1) == 2)
    assert set(np.unique(x[..., 1])) == {0.0, 1.0}
    np.testing.assert_allclose(s[:, 0], (x[..., 0] * x[..., 1]).sum(axis=1), rtol=1e-6)
    assert np.all(x[:, :6, 1].sum(axis=1) == 1)       # one mark in each half


def test_tasks_are_deterministic_with_a_seed():
    a, b, c = adding(20, 8, seed=1), adding(20, 8, seed=1), adding(20, 8, seed=2)
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], c["x"])
    p, q = copy(20, 6, seed=5), copy(20, 6, seed=5)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])


@pytest.mark.parametrize("reverse", [False, True])
def test_copy_and_reversal_with_teacher_forcing(reverse):
    d = copy(30, 7, vocab=6, reverse=reverse, seed=0)
    src, prev, nxt = d["src"], d["prev"], d["next"]
    for a in (src, prev, nxt):
        assert a.shape == (30, 7) and a.dtype == np.int64
    assert src.min() >= 2 and src.max() < 6
    np.testing.assert_array_equal(nxt, src[:, ::-1] if reverse else src)
    assert np.all(prev[:, 0] == START)
    np.testing.assert_array_equal(prev[:, 1:], nxt[:, :-1])


def test_char_lm(tmp_path):
    text = "hello world, hello nnspec.\n" * 5
    f = tmp_path / "t.txt"
    f.write_text(text)
    lm = char_lm(f, 8)
    assert lm.chars == sorted(set(text)) and lm.vocab == len(set(text))
    assert lm.x.shape == lm.next.shape and lm.x.shape[1] == 8 and lm.x.dtype == np.int64
    assert lm.x.shape[0] == len(range(0, len(text) - 8, 8))
    assert lm.decode(lm.x[1]) == text[8:16]
    assert lm.decode(lm.next[1]) == text[9:17]
    _, counts = np.unique(list(text), return_counts=True)
    p = counts / counts.sum()
    assert lm.unigram_bits == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert unigram_bits("aaaa") == 0.0 and unigram_bits("ab") == pytest.approx(1.0)
    with pytest.raises(DataError, match="need at least"):
        char_lm(None, 50, text="short")


def test_named_sets_are_registered():
    for name in ("adding", "copy", "reverse"):
        assert name in DATASETS
    d = DATASETS["adding"](None)
    assert d["input"].shape == (10_000, 100, 2) and d["target"].shape == (10_000, 1)
