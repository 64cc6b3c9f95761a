"""Built-in sequence tasks: seeded, deterministic, generated on the fly.

    adding(n, T)            x [n, T, 2] float32 (value in [0, 1], 0/1 marker, exactly
                            two marks), sum [n, 1]: the sum of the two marked values
    copy(n, T, vocab)       src [n, T] int64 tokens in [2, vocab); next [n, T] = src
                            (or src reversed, `reverse=True`); prev [n, T] = START then
                            next shifted right (teacher forcing)
    char_lm(path, T)        x [n, T] int64 char ids, next [n, T] = the following char;
                            vocab from the file; `unigram_bits` its entropy per char
    sines(n, T)             x [n, T, 1] a frequency w (the same at every step),
                            next [n, T, 2] = (sin, cos) of w (t + 1); prev [n, T, 2] =
                            next shifted right behind zeros (the teacher of a Jordan cell)

Each task is a pure function of its arguments and `seed`.  The named sets
registered below with `registry.register` ("adding", "copy", "reverse", "sines") size themselves to
the network's first input (T from its shape when it is fixed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from .registry import register

PAD, START = 0, 1          # reserved tokens of the copy tasks


def adding(n: int, T: int, *, seed: int = 0) -> dict:
    """The adding problem (Hochreiter & Schmidhuber 1997).  One mark falls in
    the first half of the sequence and one in the second (as in the original),
    so the answer depends on values up to T steps back."""
    if T < 2:
        raise DataError(f"adding: needs at least 2 steps, got T={T}")
    rng = np.random.default_rng(seed)
    values = rng.random((n, T))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    marks = np.zeros((n, T))
    rows = np.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = np.stack([values, marks], axis=-1).astype(np.float32)
    total = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
    return {"x": x, "sum": total}


def copy(n: int, T: int, vocab: int = 10, *, reverse: bool = False, seed: int = 0) -> dict:
    """Sequence copy (or reversal): tokens drawn from [2, vocab) (0 = PAD and
    1 = START are reserved).  `prev` is what a decoder reads under teacher
    forcing: START, then the target without its last token."""
    if vocab < 3:
        raise DataError(f"copy: the vocabulary needs at least 3 tokens (PAD, START and "
                        f"one symbol), got {vocab}")
    rng = np.random.default_rng(seed)
    src = rng.integers(2, vocab, size=(n, T)).astype(np.int64)
    nxt = src[:, ::-1].copy() if reverse else src.copy()
    prev = np.concatenate([np.full((n, 1), START, np.int64), nxt[:, :-1]], axis=1)
    return {"src": src, "prev": prev, "next": nxt}


def sines(n: int, T: int, *, low: float = 0.3, high: float = 0.9, seed: int = 0) -> dict:
    """Generate a sinusoid from its frequency alone: the input is w (radians per
    step, uniform in [low, high)) at every step, the target at step t the point
    (sin, cos) of angle w (t + 1) on the unit circle.  The input says nothing
    about time, so a network knows where it is only from what it said last:
    a Jordan cell must rotate its previous output by w.  `prev` is the target
    one step back (zeros at step 0, where a zeros state starts)."""
    if T < 2:
        raise DataError(f"sines: needs at least 2 steps, got T={T}")
    rng = np.random.default_rng(seed)
    w = rng.uniform(low, high, size=(n, 1))
    angle = w * np.arange(1, T + 1)[None, :]
    nxt = np.stack([np.sin(angle), np.cos(angle)], axis=-1).astype(np.float32)
    prev = np.concatenate([np.zeros((n, 1, 2), np.float32), nxt[:, :-1]], axis=1)
    x = np.repeat(w[:, :, None], T, axis=1).astype(np.float32)
    return {"x": x, "prev": prev, "next": nxt}


@dataclass
class CharLM:
    """A text file cut into windows of T characters."""
    x: np.ndarray                      # [n, T] int64
    next: np.ndarray                   # [n, T] int64, x shifted by one character
    chars: list = field(default_factory=list)    # id -> character
    unigram_bits: float = 0.0          # entropy of the file's characters, bits/char

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return np.array([index[c] for c in text], np.int64)
        except KeyError as e:
            raise DataError(f"char_lm: character {e.args[0]!r} is not in the vocabulary") \
                from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def arrays(self) -> dict:
        return {"x": self.x, "next": self.next}


def char_lm(path, T: int, *, stride: int | None = None, text: str | None = None) -> CharLM:
    """Character-level language modelling on a text file (or `text`): the
    vocabulary is the file's sorted set of characters; windows start every
    `stride` characters (default T, not overlapping)."""
    if text is None:
        p = Path(path)
        if not p.exists():
            raise DataError(f"char_lm: no file {p}")
        text = p.read_text(encoding="utf-8")
    stride = stride or T
    if len(text) < T + 1:
        raise DataError(f"char_lm: the text has {len(text)} characters; windows of T={T} "
                        f"need at least {T + 1}")
    chars = sorted(set(text))
    lm = CharLM(np.zeros((0, T), np.int64), np.zeros((0, T), np.int64), chars,
                unigram_bits(text))
    ids = lm.encode(text)
    starts = np.arange(0, len(ids) - T, stride)
    win = starts[:, None] + np.arange(T)[None, :]
    lm.x, lm.next = ids[win], ids[win + 1]
    return lm


def unigram_bits(text: str) -> float:
    """Entropy of the character distribution, in bits per character: what a
    model that ignores context scores at best."""
    _, counts = np.unique(np.frombuffer(text.encode("utf-32-le"), np.uint32),
                          return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


# ---- named sets ---------------------------------------------------------------------

N_EXAMPLES = 10_000


def _steps(net, default: int) -> int:
    """T of the network's first input when it is a fixed size, else `default`."""
    g = getattr(net, "graph", net)
    try:
        shape = g.shape(g.inputs[0])
    except (AttributeError, IndexError, KeyError):
        return default
    return shape[1] if len(shape) > 1 and isinstance(shape[1], int) else default


@register("adding")
def _adding(net=None) -> dict:
    """The adding problem, T from the network's input (default 100), 10,000 examples."""
    d = adding(N_EXAMPLES, _steps(net, 100), seed=0)
    return {"input": d["x"], "target": d["sum"], **d}


@register("copy")
def _copy(net=None) -> dict:
    """Copy 10 tokens over a vocabulary of 10 (T from the network when fixed)."""
    return copy(N_EXAMPLES, _steps(net, 10), seed=0)


@register("sines")
def _sines(net=None) -> dict:
    """Sinusoids from their frequency, 2,000 of 24 steps (T from the network when fixed)."""
    return sines(2_000, _steps(net, 24), seed=0)


@register("reverse")
def _reverse(net=None) -> dict:
    """Reverse 10 tokens over a vocabulary of 10 (T from the network when fixed)."""
    return copy(N_EXAMPLES, _steps(net, 10), reverse=True, seed=0)
