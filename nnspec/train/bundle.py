"""One safe file format for checkpoints, `.nnc` models and prediction output:
an `.npz` (a zip of `.npy` arrays) plus one JSON string.

    write_bundle(path, "nnspec-checkpoint", {"epoch": 3, "opt": {...arrays...}})
    kind, tree = read_bundle(path)

Any nesting of dicts, lists, numbers, strings and NumPy arrays goes in: the
arrays are stored as npy members and the rest as JSON with
``{"__array__": key}`` where an array was.  Reading uses
``allow_pickle=False`` and `json`, so opening a file never runs code from it,
and reads no array before checking it: `open_bundle` gives the tree with
each array as a `Stored` (its header's shape and dtype, checked against its
zip entry's size), for the caller to check against what it expects
(`check_schema`, the network's weights) before `load_arrays`.
Writes are atomic: a temporary file in the same directory, fsync, then
`os.replace`, so a crash leaves the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import NNSpecError
from ..memory import available_bytes, fmt_bytes

META = "__nnspec__"     # the npz member holding the JSON
ARRAY = "__array__"


def atomic_write(path, write) -> None:
    """Call ``write(fileobj)`` on a temporary file, then move it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())      # mkstemp makes 0600; a new file gets 0666 - umask
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


def _umask() -> int:
    try:                        # Linux says it without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)       # elsewhere, reading it means setting it
    os.umask(mask)
    return mask


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


class Stored:
    """An array of a bundle known from its .npy header (shape, dtype), not read yet."""

    def __init__(self, key: str, shape: tuple, dtype: np.dtype):
        self.key, self.shape, self.dtype = key, shape, dtype
        self.nbytes = math.prod(shape) * dtype.itemsize

    def __repr__(self):
        return f"Stored({self.key!r}, {list(self.shape)}, {self.dtype})"


NOUNS = {None: "an nnspec file", "nnspec-checkpoint": "an nnspec checkpoint",
         "nnspec-model": "an nnspec model (.nnc)", "nnspec-predictions": "nnspec predictions"}
META_LIMIT = 64 << 20       # bytes of JSON: far more than any spec and history need
ARRAY_KINDS = "biuf"        # what nnspec stores: booleans, integers, floats


def read_bundle(path, kind: str | None = None, error=NNSpecError, check=None):
    """``(kind, tree)``; raises `error` if the file is not an nnspec bundle (of `kind`).
    ``check(tree)``, when given, sees the tree with each array as a `Stored`
    before any array is read, and raises to refuse the file."""
    found, tree = open_bundle(path, kind, error)
    if check is not None:
        check(tree)
    return found, load_arrays(path, tree, error)


def open_bundle(path, kind: str | tuple | None = None, error=NNSpecError):
    """``(kind, tree)`` with each array as a `Stored`: the JSON and every .npy
    header are read and checked (each array's declared size against its zip
    member's size, all of them against the memory available); no array data.
    `kind` is the kind expected, or a tuple of them."""
    path = Path(path)
    kinds = (kind,) if isinstance(kind, str) else kind
    what = " or ".join(NOUNS.get(k, k) for k in kinds) if kinds else NOUNS[None]
    if not path.is_file():
        raise error(f"'{path}' does not exist")
    with _zip(path, what, error) as zf:
        infos = {i.filename[:-4]: i for i in zf.infolist() if i.filename.endswith(".npy")}
        if META not in infos:
            raise error(f"'{path}' is not {what} (no {META} member)")
        if infos[META].file_size > META_LIMIT:
            raise error(f"'{path}': its description is {fmt_bytes(infos[META].file_size)}, "
                        f"more than nnspec ever writes")
        meta = _header(zf, infos[META], path, error)
        if meta.dtype.kind != "U" or meta.shape != ():
            raise error(f"'{path}': {META} is not a string")
        text = _read(zf, infos[META], path, error)[()]
        try:
            doc = json.loads(str(text))
        except (json.JSONDecodeError, RecursionError) as e:
            raise error(f"'{path}': its description is not JSON nnspec reads "
                        f"({e or 'nested too deeply'})") from None
        if not (isinstance(doc, dict) and isinstance(doc.get("kind"), str) and "tree" in doc):
            raise error(f"'{path}' is not {what} (no kind and tree)")
        if kinds and doc["kind"] not in kinds:
            raise error(f"'{path}' is {NOUNS.get(doc['kind'], repr(doc['kind']))}, not {what}")
        stored = {}

        def decode(v):
            if isinstance(v, dict):
                if set(v) == {ARRAY}:
                    key = v[ARRAY]
                    if key not in stored:
                        if not isinstance(key, str) or key not in infos or key == META:
                            raise error(f"'{path}': array {key!r} is missing")
                        stored[key] = _header(zf, infos[key], path, error)
                    return stored[key]
                return {k: decode(x) for k, x in v.items()}
            if isinstance(v, list):
                return [decode(x) for x in v]
            return v

        try:
            tree = decode(doc["tree"])
        except RecursionError:
            raise error(f"'{path}': its description is nested too deeply") from None
    need, have = sum(s.nbytes for s in stored.values()), available_bytes()
    if have is not None and need > have:
        raise error(f"'{path}': its arrays need {fmt_bytes(need)}; this machine has "
                    f"{fmt_bytes(have)} available")
    return doc["kind"], tree


def load_arrays(path, tree, error=NNSpecError):
    """`tree` (from `open_bundle`) with each `Stored` replaced by its array."""
    path = Path(path)
    with _zip(path, NOUNS[None], error) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        arrays: dict[str, np.ndarray] = {}

        def load(v):
            if isinstance(v, Stored):
                if v.key not in arrays:
                    info = infos.get(v.key + ".npy")
                    s = info and _header(zf, info, path, error)    # the file may have changed
                    if not s or (s.shape, s.dtype) != (v.shape, v.dtype):
                        raise error(f"'{path}' changed while it was read")
                    arrays[v.key] = _read(zf, info, path, error)
                return arrays[v.key]
            if isinstance(v, dict):
                return {k: load(x) for k, x in v.items()}
            if isinstance(v, list):
                return [load(x) for x in v]
            return v

        return load(tree)


def stored_arrays(tree):
    """Every array (or `Stored`) in a tree."""
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in stored_arrays(v)]
    if isinstance(tree, list):
        return [a for v in tree for a in stored_arrays(v)]
    return [tree] if isinstance(tree, (Stored, np.ndarray)) else []


def _zip(path, what: str, error) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise error(f"'{path}' is not {what} (not a zip archive: {e})") from None


_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError, KeyError)


def _header(zf, info, path, error) -> Stored:
    """The `Stored` of a member, after checking its .npy header against its size."""
    key = info.filename[:-4]
    try:
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read is None:
                raise ValueError(f"unknown .npy version {version}")
            shape, _, dtype = read(f)
            start = f.tell()
    except _READ_ERRORS as e:
        raise error(f"'{path}': array '{key}' is not a valid .npy member ({e})") from None
    if dtype.hasobject or dtype.kind not in ARRAY_KINDS + ("U" if key == META else ""):
        raise error(f"'{path}': array '{key}' has dtype {dtype}, which nnspec files never hold")
    s = Stored(key, tuple(shape), dtype)
    if start + s.nbytes != info.file_size:
        raise error(f"'{path}': array '{key}' declares {list(s.shape)} {dtype} "
                    f"({fmt_bytes(s.nbytes)}) but its member holds "
                    f"{fmt_bytes(max(info.file_size - start, 0))}")
    return s


def _read(zf, info, path, error) -> np.ndarray:
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _READ_ERRORS as e:
        raise error(f"'{path}': cannot read array '{info.filename[:-4]}' ({e})") from None


def bundle_kind(path) -> str | None:
    """The kind of the nnspec bundle at `path`, or None (not a file of ours)."""
    try:
        return open_bundle(path)[0]
    except NNSpecError:
        return None


def check_writable(path, kinds, error=NNSpecError) -> None:
    """Refuse to replace a file nnspec did not write (a bundle of one of `kinds`)."""
    path = Path(path)
    if path.exists() and bundle_kind(path) not in kinds:
        raise error(f"'{path}' exists and is not an nnspec file; not overwriting it "
                    f"(move it or choose another name)")


# ---- schemas: what a kind of bundle holds, checked before its arrays are read --------

def rule(what, test):
    """A schema entry: `test` (a predicate) described as `what` in errors."""
    test.what = what
    return test


COUNT = rule("a whole number >= 0", lambda v: type(v) is int and v >= 0)
INT = rule("a whole number", lambda v: type(v) is int)
NUMBER = rule("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
TEXT = rule("text", lambda v: isinstance(v, str))
TABLE = rule("a table", lambda v: isinstance(v, dict))
DTYPE = rule("'float32' or 'float64'", lambda v: v in ("float32", "float64"))
ARRAYS = rule("a table of arrays", lambda v: isinstance(v, dict) and all(
    isinstance(k, str) and isinstance(a, (Stored, np.ndarray)) for k, a in v.items()))


def optional(test):
    return rule(f"{test.what} or null", lambda v: v is None or test(v))


def check_schema(tree, schema: dict, where: str, error=NNSpecError) -> None:
    """Check that `tree` is a table whose entries named in `schema` pass its
    rules; `where` names the file (and part) in errors."""
    if not isinstance(tree, dict):
        raise error(f"{where}: its contents are not a table")
    for key, test in schema.items():
        if key not in tree:
            if test(None):          # optional
                continue
            raise error(f"{where}: '{key}' is missing")
        if not test(tree[key]):
            got = tree[key]
            shown = f"an array {list(got.shape)}" if isinstance(got, Stored) else repr(got)
            raise error(f"{where}: '{key}' must be {test.what}, got {shown[:60]}")
