"""The disk cache of generated steps.

    $NNSPEC_CACHE (default ~/.cache/nnspec)/
        step_<graph name>_<kind>_<key>.py      generated source (never rewritten)
        __pycache__/step_....nbi / .nbc       Numba's cache of its machine code

`key` hashes everything the code depends on: the processed graph, dtype,
program kind, optimizer structure, nnspec and numba versions, and the source
of the op modules, passes and backend (Numba checks only the generated file's
own timestamp, so a changed kernel must change the name).  Writing the file
once keeps its timestamp, which is what lets Numba reuse the machine code.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
from pathlib import Path

_src_hash: str | None = None


def cache_dir() -> Path:
    d = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
    d.mkdir(parents=True, exist_ok=True)
    return d


def source_hash() -> str:
    """A hash of the code generated steps call into (ops, passes, backend)."""
    global _src_hash
    if _src_hash is None:
        root = Path(__file__).resolve().parent.parent
        h = hashlib.sha256()
        for sub in ("ops", "passes", "backend"):
            for f in sorted((root / sub).glob("*.py")):
                h.update(f.name.encode())
                h.update(f.read_bytes())
        _src_hash = h.hexdigest()[:16]
    return _src_hash


def key(*parts) -> str:
    import numba
    from .. import __version__ as nnspec_version
    text = "\n".join(map(str, parts + (nnspec_version, numba.__version__, source_hash())))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load(name: str, source_fn) -> object:
    """The module `name` from the cache dir, writing its source first (with
    `source_fn()`) when it is not there."""
    path = cache_dir() / f"{name}.py"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(source_fn())
        os.replace(tmp, path)
    modname = "nnspec_gen_" + re.sub(r"\W", "_", name)
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    spec.loader.exec_module(mod)
    return mod
