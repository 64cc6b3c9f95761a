"""Each pytest-xdist worker compiles into caches of its own: Numba's disk
cache tolerates concurrent writers, but two processes compiling the same
kernel at once only waste the time they were started to save, and a reader
must never see a half-replaced generated module.  Runs before any test
module imports numba or nnspec."""
import os
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    _base = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
    os.environ["NNSPEC_CACHE"] = str(_base / f"pytest-{_worker}")
    os.environ["NUMBA_CACHE_DIR"] = str(_base / f"pytest-{_worker}" / "numba")
