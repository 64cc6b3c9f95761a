"""How many cores this process can really use: the CPUs its affinity mask
allows (taskset, a container's cpuset), at most its cgroup's CPU quota
(`docker --cpus 1.5` on a 16-core host: 1).  os.cpu_count() and Numba's
default thread count see the host's cores; threads beyond what the process
may run on spin and wait for each other's time slices.

And, on a machine other processes keep busy, whether a training step runs
faster on its threads or on one (`Pace`, `Pacer`: Network.train_step), and
the bound that sets (`limit`)."""
from __future__ import annotations

import math
import os
from pathlib import Path
import time
from statistics import median
from time import perf_counter


def _quota(root: str = "/sys/fs/cgroup", own: str = "/proc/self/cgroup") -> float | None:
    """The CPU limit of this process's cgroup in cores (the tightest along
    its path up to the root), or None when there is none.  `root` is where
    the cgroup file systems are mounted, `own` the process's cgroup list."""
    try:
        lines = Path(own).read_text().splitlines()
    except OSError:
        lines = []
    limits = []
    for line in lines:          # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            limits += _limits(Path(root), path, _v2)
        elif "cpu" in controllers.split(","):
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                if (Path(root) / mount).is_dir():
                    limits += _limits(Path(root) / mount, path, _v1)
                    break
    if not lines:               # no list: the mount points' own files
        limits += _limits(Path(root), "/", _v2) + _limits(Path(root) / "cpu", "/", _v1)
    return min(limits) if limits else None


def _limits(top: Path, path: str, read) -> list:
    """The limits found in `top`/`path` and its parents up to `top`; a path
    that is not there (a container's file system shows its own cgroup at
    the top) is skipped."""
    found = []
    d = top / path.strip("/")
    while True:
        q = read(d)
        if q is not None:
            found.append(q)
        if d == top or top not in d.parents:
            return found
        d = d.parent


def _v2(d: Path) -> float | None:
    try:      # "max 100000" or "150000 100000"
        quota, period = (d / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1(d: Path) -> float | None:
    try:      # -1: no limit
        quota = int((d / "cpu.cfs_quota_us").read_text())
        period = int((d / "cpu.cfs_period_us").read_text())
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


def chosen_threads() -> int:
    """The threads a program that asks for all gets: Numba's thread count for
    the calling thread, at most the cores available."""
    import numba
    return max(min(numba.get_num_threads(), available()), 1)


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


# ---- a busy machine ---------------------------------------------------------------
#
# When other processes keep the cores busy, each of a step's threads gets its
# core part of the time, and every parallel region waits at its end for the
# thread that is off its core: a 784-512-256-10 MLP step took 140 ms on two
# threads beside one busy process per core, 1 ms on a quiet machine.  On one
# thread nothing waits for anything.  A `Pace` watches a step's times and
# chooses between the threads its program chose and one thread, on by default
# (NNSPEC_PACE=0: off).

class Pace:
    """Whether a training step runs on one thread or on the threads its
    program chose ("many"), decided from the times of the steps before.
    After each decision the median of WINDOW steps is the reference; then

    * on many threads, the median of the last WINDOW steps JUMP times the
      reference: one thread at once (the load came);
    * a probe runs the other choice, then the current one, 1 + PAIRS steps
      each, the first of each not counted (waking a thread pool makes the
      first step on two threads after steps on one slower: a probe that
      switched at every step took the MLP's 2.6 ms steps for 3.7 ms), and
      keeps the faster (the other only when it is faster by MARGIN); a probe
      step JUMP times slower than the current choice ends it.  A probe
      comes after `interval` seconds of steps, which doubles each time the
      probe keeps the choice (up to LONGEST), and at once when the median
      of the last WINDOW steps DRIFTs from the reference either way (the
      load came or went);
    * but no probe before COST times what the last one lost has passed in
      steps (two threads under load: one step of theirs can cost ten of
      one thread's), or SOONER times that when the steps got faster, or
      none at all when they got faster on one thread that has its core to
      itself (the load has gone: one busy process per core left our one
      thread most of its core, so the core alone says too little);
    * on one thread, a reference DRIFT times faster than the last one of one
      thread (measured before the choice went to two threads and back: the
      load went while the choice changed) probes at once;
    * on one thread, the process's other cores standing idle (`idle`, from
      /proc/stat) after they were busy: a probe at once;
    * on one thread, steps that had their core to themselves (CPU time at
      least FREE of the wall time, the median of WINDOW steps) after steps
      that shared it say the load has gone: a probe at once, whatever the
      last one lost.

    `one()` says how to run the next step; `record(seconds, cpu)` is told
    how long it took and, where known, how much CPU time its thread had;
    `idle(cores)` how many of the process's cores stood idle meanwhile (on
    one thread); `rest()` that the steps stopped for a while (the next WARM
    steps wake threads and caches up, and do not count).  Nothing here
    reads a clock or a file: the decisions depend on what it is told alone
    (`Pacer` reads them)."""

    WARM = 2            # steps not counted at first (compiling, first touches)
    WINDOW = 5          # steps that set the reference after a change
    JUMP = 3.0
    DRIFT = 1.5
    MARGIN = 0.9
    PAIRS = 3
    FIRST = 0.5         # seconds of steps before the first probe
    LONGEST = 60.0
    COST = 20.0
    SOONER = 0.5        # of that, when the steps got faster
    FREE = 0.9
    IDLE = 0.5          # cores standing idle (beside one thread of ours): the load has gone

    def __init__(self):
        self.single = False         # the choice: one thread
        self.ref = None             # its median step time, once known
        self.recent = []            # its last WINDOW step times
        self.shares = []            # on one thread: the last WINDOW steps' CPU / wall time
        self.free = None            # whether they had their core to themselves
        self.since = 0.0            # seconds of steps since the last decision
        self.interval = self.FIRST
        self.hold = 0.0             # seconds of steps before any probe
        self.probe = None           # during a probe: {True: [...], False: [...]} by choice,
                                    # and "n": its steps so far
        self.warm = self.WARM       # steps not to count
        self._ran = False
        self.refs = {}              # the last reference of each choice
        self.cores_idle = None      # on one thread: whether the other cores stood idle

    def one(self) -> bool:
        """Whether the next step runs on one thread."""
        p = self.probe
        if p is None:
            self._ran = self.single
        else:                       # the other choice first, then the current one
            self._ran = (not self.single) if p["n"] <= self.PAIRS else self.single
        return self._ran

    def rest(self) -> None:
        self.warm = self.WARM

    def idle(self, cores: float) -> None:
        """Told, on one thread, how many of the process's cores stood idle
        over its last steps (on average; from /proc/stat): from IDLE on,
        first since the choice went to one thread or after readings that
        found them busy, the load has gone, whatever the
        thread's own times say (beside one busy process per core, one thread
        of ours had its core to itself as often as not, and its steps were
        no slower than on a quiet machine): a probe at once."""
        was, self.cores_idle = self.cores_idle, cores >= self.IDLE
        if (self.single and self.cores_idle and not was and self.probe is None
                and self.ref is not None and not self.warm):
            self._start()

    def record(self, seconds: float, cpu: float | None = None) -> None:
        """The time of the step `one()` was last asked about, and its
        thread's CPU time (None: not known)."""
        if self.warm:
            self.warm -= 1
            return
        if self.probe is not None:
            return self._probed(seconds)
        self.since += seconds
        r = self.recent
        r.append(seconds)
        if len(r) > self.WINDOW:
            del r[0]
        if self.single and cpu is not None and seconds > 0:
            self._shared(cpu / seconds)
        ref = self.ref
        if ref is None:
            if len(r) == self.WINDOW:
                self.ref = median(r)
                before = self.refs.get(self.single)
                self.refs[self.single] = self.ref
                if self.single and before is not None and self.ref * self.DRIFT < before:
                    self._start()       # one thread, faster than when last measured
            return
        m = median(r)
        if m > self.DRIFT * ref:                # slower: the load may have come
            if not self.single and m > self.JUMP * ref:
                return self._choose(True, self.FIRST)
            self.interval = self.FIRST
        elif m * self.DRIFT < ref:              # faster: the load may have gone
            self.interval = self.FIRST
            if self.since >= self.SOONER * self.hold or (self.single and self.free):
                return self._start()
        if self.since >= (self.interval if self.free else max(self.interval, self.hold)):
            self._start()

    def _shared(self, share):
        sh = self.shares
        sh.append(share)
        if len(sh) > self.WINDOW:
            del sh[0]
        if len(sh) == self.WINDOW:
            free = median(sh) >= self.FREE
            if free and self.free is False:     # the core is ours again: a probe now
                self.interval = self.FIRST
                self.since = max(self.since, self.FIRST)
            self.free = free

    def _start(self):
        self.probe = {True: [], False: [], "n": 0}

    def _probed(self, seconds):
        p, other = self.probe, not self.single
        n = p["n"]
        p["n"] = n + 1
        cur = median(p[self.single]) if p[self.single] else self.ref
        if self._ran == other and seconds > self.JUMP * cur:
            p[other].append(seconds)
            return self._keep(p, cur)
        if n != 0 and n != self.PAIRS + 1:      # a block's first step does not count
            p[self._ran].append(seconds)
        if p["n"] < 2 * (self.PAIRS + 1):
            return
        cur = median(p[self.single])
        if median(p[other]) < self.MARGIN * cur:
            self.hold = 0.0
            self._choose(other, self.FIRST)
        else:
            self._keep(p, cur)

    def _keep(self, p, cur):
        lost = sum(p[not self.single]) - len(p[not self.single]) * cur
        self.hold = self.COST * lost
        self._choose(self.single, min(2 * self.interval, self.LONGEST))

    def _choose(self, single, interval):
        """Decided: `single`; the reference is measured afresh."""
        if single != self.single:
            self.free = self.cores_idle = None
            del self.shares[:]
        self.single, self.ref, self.interval = single, None, interval
        self.probe, self.since = None, 0.0
        del self.recent[:]


def paced() -> bool:
    """Whether training steps on the CPU choose their thread count by the
    load: yes, unless NNSPEC_PACE=0."""
    return os.environ.get("NNSPEC_PACE", "").strip() != "0"


class Pacer:
    """The `Pace` of each shape of a network's training steps (a last short
    batch takes its own time), and the thread count it sets for each step
    (the programs run between them, inference, keep theirs): the steps of a
    program that runs on one thread by itself are not timed after three.

    A step on one thread gives the bits of the same step on its threads:
    its kernels keep the plan made for the threads its program chose (their
    tasks, the parts of their sums: backend/jit.py `planned_threads`), and
    products run the same on any number of BLAS threads (ops/linalg.py
    `gemm`).  So pacing changes no result, and two runs of one seed, or a run
    and its resumption, stay bit-identical whatever the load."""

    PAUSE = 0.05        # seconds between steps after which the next ones do not count
    STAT_EVERY = 0.05   # seconds between readings of the cores' idle time (one thread)

    def __init__(self):
        self.paces: dict = {}
        self.alone = 0
        self.active = True
        self.end = None
        self.stat = None            # (time, idle ticks, all ticks) of the last reading
        try:
            self.cpus = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cpus = None

    def run(self, program, args, feeds):
        threads = _cpu_threads()
        key = getattr(next(iter(feeds.values()), None), "shape", None)   # batch (and steps)
        pace = self.paces.get(key)
        if pace is None:
            pace = self.paces[key] = Pace()
        one = pace.one()
        if one:
            limit(True)
        c0, t0 = _cpu_time(), perf_counter()
        if self.end is not None and t0 - self.end > self.PAUSE:
            pace.rest()
        try:
            out = program(*args)
        finally:
            if one:         # only the training step: other programs keep their threads
                limit(False)
        self.end = perf_counter()
        pace.record(self.end - t0, None if c0 is None else _cpu_time() - c0)
        if one:
            self._idle(pace)
        else:
            self.stat = None
        if getattr(program, "splits", False):       # its halves run on one thread each
            self.alone = 0
        elif getattr(threads, "n", None) == (1, 1):       # the program's own choice
            self.alone += 1
            self.active = self.alone < 3
        else:
            self.alone = 0
        return out

    def _idle(self, pace):
        """Every STAT_EVERY seconds of one-thread steps, tell `pace` how many
        of the process's cores stood idle since the last reading."""
        now = self.end
        if self.stat is not None and now - self.stat[0] < self.STAT_EVERY:
            return
        ticks = _cpu_ticks(self.cpus)
        if ticks is None:
            return
        if self.stat is not None and ticks[1] > self.stat[2]:
            idle, total = ticks[0] - self.stat[1], ticks[1] - self.stat[2]
            pace.idle(len(self.cpus) * idle / total)
        self.stat = (now,) + ticks


def _cpu_ticks(cpus, path: str = "/proc/stat"):
    """(idle, all) clock ticks of the CPUs `cpus` since boot (idle and I/O
    wait are idle; stolen time is not), or None where they cannot be read."""
    if not cpus:
        return None
    want = {f"cpu{c}" for c in cpus}
    idle = total = 0
    try:
        with open(path) as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                parts = line.split()
                if parts[0] in want:
                    v = [int(x) for x in parts[1:9]]
                    idle += v[3] + v[4]
                    total += sum(v)
    except (OSError, ValueError, IndexError):
        return None
    return (idle, total) if total > 0 else None


def _cpu_time():
    """This thread's CPU time in seconds, or None where it cannot be read."""
    try:
        return _thread_time()
    except (OSError, TypeError):
        return None


_thread_time = getattr(time, "thread_time", None)


def _cpu_threads():
    """cpu.py's per-thread thread counts (imported late: cpu.py imports this)."""
    from .cpu import _threads
    return _threads


def limit(one: bool) -> None:
    """Run this thread's next programs on one thread (`one`), or on the
    threads they choose, up to the cores available (cpu.use_threads): sets
    the cap use_threads applies, and has the next program apply it.  The
    kernels keep the plan of their chosen thread count (backend/jit.py
    `planned_threads`): one thread runs all its parts."""
    threads = _cpu_threads()
    want = 1 if one else None
    if getattr(threads, "cap", None) != want:
        threads.cap = want
        threads.n = None
