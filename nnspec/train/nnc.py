"""`.nnc` files: a compiled network in one file.

    save(net, "mlp.nnc")                   # spec and --set values from net.graph.meta
    net = load("mlp.nnc")

The file is a bundle (see bundle.py: npz + JSON, never a pickle) holding the
spec's source text and the files it imports, its ``--set`` overrides, dtype
and seed, the graph's hash, and the weights (`state_dict`).  Loading writes
the sources to a temporary folder, lowers them with the same overrides,
checks the weights fit and loads them; the file's contents are only ever
parsed as a spec, never executed.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

from ..errors import TrainingError
from .bundle import (ARRAYS, DTYPE, INT, TABLE, TEXT, check_schema, check_writable, load_arrays,
                     open_bundle, optional, rule, write_bundle)
from .checkpoint import check_size, check_weights, load_weights

KIND = "nnspec-model"
VERSION = 1


def save(net, path, spec=None, *, overrides: dict | None = None, seed: int = 0,
         data: dict | None = None) -> None:
    """Write `net` (compiled from `spec`, a path or source text, with the
    ``--set`` `overrides`) to `path`, with its current weights.  Both default
    to what `nnspec.lower` recorded in ``net.graph.meta``.  `data` is what a
    checkpoint keeps of its data (a text's vocabulary), kept here too."""
    meta = net.graph.meta
    sources = None
    if spec is None:
        f = meta.get("file")
        if not (f and Path(f).is_file()):
            sources = meta.get("sources")     # a network loaded from a .nnc: its own files
        spec = Path(f) if f and Path(f).is_file() else meta.get("source")
        if spec is None:
            raise TrainingError("save: the network does not record its spec; pass spec=")
    if overrides is None:
        overrides = meta.get("set")
    check_writable(path, (KIND,), error=TrainingError)
    write_bundle(path, KIND, {
        "version": VERSION,
        "sources": sources or spec_sources(spec),
        "set": dict(overrides or {}),
        "dtype": net.graph.dtype,
        "seed": int(seed),
        "graph": net.graph.hash(),
        "weights": dict(net.state_dict()),
        "data": data,
    })


def load(path):
    """The network saved in `path`, with its weights."""
    import nnspec
    _, m = open_bundle(path, KIND, error=TrainingError)      # no array read yet
    check_model(m, path)
    src = m["sources"]
    with tempfile.TemporaryDirectory(prefix="nnc-") as tmp:
        root = Path(tmp).resolve()
        for rel, text in src["files"].items():
            f = (root / rel).resolve()
            if root not in f.parents:
                raise TrainingError(f"'{path}': a spec file path leaves its folder: {rel!r}")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        net = nnspec.compile(root / src["main"], dtype=m["dtype"], set=m["set"] or None,
                             seed=m["seed"], lib=[root])    # imports: only the file's own
    net.graph.meta["sources"] = src       # so that saving it again needs no spec files
    if net.graph.hash() != m["graph"]:
        warnings.warn(f"{path}: the spec lowers to a different graph with this version "
                      f"of nnspec; loading the weights by name", stacklevel=2)
    check_weights(net, m["weights"], path)
    check_size(net, m, path)
    m = load_arrays(path, m, TrainingError)
    load_weights(net, m["weights"], path)
    return net


SOURCES = rule("a table of a main file and its sources", lambda v: isinstance(v, dict)
               and isinstance(v.get("main"), str) and isinstance(v.get("files"), dict)
               and v["main"] in v["files"]
               and all(isinstance(k, str) and isinstance(t, str) for k, t in v["files"].items()))
SCHEMA = {"version": INT, "sources": SOURCES, "set": optional(TABLE), "dtype": DTYPE,
          "seed": INT, "graph": TEXT, "weights": ARRAYS, "data": optional(TABLE)}


def check_model(m, path) -> None:
    """Check a `.nnc` file's contents (arrays as `bundle.Stored`) before using them."""
    if isinstance(m, dict) and type(m.get("version")) is int and m["version"] != VERSION:
        raise TrainingError(f"'{path}' is a version {m.get('version')} .nnc file; "
                            f"this nnspec reads version {VERSION}")
    check_schema(m, SCHEMA, f"'{path}'", TrainingError)


def spec_sources(spec) -> dict:
    """``{"main": relative path, "files": {relative path: text}}``: the spec and
    every file it imports, relative to the folder that holds them all."""
    from ..frontend.load import load_module
    main, modules = load_module(spec)
    virtual = main.file.startswith("<")          # source text: imports resolve from the cwd
    main_path = Path.cwd() / "spec.nn" if virtual else Path(main.file).resolve()
    files = {main_path: main.source}
    for mod in modules.values():
        files[Path(mod.file).resolve()] = mod.source or Path(mod.file).read_text()
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    return {"main": main_path.relative_to(root).as_posix(),
            "files": {p.relative_to(root).as_posix(): t for p, t in files.items()}}
