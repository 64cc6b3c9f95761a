"""The model zoo (specs/): every spec checks; the published architectures have
exactly their reference implementations' parameter counts; `inspect --json`
keeps its keys; lowering is deterministic, fast and never imports Numba."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import nnspec
from nnspec.cli import main as cli
from nnspec.frontend import check_file

SPECS = Path(__file__).resolve().parent.parent / "specs"
ZOO = sorted(SPECS.rglob("*.nn"))


def spec_id(p: Path) -> str:
    return str(p.relative_to(SPECS))


def test_zoo_is_complete():
    names = {spec_id(p) for p in ZOO}
    for name in ("mlp.nn", "maxout_mlp.nn", "cnn.nn", "lenet5.nn", "alexnet.nn", "zfnet.nn",
                 "vgg16.nn", "googlenet.nn", "inception_v3.nn", "resnet18.nn", "resnet50.nn",
                 "densenet121.nn", "xception.nn", "unet.nn", "wavenet.nn", "elman_rnn.nn",
                 "jordan_rnn.nn", "jordan_sequence.nn", "birnn.nn", "seq2seq.nn", "lstm_1997.nn",
                 "lstm.nn", "lstm_peephole.nn", "gru.nn", "lstm_adding.nn", "recursive_tree.nn"):
        assert name in names, f"specs/{name} is missing"


@pytest.mark.parametrize("path", ZOO, ids=spec_id)
def test_spec_checks(path):
    errors = check_file(path)
    assert not errors, "\n".join(e.render() for e in errors)


# (spec, --set overrides, trainable parameters): the reference is torchvision
# unless noted.
PARAMS = [
    ("lenet5.nn", {}, 61_706),
    ("alexnet.nn", {}, 61_100_840),
    ("vgg16.nn", {}, 138_357_544),
    ("googlenet.nn", {}, 13_378_280),               # the paper's, with both auxiliary heads
    ("googlenet.nn", {"aux": False}, 6_998_552),
    ("inception_v3.nn", {}, 27_161_264),            # aux_logits=True
    ("resnet18.nn", {}, 11_689_512),
    ("resnet50.nn", {}, 25_557_032),
    ("densenet121.nn", {}, 7_978_856),
    ("xception.nn", {}, 22_855_952),                # Keras
    ("unet.nn", {}, 31_030_658),                    # the paper's, 2 classes
]


@pytest.mark.parametrize("name, overrides, params", PARAMS,
                         ids=[f"{n}{''.join(f'-{k}={v}' for k, v in o.items())}"
                              for n, o, _ in PARAMS])
def test_parameter_count(name, overrides, params):
    graph = nnspec.lower(SPECS / name, set=overrides)
    assert graph.count("param") == params


def test_xception_batchnorm_statistics():
    # Keras's non-trainable weights: moving mean and variance of every batch norm
    assert nnspec.lower(SPECS / "xception.nn").count("state") == 54_528


def test_googlenet_aux_heads_are_outputs_only_with_aux():
    with_aux = nnspec.lower(SPECS / "googlenet.nn")
    without = nnspec.lower(SPECS / "googlenet.nn", set={"aux": False})
    assert set(with_aux.outputs) == {"logits", "aux1", "aux2"}
    assert set(without.outputs) == {"logits"}


def test_inspect_json():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["inspect", str(SPECS / "lenet5.nn"), "--json"]) == 0
    info = json.loads(out.getvalue())
    assert set(info) == {"name", "dtype", "inputs", "targets", "outputs", "layers",
                         "trainable_params", "state", "macs"}
    assert info["trainable_params"] == 61_706 and info["state"] == 0
    assert info["inputs"] == {"x": ["B", 1, 32, 32]}
    assert info["outputs"] == {"logits": ["B", 10]}
    assert sum(row["params"] for row in info["layers"]) == 61_706
    for row in info["layers"]:
        assert {"name", "op", "shape", "params", "state", "macs"} <= set(row)


def test_inspect_set_overrides():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["inspect", str(SPECS / "googlenet.nn"), "--set", "aux=false",
                    "--json"]) == 0
    assert json.loads(out.getvalue())["trainable_params"] == 6_998_552


@pytest.mark.parametrize("name", ["resnet18.nn", "googlenet.nn", "lstm.nn", "seq2seq.nn"])
def test_lowering_is_deterministic(name):
    assert nnspec.lower(SPECS / name).hash() == nnspec.lower(SPECS / name).hash()


# Run in a fresh interpreter: check the whole zoo, time it (CPU time: the wall
# clock of a loaded test machine says little), see what got imported, and hash
# every graph (a different PYTHONHASHSEED per run catches set-ordering leaks).
PROBE = r"""
import json, sys, time
from pathlib import Path
import nnspec
from nnspec.frontend import check_file
specs = sorted(Path(sys.argv[1]).rglob("*.nn"))
t = time.process_time()
bad = [str(p) for p in specs if check_file(p)]
seconds = time.process_time() - t
hashes = {str(p): nnspec.lower(p).hash() for p in specs if "lib" not in p.parts}
print(json.dumps({"seconds": seconds, "bad": bad, "numba": "numba" in sys.modules,
                  "hashes": hashes}))
"""


def probe(seed: str) -> dict:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run([sys.executable, "-c", PROBE, str(SPECS)], capture_output=True,
                         text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_check_whole_zoo_fast_without_numba_and_stable_across_processes():
    a, b = probe("1"), probe("2")
    assert a["bad"] == []
    assert not a["numba"], "checking specs must not import Numba"
    assert min(a["seconds"], b["seconds"]) < 2.0
    assert a["hashes"] == b["hashes"]
