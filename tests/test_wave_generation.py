"""A next-sample model's own waveform (train/decode.py `generate_samples`,
`write_wav`): each new level comes from the logits at the last position of
a window of the network's length, sliding once the waveform is longer."""
import wave

import numpy as np
import pytest

import nnspec
from nnspec.errors import DataError
from nnspec.train.decode import generate_samples, write_wav

Q, L = 7, 4


@pytest.fixture(scope="module")
def counter():
    """logits[t] favour level (x[t] + 1) mod Q: a 1x1 convolution whose weight
    is a cyclic shift (greedy decoding then counts up)."""
    net = nnspec.compile(f"""
network counter(q = {Q}, length = {L}) {{
    input x: [q, length]
    output logits = x -> conv1d(q, 1, bias=false)
}}
""", dtype="float64")
    w = net.params["logits.weight"]
    w[...] = 0
    for i in range(Q):
        w[(i + 1) % Q, i, 0] = 10.0
    return net


def test_greedy_generation_follows_the_model_past_its_length(counter):
    out = generate_samples(counter, np.array([[3], [5]]), 9, temperature=0)
    want = [(np.arange(10) + s) % Q for s in (3, 5)]
    np.testing.assert_array_equal(out, want)       # 10 levels: the window slid 6 times


def test_sampling_is_seeded_and_keeps_the_prompt(counter):
    prompt = np.array([[1, 2, 6]])
    a = generate_samples(counter, prompt, 6, temperature=5.0, seed=1)
    b = generate_samples(counter, prompt, 6, temperature=5.0, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, :3], prompt)
    assert a.min() >= 0 and a.max() < Q
    assert not np.array_equal(a, generate_samples(counter, prompt, 6, temperature=0))


def test_bad_prompts_are_data_errors(counter):
    with pytest.raises(DataError, match="0..6"):
        generate_samples(counter, np.array([[9]]), 3)
    with pytest.raises(DataError, match="at least one level"):
        generate_samples(counter, np.zeros((1, 0), int), 3)


def test_wav_holds_the_decoded_levels(tmp_path):
    levels = np.array([0, 64, 128, 191, 255])
    write_wav(tmp_path / "w.wav", levels, 256, rate=8000)
    with wave.open(str(tmp_path / "w.wav")) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == \
            (1, 2, 8000, 5)
        pcm = np.frombuffer(w.readframes(5), "<i2")
    assert pcm[0] == -32767 and pcm[-1] == 32767 and abs(int(pcm[2])) < 200
    assert np.all(np.diff(pcm) > 0)
