"""Initial weights of every public layer and model (any backend).

An unseeded Keras 3 initializer *instance* returns the same values at every
call, so one instance shared by several sublayers made Q = K = V and equal
kernels in every block; the suite's references read those kernels back and
could not see, e.g., the key and value projections swapped. Checked here, on
freshly built instances:

- no two randomly initialised trainable weights are equal, nor the same
  draw up to shape and scale (the flattened leading values of any two,
  e.g. the two feed-forward kernels (d, f) and (f, d), are not
  proportional);
- the global seed decides the weights: the same seed twice gives identical
  weights, two seeds give different ones;
- with a user's int-seeded initializer the kernels are still pairwise
  distinct, and reproducible whatever the global seed.

Weights are addressed by their public paths, never by private attributes.
"""

import itertools

import keras
import numpy as np
import pytest
from keras import ops

import keras_infformer
from keras_infformer.layers import (
    CompressiveMemory,
    ContinuousLTM,
    GaussianAttention,
    InfiniteFormerDecoder,
    StickyMemorySampler,
)

BATCH, SEGMENT, HIDDEN, FFN = 2, 8, 16, 32


def _gaussian_attention(**kwargs):
    layer = GaussianAttention(num_heads=2, key_dim=8, **kwargs)
    layer.build((BATCH, SEGMENT, HIDDEN), (BATCH, 16, HIDDEN))
    return layer


def _decoder(**kwargs):
    layer = InfiniteFormerDecoder(
        intermediate_dim=FFN,
        num_heads=2,
        memory_length=SEGMENT,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        sticky_memories=True,
        compressed_memory_length=4,
        compression_rate=4,
        **kwargs,
    )
    layer.build((BATCH, SEGMENT, HIDDEN))
    return layer


def _compressive(**kwargs):
    layer = CompressiveMemory(memory_length=4, compression_rate=4, **kwargs)
    layer.build((BATCH, SEGMENT, HIDDEN))
    return layer


def _memory_attention(**kwargs):
    layer = keras_infformer.ContinuousMemoryAttention(
        num_heads=2, key_dim=8, num_basis=16, num_samples=16, **kwargs
    )
    layer.build((BATCH, SEGMENT, HIDDEN), (BATCH, SEGMENT, HIDDEN))
    return layer


def _lm():
    return keras_infformer.InfiniteFormerLM(
        vocabulary_size=20,
        segment_length=SEGMENT,
        batch_size=BATCH,
        num_layers=2,
        hidden_dim=HIDDEN,
        num_heads=2,
        intermediate_dim=FFN,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        sticky_memories=True,
        compressed_memory_length=4,
        dropout=0.0,
    )


BUILDERS = {
    "GaussianAttention": _gaussian_attention,
    "InfiniteFormerDecoder": _decoder,
    "CompressiveMemory": _compressive,
    "ContinuousMemoryAttention": _memory_attention,
    "InfiniteFormerLM": _lm,
}
# Layers that take a `kernel_initializer`.
SEEDABLE = [
    "GaussianAttention",
    "InfiniteFormerDecoder",
    "CompressiveMemory",
    "ContinuousMemoryAttention",
]
# Randomly initialised weights per fresh instance, at least: CompressiveMemory
# has a single kernel (its convolution), the others several.
MIN_RANDOM = {"CompressiveMemory": 1}


def _values(layer):
    """Trainable weights by path, as float64 NumPy arrays."""
    return {
        w.path: np.asarray(ops.convert_to_numpy(w), np.float64) for w in layer.trainable_weights
    }


def _random(values):
    """The randomly initialised weights: not one value repeated (gammas of
    ones and zero biases are equal by design and left out)."""
    return {k: v for k, v in values.items() if v.size > 1 and np.ptp(v) > 0}


def _same_draw(a, b):
    """Whether two weights hold the same random draw, up to shape and scale:
    their flattened leading values are (nearly) proportional. Independent
    draws of >= 16 values have a correlation of order 1/4 at most."""
    n = min(a.size, b.size)
    a, b = a.ravel()[:n], b.ravel()[:n]
    return abs(np.corrcoef(a, b)[0, 1]) > 0.99


def _assert_pairwise_distinct(values, minimum=2):
    random = _random(values)
    assert len(random) >= minimum, sorted(values)
    for (name_a, a), (name_b, b) in itertools.combinations(random.items(), 2):
        if a.shape == b.shape:
            assert not np.array_equal(a, b), (name_a, name_b)
        assert not _same_draw(a, b), (name_a, name_b)


def _feedforward_kernels(values):
    """The (d, f) and (f, d) feed-forward kernels of each block."""
    blocks = {}
    for path, value in values.items():
        for part in ("feedforward_intermediate", "feedforward_output"):
            if path.endswith(f"{part}/kernel"):
                blocks.setdefault(path[: -len(f"{part}/kernel")], {})[part] = value
    return list(blocks.values())


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_fresh_weights_are_pairwise_distinct(name):
    values = _values(BUILDERS[name]())
    _assert_pairwise_distinct(values, MIN_RANDOM.get(name, 2))
    if name in ("InfiniteFormerDecoder", "InfiniteFormerLM"):
        pairs = _feedforward_kernels(values)
        assert len(pairs) == (2 if name == "InfiniteFormerLM" else 1)
        for pair in pairs:
            w1, w2 = pair["feedforward_intermediate"], pair["feedforward_output"]
            assert w1.shape == (HIDDEN, FFN) and w2.shape == (FFN, HIDDEN)
            # The leading (d, d) blocks, as laid out and transposed.
            for block in (w2[:HIDDEN], w2.T[:, :HIDDEN].T):
                assert not np.allclose(w1[:, :HIDDEN], block)
            assert not np.allclose(w1.ravel(), w2.ravel())


def test_layers_without_kernels_have_no_trainable_weights():
    ltm = ContinuousLTM(num_basis=16, num_samples=16)
    ltm.build((BATCH, SEGMENT, HIDDEN))
    sampler = StickyMemorySampler(num_samples=16, num_bins=16)
    sampler(np.full((BATCH, 2, 3), 0.5, "float32"), np.full((BATCH, 2, 3), 0.01, "float32"))
    assert ltm.trainable_weights == [] and sampler.trainable_weights == []


def _build_with_seed(name, seed, **kwargs):
    keras.utils.clear_session(free_memory=False)  # The same paths each time.
    keras.utils.set_random_seed(seed)
    return _values(BUILDERS[name](**kwargs))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_global_seed_decides_the_weights(name):
    first = _build_with_seed(name, 1)
    again = _build_with_seed(name, 1)
    other = _build_with_seed(name, 2)
    assert list(first) == list(again) == list(other)
    for path in first:
        np.testing.assert_array_equal(first[path], again[path], err_msg=path)
    for path in _random(first):
        assert not np.allclose(first[path], other[path]), path


@pytest.mark.parametrize("name", SEEDABLE)
def test_int_seeded_initializer_gives_distinct_reproducible_kernels(name):
    def build(global_seed):
        initializer = keras.initializers.GlorotUniform(seed=3)
        return _build_with_seed(name, global_seed, kernel_initializer=initializer)

    first, again, other = build(1), build(1), build(2)
    _assert_pairwise_distinct(first, MIN_RANDOM.get(name, 2))
    for path in first:
        np.testing.assert_array_equal(first[path], again[path], err_msg=path)
    # The kernels come from the user's seeded initializer alone: the same
    # under another global seed.
    kernels = [path for path in first if path.endswith("/kernel")]
    assert len(kernels) >= 1
    for path in kernels:
        np.testing.assert_array_equal(first[path], other[path], err_msg=path)


@pytest.mark.parametrize("name", SEEDABLE)
def test_one_unseeded_initializer_instance_shared_by_two_layers(name):
    """An unseeded instance given to two layers (and so to all their
    sublayers) still gives every kernel of both its own values."""
    initializer = keras.initializers.GlorotUniform()
    first = BUILDERS[name](kernel_initializer=initializer)
    second = BUILDERS[name](kernel_initializer=initializer)
    values = {**_values(first), **_values(second)}
    assert len(values) == 2 * len(first.trainable_weights)  # Distinct paths.
    _assert_pairwise_distinct(values)
