"""Autoregressive decoding over a compiled network, in Python: each new token
is one `net.forward` over everything decoded so far.

    pred = free_running(net, {"src": src}, "prev", start=1, output="logits")
    text = generate(net, chars, prompt="network ", n=200, temperature=0.8, seed=0)

A seq2seq model is trained with teacher forcing: at step t the decoder reads
the true token t-1.  `free_running` decodes as it will be used instead: the
decoder input starts as [start, 0, 0, ...]; after each forward the argmax at
step t is written into position t+1, so every step reads the model's own
previous prediction.  Positions after t hold 0 while step t is decoded; a
causal decoder (a forward recurrence) never reads them.
"""
from __future__ import annotations

import numpy as np

from ..data import n_examples
from ..errors import DataError

BATCH = 512


def free_running(net, inputs: dict, decoder_input: str, start: int, output: str,
                 batch: int = BATCH) -> np.ndarray:
    """Greedy decode: ``[n, T]`` predicted tokens, each step fed the last prediction."""
    if decoder_input not in net.inputs:
        raise DataError(f"decoder_input '{decoder_input}' is not an input of the network "
                        f"(inputs: {', '.join(net.inputs)})")
    n = n_examples(inputs)
    shape = inputs[decoder_input].shape
    pred = np.zeros(shape, np.int64)
    for lo in range(0, n, batch):
        xb = {k: v[lo:lo + batch] for k, v in inputs.items()}
        dec = np.zeros_like(xb[decoder_input])
        dec[:, 0] = start
        for t in range(shape[1]):
            logits = net.forward(**{**xb, decoder_input: dec})[output]
            step = np.argmax(logits[:, t], axis=-1)
            pred[lo:lo + batch, t] = step
            if t + 1 < shape[1]:
                dec[:, t + 1] = step
    return pred


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """A token from softmax(logits / temperature); temperature 0 takes the argmax."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return int(rng.choice(len(p), p=p / p.sum()))


def generate(net, chars: list, prompt: str = "", n: int = 200, *, temperature: float = 1.0,
             seed: int = 0, context: int = 256, output: str | None = None) -> str:
    """`n` characters sampled after `prompt` from a character language model
    (one input of token ids [B, T], logits [B, T, vocab]).  Each step runs the
    network on the last `context` characters and samples from the last
    position's distribution.  The same seed gives the same text."""
    index = {c: i for i, c in enumerate(chars)}
    missing = sorted({c for c in prompt if c not in index})
    if missing:
        raise DataError(f"the prompt holds characters the model never saw: "
                        f"{''.join(missing)!r}")
    if len(net.inputs) != 1:
        raise DataError(f"generate needs a network with one input; this one takes "
                        f"{', '.join(net.inputs)}")
    (name, shape), = net.inputs.items()
    fixed = shape[0] if shape and isinstance(shape[0], int) else None
    output = output or net.outputs[0]
    rng = np.random.default_rng(seed)
    ids = [index[c] for c in prompt] or [index.get("\n", 0)]
    for _ in range(n):
        ctx = ids[-(fixed or context):]
        if fixed and len(ctx) < fixed:            # a fixed-length input: pad on the left
            ctx = [ctx[0]] * (fixed - len(ctx)) + ctx
        logits = net.forward(**{name: np.array([ctx], np.int64)})[output]
        ids.append(sample(logits[0, -1], temperature, rng))
    return "".join(chars[i] for i in ids[len(prompt) if prompt else 1:])


def generate_samples(net, prompt: np.ndarray, n: int, *, temperature: float = 1.0,
                     seed: int = 0, output: str | None = None) -> np.ndarray:
    """Continue each row of `prompt` (``[B, P]`` levels, P >= 1) by `n` levels
    sampled one at a time from a next-sample model (WaveNet: one input of
    one-hot levels ``[B, quant, L]``, channels first, and logits ``[B, quant,
    L]`` whose position t predicts the level at t + 1).  Each step runs the
    network on the last L levels (the network's length; fewer at the start,
    the rest of the window zeros, which a causal network never reads) and
    samples from the distribution at the last of them.  ``[B, P + n]``."""
    if len(net.inputs) != 1:
        raise DataError(f"generating samples needs a network with one input; this one "
                        f"takes {', '.join(net.inputs)}")
    (name, shape), = net.inputs.items()
    if len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        raise DataError(f"generating samples needs an input of one-hot levels [quant, length]; "
                        f"'{name}' is {list(shape)}")
    quant, length = shape
    output = output or net.outputs[0]
    rng = np.random.default_rng(seed)
    levels = np.asarray(prompt, np.int64)
    if levels.ndim != 2 or levels.shape[1] < 1:
        raise DataError("the prompt must hold at least one level per waveform")
    if levels.min() < 0 or levels.max() >= quant:
        raise DataError(f"prompt levels must lie in 0..{quant - 1}")
    B = len(levels)
    out = np.concatenate([levels, np.zeros((B, n), np.int64)], axis=1)
    x = np.zeros((B, quant, length), net._expected(name)[2])
    rows = np.arange(B)[:, None]
    for p in range(levels.shape[1], levels.shape[1] + n):
        window = out[:, max(0, p - length):p]
        w = window.shape[1]
        x[...] = 0
        x[rows, window, np.arange(w)[None, :]] = 1
        logits = net.forward(**{name: x})[output][:, :, w - 1]
        out[:, p] = [sample(row, temperature, rng) for row in logits]
    return out


def write_wav(path, levels: np.ndarray, quant: int = 256, rate: int = 8000) -> None:
    """Mu-law levels ``[T]`` as a 16-bit mono WAV file, written atomically."""
    import io
    import wave

    from ..data.waves import mu_law_inverse
    from .bundle import atomic_write
    pcm = np.round(mu_law_inverse(levels, quant) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    atomic_write(path, lambda f: f.write(buf.getvalue()))
