"""The command line's check/inspect/graph commands, run in-process."""
import json

import pytest

from nnspec.cli import main, parse_set

MLP = """
network tiny(hidden = 8) {
    input x: [1, 9, 9]
    h = x -> conv2d(4, 3, stride=2) -> relu -> maxpool(2) -> flatten
    output y = h -> dense(hidden) -> relu -> dense(3)
}
train {
    target label: int
    loss = cross_entropy(y, label)
}
"""


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "tiny.nn"
    p.write_text(MLP)
    return p


def test_inspect_table_and_totals(spec, capsys):
    assert main(["inspect", str(spec)]) == 0
    out = capsys.readouterr().out
    # conv 4*(1*3*3)+4 = 40, dense 4*2*2=16 -> 8: 136, dense 8 -> 3: 27
    assert "trainable parameters: 203" in out
    assert "[B, 4, 4, 4]" in out          # floor((9 - 3) / 2) + 1 = 4
    assert "[B, 4, 2, 2]" in out


def test_inspect_json_receptive_field_and_macs(spec, capsys):
    assert main(["inspect", str(spec), "--json", "--set", "hidden=5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trainable_params"] == 40 + (16 * 5 + 5) + (5 * 3 + 3)
    assert info["state"] == 0
    rows = {r["op"]: r for r in info["layers"]}
    conv = rows["conv2d"]
    assert conv["macs"] == 4 * 4 * 4 * 9            # out elements x kernel taps
    assert conv["receptive_field"] == {"size": [3, 3], "jump": [2, 2]}
    pool = rows["maxpool"]                           # 3 + (2-1)*2 = 5, jump 4
    assert pool["receptive_field"] == {"size": [5, 5], "jump": [4, 4]}


def test_inspect_unknown_set_key_is_located(spec, capsys):
    assert main(["inspect", str(spec), "--set", "hiden=3"]) == 1
    err = capsys.readouterr().err
    assert "no argument 'hiden'" in err and "did you mean 'hidden'?" in err


def test_graph_writes_dot_with_backward(spec, tmp_path, capsys):
    out = tmp_path / "g.dot"
    assert main(["graph", str(spec), "-o", str(out), "--backward"]) == 0
    text = out.read_text()
    assert text.startswith("digraph") and "conv2d" in text and '"d/seed"' in text


def test_graph_unknown_format(spec, tmp_path, capsys):
    assert main(["graph", str(spec), "-o", str(tmp_path / "g.xyz")]) == 1
    assert "cannot write '.xyz'" in capsys.readouterr().err


def test_parse_set_values():
    assert parse_set(["a=3", "b=0.5", "c=true", "d=same", "e='x'"]) == \
        {"a": 3, "b": 0.5, "c": True, "d": "same", "e": "x"}


def test_graph_labels_break_lines_the_dot_way(spec, tmp_path):
    out = tmp_path / "g.dot"
    assert main(["graph", str(spec), "-o", str(out)]) == 0
    text = out.read_text()
    # DOT's line break inside a label is backslash-n; an escaped backslash
    # (\\n) is drawn as the two characters
    assert '"x" [label="x\\ninput [B, 1, 9, 9]"' in text
    assert "\\\\n" not in text


def test_python_dash_m_nnspec(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "nnspec", "--help"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 0 and "usage: nnspec" in r.stdout and "train" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "nnspec", "check", "nowhere.nn"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 1 and "nowhere.nn" in bad.stderr
