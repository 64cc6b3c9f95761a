"""The pytest-xdist workers share one nnspec cache and one Numba cache: a
step one worker compiled (seconds to a minute) the others load, and a worker
that reaches a step another is compiling waits for it (backend/cache.py's
`compiling` lock) instead of compiling it too.  Modules are written
atomically and checked against their names, so a reader never runs half a
file.  Runs before any test module imports numba or nnspec."""
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    _base = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
    os.environ["NNSPEC_CACHE"] = str(_base / "pytest")
    os.environ["NUMBA_CACHE_DIR"] = str(_base / "pytest-numba")
