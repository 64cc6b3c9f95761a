"""Data-parallel training over MPI (nnspec/train/dist.py), run with Open MPI's
mpiexec on this machine: N ranks give one process's weights (float64, to
rounding), whatever the rank count, a batch that divides or not; resume with
another rank count; rank 0 alone prints and writes; an error or a killed
rank ends the job instead of leaving it waiting."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from nnspec.cli import main                                   # noqa: E402
from nnspec.train import dist                                 # noqa: E402
from nnspec.train.checkpoint import load_checkpoint           # noqa: E402
from nnspec.train.launch import mpiexec_command, without_workers  # noqa: E402

try:
    mpiexec_command(1, [])
except Exception as e:          # the mpi extra without its launcher
    pytest.skip(f"no mpiexec: {e}", allow_module_level=True)

SPEC = """\
network tiny(h = 7) {
    input x: [5]
    output y = x -> dense(h) -> tanh -> dense(3)
}
train {
    target label: int
    loss = cross_entropy(y, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9)
    clip = 0.5
    batch = 7
    epochs = 3
}
"""
TIMEOUT = 240       # a hang fails the test instead of the suite


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("mpi")
    (d / "tiny.nn").write_text(SPEC)
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", x=rng.normal(size=(64, 5)), label=rng.integers(0, 3, 64))
    return d


def train_args(work, out, *extra):
    return ["train", str(work / "tiny.nn"), "--data", str(work / "d.npz"), "--dtype", "float64",
            "--out", str(work / out), "--quiet", *extra]


def mpirun(n, args, **kw):
    return subprocess.run(mpiexec_command(n, args), capture_output=True, text=True,
                          timeout=TIMEOUT, **kw)


@pytest.fixture(scope="module")
def single(work):
    """One process's weights after 3 epochs (24 or 27 steps), per batch size."""
    out = {}
    for batch in (6, 7):
        assert main(train_args(work, f"one{batch}", "--batch", str(batch))) == 0
        out[batch] = load_checkpoint(work / f"one{batch}" / "checkpoint.npz")
    return out


def assert_same_weights(a, b, rel=1e-10):
    for k, v in a["model"].items():
        err = np.max(np.abs(v - b["model"][k])) / np.max(np.abs(v))
        assert err < rel, (k, err)
    assert a["step"] == b["step"]


def test_shards_cover_the_batch_evenly():
    for size in (1, 2, 3, 5):
        for n in (0, 1, 2, 6, 7, 13):
            parts = [dist.shard(r, size, n) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("ranks", [1, 2, 3])
@pytest.mark.parametrize("batch", [6, 7])
def test_ranks_give_one_process_weights(work, single, ranks, batch):
    # 51 training examples: batch 7 leaves a last batch of 2, which 3 ranks
    # cut into 1, 1 and an empty shard; clipping acts on the global norm
    out = f"r{ranks}b{batch}"
    r = mpirun(ranks, train_args(work, out, "--batch", str(batch)))
    assert r.returncode == 0, r.stderr
    assert_same_weights(single[batch], load_checkpoint(work / out / "checkpoint.npz"))
    assert r.stdout.count("test accuracy") == 1         # rank 0 alone prints
    assert sorted(p.name for p in (work / out).iterdir() if not p.name.startswith(".")) == \
        ["checkpoint.npz", "curves.png", "metrics.json"]
    metrics = json.loads((work / out / "metrics.json").read_text())
    one = json.loads((work / f"one{batch}" / "metrics.json").read_text())
    assert metrics["test_accuracy"] == one["test_accuracy"]     # evaluation sharded, summed
    assert metrics["test_loss"] == pytest.approx(one["test_loss"], rel=1e-12)
    if ranks > 1:
        assert metrics["history"][-1]["processes"] == ranks


def test_resume_with_another_rank_count(work, single):
    # one epoch on 2 ranks, then --resume to 3 epochs on 3 (via --workers)
    r = mpirun(2, train_args(work, "res", "--epochs", "1"))
    assert r.returncode == 0, r.stderr
    assert main(train_args(work, "res", "--resume", "--workers", "3")) == 0
    assert_same_weights(single[7], load_checkpoint(work / "res" / "checkpoint.npz"))


def test_workers_runs_mpiexec_without_the_option():
    assert without_workers(["train", "a.nn", "--workers", "3", "--quiet"]) == \
        ["train", "a.nn", "--quiet"]
    assert without_workers(["train", "--workers=2", "a.nn"]) == ["train", "a.nn"]
    cmd = mpiexec_command(3, ["train", "a.nn", "--workers", "3"])
    assert cmd[1:3] == ["-n", "3"] and cmd[-3:] == ["nnspec", "train", "a.nn"]


def test_an_error_ends_every_rank(work):
    # every rank fails to read the data: printed once, the job ends
    r = mpirun(2, train_args(work, "bad", "--data", str(work / "missing.npz")))
    assert r.returncode != 0
    assert r.stderr.count("missing.npz' does not exist") == 1
    assert not (work / "bad" / "checkpoint.npz").exists()


def _rank_pid(rank: int, marker: str):
    for d in glob.glob("/proc/[0-9]*"):
        try:
            env = open(d + "/environ", "rb").read().split(b"\0")
            cmd = open(d + "/cmdline", "rb").read()
        except OSError:
            continue
        if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and marker.encode() in cmd:
            return int(d[len("/proc/"):])
    return None


def test_a_killed_rank_ends_the_job_and_the_checkpoint_stays(work):
    out = work / "killed"
    p = subprocess.Popen(mpiexec_command(2, train_args(work, "killed", "--epochs", "1000000")),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (out / "checkpoint.npz").exists():
            assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() - t0 < TIMEOUT
            time.sleep(0.1)
        pid = _rank_pid(1, str(out))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode != 0
    assert "rank 1" in err and "signal 9" in err
    assert load_checkpoint(out / "checkpoint.npz")["epoch"] >= 1     # whole and readable


API = """\
import numpy as np
from mpi4py import MPI
import nnspec
from nnspec.train import fit

comm = MPI.COMM_WORLD
net = nnspec.compile({spec!r}, dtype="float64")
d = np.load({data!r})
data = {{"x": d["x"][:48], "label": d["label"][:48]}}, {{"x": d["x"][48:], "label": d["label"][48:]}}
r = fit(net, data, epochs=2, batch=8, progress=False, comm=comm)
mine = np.concatenate([net._P, net._S, net._M, net._V])
every = comm.gather(mine, root=0)
if comm.rank == 0:
    assert all(np.array_equal(every[0], e) for e in every), "the ranks drifted apart"
    np.savez({result!r}, **net.state_dict(), loss=[h["train_loss"] for h in r["history"]])
"""

BN_SPEC = """\
network bn(h = 6) {
    input x: [5]
    output y = x -> dense(h) -> batchnorm -> relu -> dense(3)
}
train {
    target label: int
    loss = cross_entropy(y, label)
    optimizer = adam(lr = 0.01)
}
"""


def test_python_api_with_a_communicator_keeps_the_ranks_equal(work):
    # batch norm: each rank normalises its own shard (as DDP does) and the
    # running statistics are rank 0's, so every rank holds the same model
    (work / "bn.nn").write_text(BN_SPEC)
    script = work / "api.py"
    script.write_text(API.format(spec=str(work / "bn.nn"), data=str(work / "d.npz"),
                                 result=str(work / "api.npz")))
    cmd = mpiexec_command(2, [])
    r = subprocess.run(cmd[:cmd.index(sys.executable)] + [sys.executable, str(script)],
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    res = np.load(work / "api.npz")
    assert res["loss"][-1] < res["loss"][0]
    assert all(np.all(np.isfinite(res[k])) for k in res.files)


SYNC_SPEC = SPEC.replace("dense(h) -> tanh", "dense(h) -> batchnorm -> tanh") \
    .replace("clip = 0.5", "clip = 0.5\n    sync_bn = true")


@pytest.mark.parametrize("ranks, batch", [(2, 6), (3, 7)])
def test_sync_bn_ranks_give_one_process_weights(work, ranks, batch):
    # sync_bn: the batch statistics are the whole batch's, summed inside the
    # step (and their gradients too, weighted by the shards' sizes), so N
    # ranks give one process's weights and running statistics, batch norm
    # included; 3 ranks at batch 7 meet an empty shard, whose rank joins the
    # step's reductions with zeros
    (work / "sync.nn").write_text(SYNC_SPEC)
    args = train_args(work, f"s1b{batch}", "--batch", str(batch))
    args[1] = str(work / "sync.nn")
    if not (work / f"s1b{batch}" / "checkpoint.npz").exists():
        assert main(args) == 0
    one = load_checkpoint(work / f"s1b{batch}" / "checkpoint.npz")
    out = f"s{ranks}b{batch}"
    args = train_args(work, out, "--batch", str(batch))
    args[1] = str(work / "sync.nn")
    r = mpirun(ranks, args)
    assert r.returncode == 0, r.stderr
    many = load_checkpoint(work / out / "checkpoint.npz")
    assert many["step"] == one["step"]
    # (the bias of the dense layer before batch norm gets no gradient: it stays
    # at zero up to rounding, which a relative measure would magnify)
    errs = {k: float(np.max(np.abs(v - many["model"][k])) / max(np.max(np.abs(v)), 1e-3))
            for k, v in one["model"].items()}
    assert max(errs.values()) < 1e-10, errs
    running = [k for k in one["model"] if "running" in k]
    assert running, sorted(one["model"])
    if ranks != 2:
        return
    # without sync_bn the ranks' statistics are their shards', and differ
    plain = train_args(work, f"p{ranks}b{batch}", "--batch", str(batch))
    (work / "nosync.nn").write_text(SYNC_SPEC.replace("sync_bn = true", "sync_bn = false"))
    plain[1] = str(work / "nosync.nn")
    r = mpirun(ranks, plain)
    assert r.returncode == 0, r.stderr
    other = load_checkpoint(work / f"p{ranks}b{batch}" / "checkpoint.npz")
    assert max(np.max(np.abs(other["model"][k] - one["model"][k])) for k in running) > 1e-6
    # ... but they are updated (rank 0's), not left at their initial values
    assert np.all(other["model"]["batchnorm.running_mean"] != 0)
    assert np.all(other["model"]["batchnorm.running_var"] != 1)
