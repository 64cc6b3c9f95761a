"""One safe file format for checkpoints, `.nnc` models and prediction output:
an `.npz` (a zip of `.npy` arrays) plus one JSON string.

    write_bundle(path, "nnspec-checkpoint", {"epoch": 3, "opt": {...arrays...}})
    kind, tree = read_bundle(path)

Any nesting of dicts, lists, numbers, strings and NumPy arrays goes in: the
arrays are stored as npy members and the rest as JSON with
``{"__array__": key}`` where an array was.  Reading uses
``allow_pickle=False`` and `json`, so opening a file never runs code from it.
Writes are atomic: a temporary file in the same directory, fsync, then
`os.replace`, so a crash leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..errors import NNSpecError

META = "__nnspec__"     # the npz member holding the JSON
ARRAY = "__array__"


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file, then move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bundle(path, kind: str, tree) -> None:
    arrays: dict[str, np.ndarray] = {}

    def encode(v):
        if isinstance(v, (np.ndarray, np.generic)):
            key = f"a{len(arrays)}"
            arrays[key] = np.asarray(v)
            return {ARRAY: key}
        if isinstance(v, dict):
            return {str(k): encode(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [encode(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        raise TypeError(f"cannot store a {type(v).__name__} in an nnspec file")

    doc = json.dumps({"kind": kind, "tree": encode(tree)})
    for a in arrays.values():
        if a.dtype.hasobject:
            raise TypeError("cannot store an array of Python objects in an nnspec file")
    atomic_write(path, lambda f: np.savez(f, **{META: np.array(doc)}, **arrays))


def read_bundle(path, kind: str | None = None, error=NNSpecError):
    """``(kind, tree)``; raises `error` if the file is not an nnspec bundle (of `kind`)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"'{path}' does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            if META not in f.files:
                raise error(f"'{path}' is not an nnspec file")
            doc = json.loads(str(f[META][()]))
            arrays = {k: f[k] for k in f.files if k != META}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise error(f"cannot read '{path}': {e}") from None
    if kind is not None and doc.get("kind") != kind:
        raise error(f"'{path}' is a {doc.get('kind')} file, not a {kind} file")

    def decode(v):
        if isinstance(v, dict):
            if set(v) == {ARRAY}:
                return arrays[v[ARRAY]]
            return {k: decode(x) for k, x in v.items()}
        if isinstance(v, list):
            return [decode(x) for x in v]
        return v

    return doc["kind"], decode(doc["tree"])


def bundle_kind(path) -> str | None:
    """The kind of the nnspec bundle at `path`, or None (not a file of ours)."""
    try:
        return read_bundle(path)[0]
    except NNSpecError:
        return None


def check_writable(path, kinds, error=NNSpecError) -> None:
    """Refuse to replace a file nnspec did not write (a bundle of one of `kinds`)."""
    path = Path(path)
    if path.exists() and bundle_kind(path) not in kinds:
        raise error(f"'{path}' exists and is not an nnspec file; not overwriting it "
                    f"(move it or choose another name)")
