"""Set before any test module imports numba or nnspec.

The pytest-xdist workers share one nnspec cache and one Numba cache: a
step one worker compiled (seconds to a minute) the others load, and a worker
that reaches a step another is compiling waits for it (backend/cache.py's
`compiling` lock) instead of compiling it too.  Modules are written
atomically and checked against their names, so a reader never runs half a
file.

The suite compiles some hundreds of programs, most of them to run once on
tiny shapes, and LLVM's optimisation is most of each compile: it compiles
at NUMBA_OPT=1 (Numba's default is 3), which makes the suite's compiles
about a third faster and its few long runs no slower (measured on the
U-Net's training steps: 61 s cold against 78 s; at 0 they took 240 s).  The
semantics are the same at every level (tolerances cover the reordered sums
of `reassoc` kernels); NNSPEC_SLOW=1, the benchmarks and the command line
keep Numba's default, and a NUMBA_OPT already set is kept.  Code compiled
at another level goes into directories of its own (backend/cache.py's
version_tag; NUMBA_CACHE_DIR below), never mixed with optimised code."""
import os
from pathlib import Path

_base = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
if "NUMBA_OPT" not in os.environ and not os.environ.get("NNSPEC_SLOW"):
    os.environ["NUMBA_OPT"] = "1"
    os.environ.setdefault("NUMBA_CACHE_DIR", str(_base / "numba-O1"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    _opt = os.environ.get("NUMBA_OPT", "3")
    os.environ["NNSPEC_CACHE"] = str(_base / "pytest")
    os.environ["NUMBA_CACHE_DIR"] = str(_base / ("pytest-numba" + ("" if _opt == "3"
                                                                  else f"-O{_opt}")))
