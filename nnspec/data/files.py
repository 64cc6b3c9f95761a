"""Reading user data files.

* ``.npz``: arrays named like the spec's inputs and targets (``x``,
  ``label``, ...).  A network with one input and one target also accepts the
  generic names ``input`` and ``target``.  Read with ``allow_pickle=False``:
  an array of Python objects is refused, never unpickled.
* ``.csv``: one example per row, numbers only, an optional header row.  The
  last column is the target and the others the input, unless
  ``target_column`` says otherwise (an index, negative from the end).  Only
  for networks with one input and one target.
* a directory holding ``train.npz`` and ``test.npz`` (or ``.csv``): the
  split is taken as given instead of made by the loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

SUFFIXES = (".npz", ".csv")


def read_path(path, target_column: int = -1):
    """A dict of arrays, or ``(train, test)`` for a directory."""
    p = Path(path)
    if p.is_dir():
        parts = []
        for split in ("train", "test"):
            found = [p / f"{split}{s}" for s in SUFFIXES if (p / f"{split}{s}").is_file()]
            if not found:
                raise DataError(f"data directory '{p}' has no {split}.npz or {split}.csv")
            parts.append(read_file(found[0], target_column))
        return tuple(parts)
    if not p.exists():
        raise DataError(f"data file '{p}' does not exist")
    return read_file(p, target_column)


def read_file(p: Path, target_column: int = -1) -> dict:
    if p.suffix == ".npz":
        return read_npz(p)
    if p.suffix == ".csv":
        return read_csv(p, target_column)
    raise DataError(f"cannot read '{p}': data files are .npz or .csv "
                    f"(or a named data set such as 'digits')")


def read_npz(p: Path) -> dict:
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e):
            raise DataError(f"'{p}' holds an array of Python objects; nnspec reads "
                            f"numeric arrays only (saved with np.savez)") from None
        raise DataError(f"cannot read '{p}': {e}") from None
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read '{p}' as .npz: {e}") from None


def read_csv(p: Path, target_column: int = -1) -> dict:
    with open(p, encoding="utf-8") as f:
        first = f.readline()
    skip = 0 if _numeric_row(first) else 1          # a header row
    try:
        a = np.loadtxt(p, delimiter=",", skiprows=skip, ndmin=2, dtype=np.float64)
    except ValueError as e:
        raise DataError(f"cannot read '{p}': {e}") from None
    if a.shape[1] < 2:
        raise DataError(f"'{p}' has {a.shape[1]} column; a .csv needs input columns "
                        f"and a target column")
    t = target_column % a.shape[1]
    x = np.delete(a, t, axis=1)
    y = a[:, t]
    return {"input": x, "target": y}


def _numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.strip().split(",")]
        return True
    except ValueError:
        return False
