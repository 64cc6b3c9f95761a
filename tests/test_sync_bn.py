"""sync_bn (passes/sync_bn.py): batch norm whose statistics are summed over
the processes of a data-parallel job.  In one process the rewritten program
computes what batchnorm does, gradients and running statistics included;
tests/test_mpi.py checks that N ranks give one process's weights with it."""
import numpy as np
import pytest

import nnspec
from nnspec.errors import SpecError
from nnspec.ops.collective import COMM_INPUT
from nnspec.passes import sync_bn
from nnspec.passes.pipeline import build

SPEC = """\
network bn(c = 3) {{
    input x: [5]
    output y = x -> dense(12) -> reshape([2, 6]) -> batchnorm -> relu -> flatten
                 -> dense(c) -> batchnorm -> tanh -> dense(4)
}}
train {{
    target label: int
    loss = cross_entropy(y, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9)
    {sync}
}}
"""


def pair():
    nets = [nnspec.compile(SPEC.format(sync=s), dtype="float64")
            for s in ("", "sync_bn = true")]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5)) * 2 + 1
    label = rng.integers(0, 4, 7)
    return nets, {"x": x}, {"label": label}


def steps_agree(a, b, x, y, a_whole=False):
    """Three steps of SGD with momentum: a (built with training batchnorm
    whole when a_whole) and b give the same losses, weights and running
    statistics."""
    b.load_state_dict(a.state_dict())
    for _ in range(3):
        with pytest.MonkeyPatch.context() as m:
            m.setattr(sync_bn, "SPLIT", not a_whole)    # a's program is built on its first step
            la = a.train_step(x, y, 0.1)
        lb = b.train_step(x, y, 0.1)
        assert lb == pytest.approx(la, rel=1e-12)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(b.state_dict()[k], v, rtol=1e-10, atol=1e-13, err_msg=k)


@pytest.fixture
def interpreted(monkeypatch):
    """The programs run by the NumPy interpreter (ReferenceStep): these tests
    compare graphs, and the op table checks each op's kernels against it."""
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")


def test_one_process_computes_batchnorm(interpreted):
    # [B, C, L] and [B, C] statistics, against batchnorm kept whole
    (plain, synced), x, y = pair()
    steps_agree(plain, synced, x, y, a_whole=True)


def test_the_split_form_computes_batchnorm(interpreted):
    # without sync_bn a CPU training program runs batchnorm split (its
    # statistics once per value): the same as batchnorm whole
    (whole, _), x, y = pair()
    (split, _), _, _ = pair()
    steps_agree(whole, split, x, y, a_whole=True)
    ops = [n.op for n in build(split.graph, "train", "float64").graph.nodes()]
    assert ops.count("batchnorm") == 0 and ops.count("batchnorm_synced") == 2
    assert ops.count("bn_sums") == 2 * 2 + 2 and "allreduce" not in ops
    assert ops.count("batchnorm_stat") == 0 and ops.count("bn_synced_stat") == 4
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sync_bn, "SPLIT", False)
        ops = [n.op for n in build(split.graph, "train", "float64").graph.nodes()]
    assert ops.count("batchnorm") == 2 and "bn_sums" not in ops


def test_the_pass_sums_each_statistic_once_and_leaves_eval_alone():
    (plain, synced), _, _ = pair()
    g = synced.graph
    train = build(g, "train", "float64").graph
    ops = [n.op for n in train.nodes()]
    # per batch norm: two sums forward (x, sq) and one backward (grad), each
    # summed by an allreduce (the first norm's input gradient feeds the
    # first dense layer's weights, so it is computed too)
    assert ops.count("batchnorm") == 0 and ops.count("batchnorm_synced") == 2
    assert ops.count("bn_sums") == 2 * 2 + 2        # x and sq forward, grad backward
    assert ops.count("allreduce") == 6
    assert COMM_INPUT in train.inputs
    assert ops.count("bn_synced_stat") == 4
    for kind in ("eval", "infer"):
        b = build(g, kind, "float64").graph
        assert COMM_INPUT not in b and not any(n.op == "allreduce" for n in b.nodes())
    assert not any(n.op == "allreduce" for n in build(plain.graph, "train").graph.nodes())


def test_sync_bn_is_a_bool():
    text = SPEC.format(sync="sync_bn = 2")
    with pytest.raises(SpecError, match="sync_bn takes true or false") as e:
        nnspec.compile(text)
    assert e.value.loc is not None and e.value.loc.line == 10
