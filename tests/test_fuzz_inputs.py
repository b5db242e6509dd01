"""Fuzz tests: random malformed input at the package's public entry points.

Every entry point must, for any input, either raise an exception of a
documented type (`ValueError`, `TypeError`; `IndexError` for a step index
out of range) or return finite outputs of the documented shapes. Anything
else (a NaN, a raw NumPy/backend error of another type, a crash) fails.

For `InfiniteFormerLM` (call, step, set_state, fit, evaluate, predict on
arrays, PyDatasets, generators and tf.data) every example also checks that
the weights and the memory are unchanged after an exception (for fit /
evaluate / predict: as the steps that completed before the refusal left
them, recomputed from the clean batches).

Layout, so that more entry points can be added (e.g. the exported
signatures):

- `DOCUMENTED_ERRORS` and `outcome()`: run a call, classify the result;
- strategies for malformed values (`junk_scalars`, `float_arrays`, ...);
- one section per entry point, each test with `FUZZ_SETTINGS`.

Kept fast (30 examples per test, no deadline, one tiny model per module): it
runs in the normal suite on every backend.
"""

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_infformer.data import StreamingDataset
from keras_infformer.layers import StickyMemorySampler
from keras_infformer.models import InfiniteFormerLM

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
    [
        None,
        True,
        False,
        -(2**40),
        2**40,
        2.5,
        3.0,
        float("nan"),
        float("inf"),
        "",
        "3",
        np.int64(-3),
        np.float32(2.0),
        (),
        [1],
    ]
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
    [0.0, -0.0, -1.0, 1e-45, 1e-12, 0.5, 1.0, 2.0, -3.0, 1e30, -1e30, np.inf, -np.inf, np.nan]
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
    clean = hnp.arrays("float32", shape, elements=st.floats(low, high, width=32))
    return corrupted(clean, special_floats.map(np.float32)).map(lambda a: _cast(a, dtype))


token_lists = st.lists(st.integers(0, 50), min_size=1, max_size=12)
bad_document = st.one_of(
    st.just([]),
    st.lists(st.integers(-2, 50), min_size=1, max_size=6),
    st.lists(st.one_of(st.floats(-5, 50), st.just(np.nan)), min_size=1, max_size=6),
    st.lists(st.one_of(st.integers(0, 9), token_lists), min_size=1, max_size=4),
    st.lists(st.booleans(), min_size=1, max_size=4),
    st.just([1, 2**40]),
    hnp.arrays(
        np.int32, hnp.array_shapes(min_dims=0, max_dims=3, max_side=3), elements=st.integers(0, 9)
    ),
    junk_scalars,
)


@st.composite
def documents_lists(draw):
    """A list of valid documents, one time in two with one bad entry."""
    documents = draw(
        st.lists(
            st.one_of(token_lists, token_lists.map(np.asarray)),
            min_size=1,
            max_size=5,
        )
    )
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
    ok, dataset = outcome(StreamingDataset, documents, batch_size, segment_length, num_shards=1)
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
        StreamingDataset,
        [np.arange(1, 30), [5, 6, 7]],
        batch_size,
        segment_length,
        pad_id=pad_id,
        check_order=check_order,
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
        StreamingDataset.from_array,
        tokens,
        batch_size,
        segment_length,
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
        np.arange(1, 49),
        batch_size=2,
        segment_length=4,
        workers=workers,
        max_queue_size=1,
        num_shards=1,
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
    mode=mostly(
        st.sampled_from(["quantile", "random"]),
        st.one_of(st.sampled_from(["sticky", ""]), junk_scalars),
    ),
    seed=st.one_of(st.none(), st.integers(0, 100)),
)
def test_fuzz_sticky_memory_sampler_construction(num_samples, num_bins, mode, seed):
    ok, sampler = outcome(
        StickyMemorySampler,
        num_samples=num_samples,
        num_bins=num_bins,
        mode=mode,
        seed=seed,
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


# -- InfiniteFormerLM -------------------------------------------------------------
#
# One tiny compiled model for the module. Every example starts from its
# initial weights and an empty memory; after an exception the weights and
# the memory must be exactly as they were before the call (for fit /
# evaluate / predict: as the steps before the bad batch left them).

LM_VOCAB, LM_SEGMENT, LM_BATCH = 16, 4, 2


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(21)
    model = InfiniteFormerLM(
        vocabulary_size=LM_VOCAB,
        segment_length=LM_SEGMENT,
        batch_size=LM_BATCH,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        num_basis=8,
        num_samples=8,
        num_bins=8,
        dropout=0.0,
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=keras.backend.backend() in ("tensorflow", "jax"),
    )
    _LM_START[:] = model.get_weights()
    return model


_LM_START = []


def _restart(model):
    model.set_weights(_LM_START)
    model.reset_state()


def _snapshot(model):
    """Every weight and every memory variable."""
    return [to_numpy(v.value) for v in model.weights]


def _assert_snapshot(model, expected):
    got = _snapshot(model)
    assert len(got) == len(expected)
    for a, b, v in zip(got, expected, model.weights):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=v.path)


def _assert_finite(*values):
    for value in keras.tree.flatten(values):
        assert np.isfinite(to_numpy(value).astype("float32")).all()


bad_reset_values = st.sampled_from([2, -1, 0.5, np.nan, np.inf])


@st.composite
def lm_token_ids(draw, rows=LM_BATCH):
    """Mostly `(rows, LM_SEGMENT)` int32 ids in range; else a wrong rank or
    size, a float / bool / narrow dtype, or an id out of range."""
    shape = draw(
        mostly(
            st.just((rows, LM_SEGMENT)),
            st.one_of(
                st.tuples(st.integers(0, 4), st.integers(0, 6)),
                hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
            ),
            rate=6,
        )
    )
    ids = draw(
        corrupted(
            hnp.arrays("int64", shape, elements=st.integers(0, LM_VOCAB - 1)),
            st.sampled_from([-1, -(2**31), LM_VOCAB, LM_VOCAB + 7, 2**31 - 1]),
            rate=5,
        )
    )
    dtype = draw(
        mostly(
            st.sampled_from(["int32", "int32", "int64"]),
            st.sampled_from(["float32", "float64", "bool", "uint8", "int8", "int16"]),
            rate=6,
        )
    )
    if dtype in ("uint8", "int8", "int16", "bool"):
        ids = np.clip(ids, 0, LM_VOCAB - 1)
    return _cast(ids, dtype)


@st.composite
def lm_resets(draw, rows=LM_BATCH):
    """Mostly `(rows,)` bools; else 0/1 numbers, wrong values or shapes."""
    shape = draw(
        mostly(
            st.just((rows,)),
            hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
            rate=6,
        )
    )
    flags = draw(hnp.arrays(bool, shape))
    kind = draw(st.sampled_from(["bool"] * 5 + ["int32", "float32", "bad"]))
    if kind == "bool":
        return flags
    flags = flags.astype("float32" if kind != "int32" else "int32")
    if kind == "bad" and flags.size:
        flags = flags.astype("float32")
        flags.reshape(-1)[draw(st.integers(0, flags.size - 1))] = draw(bad_reset_values)
    return flags


@FUZZ_SETTINGS
@given(token_ids=lm_token_ids(), reset=lm_resets())
def test_fuzz_lm_call(lm, token_ids, reset):
    _restart(lm)
    lm(
        {"token_ids": np.zeros((LM_BATCH, LM_SEGMENT), "int32"), "reset": np.ones(LM_BATCH, bool)}
    )  # Some memory.
    before = _snapshot(lm)
    ok, logits = outcome(lm, {"token_ids": token_ids, "reset": reset})
    if ok:
        assert tuple(logits.shape) == (LM_BATCH, LM_SEGMENT, LM_VOCAB)
        _assert_finite(logits, lm.get_state())
        assert token_ids.dtype.kind in "iu"
    else:
        _assert_snapshot(lm, before)


@st.composite
def lm_states(draw, rows):
    """A state dict for `rows` rows: mostly valid (random finite values);
    else a key missing or unknown, a wrong shape or dtype, NaN or Inf."""
    spec = _LM_STATE_SPEC
    state = {
        name: draw(
            hnp.arrays(
                "float32",
                (rows,) + tuple(tensor.shape[1:]),
                elements=st.floats(-1, 1, width=32),
            )
        )
        for name, tensor in spec.items()
    }
    names = sorted(state)
    change = draw(
        mostly(
            st.just("none"),
            st.sampled_from(
                ["missing", "unknown", "shape", "rows", "float64", "nan", "inf", "not a dict"]
            ),
            rate=3,
        )
    )
    name = draw(st.sampled_from(names))
    if change == "missing":
        del state[name]
    elif change == "unknown":
        state["layer_9_stm"] = state[name]
    elif change == "shape":
        value = state[name]
        axis = draw(st.integers(1, max(1, value.ndim - 1)))
        shape = list(value.shape)
        shape[min(axis, len(shape) - 1)] += 1
        state[name] = np.zeros(shape, "float32")
    elif change == "rows":
        state[name] = np.repeat(state[name], 2, axis=0)
    elif change == "float64":
        state[name] = state[name].astype("float64")
    elif change in ("nan", "inf") and state[name].size:
        state[name].reshape(-1)[draw(st.integers(0, state[name].size - 1))] = (
            np.nan if change == "nan" else np.inf
        )
    elif change == "not a dict":
        return [state[n] for n in names]
    return state


_LM_STATE_SPEC = {}


@pytest.fixture(scope="module")
def lm_state_spec(lm):
    _LM_STATE_SPEC.update(lm.state_spec())
    return _LM_STATE_SPEC


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_lm_step(lm, lm_state_spec, data):
    """The pure step: an error of a documented type, or finite logits and
    state (a NaN in a reset row is replaced by the empty state); no
    variable ever changes."""
    _restart(lm)
    before = _snapshot(lm)
    rows = data.draw(mostly(st.just(LM_BATCH), st.integers(1, 3)))
    token_ids = data.draw(lm_token_ids(rows))
    reset = data.draw(mostly(lm_resets(rows), st.none(), rate=8))
    state = data.draw(lm_states(rows))
    ok, result = outcome(lm.step, token_ids, reset, state)
    if ok:
        logits, new_state = result
        assert tuple(logits.shape) == (rows, LM_SEGMENT, LM_VOCAB)
        _assert_finite(logits, new_state)
    _assert_snapshot(lm, before)


@FUZZ_SETTINGS
@given(data=st.data())
def test_fuzz_lm_set_state(lm, lm_state_spec, data):
    """All or nothing: a state is written whole, or refused with memory and
    weights unchanged."""
    _restart(lm)
    lm({"token_ids": np.ones((LM_BATCH, LM_SEGMENT), "int32"), "reset": np.ones(LM_BATCH, bool)})
    before = _snapshot(lm)
    state = data.draw(lm_states(LM_BATCH))
    ok, _ = outcome(lm.set_state, state)
    if ok:
        for name, value in lm.get_state().items():
            np.testing.assert_array_equal(to_numpy(value), np.asarray(state[name], "float32"))
        lm.set_state({k: np.asarray(v) for k, v in _lm_initial_state(lm).items()})
    else:
        _assert_snapshot(lm, before)


def _lm_initial_state(lm):
    return {k: to_numpy(v) for k, v in lm.get_initial_state(LM_BATCH).items()}


# fit / evaluate / predict: a stream of batches, at most one of them bad.

BAD_BATCHES = ["rows", "segment", "float", "out of range", "reset value", "reset shape"]


def _clean_batches(count, seed):
    rng = np.random.default_rng(seed)
    return [
        (
            {
                "token_ids": rng.integers(0, LM_VOCAB, (LM_BATCH, LM_SEGMENT)).astype("int32"),
                "reset": np.array([step == 0] * LM_BATCH),
            },
            rng.integers(0, LM_VOCAB, (LM_BATCH, LM_SEGMENT)).astype("int32"),
        )
        for step in range(count)
    ]


def _spoil(batch, how, where):
    inputs, targets = dict(batch[0]), batch[1]
    ids, reset = inputs["token_ids"].copy(), inputs["reset"].copy()
    if how == "rows":
        ids = np.concatenate([ids, ids[:1]])
        reset = np.concatenate([reset, reset[:1]])
        targets = np.concatenate([targets, targets[:1]])
    elif how == "segment":
        ids = np.concatenate([ids, ids[:, :1]], axis=1)
        targets = np.concatenate([targets, targets[:, :1]], axis=1)
    elif how == "float":
        ids = ids.astype("float32") + 0.7
    elif how == "out of range":
        ids.reshape(-1)[where % ids.size] = LM_VOCAB + where % 3
    elif how == "reset value":
        reset = reset.astype("float32")
        reset[where % len(reset)] = (2.0, 0.5, -1.0)[where % 3]
    elif how == "reset shape":
        reset = np.concatenate([reset, reset[:1]])
    inputs.update(token_ids=ids, reset=reset)
    return inputs, targets


def _feed(kind, batches, method):
    """The batches as data of one kind (uniform dtypes for tf.data)."""
    elements = [b[0] if method == "predict" else b for b in batches]
    if kind == "pydataset":
        return _ListDataset([(e,) if method == "predict" else e for e in elements])
    if kind == "generator":
        return ((e,) if method == "predict" else e for e in elements)
    if kind == "arrays":  # Spoiled whole: arrays split into batches.
        inputs = {
            k: np.concatenate([np.asarray(b[0][k]) for b in batches])
            for k in ("token_ids", "reset")
        }
        if method == "predict":
            return (inputs,)
        return inputs, np.concatenate([b[1] for b in batches])
    import tensorflow as tf

    floats = any(b[0]["token_ids"].dtype.kind == "f" for b in batches)
    numeric = any(b[0]["reset"].dtype != bool for b in batches)

    def uniform(e):
        inputs = e if method == "predict" else e[0]
        inputs = dict(
            token_ids=inputs["token_ids"].astype("float32" if floats else "int32"),
            reset=inputs["reset"].astype("float32") if numeric else inputs["reset"],
        )
        return inputs if method == "predict" else (inputs, e[1])

    dataset = None
    for e in elements:
        one = tf.data.Dataset.from_tensors(uniform(e))
        dataset = one if dataset is None else dataset.concatenate(one)
    return dataset


class _ListDataset(keras.utils.PyDataset):
    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _run(lm, method, data, callbacks=None):
    kwargs = dict(verbose=0, callbacks=callbacks)
    if isinstance(data, tuple) and method != "predict":
        return getattr(lm, method)(data[0], data[1], **kwargs)
    if isinstance(data, tuple):
        return lm.predict(data[0], **kwargs)
    return getattr(lm, method)(data, **kwargs)


class _CountSteps(keras.callbacks.Callback):
    """Steps that completed (Keras may read batches ahead of the steps, so
    a bad batch can be refused before the step just before it)."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    on_test_batch_end = on_predict_batch_end = on_train_batch_end


@FUZZ_SETTINGS
@given(
    method=st.sampled_from(["fit", "evaluate", "predict"]),
    kind=st.sampled_from(["pydataset", "generator", "tf_data", "arrays"]),
    how=mostly(st.just("none"), st.sampled_from(BAD_BATCHES), rate=6),
    count=st.integers(1, 3),
    position=st.integers(0, 2),
    where=st.integers(0, 100),
    seed=st.integers(0, 3),
)
def test_fuzz_lm_fit_evaluate_predict(lm, method, kind, how, count, position, where, seed):
    """Bad data is refused with a documented error before the step of the
    bad batch: the weights and memory are what the clean batches before it
    made of them (nothing at all, for arrays, which are checked whole)."""
    if how == "none":
        how, position = BAD_BATCHES[where % len(BAD_BATCHES)], count  # none bad
        how = None
    position = min(position, count - 1)
    clean = _clean_batches(count, seed)
    batches = list(clean)
    if how is not None:
        batches[position] = _spoil(clean[position], how, where)
    _restart(lm)
    data = _feed(kind, batches, method)
    counter = _CountSteps()
    ok, result = outcome(_run, lm, method, data, [counter])
    if how is None:
        assert ok, result
        _assert_finite(result.history["loss"] if method == "fit" else result)
        return
    assert not ok, f"{how} batch accepted"
    # Refused before the step of the bad batch (arrays: before any step).
    done = counter.steps
    assert done <= (0 if kind == "arrays" else position)
    # The reference: the clean batches before the refusal, from the start.
    got = _snapshot(lm)
    _restart(lm)
    if done:
        _run(lm, method, _feed(kind, clean[:done], method))
    expected = _snapshot(lm)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# -- the exported signature -------------------------------------------------------
# A served model is a TensorFlow graph whatever the backend it was exported
# from; fuzzing it once (TensorFlow backend, where export is in-process) is
# enough. A bad request must be refused by TensorFlow's own argument errors
# (a signature checks dtypes and shapes; the graph's asserts check values)
# or answered with finite logits and state.


@pytest.fixture(scope="module")
def served(lm, tmp_path_factory):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the served graph is the same from every backend; fuzzed once, under TF")
    import tensorflow as tf

    import keras_infformer

    path = keras_infformer.export_for_serving(lm, str(tmp_path_factory.mktemp("served")))
    return tf.saved_model.load(path)


@st.composite
def serving_requests(draw):
    import tensorflow as tf  # noqa: F401 (only under the TF backend)

    batch = draw(st.integers(1, 3))
    length = draw(mostly(st.just(LM_SEGMENT), st.integers(1, 2 * LM_SEGMENT)))
    ids = draw(hnp.arrays(np.int64, (batch, length), elements=st.integers(0, LM_VOCAB - 1)))
    if draw(st.integers(0, 3)) == 0:  # Now and then one id out of range.
        ids[0, 0] = draw(st.sampled_from([-1, LM_VOCAB, LM_VOCAB + 7]))
    ids = draw(
        mostly(
            st.just(ids.astype("int32")),
            st.sampled_from(
                [ids.astype("float32"), ids.astype("int64"), ids[:, :1].astype("int32")]
            ),
        )
    )
    reset = draw(
        mostly(
            st.just(np.zeros(batch, bool)),
            st.sampled_from(
                [np.ones(batch + 1, bool), np.zeros(batch, "int32"), np.ones(batch, bool)]
            ),
        )
    )
    poison = draw(st.sampled_from([None, float("nan"), float("inf")]))
    return ids, reset, poison


@FUZZ_SETTINGS
@given(request=serving_requests())
def test_fuzz_exported_serving_signature(served, request):
    import tensorflow as tf

    ids, reset, poison = request
    batch = ids.shape[0]
    state = dict(served.signatures["initial_state"](batch_size=tf.constant(batch)))
    if poison is not None:
        name = sorted(state)[0]
        value = state[name].numpy().copy()
        value.reshape(-1)[0] = poison
        state[name] = tf.constant(value)

    def call():
        return dict(
            served.signatures["serving_default"](
                token_ids=tf.constant(ids), reset=tf.constant(reset), **state
            )
        )

    ok, result = outcome(call, errors=DOCUMENTED_ERRORS + (tf.errors.InvalidArgumentError,))
    if ok:
        _assert_finite(*result.values())
        # What was answered was a valid request.
        assert ids.dtype == np.int32 and ids.shape[1] == LM_SEGMENT
        assert ids.min() >= 0 and ids.max() < LM_VOCAB
        assert poison is None or bool(np.all(reset))
