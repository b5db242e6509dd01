"""CompressiveMemory against a NumPy reference of what the layer does.

The reference (float64) compresses each run of `c` consecutive vectors with
the convolution's kernel and bias (kernel = stride = c), appends the new
slots on the right of a first-in-first-out memory of `memory_length` slots
(the oldest fall off the left), marks them valid in the mask, empties rows
flagged in `reset` first and leaves rows not flagged in `absorb` unchanged.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_infformer
from keras_infformer.layers import CompressiveMemory

B, L, D, SLOTS, RATE = 3, 8, 4, 6, 4


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _layer(**kwargs):
    config = dict(memory_length=SLOTS, compression_rate=RATE)
    config.update(kwargs)
    return CompressiveMemory(**config)


def _stream(seed, num_steps, batch=B):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((num_steps, batch, L, D)).astype("float32")


class NumpyCompressiveMemory:
    """The layer's update in NumPy float64."""

    def __init__(self, layer, batch):
        conv = layer._compression
        self.kernel = _np(conv.kernel).astype(np.float64)  # (c, d, d)
        self.bias = _np(conv.bias).astype(np.float64)
        self.memory = np.zeros((batch, SLOTS, D))
        self.mask = np.zeros((batch, SLOTS))

    def compress(self, x):
        b, length, d = x.shape
        windows = x.astype(np.float64).reshape(b, length // RATE, RATE, d)
        return np.einsum("bncd,cde->bne", windows, self.kernel) + self.bias

    def __call__(self, x, reset=None, absorb=None):
        if reset is not None:
            self.memory[reset] = 0.0
            self.mask[reset] = 0.0
        compressed = self.compress(x)
        new = compressed.shape[1]
        memory = np.concatenate([self.memory, compressed], 1)[:, new:]
        mask = np.concatenate([self.mask, np.ones(compressed.shape[:2])], 1)[:, new:]
        if absorb is not None:
            memory[~absorb] = self.memory[~absorb]
            mask[~absorb] = self.mask[~absorb]
        self.memory, self.mask = memory, mask
        return memory, mask


def _resets(step):
    return np.array([step == 0, step in (0, 3), step == 0])


def test_streaming_matches_numpy_reference():
    """Slots shift left by L / c per step, the oldest fall off, the mask
    fills from the right; row 1 resets at step 3."""
    layer = _layer()
    segments = _stream(0, 6)
    layer.build(segments[0].shape)
    reference = NumpyCompressiveMemory(layer, B)
    for step, x in enumerate(segments):
        slots, mask = layer(x, reset=_resets(step))
        expected_slots, expected_mask = reference(x, reset=_resets(step))
        np.testing.assert_allclose(_np(slots), expected_slots, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_np(mask), expected_mask)
        state = layer.get_state()
        np.testing.assert_allclose(_np(state["memory"]), expected_slots, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_np(state["mask"]), expected_mask)
    # Two slots per step, six slots: every row now holds steps 3 to 5 (row
    # 1 from its reset on), the oldest two slots from step 3.
    np.testing.assert_array_equal(_np(mask), 1.0)
    np.testing.assert_allclose(
        _np(slots)[:, :2], reference.compress(segments[3])[:, :], rtol=1e-5, atol=1e-5
    )


def test_first_steps_fill_the_mask_from_the_right():
    layer = _layer()
    x = _stream(1, 1)[0]
    _, mask = layer(x)
    np.testing.assert_array_equal(_np(mask), [[0, 0, 0, 0, 1, 1]] * B)
    _, mask = layer(x, reset=np.array([False, True, False]))
    np.testing.assert_array_equal(
        _np(mask), [[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]]
    )


def test_absorb_flags_keep_the_other_rows():
    layer = _layer(stateful=False)
    segments = _stream(2, 3)
    layer.build(segments[0].shape)
    reference = NumpyCompressiveMemory(layer, B)
    state = layer.get_initial_state(B)
    for step, x in enumerate(segments):
        absorb = np.array([True, step != 1, step == 2])
        (slots, mask), state = layer(x, state=state, absorb=absorb)
        expected_slots, expected_mask = reference(x, absorb=absorb)
        np.testing.assert_allclose(_np(slots), expected_slots, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(_np(mask), expected_mask)


def test_stateful_equals_explicit_and_touches_no_variable():
    layer = _layer()
    segments = _stream(3, 5)
    layer.build(segments[0].shape)
    layer.reset_state()
    state = layer.get_initial_state(B)
    explicit = []
    for step, x in enumerate(segments):
        outputs, state = layer(x, reset=_resets(step), state=state)
        explicit.append([_np(o) for o in outputs])
    # The explicit path touched no variable.
    for value in layer.get_state().values():
        np.testing.assert_array_equal(_np(value), 0.0)
    for step, x in enumerate(segments):
        slots, mask = layer(x, reset=_resets(step))
        np.testing.assert_array_equal(_np(slots), explicit[step][0])
        np.testing.assert_array_equal(_np(mask), explicit[step][1])
    for key, value in layer.get_state().items():
        np.testing.assert_array_equal(_np(value), _np(state[key]), err_msg=key)
    # Any batch size on the explicit path.
    (slots, _), _ = layer(_stream(4, 1, batch=5)[0], state=layer.get_initial_state(5))
    assert tuple(slots.shape) == (5, SLOTS, D)


def test_gradient_reaches_the_new_slots_only(gradients):
    layer = _layer(stateful=False)
    layer.build((B, L, D))
    x = _stream(5, 1)[0]
    old = np.random.default_rng(6).standard_normal((B, SLOTS, D)).astype("float32")

    def loss(inputs, memory):
        (slots, _), _ = layer.step(inputs, {"memory": memory, "mask": ops.ones((B, SLOTS))})
        return ops.sum(slots * ops.arange(1, SLOTS + 1, dtype="float32")[None, :, None])

    (grad_kernel, _), (grad_inputs, grad_memory) = gradients(
        loss, layer._compression.trainable_variables, [x, old]
    )
    assert np.abs(grad_inputs).max() > 1e-3 and np.abs(grad_kernel).max() > 1e-3
    np.testing.assert_array_equal(grad_memory, 0.0)


def test_state_stays_float32_under_mixed_precision(mixed_bfloat16):
    layer = _layer()
    segments = _stream(7, 3)
    layer.build(segments[0].shape)
    assert layer.compute_dtype == "bfloat16"
    state = layer.get_initial_state(B)
    for x in segments:
        (slots, _), state = layer(x, state=state)
        stateful, _ = layer(x)
        np.testing.assert_array_equal(_np(slots), _np(stateful))
    for key, value in state.items():
        assert keras.backend.standardize_dtype(value.dtype) == "float32", key
        np.testing.assert_array_equal(_np(value), _np(layer.get_state()[key]))
    assert layer.memory.dtype == "float32" and layer.mask.dtype == "float32"


def test_config_round_trip_symbolic_call_and_export():
    assert keras_infformer.CompressiveMemory is CompressiveMemory
    layer = _layer(stateful=False, name="cmem")
    clone = CompressiveMemory.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    x = keras.Input((L, D))
    (slots, mask), state = layer(
        x, state={"memory": keras.Input((SLOTS, D)), "mask": keras.Input((SLOTS,))}
    )
    assert tuple(slots.shape) == (None, SLOTS, D) and tuple(mask.shape) == (None, SLOTS)
    assert set(state) == {"memory", "mask"}
    stateful = _layer()(keras.Input((L, D), batch_size=B))
    assert tuple(stateful[0].shape) == (B, SLOTS, D)


def test_save_weights_keeps_memory_and_compression(tmp_path):
    x = keras.Input((L, D), batch_size=B)
    model = keras.Model(x, _layer(name="cmem")(x))
    for segment in _stream(8, 2):
        model(segment)
    path = str(tmp_path / "cmem.weights.h5")
    model.save_weights(path)
    x = keras.Input((L, D), batch_size=B)
    restored = keras.Model(x, _layer(name="cmem")(x))
    restored.load_weights(path)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(_np(a), _np(b), err_msg=a.path)
    assert np.abs(_np(restored.get_layer("cmem").memory)).max() > 0


def test_errors():
    layer = _layer()
    x = _stream(9, 1)[0]
    layer(x)
    with pytest.raises(ValueError, match=r"multiple of `compression_rate`.*length=6"):
        _layer()(x[:, :6])
    with pytest.raises(ValueError, match=r"feature dimension 4.*\(3, 8, 5\)"):
        layer(np.zeros((B, L, D + 1), "float32"))
    with pytest.raises(ValueError, match=r"batch size 3.*\(2, 8, 4\)"):
        layer(x[:2])
    with pytest.raises(ValueError, match=r"reset.shape=\(2,\)"):
        layer(x, reset=np.array([True, False]))
    with pytest.raises(ValueError, match=r"state\['memory'\].*\(3, 5, 4\)"):
        layer(
            x,
            state={
                "memory": np.zeros((B, SLOTS - 1, D), "float32"),
                "mask": np.zeros((B, SLOTS), "float32"),
            },
        )
    with pytest.raises(ValueError, match=r"memory_length.*0"):
        _layer(memory_length=0)
    with pytest.raises(TypeError, match=r"compression_rate.*2\.0"):
        _layer(compression_rate=2.0)
