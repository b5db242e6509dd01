"""Tests of keras_infformer.layers.InfiniteFormerDecoder (any backend).

The central checks: streaming a sequence segment by segment through the
short-term memory gives exactly the block's math on `[cache; segment]`
(against an independent float64 NumPy re-implementation of a pre-norm
block), the stateful and explicit-state paths agree, resets isolate rows,
and bad input fails with a ValueError before the memory is touched.
"""

import numpy as np
import pytest

import keras
from keras import ops

from keras_infformer.layers import InfiniteFormerDecoder

BATCH = 2
SEGMENT = 8
HIDDEN = 16
HEADS = 2
MEMORY = 16


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _block(seed=0, **kwargs):
    config = dict(
        intermediate_dim=32,
        num_heads=HEADS,
        memory_length=MEMORY,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        dropout=0.0,
    )
    config.update(kwargs)
    keras.utils.set_random_seed(seed)
    return InfiniteFormerDecoder(**config)


def _stream(seed, num_segments, batch=BATCH, length=SEGMENT):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(num_segments, batch, length, HIDDEN)).astype("float32")


def _state_np(state):
    return {k: _np(v) for k, v in state.items()}


def _assert_states_equal(a, b, atol=0.0):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(_np(a[key]), _np(b[key]), atol=atol, err_msg=key)


# -- An independent NumPy (float64) pre-norm block --------------------------


def _layer_norm(x, gamma, beta, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _rotary(x, positions, max_wavelength=10000):
    """keras_hub RotaryEmbedding: x (B, T, H, K) at `positions` (T,)."""
    dim = x.shape[-1]
    inverse_freq = max_wavelength ** (-np.arange(0, dim, 2) / dim)
    freq = positions[:, None] * inverse_freq[None, :]
    angle = np.concatenate([freq, freq], axis=-1)[None, :, None, :]
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    rotated = np.concatenate([-x2, x1], axis=-1)
    return x * np.cos(angle) + rotated * np.sin(angle)


def _weights(block):
    w = lambda v: _np(v).astype(np.float64)  # noqa: E731
    return dict(
        ln1_g=w(block._attention_norm.gamma),
        ln1_b=w(block._attention_norm.beta),
        wq=w(block._query_dense.kernel),
        wk=w(block._key_dense.kernel),
        wv=w(block._value_dense.kernel),
        wo=w(block._attention_output_dense.kernel),
        ln2_g=w(block._feedforward_norm.gamma),
        ln2_b=w(block._feedforward_norm.beta),
        w1=w(block._feedforward_intermediate.kernel),
        b1=w(block._feedforward_intermediate.bias),
        w2=w(block._feedforward_output.kernel),
        b2=w(block._feedforward_output.bias),
    )


def _reference_block(w, cache, cache_mask, x):
    """One pre-norm block (no LTM) over [cache; x]; float64.

    cache (B, M, d), cache_mask (B, M) bool, x (B, L, d) -> (B, L, d).
    """
    memory, length = cache.shape[1], x.shape[1]
    window = np.concatenate([cache, x], axis=1)
    normed = _layer_norm(window, w["ln1_g"], w["ln1_b"])
    q = np.einsum("btd,dhk->bthk", normed[:, memory:], w["wq"])
    k = np.einsum("btd,dhk->bthk", normed, w["wk"])
    v = np.einsum("btd,dhk->bthk", normed, w["wv"])
    q = _rotary(q, np.arange(memory, memory + length, dtype=np.float64))
    k = _rotary(k, np.arange(memory + length, dtype=np.float64))
    scores = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    causal = np.arange(memory + length)[None, :] <= (
        np.arange(length)[:, None] + memory
    )
    valid = np.concatenate([cache_mask, np.ones((x.shape[0], length), bool)], 1)
    mask = causal[None, None] & valid[:, None, None, :]
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bhqs,bshk->bqhk", probs, v)
    x = x + np.einsum("bqhk,hkd->bqd", attended, w["wo"])
    h = _layer_norm(x, w["ln2_g"], w["ln2_b"])
    h = np.maximum(h @ w["w1"] + w["b1"], 0.0) @ w["w2"] + w["b2"]
    return x + h


# -- Tests --------------------------------------------------------------------


def test_config_round_trip_symbolic_and_eager_call():
    block = _block(sticky_memories=True)
    config = block.get_config()
    clone = InfiniteFormerDecoder.from_config(config)
    assert clone.get_config() == config

    symbolic = keras.KerasTensor((BATCH, SEGMENT, HIDDEN))
    out = block(symbolic)
    assert tuple(out.shape) == (BATCH, SEGMENT, HIDDEN)
    reset = keras.KerasTensor((BATCH,), dtype="bool")
    out, state = block(symbolic, reset=reset, state=block.state_spec(BATCH))
    assert tuple(out.shape) == (BATCH, SEGMENT, HIDDEN)
    assert set(state) == set(block.state_spec())

    x = _stream(0, 1)[0]
    out, mu, sigma_sq = block(x, return_density=True)
    assert tuple(out.shape) == (BATCH, SEGMENT, HIDDEN)
    assert tuple(mu.shape) == tuple(sigma_sq.shape) == (BATCH, HEADS, SEGMENT)
    assert np.all(np.isfinite(_np(out)))
    assert {k: tuple(v.shape) for k, v in block.get_state().items()} == {
        "stm": (BATCH, MEMORY, HIDDEN),
        "stm_mask": (BATCH, MEMORY),
        "ltm_coefficients": (BATCH, 16, HIDDEN),
        "ltm_filled": (BATCH,),
        "ltm_max_abs": (BATCH,),
        "ltm_density": (BATCH, 16),
    }
    for value in block.get_state().values():
        assert keras.backend.standardize_dtype(value.dtype) == "float32"


@pytest.mark.parametrize("memory_length", [MEMORY, 4])
def test_streaming_equals_numpy_reference_without_ltm(memory_length):
    """Segment-by-segment streaming == the block's math on [cache; segment].

    The cache is kept independently here (the last MEMORY inputs, with a
    validity mask); row 1 starts a new document at segment 5. A memory
    shorter than the segment is allowed without the LTM.
    """
    block = _block(use_long_term_memory=False, memory_length=memory_length)
    segments = _stream(1, 10)
    block(segments[0])  # Build, then start from empty memory.
    block.reset_state()
    weights = _weights(block)
    cache = np.zeros((BATCH, memory_length, HIDDEN))
    cache_mask = np.zeros((BATCH, memory_length), bool)
    for s, x in enumerate(segments):
        reset = np.array([s == 0, s in (0, 5)])
        cache_mask &= ~reset[:, None]
        expected = _reference_block(weights, cache, cache_mask, x.astype(np.float64))
        got = _np(block(x, reset=reset))
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-5, err_msg=f"s={s}")
        cache = np.concatenate([cache, x], axis=1)[:, -memory_length:]
        cache_mask = np.concatenate(
            [cache_mask, np.ones((BATCH, SEGMENT), bool)], axis=1
        )[:, -memory_length:]
    # The reference is not trivially satisfied: the memory changes outputs.
    fresh = _reference_block(
        weights, cache, np.zeros_like(cache_mask), segments[-1].astype(np.float64)
    )
    assert np.abs(fresh - got).max() > 1e-3


@pytest.mark.parametrize("use_ltm", [False, True])
def test_streaming_equals_one_pass_when_stream_fits_in_window(use_ltm):
    """A stream of <= memory_length + L tokens: same as one causal pass.

    Positions are relative (rotary), so the streamed segments see exactly
    what a single pass over the whole stream sees. With the LTM on, nothing
    has left the STM yet, so the (empty) LTM adds nothing.
    """
    num_segments = 3 if not use_ltm else 2
    total = num_segments * SEGMENT
    block = _block(use_long_term_memory=use_ltm)
    segments = _stream(2, num_segments)
    streamed = [_np(block(x)) for x in segments]
    streamed = np.concatenate(streamed, axis=1)

    whole = _block(
        use_long_term_memory=use_ltm,
        memory_length=max(MEMORY, total),
        stateful=False,
    )
    stream = np.concatenate(list(segments), axis=1)
    whole.build((None, total, HIDDEN))
    trainable = {w.path.split("/", 1)[1]: w for w in whole.trainable_weights}
    for w in block.trainable_weights:
        trainable[w.path.split("/", 1)[1]].assign(w.value)
    one_pass, _ = whole(stream, state=whole.get_initial_state(BATCH))
    np.testing.assert_allclose(streamed, _np(one_pass), atol=2e-5, rtol=1e-5)


def _run_stateful_and_explicit(block, segments, resets):
    state = block.get_initial_state(BATCH)
    block.reset_state()
    before = _state_np(block.get_state())
    explicit = []
    for x, reset in zip(segments, resets):
        out, state = block(x, reset=reset, state=state)
        explicit.append(_np(out))
    # The explicit-state path touched no variable.
    _assert_states_equal(before, block.get_state())
    stateful = [_np(block(x, reset=reset)) for x, reset in zip(segments, resets)]
    return explicit, stateful, state


@pytest.mark.parametrize(
    "config",
    [
        dict(use_long_term_memory=False),
        dict(),
        dict(sticky_memories=True),
    ],
    ids=["xl", "ltm", "sticky"],
)
def test_stateful_equals_explicit_state(config):
    block = _block(memory_length=SEGMENT, **config)
    segments = _stream(3, 10)
    block(segments[0])
    resets = [np.array([s == 0, s in (0, 4, 7)]) for s in range(10)]
    explicit, stateful, state = _run_stateful_and_explicit(block, segments, resets)
    for s, (a, b) in enumerate(zip(explicit, stateful)):
        np.testing.assert_allclose(a, b, atol=1e-5, err_msg=f"segment {s}")
    _assert_states_equal(state, block.get_state(), atol=1e-5)
    if block.use_long_term_memory:
        assert np.all(_np(state["ltm_filled"]) == 1.0)


def test_stateless_layer_has_only_the_explicit_state_path():
    block = _block(stateful=False, sticky_memories=True)
    x = _stream(4, 2)
    block.build((None, SEGMENT, HIDDEN))
    assert block.non_trainable_weights == []
    state = block.get_initial_state(BATCH)
    for segment in x:
        out, state = block(segment, state=state)
    assert tuple(out.shape) == (BATCH, SEGMENT, HIDDEN)
    assert set(state) == set(block.state_spec())
    with pytest.raises(ValueError, match="keeps no memory variables"):
        block(x[0])
    with pytest.raises(ValueError, match="keeps no memory variables"):
        block.get_state()


@pytest.mark.parametrize(
    "sticky,memory_length",
    [(False, SEGMENT), (True, SEGMENT), (False, 12)],
    ids=["ltm", "sticky", "ltm-memory-12"],
)
def test_reset_isolates_rows_and_forgets_the_past(sticky, memory_length):
    """Row 0's outputs depend neither on row 1 nor on its own pre-reset past.

    With memory_length = 12 (not a multiple of L = 8) the first block that
    leaves the STM after a reset is only partly filled.
    """
    block = _block(memory_length=memory_length, sticky_memories=sticky)
    rng = np.random.default_rng(5)
    history = _stream(6, 6)  # Six segments before the reset.
    document = _stream(7, 6)  # The new document, row 0.
    block(history[0])

    def run(segments, resets):
        block.reset_state()
        return [_np(block(x, reset=r)) for x, r in zip(segments, resets)]

    # Run A: row 0 sees history, then resets and reads `document`.
    stream_a = np.concatenate([history, document])
    resets = [np.array([s in (0, 6), s == 0]) for s in range(12)]
    out_a = run(stream_a, resets)
    # Run B: row 1 sees something else entirely (and resets elsewhere).
    stream_b = stream_a.copy()
    stream_b[:, 1] = rng.normal(size=stream_b[:, 1].shape)
    resets_b = [np.array([s in (0, 6), s in (0, 3, 9)]) for s in range(12)]
    out_b = run(stream_b, resets_b)
    for s in range(12):
        np.testing.assert_array_equal(out_a[s][0], out_b[s][0])
        assert not np.allclose(out_a[s][1], out_b[s][1])
    # Run C: a fresh memory reads only `document`.
    out_c = run(document, [np.array([s == 0, s == 0]) for s in range(6)])
    for s in range(6):
        np.testing.assert_allclose(out_a[6 + s][0], out_c[s][0], atol=1e-6)
    # Without the reset, the past would matter (so the test can fail).
    out_d = run(stream_a, [np.array([s == 0, s == 0]) for s in range(12)])
    assert not np.allclose(out_d[7][0], out_c[1][0], atol=1e-4)


def test_every_token_enters_the_ltm_when_memory_is_not_a_multiple_of_l():
    """memory_length = 12, L = 8: the first block to leave the STM after a
    reset holds only 4 tokens (the first 4 of the document). They must still
    reach the LTM (they used to be dropped), and only in their own row."""
    block = _block(memory_length=12)
    segments = _stream(11, 5)
    changed = segments.copy()
    changed[0, 0, :4] += np.random.default_rng(12).normal(size=(4, HIDDEN))

    def run(stream):
        block.reset_state()
        outputs, filled = [], []
        for x in stream:
            outputs.append(_np(block(x)))
            filled.append(_np(block.get_state()["ltm_filled"]))
        return outputs, filled, _np(block.get_state()["ltm_coefficients"])

    out_a, filled, coefficients_a = run(segments)
    out_b, _, coefficients_b = run(changed)
    # Segment 1 absorbs the partly filled block [4 empty slots, tokens 0-3].
    assert [f.tolist() for f in filled[:2]] == [[0.0, 0.0], [1.0, 1.0]]
    assert np.abs(coefficients_a[0] - coefficients_b[0]).max() > 1e-3
    np.testing.assert_array_equal(coefficients_a[1], coefficients_b[1])
    # Segment 4 (tokens 32-39) sees tokens 0-3 only through the LTM.
    assert np.abs(out_a[4][0] - out_b[4][0]).max() > 1e-4
    np.testing.assert_array_equal(out_a[4][1], out_b[4][1])


def test_memory_length_shorter_than_segment_with_ltm_fails_at_build():
    block = _block(memory_length=4)
    with pytest.raises(ValueError, match="memory_length=4"):
        block(_stream(0, 1)[0])
    # Without the LTM it is allowed (plain Transformer-XL).
    out = _block(memory_length=4, use_long_term_memory=False)(_stream(0, 1)[0])
    assert tuple(out.shape) == (BATCH, SEGMENT, HIDDEN)


def test_bad_input_raises_and_leaves_memory_untouched():
    block = _block(sticky_memories=True)
    segments = _stream(8, 3)
    for x in segments:
        block(x)
    before = _state_np(block.get_state())

    with pytest.raises(ValueError, match=r"inputs.shape=\(2, 5, 16\)"):
        block(segments[0][:, :5])
    with pytest.raises(ValueError, match=r"inputs.shape=\(3, 8, 16\)"):
        block(_stream(9, 1, batch=3)[0])
    with pytest.raises(ValueError, match=r"reset.shape=\(3,\)"):
        block(segments[0], reset=np.array([True, False, True]))
    with pytest.raises(ValueError, match=r"reset.shape=\(2, 1\)"):
        block(segments[0], reset=np.array([[True], [False]]))
    bad = segments[0].copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        block(bad)

    state = block.get_initial_state(BATCH)
    missing = {k: v for k, v in state.items() if k != "ltm_filled"}
    with pytest.raises(ValueError, match="ltm_filled"):
        block(segments[0], state=missing)
    wrong = dict(state, stm=ops.zeros((BATCH, MEMORY + 1, HIDDEN)))
    with pytest.raises(ValueError, match=r"state\['stm'\]"):
        block(segments[0], state=wrong)
    wrong = dict(state, ltm_coefficients=ops.zeros((BATCH + 1, 16, HIDDEN)))
    with pytest.raises(ValueError, match="ltm_coefficients"):
        block(segments[0], state=wrong)

    _assert_states_equal(before, block.get_state())
