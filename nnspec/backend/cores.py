"""How many cores this process can really use: the CPUs its affinity mask
allows (taskset, a container's cpuset), at most its cgroup's CPU quota
(`docker --cpus 1.5` on a 16-core host: 1).  os.cpu_count() and Numba's
default thread count see the host's cores; threads beyond what the process
may run on spin and wait for each other's time slices."""
from __future__ import annotations

import math
import os
from pathlib import Path


def _quota() -> float | None:
    """The cgroup's CPU limit in cores, or None when there is none."""
    try:      # cgroup v2: "max 100000" or "150000 100000"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:      # cgroup v1
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available() -> int:
    """Cores this process can use (at least 1)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    q = _quota()
    if q is not None:
        n = min(n, max(1, math.floor(q)))
    return max(n // _ranks_here(), 1)


def _ranks_here() -> int:
    """How many processes of an MPI job share this process's cores: the job's
    ranks on this machine when the launcher left each the whole machine, 1
    when it bound each to cores of its own (the mask says so) or without MPI."""
    for var in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 1:
            try:
                bound = len(os.sched_getaffinity(0)) < (os.cpu_count() or 1)
            except (AttributeError, OSError):
                bound = False
            return 1 if bound else int(v)
    return 1
