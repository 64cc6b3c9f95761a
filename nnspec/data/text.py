"""Character-level language modelling on a text file: ``data = "text:PATH"``
(or ``--data text:PATH``), or ``data = text`` for the default text.

    train, test = nnspec.data.load("text:notes.txt", net)
    info = text_info("text:notes.txt")      # {"chars": [...], "unigram_bits": 4.3}

The vocabulary is the file's sorted set of characters (or the `chars` a
checkpoint stored, so a trained model reads a file the same way).  Windows
are T characters long: T is the network input's length when fixed, else the
train section's ``bptt``, else 64.  The split is by position, so no test
character was ever seen in training: the first 80 % of the text gives the
training windows (starting every T/2 characters), the last 20 % the test
windows (every T characters, not overlapping).

The default text (``data = text``) is nnspec.txt, shipped beside this module:
a copy of docs/language.md as of this release, read the same way from a
source checkout, an editable install or a wheel.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError
from .sequences import CharLM, unigram_bits

PREFIX = "text:"
DEFAULT_T = 64
TEST_FRACTION = 0.2
DEFAULT_TEXT = Path(__file__).parent / "nnspec.txt"


def is_text(name) -> bool:
    name = str(name)
    return name == "text" or name.startswith(PREFIX)


def text_path(name) -> Path:
    """The file a ``text`` / ``text:PATH`` data name reads."""
    name = str(name)
    if name == "text" or name == PREFIX:
        return DEFAULT_TEXT
    return Path(name[len(PREFIX):]).expanduser()


@lru_cache(maxsize=4)
def _read(path: Path, mtime: float) -> str:      # mtime: a changed file is read again
    return path.read_text(encoding="utf-8")


def read_text(name) -> str:
    p = text_path(name)
    if not p.is_file():
        raise DataError(f"text data: no file '{p}' (give --data text:PATH with a text file)")
    try:
        return _read(p, p.stat().st_mtime)
    except UnicodeDecodeError as e:
        raise DataError(f"text data: '{p}' is not UTF-8 text ({e.reason} at byte {e.start})") \
            from None


def text_info(name, chars=None) -> dict:
    """What metrics and checkpoints keep of a text: its vocabulary and unigram entropy."""
    text = read_text(name)
    return {"chars": list(chars) if chars is not None else sorted(set(text)),
            "unigram_bits": unigram_bits(text), "file": str(text_path(name))}


def window(net=None) -> int:
    """T: the network input's length when fixed, else the train section's bptt, else 64."""
    g = getattr(net, "graph", net)
    if g is None:
        return DEFAULT_T
    shape = g.shape(g.inputs[0]) if g.inputs else ()
    if len(shape) > 1 and isinstance(shape[1], int):
        return shape[1]
    return int((g.meta.get("train") or {}).get("bptt") or DEFAULT_T)


def text_task(name, net=None, chars=None) -> tuple[dict, dict]:
    """``(train, test)`` windows of the text, arrays ``input`` [n, T] and
    ``target`` [n, T] (the input shifted by one character)."""
    text = read_text(name)
    info = text_info(name, chars)
    lm = CharLM(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64), info["chars"],
                info["unigram_bits"])
    ids = lm.encode(text)
    T = window(net)
    cut = int(round(len(ids) * (1 - TEST_FRACTION)))
    parts = []
    for part, stride in ((ids[:cut], max(1, T // 2)), (ids[cut:], T)):
        if len(part) < T + 1:
            raise DataError(f"text data: '{text_path(name)}' has {len(ids)} characters; "
                            f"windows of T={T} need at least {int((T + 1) / TEST_FRACTION)} "
                            f"(or a smaller bptt)")
        win = np.arange(0, len(part) - T, stride)[:, None] + np.arange(T)[None, :]
        parts.append({"input": part[win], "target": part[win + 1]})
    return parts[0], parts[1]
