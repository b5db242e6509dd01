"""Fuzz tests: random malformed input at the package's public entry points.

Every entry point must, for any input, either raise an exception of a
documented type (`ValueError`, `TypeError`; `IndexError` for a step index
out of range) or return finite outputs of the documented shapes. Anything
else (a NaN, a raw NumPy/backend error of another type, a crash) fails.

Layout, so that more entry points can be added (the models' call, fit,
evaluate, predict, step, set_state, the exported signatures; for those,
also check that weights and memory are unchanged after an exception):

- `DOCUMENTED_ERRORS` and `outcome()`: run a call, classify the result;
- strategies for malformed values (`junk_scalars`, `float_arrays`, ...);
- one section per entry point, each test with `FUZZ_SETTINGS`.

Kept fast (30 examples per test, no deadline): it runs in the normal suite
on every backend.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_infformer.data import StreamingDataset
from keras_infformer.layers import StickyMemorySampler

DOCUMENTED_ERRORS = (ValueError, TypeError)

FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run and backend
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # conftest's autouse session reset
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)


def outcome(fn, *args, errors=DOCUMENTED_ERRORS, **kwargs):
    """`(True, result)`, or `(False, error)` for an error of a documented
    type; any other exception propagates and fails the test."""
    try:
        result = fn(*args, **kwargs)
    except errors as error:
        assert str(error), f"{type(error).__name__} without a message"
        event(f"raised {type(error).__name__}")
        return False, error
    event("returned")
    return True, result


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


# -- strategies -----------------------------------------------------------------

junk_scalars = st.sampled_from(
    [None, True, False, -(2**40), 2**40, 2.5, 3.0, float("nan"), float("inf"),
     "", "3", np.int64(-3), np.float32(2.0), (), [1]]
)


@st.composite
def mostly(draw, valid, bad, rate=4):
    """`valid` three times in four, else `bad` (hypothesis' `one_of` picks
    among its flattened branches evenly, so it cannot weight this)."""
    return draw(bad) if draw(st.integers(0, rate - 1)) == 0 else draw(valid)


small_ints = st.integers(-3, 12)
valid_sizes = st.integers(1, 5)
size_arguments = mostly(valid_sizes, st.one_of(small_ints, junk_scalars))

special_floats = st.sampled_from(
    [0.0, -0.0, -1.0, 1e-45, 1e-12, 0.5, 1.0, 2.0, -3.0, 1e30, -1e30,
     np.inf, -np.inf, np.nan]
)


def _cast(array, dtype):
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return array.astype(dtype)


@st.composite
def corrupted(draw, clean, bad_values, rate=2):
    """`clean` arrays, one in `rate` with one entry replaced by a bad value."""
    array = np.array(draw(clean))
    if array.size and draw(st.integers(0, rate - 1)) == 0:
        flat = array.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(bad_values)
    return array


def float_arrays(shape, dtype="float32", low=-2.0, high=2.0):
    """Clean float32 values in [low, high], the odd special value (NaN,
    inf, 0, -0, huge, subnormal), cast to `dtype` (1e30 is inf in float16)."""
    clean = hnp.arrays(
        "float32", shape, elements=st.floats(low, high, width=32)
    )
    return corrupted(clean, special_floats.map(np.float32)).map(
        lambda a: _cast(a, dtype)
    )


token_lists = st.lists(st.integers(0, 50), min_size=1, max_size=12)
bad_document = st.one_of(
    st.just([]),
    st.lists(st.integers(-2, 50), min_size=1, max_size=6),
    st.lists(st.one_of(st.floats(-5, 50), st.just(np.nan)), min_size=1, max_size=6),
    st.lists(st.one_of(st.integers(0, 9), token_lists), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.just([1, 2**40]),
    hnp.arrays(np.int32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=3),
               elements=st.integers(0, 9)),
    junk_scalars,
)


@st.composite
def documents_lists(draw):
    """A list of valid documents, one time in two with one bad entry."""
    documents = draw(st.lists(
        st.one_of(token_lists, token_lists.map(np.asarray)),
        min_size=1, max_size=5,
    ))
    if draw(st.booleans()):
        documents[draw(st.integers(0, len(documents) - 1))] = draw(bad_document)
    return documents


documents_argument = mostly(
    documents_lists(),
    st.one_of(
        st.just([]),
        junk_scalars,
        st.dictionaries(st.text(max_size=2), token_lists, max_size=2),
        token_lists.map(np.asarray),  # one stream, not a list of documents
    ),
)


# -- StreamingDataset -----------------------------------------------------------


def _check_dataset(dataset):
    """A dataset built from any input holds what its docstring promises."""
    B, S = dataset.batch_size, dataset.segment_length
    assert len(dataset) >= 1
    for step in range(len(dataset)):  # in order: never refused
        inputs, targets, weights = dataset[step]
        assert inputs["token_ids"].shape == (B, S)
        assert inputs["token_ids"].dtype == np.int32
        assert (inputs["token_ids"] >= 0).all()
        assert inputs["reset"].shape == (B,) and inputs["reset"].dtype == bool
        assert targets.shape == (B, S) and targets.dtype == np.int32
        assert weights.shape == (B, S) and weights.dtype == np.float32
        assert np.isin(weights, [0.0, 1.0]).all()
        if step == 0:
            assert inputs["reset"].all()


@FUZZ_SETTINGS
@given(
    documents=documents_argument,
    batch_size=st.integers(1, 4),
    segment_length=st.integers(1, 6),
)
def test_fuzz_streaming_dataset_documents(documents, batch_size, segment_length):
    ok, dataset = outcome(
        StreamingDataset, documents, batch_size, segment_length, num_shards=1
    )
    if ok:
        _check_dataset(dataset)


@FUZZ_SETTINGS
@given(
    batch_size=size_arguments,
    segment_length=size_arguments,
    pad_id=mostly(st.integers(0, 9), st.one_of(st.integers(-2, 2**31 + 1), junk_scalars)),
    check_order=mostly(st.booleans(), junk_scalars),
    num_shards=mostly(st.none(), st.one_of(st.integers(-1, 3), junk_scalars)),
)
def test_fuzz_streaming_dataset_arguments(
    batch_size, segment_length, pad_id, check_order, num_shards
):
    ok, dataset = outcome(
        StreamingDataset, [np.arange(1, 30), [5, 6, 7]], batch_size,
        segment_length, pad_id=pad_id, check_order=check_order,
        num_shards=num_shards,
    )
    if ok:
        _check_dataset(dataset)


@FUZZ_SETTINGS
@given(
    tokens=mostly(st.one_of(token_lists.map(np.asarray), token_lists), bad_document, rate=2),
    batch_size=size_arguments,
    segment_length=size_arguments,
)
def test_fuzz_streaming_dataset_from_array(tokens, batch_size, segment_length):
    ok, dataset = outcome(
        StreamingDataset.from_array, tokens, batch_size, segment_length,
        num_shards=1,
    )
    if ok:
        _check_dataset(dataset)


step_indices = mostly(
    st.one_of(st.integers(0, 5), st.integers(-12, 12)),
    st.one_of(junk_scalars, st.just(np.int32(1)), st.just(np.bool_(True))),
)


@FUZZ_SETTINGS
@given(
    reads=st.lists(step_indices, min_size=1, max_size=15),
    workers=st.sampled_from([1, 1, 2]),
)
def test_fuzz_streaming_dataset_indexing(reads, workers):
    dataset = StreamingDataset.from_array(
        np.arange(1, 49), batch_size=2, segment_length=4, workers=workers,
        max_queue_size=1, num_shards=1,
    )
    assert len(dataset) == 6
    errors = DOCUMENTED_ERRORS + (IndexError,)
    for index in reads:
        for read in (dataset.get_batch, dataset.__getitem__):
            ok, batch = outcome(read, index, errors=errors)
            if ok:
                inputs, targets, weights = batch
                assert inputs["token_ids"].shape == (2, 4)
                assert np.isfinite(weights).all()
    # Whatever came before, a new pass in order is always accepted.
    for step in range(len(dataset)):
        dataset[step]


# -- StickyMemorySampler --------------------------------------------------------


@FUZZ_SETTINGS
@given(
    num_samples=size_arguments,
    num_bins=size_arguments,
    mode=mostly(st.sampled_from(["quantile", "random"]),
                st.one_of(st.sampled_from(["sticky", ""]), junk_scalars)),
    seed=st.one_of(st.none(), st.integers(0, 100)),
)
def test_fuzz_sticky_memory_sampler_construction(num_samples, num_bins, mode, seed):
    ok, sampler = outcome(
        StickyMemorySampler, num_samples=num_samples, num_bins=num_bins,
        mode=mode, seed=seed,
    )
    if ok:
        assert sampler.num_samples >= 1 and sampler.num_bins >= 1


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def density_pairs(draw):
    mu_shape = draw(shapes)
    same = draw(st.integers(0, 3)) > 0
    sigma_shape = mu_shape if same else draw(shapes)
    dtype = draw(st.sampled_from(["float32", "float32", "float16", "float64"]))
    mu = draw(float_arrays(mu_shape, dtype, -0.5, 1.5))
    sigma_sq = draw(float_arrays(sigma_shape, dtype, 0.0078125, 0.5))
    return mu, sigma_sq


def _check_points(points, batch, num_samples):
    points = to_numpy(points)
    assert points.shape == (batch, num_samples)
    assert np.isfinite(points).all(), points
    assert ((points >= 0) & (points <= 1)).all()
    assert (np.diff(points, axis=-1) >= 0).all()


@FUZZ_SETTINGS
@given(pair=density_pairs(), mode=st.sampled_from(["quantile", "random"]))
def test_fuzz_sticky_memory_sampler_call(pair, mode):
    mu, sigma_sq = pair
    sampler = StickyMemorySampler(num_samples=5, num_bins=7, mode=mode, seed=0)
    ok, points = outcome(sampler, mu, sigma_sq)
    if ok:
        _check_points(points, mu.shape[0], 5)
        # Accepted input is valid input: finite, positive variances.
        assert np.isfinite(mu.astype("float32")).all()
        assert (sigma_sq.astype("float32") > 0).all()


@FUZZ_SETTINGS
@given(
    pair=density_pairs(),
    histogram=float_arrays(st.tuples(st.integers(0, 3), st.just(7))),
)
def test_fuzz_sticky_memory_sampler_methods_never_return_nan(pair, histogram):
    """`histogram()` and `sample()` are what compiled code calls: they do not
    check values, so any values must give finite results."""
    mu, sigma_sq = pair
    sampler = StickyMemorySampler(num_samples=5, num_bins=7)
    if mu.shape == sigma_sq.shape and len(mu.shape) >= 1:
        hist = to_numpy(sampler.histogram(mu, sigma_sq))
        assert hist.shape == (mu.shape[0], 7)
        assert np.isfinite(hist).all() and (hist >= 0).all()
        _check_points(sampler.sample(hist), mu.shape[0], 5)
    _check_points(sampler.sample(histogram), histogram.shape[0], 5)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "compiled"])
def test_bad_densities_inside_a_compiled_function_give_finite_points(jit):
    """The guards hold inside a traced function too (no value checks)."""
    sampler = StickyMemorySampler(num_samples=6, num_bins=8)
    mu = np.array([[0.5, np.nan, 2.0], [np.inf, 0.1, 0.1]], "float32")
    sigma_sq = np.array([[0.0, 0.01, -1.0], [0.01, np.nan, -0.0]], "float32")

    def points(mu, sigma_sq):
        return sampler.sample(sampler.histogram(mu, sigma_sq))

    backend = keras.backend.backend()
    if jit and backend == "jax":
        import jax

        points = jax.jit(points)
    elif jit and backend == "tensorflow":
        import tensorflow as tf

        points = tf.function(points, jit_compile=True)
    elif jit and backend == "torch":
        pytest.skip("The torch backend runs eagerly here.")
    _check_points(points(mu, sigma_sq), 2, 6)
