"""Reading user data files.

* ``.npz``: arrays named like the spec's inputs and targets (``x``,
  ``label``, ...).  A network with one input and one target also accepts the
  generic names ``input`` and ``target``.  Read with ``allow_pickle=False``:
  an array of Python objects is refused, never unpickled.
* ``.csv``: one example per row, numbers only.  With a header row (a first
  row that is not all numbers) columns are taken by name: a column named
  like a target (``label``) is that target; an array over several columns
  has them named ``x_0, x_1, ...`` (or ``x0, x1, ...``), in that order; with
  one input and one target, the generic names ``input`` / ``target`` serve
  too, and when no column is named for the input, every column that is not
  the target is.  Without a header the last column is the target and the
  others the input (``target_column`` moves it), for networks with one input
  and one target.  Either way a file read for predicting may leave out the
  targets.
* a directory holding ``train.npz`` and ``test.npz`` (or ``.csv``): the
  split is taken as given instead of made by the loader.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import DataError
from .bind import per_example

SUFFIXES = (".npz", ".csv")


def read_path(path, target_column: int = -1, net=None, targets: bool = True):
    """A dict of arrays, or ``(train, test)`` for a directory.  `net` names a
    .csv file's columns; `targets` False reads inputs only (predicting)."""
    p = Path(path)
    if p.is_dir():
        parts = []
        for split in ("train", "test"):
            found = [p / f"{split}{s}" for s in SUFFIXES if (p / f"{split}{s}").is_file()]
            if not found:
                raise DataError(f"data directory '{p}' has no {split}.npz or {split}.csv")
            parts.append(read_file(found[0], target_column, net, targets))
        return tuple(parts)
    if not p.exists():
        raise DataError(f"data file '{p}' does not exist")
    return read_file(p, target_column, net, targets)


def read_file(p: Path, target_column: int = -1, net=None, targets: bool = True) -> dict:
    if p.suffix == ".npz":
        return read_npz(p)
    if p.suffix == ".csv":
        return read_csv(p, target_column, net, targets)
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


def read_csv(p: Path, target_column: int = -1, net=None, targets: bool = True) -> dict:
    with open(p, encoding="utf-8") as f:
        first = f.readline()
    header = None if _numeric_row(first) else [c.strip() for c in first.split(",")]
    try:
        a = np.loadtxt(p, delimiter=",", skiprows=int(header is not None), ndmin=2,
                       dtype=np.float64)
    except ValueError as e:
        raise DataError(f"cannot read '{p}': {e}") from None
    if header is not None and len(header) != a.shape[1]:
        raise DataError(f"'{p}': the header names {len(header)} columns, the rows hold "
                        f"{a.shape[1]}")
    if header is not None and net is not None:
        return _by_name(a, header, p, net, targets)
    return _by_position(a, p, target_column, net, targets)


def _by_position(a, p: Path, target_column: int, net, targets: bool) -> dict:
    """No header: the target is the last column (or `target_column`)."""
    inputs = getattr(net, "inputs", {})
    if len(inputs) == 1:
        name, shape = next(iter(inputs.items()))
        shape = per_example(shape)
        if all(isinstance(d, int) for d in shape) and math.prod(shape) == a.shape[1]:
            if not targets:
                return {"input": a}       # inputs only, as wide as the network's input
            target = next(iter(getattr(net, "targets", {})), "target")
            raise DataError(f"'{p}' has {a.shape[1]} columns, as many as the input '{name}' "
                            f"takes: none is left for the target '{target}' (without a header, "
                            f"the last column); add it, or a header naming the columns")
    if a.shape[1] < 2:
        raise DataError(f"'{p}' has {a.shape[1]} column; a .csv needs input columns "
                        f"and a target column")
    t = target_column % a.shape[1]
    return {"input": np.delete(a, t, axis=1), "target": a[:, t]}


def _by_name(a, header: list, p: Path, net, targets: bool) -> dict:
    """Columns named for the network's targets and inputs (see the module's doc)."""
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise DataError(f"'{p}': the header names column {dup[0]!r} twice")
    out, used = {}, set()
    optional = () if targets else (*net.targets, *getattr(net, "teacher_only", ()))
    for kind, names in (("target", net.targets), ("input", net.inputs)):
        for name in names:
            one = len(names) == 1
            idx = _columns(header, name) or (_columns(header, kind) if one else [])
            if not idx and kind == "input" and one:
                idx = [i for i in range(len(header)) if i not in used]
            used.update(idx)
            if kind == "target" and not targets:
                continue              # predicting: a target's columns are left out
            if not idx:
                if name in optional:
                    continue
                also = f" (or '{kind}')" if one else ""
                raise DataError(f"'{p}': no column for the {kind} '{name}'; the header "
                                f"has {', '.join(header)}. Name the column '{name}'{also}, "
                                f"or columns '{name}_0', '{name}_1', ... for several")
            single = len(idx) == 1 and header[idx[0]] in (name, kind)
            out[name] = a[:, idx[0]] if single else a[:, idx]
    return out


def _columns(header: list, name: str) -> list:
    """The column of `name`, or those of ``name_0, name_1, ...`` (``name0``, ...)
    in index order."""
    if name in header:
        return [header.index(name)]
    found = {}
    for i, c in enumerate(header):
        k = c[len(name):].lstrip("_") if c.startswith(name) else ""
        if k.isdigit():
            found[int(k)] = i
    return [found[k] for k in sorted(found)]


def _numeric_row(line: str) -> bool:
    try:
        [float(v) for v in line.strip().split(",")]
        return True
    except ValueError:
        return False
