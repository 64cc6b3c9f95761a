"""A busy machine (backend/cores.py, backend/sync.py): the choice between
a program's threads and one thread, made from step times given here (no
clock is read, so nothing depends on how busy the test machine is); the
thread count that choice sets; the cores a cgroup's quota leaves, on fake
cgroup files; the OpenMP wait policy set only where the user has not; and
the barriers' back-off."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnspec.backend.cores import Pace, _quota

ROOT = Path(__file__).resolve().parent.parent


def drive(pace: Pace, times, steps: int):
    """Run `steps` steps whose time is times(single, i): seconds, or
    (seconds, the thread's CPU seconds); the choices made."""
    ran = []
    for i in range(steps):
        one = pace.one()
        ran.append(one)
        t = times(one, i)
        pace.record(*(t if isinstance(t, tuple) else (t,)))
    return ran


QUIET = {False: 1.0e-3, True: 1.6e-3}       # two threads faster: a quiet machine
BUSY = {False: 100e-3, True: 3.0e-3}        # two threads waiting for each other's cores


def test_a_quiet_machine_keeps_the_threads_and_probes_ever_less():
    pace = Pace()
    ran = drive(pace, lambda one, i: QUIET[one], 20000)      # 20 s of steps
    assert not pace.single
    assert sum(ran) < 0.01 * len(ran)                        # steps spent probing one thread
    late = ran[10000:]
    assert sum(late) <= 2 * Pace.PAIRS                       # the intervals grew
    assert pace.interval >= 8.0


def test_the_load_coming_drops_to_one_thread_at_once():
    pace = Pace()
    drive(pace, lambda one, i: QUIET[one], 3000)
    assert not pace.single
    ran = drive(pace, lambda one, i: BUSY[one], 3000)
    first = ran.index(True)
    assert first <= 3 and all(ran[first:first + 20])         # no probe straight after
    spent = sum(BUSY[one] for one in ran)
    many = sum(BUSY[one] for one in ran if not one)
    assert pace.single and many < 0.1 * spent                # probes of two threads cost little


def test_the_load_going_comes_back_to_the_threads():
    pace = Pace()
    drive(pace, lambda one, i: BUSY[one], 2000)
    assert pace.single
    # no probe before SOONER x COST x what the last one lost (one step on
    # two threads, about 100 ms) has passed in faster steps: about 1 s
    spent = 0.0
    while pace.single or pace.probe is not None:
        one = pace.one()
        pace.record(QUIET[one])
        spent += QUIET[one]
        assert spent < Pace.SOONER * Pace.COST * BUSY[False] + 0.1
    assert not pace.single


def test_one_thread_stays_where_it_is_faster_anyway():
    """A program whose threads are slower even on a quiet machine."""
    pace = Pace()
    drive(pace, lambda one, i: 1.0e-3 if one else 1.5e-3, 2000)
    assert pace.single


def test_noise_does_not_flap():
    """Times scattered +-30% (a shared machine) around the quiet ones."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.7, 1.3, 30000)
    pace = Pace()
    ran = drive(pace, lambda one, i: QUIET[one] * noise[i], 30000)
    assert not pace.single
    assert sum(ran) < 0.03 * len(ran)


def test_close_choices_keep_the_current_one():
    """Within the margin the current choice stays: no switching back and forth."""
    pace = Pace()
    ran = drive(pace, lambda one, i: 1.0e-3 if one else 1.05e-3, 5000)
    assert not pace.single
    assert sum(ran) < 0.02 * len(ran)


def test_the_first_steps_do_not_count():
    pace = Pace()
    slow = {0: 30.0, 1: 0.5}                                 # compiling, first touches
    drive(pace, lambda one, i: slow.get(i, QUIET[one]), 200)
    assert not pace.single and pace.ref == pytest.approx(1.0e-3)


def test_its_own_core_again_brings_the_threads_back_soon():
    """On one thread, steps whose thread had its core all the time after
    steps that shared it (half the time): a probe soon, although the last
    one lost a step of 100 ms (no probe for two seconds of steps otherwise)."""
    pace = Pace()
    drive(pace, lambda one, i: (BUSY[one], BUSY[one] / 2), 2000)
    assert pace.single and pace.hold > 1.0
    spent = 0.0
    while pace.single or pace.probe is not None:
        one = pace.one()
        pace.record(QUIET[one], QUIET[one])
        spent += QUIET[one]
    assert spent < Pace.FIRST + 0.05


def test_faster_steps_on_a_core_of_its_own_bring_the_threads_back_at_once():
    """On one thread that had its core (almost) to itself under the load
    too, the steps getting faster say the load has gone: a probe within a
    window of steps, whatever the last one lost."""
    pace = Pace()
    drive(pace, lambda one, i: (BUSY[one], BUSY[one]), 2000)
    assert pace.single and pace.free and pace.hold > 1.0
    ran = drive(pace, lambda one, i: (QUIET[one], QUIET[one]), 40)
    assert not pace.single and ran.index(False) <= Pace.WINDOW


def test_idle_cores_bring_the_threads_back_at_once():
    """One thread that had its core to itself under the load, its steps no
    slower when the load went: only the other cores standing idle say so."""
    pace = Pace()
    drive(pace, lambda one, i: (BUSY[True], BUSY[True]) if one else BUSY[False], 2000)
    assert pace.single and pace.free and pace.probe is None
    pace.idle(0.05)                                          # the other core busy
    drive(pace, lambda one, i: (BUSY[True], BUSY[True]), 5)
    assert pace.probe is None
    pace.idle(0.9)                                           # now idle
    assert pace.probe is not None
    ran = drive(pace, lambda one, i: (QUIET[one], QUIET[one]), 2 * (Pace.PAIRS + 1) + 1)
    assert not pace.single and not all(ran)
    pace = Pace()                                # idle all along: one probe for it, not more
    drive(pace, lambda one, i: (1.0e-3, 1.0e-3) if one else 1.5e-3, 2000)
    assert pace.single
    probes = 0
    for i in range(2000):
        pace.idle(0.9)
        probes += pace.probe is not None and pace.probe["n"] == 0
        one = pace.one()
        pace.record(*((1.0e-3, 1.0e-3) if one else (1.5e-3,)))
    assert pace.single and probes <= 2


def test_idle_ticks_of_the_process_cores_from_proc_stat(tmp_path):
    from nnspec.backend.cores import _cpu_ticks
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 10 100 5 0 0 3 0 0\n"
                    "cpu0 1 0 1 10 1 0 0 1 0 0\n"
                    "cpu1 2 0 2 20 2 0 0 2 0 0\n"
                    "cpu2 4 0 4 40 4 0 0 4 0 0\n"
                    "intr 5 6\n")
    assert _cpu_ticks([0, 2], str(stat)) == (55, 70)       # idle + iowait; steal counts busy
    assert _cpu_ticks([7], str(stat)) is None
    assert _cpu_ticks([0], str(tmp_path / "none")) is None


def test_a_core_to_itself_alone_does_not_call_the_threads_back():
    """One thread has a core to itself, two would share one (one busy
    process on two cores): probes come ever less often."""
    pace = Pace()
    ran = drive(pace, lambda one, i: (BUSY[one], BUSY[one]), 20000)
    assert pace.single
    many = sum(BUSY[one] for one in ran if not one)
    assert many < 0.05 * sum(BUSY[one] for one in ran)


def test_a_pause_is_not_taken_for_the_load():
    """The steps after a pause (threads asleep, caches cold) are slower and
    do not count."""
    def after_pause(one, i):
        return 5 * QUIET[one] if i < 3 else QUIET[one]

    pace = Pace()
    drive(pace, lambda one, i: QUIET[one], 300)
    for _ in range(5):
        pace.rest()
        assert not any(drive(pace, after_pause, 20))
    assert any(drive(pace, after_pause, 20))                # not told: taken for the load


def test_a_probe_does_not_count_the_wake_up_of_the_threads():
    """The first step on two threads after steps on one is slower (the pool
    wakes up): a probe that counted it would keep one thread for good."""
    pace = Pace()
    drive(pace, lambda one, i: BUSY[one], 2000)
    assert pace.single
    last = [True]

    def times(one, i):
        t = 3.8e-3 if not one and last[0] else QUIET[one]
        last[0] = one
        return t
    drive(pace, times, 5000)
    assert not pace.single


def test_a_probe_ends_at_its_first_much_slower_step():
    pace = Pace()
    drive(pace, lambda one, i: BUSY[one], 500)
    assert pace.single
    before = pace.interval
    # the next probe: one step on two threads, then back to one thread
    ran = drive(pace, lambda one, i: BUSY[one], 3000)
    runs = [i for i in range(1, len(ran)) if not ran[i] and ran[i - 1]]
    assert runs and all(ran[i + 1] for i in runs if i + 1 < len(ran))
    assert pace.interval > before


# ---- the thread count ---------------------------------------------------------------

def test_limit_caps_the_threads_the_next_step_sets():
    numba = pytest.importorskip("numba")
    from nnspec.backend import cores, cpu
    full = min(numba.config.NUMBA_NUM_THREADS, cores.available())
    from nnspec.backend.jit import planned_threads
    try:
        cores.limit(True)
        cpu.use_threads(0)                                   # a program wanting every core
        assert numba.get_num_threads() == 1
        assert planned_threads() == full                     # its kernels' plan stays
        cores.limit(False)
        cpu.use_threads(0)
        assert numba.get_num_threads() == full
        cpu.use_threads(1)                                   # a program's own choice stays
        assert numba.get_num_threads() == 1
    finally:
        cores.limit(False)
        cpu.use_threads(0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_products_give_the_same_bits_on_any_number_of_blas_threads(dtype):
    """linalg.gemm, with more terms than OpenBLAS's threaded and serial
    drivers sum alike (GEMM_K), on C and F operands and odd sizes: the same
    bits on one BLAS thread and on two, and the product's values."""
    numba = pytest.importorskip("numba")
    from nnspec.backend import cpu
    from nnspec.backend.jit import jitted, planned_threads, set_planned_threads
    from nnspec.ops import linalg
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one thread")
    gemm = jitted(linalg.gemm)
    rng = np.random.default_rng(0)
    before = planned_threads()
    set_planned_threads(2)
    try:
        for m, k, n in [(128, 784, 512), (7, 1001, 33), (300, 257, 5), (1, 600, 9), (9, 600, 1)]:
            a = rng.standard_normal((m, k)).astype(dtype)
            b = rng.standard_normal((k, n)).astype(dtype)
            want = a.astype(np.float64) @ b.astype(np.float64)
            for a_, b_ in [(a, b), (np.asfortranarray(a), b), (a, np.asfortranarray(b)),
                           (np.asfortranarray(a), np.asfortranarray(b)), (a[:, ::-1][:, ::-1], b)]:
                got = []
                for k_threads in (1, 2):
                    cpu.blas_threads(k_threads)
                    out = np.full((m, n), np.nan, dtype)
                    gemm(a_, b_, out)
                    got.append(out)
                assert np.array_equal(got[0], got[1]), (m, k, n)
                tol = 1e-5 if dtype == "float32" else 1e-13
                np.testing.assert_allclose(got[0], want, rtol=tol, atol=tol * np.sqrt(k))
    finally:
        set_planned_threads(before)
        cpu._threads.n = None           # the next program sets its BLAS threads again


def test_a_program_in_another_thread_does_not_change_the_plan_of_this_ones():
    """The planned thread count is the process's; Numba's count is each
    Python thread's: a program of another thread choosing one thread must not
    leave this thread's next program planning for one."""
    numba = pytest.importorskip("numba")
    import threading

    from nnspec.backend import cores, cpu
    from nnspec.backend.jit import planned_threads
    full = min(numba.config.NUMBA_NUM_THREADS, cores.available())
    cpu.use_threads(0)
    assert planned_threads() == full
    t = threading.Thread(target=cpu.use_threads, args=(1,))
    t.start()
    t.join()
    assert planned_threads() == 1
    cpu.use_threads(0)                  # this thread's choice is unchanged, its plan set again
    assert planned_threads() == full


def test_a_one_thread_step_leaves_other_programs_their_threads(monkeypatch):
    numba = pytest.importorskip("numba")
    from nnspec.backend import cores, cpu
    full = min(numba.config.NUMBA_NUM_THREADS, cores.available())
    seen = []

    def program(*args):                                      # wants every core
        cpu.use_threads(0)
        seen.append(numba.get_num_threads())
        return 0.5, True

    monkeypatch.setattr(cores.Pace, "one", lambda self: True)
    pacer = cores.Pacer()
    for _ in range(2):
        pacer.run(program, (), {"x": np.zeros((4, 3))})
        cpu.use_threads(0)                                   # an inference program after it
        assert numba.get_num_threads() == full
    assert seen == [1, 1]


def test_a_pacer_leaves_single_threaded_programs_alone():
    pytest.importorskip("numba")
    from nnspec.backend import cpu
    from nnspec.backend.cores import Pacer
    calls = []

    def program(*args):                                      # chooses one thread itself
        cpu.use_threads(1)
        calls.append(args)
        return 0.5, True

    pacer = Pacer()
    for _ in range(3):
        assert pacer.active
        assert pacer.run(program, (1, 2), {"x": np.zeros((4, 3))}) == (0.5, True)
    assert not pacer.active and calls == [(1, 2)] * 3


def _train_small(steps: int):
    import nnspec
    from test_cuda_sim import REGRESSION          # a 5-6-3 tanh regression
    net = nnspec.compile(REGRESSION, dtype="float32", seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    t = rng.standard_normal((8, 3)).astype(np.float32)
    losses = [net.train_step({"x": x}, {"t": t}, 0.05) for _ in range(steps)]
    return net, losses


def test_a_network_trains_through_its_pacer(monkeypatch):
    monkeypatch.delenv("NNSPEC_PACE", raising=False)
    net, losses = _train_small(40)
    assert losses[-1] < losses[0]
    assert net._pacer is not None and not net._pacer.active   # a small step: one thread anyway


WIDE = """
network wide {
    input x: [300]
    output logits = x -> dense(300) -> relu -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01, momentum = 0.9)
}
"""


def _train_wide(steps: int, monkeypatch, one=None):
    """Steps of a network whose step runs on every thread, its products on a
    threaded BLAS with more terms than GEMM_K; `one(i)`: whether the pacer
    runs step i on one thread (None: as it chooses); the whole step, not
    halves of the batch (backend/split.py: tests/test_split.py)."""
    import numba
    monkeypatch.setenv("NNSPEC_SPLIT", "0")

    import nnspec
    from nnspec.backend.cores import Pace
    net = nnspec.compile(WIDE, dtype="float32", seed=4)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 300)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    ran, losses = [], []
    for i in range(steps):
        if one is not None:
            monkeypatch.setattr(Pace, "one", lambda self, i=i: one(i))
        losses.append(net.train_step({"x": x}, {"label": y}, 0.01))
        ran.append(numba.get_num_threads())
    return net, losses, ran


def test_pacing_is_on_by_default_and_changes_no_bit(monkeypatch):
    """A step the pacer runs on one thread gives the bits of the same step
    on every thread: a paced run is the run of NNSPEC_PACE=0, step for step."""
    numba = pytest.importorskip("numba")
    from nnspec.backend.cores import available
    if min(numba.config.NUMBA_NUM_THREADS, available()) < 2:
        pytest.skip("one core")
    monkeypatch.setenv("NNSPEC_PACE", "0")
    plain, want, ran = _train_wide(6, monkeypatch)
    assert plain._pacer is None and min(ran) >= 2
    assert plain._program("train")._bound[64][1] == (0, 0)     # every thread, BLAS too
    monkeypatch.delenv("NNSPEC_PACE")
    paced, got, ran = _train_wide(6, monkeypatch, one=lambda i: i % 3 != 1)
    assert paced._pacer is not None and paced._pacer.active
    assert ran == [1, 2, 1, 1, 2, 1]
    assert got == want
    for k in plain.params:
        assert np.array_equal(plain.params[k], paced.params[k]), k


# ---- cgroup quotas -------------------------------------------------------------------

def quota(tmp_path, files: dict, own: str | None):
    """_quota over cgroup files written under tmp_path/fs (name -> text),
    the process's cgroup list `own` (None: no list)."""
    root = tmp_path / "fs"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    lst = tmp_path / "cgroup"
    if own is not None:
        lst.write_text(own + "\n")
    return _quota(str(root), str(lst))


def test_quota_v2_tightest_along_the_path(tmp_path):
    own = "0::/user.slice/job"
    files = {"user.slice/job/cpu.max": "150000 100000", "user.slice/cpu.max": "max 100000"}
    assert quota(tmp_path, files, own) == 1.5
    files["user.slice/cpu.max"] = "50000 100000"            # the parent's limit is tighter
    assert quota(tmp_path, files, own) == 0.5
    files = dict.fromkeys(files, "max 100000")
    assert quota(tmp_path, files, own) is None


def test_quota_v2_in_a_container(tmp_path):
    """The list names a path the container's file system does not show: its
    own cgroup is at the top."""
    assert quota(tmp_path, {"cpu.max": "200000 100000"}, "0::/docker/abc123") == 2.0


def test_quota_v1(tmp_path):
    own = "5:memory:/job\n4:cpu,cpuacct:/job"
    files = {"cpu,cpuacct/job/cpu.cfs_quota_us": "250000",
             "cpu,cpuacct/job/cpu.cfs_period_us": "100000",
             "cpu,cpuacct/cpu.cfs_quota_us": "-1", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    assert quota(tmp_path, files, own) == 2.5
    files["cpu,cpuacct/job/cpu.cfs_quota_us"] = "-1"
    assert quota(tmp_path, files, own) is None


def test_quota_without_a_cgroup_list(tmp_path):
    assert quota(tmp_path, {"cpu.max": "100000 100000"}, None) == 1.0
    assert quota(tmp_path / "none", {}, None) is None


def test_a_quota_bounds_the_cores(monkeypatch):
    from nnspec.backend import cores
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cores, "_quota", lambda: 2.5)
    assert cores.available() == 2


# ---- wait policies --------------------------------------------------------------------

def _env_after_import(**env):
    code = ("import os, nnspec.backend\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env={**base, **env, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_openmp_waits_passively_unless_the_user_says():
    assert _env_after_import() == ["PASSIVE"]
    assert _env_after_import(OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE"]


# ---- the barriers' back-off ---------------------------------------------------------

def test_backoff_passes_through_spins_and_yields():
    pytest.importorskip("numba")
    from numba import njit

    from nnspec.backend import sync

    @njit
    def looks(n):
        for i in range(n):
            sync.backoff(i)
        return n

    n = sync.SPIN + sync.YIELDS + 3                         # spins, then yields
    assert looks(n) == n
    sy = np.zeros(4, np.int64)
    sy[1] = 5
    sync.wait(sy, 1, 5)                                      # already there: returns
