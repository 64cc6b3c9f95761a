"""Each pytest-xdist worker writes its generated step modules into a cache
of its own (a reader must never see a half-replaced module), and shares
Numba's disk cache with the other workers: it tolerates concurrent writers,
and an op kernel one worker compiled (a convolution: 18 s) loads in the
other in well under a second.  Runs before any test module imports numba
or nnspec."""
import os
from pathlib import Path

_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker:
    _base = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
    os.environ["NNSPEC_CACHE"] = str(_base / f"pytest-{_worker}")
    os.environ["NUMBA_CACHE_DIR"] = str(_base / "pytest-numba")
