"""No input can poison the weights or the memory (issue 12), any backend.

Bad data given to `fit` / `evaluate` / `predict` (every input type Keras
accepts: a PyDataset, a tf.data dataset, a Python generator, arrays) or to
the `*_on_batch` methods fails with a ValueError / TypeError that names the
bad value, before the step of that batch: the weights and the memory are
those the previous step left. A step that fails anyway (an error of the
data pipeline) leaves a working model on JAX too, whose trainer detaches the
variables during a loop. Inside a jitted JAX function of the user's own an
out-of-range id cannot be reported but no longer turns into NaN. The served
SavedModel refuses a non-finite state of a row that is not reset. Float ids
are refused. A model saved under mixed_bfloat16 loads as it was saved.

One small compiled model serves the whole module (compiling is the slow
part); each test puts its starting weights back first.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_infformer
from keras_infformer.data import StreamingDataset
from keras_infformer.models import InfiniteFormerLM

BACKEND = keras.backend.backend()
JIT = BACKEND in ("tensorflow", "jax")
VOCAB = 32
SEGMENT = 4
BATCH = 2
BAD_ID = 40
BAD_STEP = 2  # The batch that holds the out-of-vocabulary id.
NUM_STEPS = 4


def _np(x):
    if isinstance(x, keras.Variable):
        x = x.value
    return np.array(ops.convert_to_numpy(x))


def _config(**overrides):
    config = dict(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=BATCH,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        intermediate_dim=16,
        num_basis=8,
        num_samples=8,
        num_bins=8,
        dropout=0.0,
    )
    config.update(overrides)
    return config


def _compile(model):
    model.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=JIT,
    )


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(3)
    model = InfiniteFormerLM(**_config())
    _compile(model)
    _INITIAL_WEIGHTS[:] = model.get_weights()
    return model


_INITIAL_WEIGHTS = []


def _restart(model):
    """The module's model as it was built: weights, empty memory."""
    model.set_weights(_INITIAL_WEIGHTS)
    model.reset_state()


def _snapshot(model):
    """Every weight and every memory variable, as NumPy arrays."""
    return [_np(v) for v in model.weights]


def _assert_same(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _assert_finite(snapshot):
    for value in snapshot:
        assert np.isfinite(value).all()


# -- data -------------------------------------------------------------------------


def _documents(bad=False):
    """Two documents of NUM_STEPS segments; `bad`: one id >= VOCAB in the
    segment read at step BAD_STEP (row 0)."""
    first = np.arange(1, 1 + NUM_STEPS * SEGMENT) % VOCAB
    second = (np.arange(NUM_STEPS * SEGMENT) * 7 + 3) % VOCAB
    if bad:
        first = first.copy()
        first[BAD_STEP * SEGMENT + 1] = BAD_ID
    return [first, second]


def _batches(bad=False):
    dataset = StreamingDataset(_documents(bad), batch_size=BATCH, segment_length=SEGMENT)
    assert len(dataset) == NUM_STEPS
    return [dataset.get_batch(i) for i in range(NUM_STEPS)]


class _Batches(keras.utils.PyDataset):
    """A PyDataset over a list of batches."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _stacked(batches, inputs_only=False):
    inputs = {key: np.stack([b[0][key] for b in batches]) for key in ("token_ids", "reset")}
    if inputs_only:
        return inputs
    return inputs, np.stack([b[1] for b in batches]), np.stack([b[2] for b in batches])


def _as(kind, batches, inputs_only=False):
    """`batches` as the data of `fit`/`evaluate`/`predict`, of one kind."""
    if inputs_only:
        batches = [(b[0],) for b in batches]
    if kind == "pydataset":
        return _Batches(batches)
    if kind == "streaming":
        return StreamingDataset(_documents(bad=True), batch_size=BATCH, segment_length=SEGMENT)
    if kind == "generator":
        return (b for b in batches)
    if kind == "tf_data":
        import tensorflow as tf

        if inputs_only:
            return tf.data.Dataset.from_tensor_slices(_stacked([(b[0],) for b in batches], True))
        return tf.data.Dataset.from_tensor_slices(_stacked(batches))
    raise AssertionError(kind)


def _steps_done_before(bad_step):
    """Steps that ran before a bad batch is refused: on a JAX accelerator
    Keras fetches one batch ahead, so the refusal comes one step earlier."""
    if BACKEND == "jax":
        import jax

        if jax.default_backend() != "cpu":
            return bad_step - 1
    return bad_step


_REFERENCE = {}


def _reference(model, method, steps):
    """Weights and memory after `steps` clean batches from the start."""
    key = (method, steps)
    if key not in _REFERENCE:
        _restart(model)
        clean = _batches()[:steps]
        if method == "fit":
            model.fit(_Batches(clean), verbose=0)
        else:
            for inputs, _, _ in clean:
                model.predict_on_batch(inputs)
        _REFERENCE[key] = _snapshot(model)
    return _REFERENCE[key]


# -- 1. out-of-vocabulary ids after the first batch ------------------------------


@pytest.mark.parametrize("kind", ["streaming", "pydataset", "tf_data", "generator"])
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_out_of_vocabulary_id_in_a_later_batch_is_refused(lm, method, kind):
    """Defect 1: only the first batch was checked; on JAX the bad batch made
    the loss, every weight and the memory NaN without an error."""
    done = _steps_done_before(BAD_STEP)
    expected = _reference(lm, "fit" if method == "fit" else "forward", done)
    _restart(lm)
    data = _as(kind, _batches(bad=True), inputs_only=method == "predict")
    with pytest.raises(ValueError) as info:
        getattr(lm, method)(data, verbose=0)
    message = str(info.value)
    assert f"token id {BAD_ID}" in message and f"vocabulary_size={VOCAB}" in message
    if kind != "tf_data":  # tf.data checks run in its graph: no batch number.
        assert f"batch {BAD_STEP}" in message
    after = _snapshot(lm)
    _assert_finite(after)
    _assert_same(after, expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["pydataset", "tf_data", "generator"])
def test_out_of_vocabulary_id_in_validation_data_is_refused(lm, kind):
    """Validation batches are checked too: a bad one stops fit with the
    package's error once the epoch's training steps are done."""
    expected = _reference(lm, "fit", NUM_STEPS)
    _restart(lm)
    with pytest.raises(ValueError) as info:
        lm.fit(_Batches(_batches()), validation_data=_as(kind, _batches(bad=True)), verbose=0)
    assert "of `validation_data`" in str(info.value)
    assert f"token id {BAD_ID}" in str(info.value)
    # The epoch's training steps all ran (the memory then saw validation).
    trainable = [i for i, v in enumerate(lm.weights) if v.trainable]
    after = _snapshot(lm)
    _assert_same([after[i] for i in trainable], [expected[i] for i in trainable], atol=1e-6)


@pytest.mark.parametrize("method", ["train_on_batch", "test_on_batch", "predict_on_batch"])
def test_out_of_vocabulary_id_in_one_batch_is_refused(lm, method):
    _restart(lm)
    inputs, targets, weights = _batches()[0]
    lm.predict_on_batch(inputs)  # Some memory.
    before = _snapshot(lm)
    bad = dict(inputs, token_ids=inputs["token_ids"].copy())
    bad["token_ids"][1, 2] = VOCAB
    args = (bad,) if method == "predict_on_batch" else (bad, targets, weights)
    with pytest.raises(ValueError) as info:
        getattr(lm, method)(*args)
    assert f"token id {VOCAB}" in str(info.value)
    assert f"vocabulary_size={VOCAB}" in str(info.value)
    _assert_same(_snapshot(lm), before)


def _bad_target_batches(bad):
    """The clean batches with targets out of the vocabulary at step
    BAD_STEP (an int `bad`), or float targets throughout (`"float"`)."""
    batches = [(dict(x), y.copy(), w) for x, y, w in _batches()]
    if bad == "float":
        return [(x, y.astype("float32"), w) for x, y, w in batches]
    batches[BAD_STEP][1][0, 1] = bad
    return batches


@pytest.mark.parametrize("bad", [VOCAB + 8, -1, "float"])
@pytest.mark.parametrize("kind", ["arrays", "pydataset", "tf_data", "generator"])
@pytest.mark.parametrize("method", ["fit", "evaluate"])
def test_targets_out_of_the_vocabulary_or_float_are_refused(lm, method, kind, bad):
    """Issue 23 item 14: targets were never checked (JAX trained on them,
    such positions costing 0; TensorFlow and PyTorch raised backend errors)."""
    batches = _bad_target_batches(bad)
    checked_whole = kind == "arrays" or bad == "float"
    done = 0 if checked_whole else _steps_done_before(BAD_STEP)
    expected = (
        _reference(lm, "fit" if method == "fit" else "forward", done)
        if done
        else (_restart(lm) or _snapshot(lm))
    )
    _restart(lm)
    if kind == "arrays":
        inputs = {k: np.concatenate([b[0][k] for b in batches]) for k in ("token_ids", "reset")}
        targets = np.concatenate([b[1] for b in batches])
        weights = np.concatenate([b[2] for b in batches])
        call = lambda: getattr(lm, method)(  # noqa: E731
            inputs, targets, sample_weight=weights, verbose=0
        )
    else:
        data = _as(kind, batches)
        call = lambda: getattr(lm, method)(data, verbose=0)  # noqa: E731
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "targets" in message and f"vocabulary_size={VOCAB}" in message, message
    if bad == "float":
        assert "dtype=float32" in message, message
    else:
        assert f"target {bad}" in message, message
    after = _snapshot(lm)
    _assert_finite(after)
    _assert_same(after, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["train_on_batch", "test_on_batch"])
def test_bad_targets_in_one_batch_are_refused(lm, method):
    _restart(lm)
    inputs, targets, weights = _batches()[0]
    lm.predict_on_batch(inputs)  # Some memory.
    before = _snapshot(lm)
    for bad, match in [
        (VOCAB, f"target {VOCAB}"),
        (-1, "target -1"),
        ("float", "dtype=float32"),
        ("shape", r"shape=\(2, 3\)"),
    ]:
        if bad == "float":
            y = targets.astype("float32")
        elif bad == "shape":
            y = targets[:, :3]
        else:
            y = targets.copy()
            y[1, 2] = bad
        with pytest.raises(ValueError, match=match):
            getattr(lm, method)(inputs, y, weights)
    _assert_same(_snapshot(lm), before)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX gathers out-of-range ids as NaN")
def test_out_of_range_ids_inside_a_users_jax_jit_stay_finite(lm):
    """No host check is possible inside the user's own `jax.jit`: the ids are
    clipped into the vocabulary there, so nothing becomes NaN (documented in
    keras_infformer.models.stream_guards)."""
    import jax

    _restart(lm)
    ids = np.array([[0, VOCAB, -1, 5], [VOCAB + 100, 1, 2, 3]], "int32")
    reset = np.array([True, True])
    state = lm.get_initial_state(BATCH)
    logits, new_state = jax.jit(lambda i, r, s: lm.step(i, r, s))(ids, reset, state)
    assert np.isfinite(_np(logits)).all()
    for value in new_state.values():
        assert np.isfinite(_np(value)).all()
    # The model's own call, stateless, jitted.
    trainable = [v.value for v in lm.trainable_variables]
    non_trainable = [v.value for v in lm.non_trainable_variables]
    logits, non_trainable = jax.jit(
        lambda t, n, i, r: lm.stateless_call(t, n, {"token_ids": i, "reset": r})
    )(trainable, non_trainable, ids, reset)
    assert np.isfinite(_np(logits)).all()
    for value in non_trainable:
        assert np.isfinite(_np(value)).all()


# -- 2. a failed first step must leave a working model -----------------------------


def _wrong_batch_data(kind, method):
    rows = BATCH + 1
    inputs = {
        "token_ids": np.ones((rows, SEGMENT), "int32"),
        "reset": np.ones((rows,), bool),
    }
    targets = np.ones((rows, SEGMENT), "int32")
    element = inputs if method == "predict" else (inputs, targets)
    if kind == "generator":
        return (element for _ in range(3))
    import tensorflow as tf

    return tf.data.Dataset.from_tensors(element).repeat(3)


def _assert_works(model, before):
    """The model's variables are there, as they were, and it predicts."""
    _assert_same(_snapshot(model), before)
    state = model.get_state()
    assert all(np.isfinite(_np(v)).all() for v in state.values())
    inputs = _batches()[0][0]
    assert np.isfinite(_np(model.predict_on_batch(inputs))).all()
    model.set_state(state)


@pytest.mark.parametrize("kind", ["tf_data", "generator"])
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_wrong_batch_size_in_the_first_batch_leaves_a_working_model(lm, method, kind):
    """Defect 2: the package's ValueError came from inside the first step,
    after Keras' JAX trainer had detached every variable: the model was left
    without any (`'NoneType' object is not callable`). On TensorFlow the
    message was only "Incompatible shapes"."""
    _restart(lm)
    lm.predict_on_batch(_batches()[0][0])  # Warm: some memory, built metrics.
    before = _snapshot(lm)
    with pytest.raises(ValueError, match=r"token_ids.shape=\(3, 4\)"):
        getattr(lm, method)(_wrong_batch_data(kind, method), verbose=0)
    _assert_works(lm, before)


class _Flaky(keras.utils.PyDataset):
    """Good batches, until armed: then reading step `fail_at` raises a
    RuntimeError (a failing disk, say), an error no pre-check can foresee.
    `_Arm` arms it when the loop starts (after every check and peek)."""

    def __init__(self, batches, fail_at):
        super().__init__()
        self.batches = batches
        self.fail_at = fail_at
        self.armed = False

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        if self.armed and index == self.fail_at:
            raise RuntimeError("the disk went away")
        return self.batches[index]


class _Arm(keras.callbacks.Callback):
    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_train_begin(self, logs=None):
        self.dataset.armed = True

    on_test_begin = on_predict_begin = on_train_begin


@pytest.mark.parametrize("fail_at", [0, BAD_STEP])
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_any_error_in_a_step_leaves_the_variables_of_the_step_before(lm, method, fail_at):
    """Defect 2, root: on JAX a step that raised left the variables detached
    (first step of fit/evaluate/predict, any step of evaluate/predict)."""
    done = _steps_done_before(fail_at) if fail_at else 0
    expected = _reference(lm, "fit" if method == "fit" else "forward", done) if done else None
    _restart(lm)
    if expected is None:
        expected = _snapshot(lm)
    batches = _batches()
    if method == "predict":
        batches = [(b[0],) for b in batches]
    flaky = _Flaky(batches, fail_at)
    with pytest.raises(Exception, match="the disk went away"):
        getattr(lm, method)(flaky, verbose=0, callbacks=[_Arm(flaky)])
    _assert_works(lm, expected)


# -- 3. non-finite state -----------------------------------------------------------


def test_step_and_set_state_refuse_a_non_finite_state(lm):
    _restart(lm)
    inputs = _batches()[0][0]
    lm.predict_on_batch(inputs)
    before = _snapshot(lm)
    state = {k: _np(v) for k, v in lm.get_initial_state(BATCH).items()}
    name = "layer_0_ltm_coefficients"
    for bad_value in (np.nan, np.inf):
        bad = dict(state)
        bad[name] = state[name].copy()
        bad[name][0, 1, 2] = bad_value
        no_reset = np.array([False, False])
        with pytest.raises(ValueError, match=name):
            lm.step(inputs["token_ids"], no_reset, bad)
        with pytest.raises(ValueError, match=name):
            lm.set_state(bad)
        # A row being reset may hold anything: it is replaced by the empty
        # state, so the step equals one from the empty state.
        logits, new_state = lm.step(inputs["token_ids"], np.array([True, False]), bad)
        clean, clean_state = lm.step(inputs["token_ids"], np.array([True, False]), state)
        np.testing.assert_array_equal(_np(logits), _np(clean))
        for key in clean_state:
            np.testing.assert_array_equal(_np(new_state[key]), _np(clean_state[key]))
    _assert_same(_snapshot(lm), before)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    if BACKEND == "torch":
        pytest.skip("export needs the TensorFlow or JAX backend")
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    model = InfiniteFormerLM(**_config())
    path = keras_infformer.export_for_serving(model, tmp_path_factory.mktemp("guards") / "lm")
    return tf.saved_model.load(path)


@pytest.mark.skipif(BACKEND == "torch", reason="export needs TensorFlow or JAX")
@pytest.mark.parametrize("bad_value", [np.nan, np.inf], ids=["nan", "inf"])
def test_served_step_refuses_a_non_finite_state(served, bad_value):
    """Defect 3: the SavedModel answered a NaN (or Inf) state with NaN
    logits and a NaN state; now an InvalidArgument names the tensor."""
    import tensorflow as tf

    serve = served.signatures["serving_default"]
    state = {
        k: v.numpy()
        for k, v in served.signatures["initial_state"](batch_size=tf.constant(2)).items()
    }
    token_ids = tf.constant(_batches()[0][0]["token_ids"])
    name = "layer_0_ltm_coefficients"
    bad = dict(state)
    bad[name] = state[name].copy()
    bad[name][1, 0, 0] = bad_value
    with pytest.raises(tf.errors.InvalidArgumentError, match=name):
        serve(token_ids=token_ids, reset=tf.constant([False, False]), **bad)
    # Resetting that row accepts it (the row is replaced by the empty state).
    clean = serve(token_ids=token_ids, reset=tf.constant([False, True]), **state)
    outputs = serve(token_ids=token_ids, reset=tf.constant([False, True]), **bad)
    for key, value in outputs.items():
        assert np.isfinite(value.numpy()).all(), key
        np.testing.assert_array_equal(value.numpy(), clean[key].numpy(), err_msg=key)


# -- 4. float ids, mixed precision round trip --------------------------------------


@pytest.mark.parametrize(
    "entry", ["call", "step", "fit", "evaluate", "predict", "train_on_batch", "predict_on_batch"]
)
def test_float_token_ids_are_refused(lm, entry):
    """Defect 4 (item 9): 27.7 was silently truncated to 27."""
    _restart(lm)
    inputs, targets, weights = _batches()[0]
    lm.predict_on_batch(inputs)
    before = _snapshot(lm)
    floats = dict(inputs, token_ids=np.full((BATCH, SEGMENT), 27.7, "float32"))
    calls = {
        "call": lambda: lm(floats),
        "step": lambda: lm.step(floats["token_ids"], floats["reset"], lm.get_initial_state(BATCH)),
        "fit": lambda: lm.fit(floats, targets, verbose=0),
        "evaluate": lambda: lm.evaluate(floats, targets, verbose=0),
        "predict": lambda: lm.predict(floats, verbose=0),
        "train_on_batch": lambda: lm.train_on_batch(floats, targets),
        "predict_on_batch": lambda: lm.predict_on_batch(floats),
    }
    with pytest.raises(TypeError, match=r"token_ids.*float32"):
        calls[entry]()
    _assert_same(_snapshot(lm), before)


def test_int64_token_ids_are_accepted(lm):
    _restart(lm)
    inputs = _batches()[0][0]
    expected = _np(lm(inputs))
    lm.reset_state()
    wide = dict(inputs, token_ids=inputs["token_ids"].astype("int64"))
    np.testing.assert_array_equal(_np(lm(wide)), expected)


def _policies(model):
    """Policy by layer path (InputLayers compute nothing and take the global
    policy whatever the model's)."""
    return {
        layer.path: layer.dtype_policy.name
        for layer in model._flatten_layers()
        if not isinstance(layer, keras.layers.InputLayer)
    }


def test_mixed_bfloat16_model_loads_as_it_was_saved(tmp_path, mixed_bfloat16):
    """Defect 4 (item 9): loaded under a float32 global policy, the model
    itself came back float32 around mixed_bfloat16 layers, its outputs 1e-3
    away."""
    keras.utils.set_random_seed(9)
    model = InfiniteFormerLM(**_config())
    inputs = _batches()[0][0]
    expected = _np(model(inputs))
    model.reset_state()
    path = os.path.join(tmp_path, "lm.keras")
    model.save(path)
    policies = _policies(model)
    assert set(policies.values()) == {"mixed_bfloat16"}

    keras.mixed_precision.set_dtype_policy("float32")
    restored = keras.saving.load_model(path)
    assert restored.dtype_policy.name == "mixed_bfloat16"
    assert _policies(restored) == policies
    assert restored.get_config() == model.get_config()
    restored.reset_state()
    got = _np(restored(inputs))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # And a float32 model loaded under a mixed global policy stays float32.
    model32 = InfiniteFormerLM(**_config())
    assert model32.dtype_policy.name == "float32"
    model32.save(path)
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    again = keras.saving.load_model(path)
    assert set(_policies(again).values()) == {"float32"}
