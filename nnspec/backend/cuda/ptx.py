"""Compile recorded CUDA launches for a real GPU's architecture, without one.

Numba's simulator runs kernels as Python: it checks no types, so a kernel
that runs there may not compile for a GPU (a variable that is an int here
and a float there, a NumPy call, a float64 literal in a float32 kernel is
fine but slow).  This closes that gap on machines without a GPU:

    NNSPEC_CUDA_RECORD=launches.jsonl NUMBA_ENABLE_CUDASIM=1 python ...   # run programs
    python -m nnspec.backend.cuda.ptx launches.jsonl [--cc 9.0]

The first step (any run under the simulator) appends each kernel launched,
once per module, name and argument types (backend/cuda/runtime.py
`watched`).  The second, in a process with the real numba-cuda and NVVM
(`pip install 'nnspec[cuda-check]'`: numba-cuda with the NVIDIA compiler
wheels; no driver or GPU needed), loads each generated module again and
compiles every recorded signature to PTX.  It prints one line per failure
and exits 1 when there is one.
"""
from __future__ import annotations

import argparse
import json
import sys
import types as pytypes
from pathlib import Path


def available() -> str | None:
    """Why PTX cannot be compiled in this process, or None when it can."""
    import importlib.util
    if importlib.util.find_spec("numba_cuda") is None:
        return "the numba-cuda package is not installed"
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as e:  # noqa: BLE001 (any reason NVVM cannot load)
        return f"NVVM cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    return None


def _no_device(cc: tuple) -> None:
    """Device functions ask the current device for its architecture when
    compiled; without a GPU, answer with the one asked for."""
    import numba.cuda.dispatcher as dispatcher

    class Device:
        compute_capability = cc
    dispatcher.get_current_device = lambda: Device()


def numba_type(t):
    from numba import types
    kind = t[0]
    if kind == "array":
        return types.Array(getattr(types, t[1]), t[2], "A")
    if kind == "tuple":
        items = [numba_type(x) for x in t[1]]
        return types.UniTuple(items[0], len(items)) if items and \
            all(i == items[0] for i in items) else types.Tuple(items)
    if kind == "bool":
        return types.boolean
    return getattr(types, kind)


def _module(path: str):
    text = Path(path).read_text()
    mod = pytypes.ModuleType("nnspec_ptx_" + Path(path).stem)
    mod.__file__ = path
    exec(compile(text, path, "exec"), vars(mod))
    return mod


def check(records: list, cc: tuple = (9, 0)) -> list:
    """[(module file, kernel, signature, error)] for each record that does
    not compile to PTX for compute capability `cc`."""
    from numba import cuda
    from . import runtime  # noqa: F401  (NumPy's removed aliases, as in a real run)
    _no_device(cc)
    modules: dict = {}
    failures = []
    for path, name, sig in records:
        try:
            if path not in modules:
                modules[path] = _module(path)
            fn = getattr(modules[path], name)
            args = tuple(numba_type(t) for t in sig)
            cuda.compile_ptx(fn.py_func, args, cc=cc)
        except Exception as e:  # noqa: BLE001 (reported, one line each)
            msg = " ".join(str(e).split())[:600]
            failures.append((path, name, sig, f"{type(e).__name__}: {msg}"))
    return failures


def read(path: str) -> list:
    seen, out = set(), []
    for line in Path(path).read_text().splitlines():
        if line.strip() and line not in seen:
            seen.add(line)
            out.append(json.loads(line))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nnspec.backend.cuda.ptx",
                                 description="compile recorded CUDA launches to PTX")
    ap.add_argument("records", help="the file NNSPEC_CUDA_RECORD named")
    ap.add_argument("--cc", default="9.0", help="compute capability (default 9.0)")
    a = ap.parse_args(argv)
    why = available()
    if why:
        print(f"cannot compile PTX here: {why}", file=sys.stderr)
        return 2
    cc = tuple(int(x) for x in a.cc.split("."))
    records = read(a.records)
    failures = check(records, cc)
    for path, name, sig, err in failures:
        print(f"{Path(path).name} {name}{tuple(sig)}: {err}")
    print(f"{len(records) - len(failures)} of {len(records)} launches compile for sm_"
          f"{cc[0]}{cc[1]}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
