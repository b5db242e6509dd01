"""Tests of keras_infformer.layers.InfiniteFormerDecoder (any backend).

The central checks: streaming a sequence segment by segment through the
short-term memory gives exactly the block's math on `[cache; segment]`
(against an independent float64 NumPy re-implementation of a pre-norm
block), the stateful and explicit-state paths agree, resets isolate rows,
and bad input fails with a ValueError before the memory is touched.
"""

import keras
import numpy as np
import pytest
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


def _relative_path(layer, variable):
    """`variable.path` without the leading layer name, e.g. "query/kernel"."""
    return variable.path.split("/", 1)[1]


def _randomize(layer, seed):
    """Give every trainable weight its own random values.

    The reference reads the weights back, so a test whose kernels were equal
    (or all ones / zeros) could not tell, e.g., the key from the value
    projection. Each weight gets an independent draw at a sensible scale
    (gammas around 1, small biases, kernels ~ 1/sqrt(fan_in)).
    """
    rng = np.random.default_rng(seed)
    for w in layer.trainable_weights:
        name = _relative_path(layer, w)
        shape = tuple(w.shape)
        if name.endswith("gamma"):
            value = 1.0 + 0.3 * rng.standard_normal(shape)
        elif name.endswith(("beta", "bias")):
            value = 0.2 * rng.standard_normal(shape)
        elif name.split("/")[-2] in ("query", "key", "value"):
            value = rng.standard_normal(shape) / np.sqrt(shape[0])
        else:  # (fan_in..., out) kernels, and w_mu, w_sigma of shape (N,)
            value = rng.standard_normal(shape) / np.sqrt(max(np.prod(shape[:-1]), shape[-1]))
        w.assign(value.astype("float32"))
    values = [_np(w).ravel() for w in layer.trainable_weights]
    for i, a in enumerate(values):
        for b in values[:i]:
            n = min(a.size, b.size)
            assert not np.allclose(a[:n], b[:n])


def _weights(block):
    """The block's trainable weights as float64 arrays, by relative path."""
    return {_relative_path(block, w): _np(w).astype(np.float64) for w in block.trainable_weights}


def _reference_ltm_read(ref, w, query, coefficients, centers, widths, min_variance=1e-6):
    """Gaussian attention over the LTM (docs/theory.md §3), float64.

    query (B, L, h, d_h), the short-term attention's *un-rotated* query;
    coefficients (B, N, d). Returns (output (B, L, d), mu, sigma_sq), the
    latter two (B, h, L).
    """
    k = np.einsum("bne,ehk->bnhk", coefficients, w["long_term_attention/key/kernel"])
    v = np.einsum("bne,ehk->bnhk", coefficients, w["long_term_attention/value/kernel"])
    scores = np.einsum("bqhk,bnhk->bhqn", query, k) / np.sqrt(query.shape[-1])
    mu = 1.0 / (1.0 + np.exp(-scores @ w["long_term_attention/mu_kernel"]))
    sigma_sq = np.maximum(
        np.logaddexp(0.0, scores @ w["long_term_attention/sigma_kernel"]), min_variance
    )
    r = ref.expectation(mu, sigma_sq, centers, widths)  # (B, h, L, N)
    z = np.einsum("bhqn,bnhk->bqhk", r, v)
    output = np.einsum("bqhk,hko->bqo", z, w["long_term_attention/output/kernel"])
    return output, mu, sigma_sq


def _reference_block(w, cache, cache_mask, x, ltm=None):
    """One pre-norm block over [cache; x]; float64.

    cache (B, M, d), cache_mask (B, M) bool, x (B, L, d) -> (B, L, d).
    With `ltm` (a `_ReferenceLTM`), the block adds its Gaussian read, with
    the same un-rotated queries, to the short-term attention output; then
    the L oldest cached vectors (normalised with the attention LayerNorm),
    which leave the short-term window now, are absorbed into it (so a
    vector is never in both memories).
    """
    memory, length = cache.shape[1], x.shape[1]
    window = np.concatenate([cache, x], axis=1)
    normed = _layer_norm(window, w["attention_norm/gamma"], w["attention_norm/beta"])
    q = np.einsum("btd,dhk->bthk", normed[:, memory:], w["query/kernel"])
    k = np.einsum("btd,dhk->bthk", normed, w["key/kernel"])
    v = np.einsum("btd,dhk->bthk", normed, w["value/kernel"])
    rotated_q = _rotary(q, np.arange(memory, memory + length, dtype=np.float64))
    k = _rotary(k, np.arange(memory + length, dtype=np.float64))
    scores = np.einsum("bqhk,bshk->bhqs", rotated_q, k) / np.sqrt(q.shape[-1])
    causal = np.arange(memory + length)[None, :] <= (np.arange(length)[:, None] + memory)
    valid = np.concatenate([cache_mask, np.ones((x.shape[0], length), bool)], 1)
    mask = causal[None, None] & valid[:, None, None, :]
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(-1, keepdims=True)
    attended = np.einsum("bhqs,bshk->bqhk", probs, v)
    attention = np.einsum("bqhk,hkd->bqd", attended, w["attention_output/kernel"])
    if ltm is not None:
        attention = attention + ltm.read(w, q)
        leaving_mask = cache_mask[:, :length]
        ltm.absorb(normed[:, :length] * leaving_mask[..., None], leaving_mask.any(1))
    x = x + attention
    h = _layer_norm(x, w["feedforward_norm/gamma"], w["feedforward_norm/beta"])
    h = np.maximum(
        h @ w["feedforward_intermediate/kernel"] + w["feedforward_intermediate/bias"],
        0.0,
    )
    h = h @ w["feedforward_output/kernel"] + w["feedforward_output/bias"]
    return x + h


class _ReferenceLTM:
    """The continuous memory of every row, float64 (docs/theory.md §2, §4, §5).

    Written from conftest's independent `Reference` (the `ref` fixture:
    basis, ridge fit by the normal equations, signal, Gaussian expectation,
    sticky histogram and its inverse CDF); nothing is read from the layer
    but its trainable weights.
    """

    def __init__(
        self,
        ref,
        batch,
        width,
        num_basis=16,
        basis_widths=(0.01, 0.05),
        ridge_penalty=1.0,
        tau=0.75,
        num_samples=16,
        sticky=False,
        num_bins=16,
        uniform_share=0.5,
    ):
        self.ref = ref
        self.centers, self.widths = ref.basis(num_basis, basis_widths)
        self.penalty, self.tau, self.num_samples = ridge_penalty, tau, num_samples
        self.sticky, self.num_bins = sticky, num_bins
        self.uniform_share = uniform_share
        self.coefficients = np.zeros((batch, num_basis, width))
        self.filled = np.zeros(batch, bool)
        self.max_abs = np.zeros(batch)
        self.density = np.full((batch, num_bins), 1.0 / num_bins)
        self.largest_read = 0.0

    def reset(self, rows):
        self.coefficients[rows] = 0.0
        self.filled[rows] = False
        self.max_abs[rows] = 0.0
        self.density[rows] = 1.0 / self.num_bins

    def absorb(self, leaving, absorbs):
        """leaving (B, L, d): what leaves the STM, empty slots as zeros."""
        m, length = self.num_samples, leaving.shape[1]
        levels = np.arange(1, m + 1) / m
        fit = lambda positions, values: self.ref.ridge_fit(  # noqa: E731
            positions, values, self.centers, self.widths, self.penalty, False
        )
        for b in np.flatnonzero(absorbs):
            if not self.filled[b]:
                self.coefficients[b] = fit((np.arange(length) + 0.5) / length, leaving[b])
                self.max_abs[b] = np.abs(leaving[b]).max()
                self.filled[b] = True
                continue
            # Uniform reads at m/M; sticky (quantile) reads at the inverse
            # CDF of the last pass's histogram, mixed with the flat one.
            mixed = (1 - self.uniform_share) * self.density[b] + (
                self.uniform_share / self.num_bins
            )
            reads = self.ref.inverse_cdf(mixed, levels) if self.sticky else levels
            bound = 2.0 * self.max_abs[b]  # reads clipped to twice the absorbed peak
            old = np.clip(
                self.ref.signal(self.coefficients[b], reads, self.centers, self.widths),
                -bound,
                bound,
            )
            positions = np.concatenate(
                [self.tau * levels, self.tau + (1 - self.tau) * np.arange(1, length + 1) / length]
            )
            self.coefficients[b] = fit(positions, np.concatenate([old, leaving[b]]))
            self.max_abs[b] = max(self.max_abs[b], np.abs(leaving[b]).max())

    def read(self, w, query):
        output, mu, sigma_sq = _reference_ltm_read(
            self.ref, w, query, self.coefficients, self.centers, self.widths
        )
        if self.sticky:
            self.density = self.ref.sticky_histogram(mu, sigma_sq, self.num_bins)
        self.largest_read = max(self.largest_read, np.abs(output).max())
        return output


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


def _stream_against_reference(block, segments, resets, ltm=None, atol=2e-5, rtol=1e-5):
    """Stream `segments` through `block` and through the float64 reference.

    The cache is kept independently here (the last `memory_length` inputs,
    with a validity mask), and `ltm` (a `_ReferenceLTM`) holds the reference
    long-term memory. Returns the reference weights, cache and mask at the
    end and the last output.
    """
    memory_length = block.memory_length
    block.reset_state()
    weights = _weights(block)
    cache = np.zeros((BATCH, memory_length, HIDDEN))
    cache_mask = np.zeros((BATCH, memory_length), bool)
    error = 0.0
    for s, (x, reset) in enumerate(zip(segments, resets)):
        cache_mask &= ~reset[:, None]
        if ltm is not None:
            ltm.reset(reset)
        expected = _reference_block(weights, cache, cache_mask, x.astype(np.float64), ltm)
        got = _np(block(x, reset=reset))
        np.testing.assert_allclose(got, expected, atol=atol, rtol=rtol, err_msg=f"s={s}")
        error = max(error, np.abs(got - expected).max())
        cache = np.concatenate([cache, x], axis=1)[:, -memory_length:]
        cache_mask = np.concatenate([cache_mask, np.ones((BATCH, SEGMENT), bool)], axis=1)[
            :, -memory_length:
        ]
    print(f"max |layer - float64 reference| over {len(segments)} segments: {error:.1e}")
    return weights, cache, cache_mask, got


@pytest.mark.parametrize("memory_length", [MEMORY, 4])
def test_streaming_equals_numpy_reference_without_ltm(memory_length):
    """Segment-by-segment streaming == the block's math on [cache; segment].

    Row 1 starts a new document at segment 5. A memory shorter than the
    segment is allowed without the LTM. Every weight holds its own random
    values, so swapping two projections cannot go unseen.
    """
    block = _block(use_long_term_memory=False, memory_length=memory_length)
    segments = _stream(1, 10)
    block(segments[0])  # Build.
    _randomize(block, seed=memory_length)
    resets = [np.array([s == 0, s in (0, 5)]) for s in range(10)]
    weights, cache, cache_mask, got = _stream_against_reference(block, segments, resets)
    # The reference is not trivially satisfied: the memory changes outputs.
    fresh = _reference_block(
        weights, cache, np.zeros_like(cache_mask), segments[-1].astype(np.float64)
    )
    assert np.abs(fresh - got).max() > 1e-3


@pytest.mark.parametrize(
    "memory_length,sticky",
    [(MEMORY, False), (12, False), (SEGMENT, True)],
    ids=["ltm", "ltm-memory-12", "sticky"],
)
def test_streaming_equals_numpy_reference_with_ltm(ref, memory_length, sticky):
    """The whole block with its long-term path against float64 NumPy.

    What leaves the short-term window (normalised by the attention
    LayerNorm) is ridge-fitted into the LTM (docs/theory.md §2, §4; sticky reads
    at the quantiles of the previous pass's histogram, §1.5), read with the
    shared un-rotated short-term query (§1.3) and summed into the attention
    output; then the residual and the feed-forward sub-block. Twelve
    segments, row 1 restarts at segment 6; every weight its own random
    values. With memory_length = 12 the first block to leave after a reset
    is partly filled (empty slots enter as zeros).
    """
    block = _block(memory_length=memory_length, sticky_memories=sticky)
    segments = _stream(13, 12)
    block(segments[0])  # Build.
    _randomize(block, seed=100 + memory_length)
    # The block's default widths: (2.56, 12.8) / 8 centres per width.
    ltm = _ReferenceLTM(
        ref,
        BATCH,
        HIDDEN,
        num_basis=16,
        basis_widths=(0.32, 1.6),
        num_samples=16,
        sticky=sticky,
        num_bins=16,
    )
    resets = [np.array([s == 0, s in (0, 6)]) for s in range(12)]
    _stream_against_reference(block, segments, resets, ltm=ltm, atol=1e-4, rtol=1e-4)
    # The memory the layer left is the reference's fit.
    state = block.get_state()
    assert np.all(ltm.filled)
    np.testing.assert_array_equal(_np(state["ltm_filled"]), ltm.filled.astype("float32"))
    scale = np.abs(ltm.coefficients).max()
    np.testing.assert_allclose(
        _np(state["ltm_coefficients"]), ltm.coefficients, rtol=0, atol=1e-4 * scale
    )
    np.testing.assert_allclose(_np(state["ltm_max_abs"]), ltm.max_abs, rtol=1e-5)
    # The LTM's share of the output is far above the tolerance, so a read
    # of the wrong memory, or of the right one at the wrong scale, shows.
    print(f"largest |LTM read| {ltm.largest_read:.3f}, memory scale {scale:.3f}")
    assert ltm.largest_read > 0.05


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
    # The paper's initialisation: the memory's read shows in the outputs.
    block = _block(memory_length=memory_length, sticky_memories=sticky, zero_memory_output=False)
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
    block = _block(memory_length=12, zero_memory_output=False)
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


def test_same_seed_infinite_former_starts_as_its_transformer_xl():
    """Same seed: every weight the two blocks share is equal (each sublayer
    seeded from the block's draw and its own name, whatever memories the
    block has), and the memory's read starts at zero, so the ∞-former
    block computes exactly what its Transformer-XL computes, on every
    segment of a stream (DESIGN §6)."""
    infinite = _block(seed=3)
    xl = _block(seed=3, use_long_term_memory=False)
    segments = _stream(21, 5)
    infinite(segments[0])
    xl(segments[0])
    shared = {_relative_path(xl, w): _np(w) for w in xl.trainable_weights}
    own = {_relative_path(infinite, w): _np(w) for w in infinite.trainable_weights}
    assert set(shared) < set(own)
    for name, value in shared.items():
        np.testing.assert_array_equal(own[name], value, err_msg=name)
    # The memory's own weights are drawn too (only its output starts at 0).
    memory_weights = {n: v for n, v in own.items() if n not in shared}
    assert any(np.abs(v).max() > 0 for v in memory_weights.values())
    infinite.reset_state()
    xl.reset_state()
    for x in segments:
        np.testing.assert_allclose(_np(infinite(x)), _np(xl(x)), rtol=0, atol=1e-6)
    assert np.all(_np(infinite.get_state()["ltm_filled"]) == 1.0)


def test_the_ltm_holds_only_what_has_left_the_short_term_window():
    """memory_length = L: segment s attends to segment s - 1 through the
    STM, and the LTM holds segments <= s - 2 only. So the first two
    segments read an empty LTM and equal the Transformer-XL block with the
    same weights (even with a drawn, non-zero memory output); from segment
    2 on, segment 0 is read through the LTM."""
    infinite = _block(seed=4, memory_length=SEGMENT, zero_memory_output=False)
    xl = _block(seed=4, memory_length=SEGMENT, use_long_term_memory=False)
    segments = _stream(22, 3)
    infinite(segments[0])
    xl(segments[0])
    infinite.reset_state()
    xl.reset_state()
    for s, x in enumerate(segments):
        a, b = _np(infinite(x)), _np(xl(x))
        filled = _np(infinite.get_state()["ltm_filled"])
        if s < 2:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=f"s={s}")
        else:
            assert np.abs(a - b).max() > 1e-3
        # Segment 0 enters the LTM when it leaves the STM, at the end of 1.
        assert np.all(filled == (1.0 if s >= 1 else 0.0)), (s, filled)
