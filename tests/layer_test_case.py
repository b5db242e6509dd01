"""A shared battery of checks for every public layer (cf. keras-hub's
`run_layer_test`): config and JSON round trip, symbolic vs eager output
shapes, weight counts, one compiled `fit` step, mixed precision against
float32, and a `.keras` round trip that keeps weights and memory."""

import json

import keras
import numpy as np
from conftest import to_numpy


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _shapes(output):
    return keras.tree.map_structure(lambda x: None if x is None else tuple(x.shape), output)


def _memory(layer):
    state = layer.get_state() if getattr(layer, "stateful", False) else {}
    return {k: to_numpy(v) for k, v in state.items()}


def run_layer_test(
    cls,
    init_kwargs,
    input_data,
    expected_output_shape,
    expected_num_trainable_weights,
    expected_num_non_trainable_weights,
    tmp_path,
    run_training_check=True,
    mixed_precision_tolerance=0.05,
):
    """Runs the battery on `cls(**init_kwargs)` called as `layer(**input_data)`.

    `expected_output_shape` is the structure of output shapes (a tuple for
    one tensor). Mixed precision: a `mixed_bfloat16` copy with the same
    weights must agree with float32 to `mixed_precision_tolerance` relative
    to the output's scale.
    """
    # Config and JSON round trip.
    layer = cls(**init_kwargs)
    config = layer.get_config()
    revived = cls.from_config(config)
    assert revived.get_config() == config
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config

    # Symbolic call: shapes as promised, the layer built with its weights.
    symbolic_inputs = {
        k: keras.KerasTensor(v.shape, dtype=str(v.dtype)) for k, v in input_data.items()
    }
    symbolic = cls(**init_kwargs)
    symbolic_output = symbolic(**symbolic_inputs)
    assert _shapes(symbolic_output) == expected_output_shape
    assert symbolic.built

    # Eager call: the same shapes, finite values, the expected weights.
    layer = cls(**init_kwargs)
    output = layer(**input_data)
    assert _shapes(output) == expected_output_shape
    for tensor in keras.tree.flatten(output):
        assert np.all(np.isfinite(to_numpy(tensor)))
    assert len(layer.trainable_weights) == expected_num_trainable_weights
    assert len(layer.non_trainable_weights) == expected_num_non_trainable_weights
    assert len(symbolic.trainable_weights) == expected_num_trainable_weights

    # One compiled training step runs and moves the trainable weights.
    if run_training_check:

        class Wrapper(keras.Model):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def call(self, inputs):
                return _first(self.inner(**inputs))

        trained = cls(**init_kwargs)
        model = Wrapper(trained)
        model(input_data)
        before = [to_numpy(w) for w in trained.trainable_weights]
        first_shape = expected_output_shape
        if not isinstance(first_shape[0], (int, type(None))):
            first_shape = first_shape[0]
        target = np.ones(first_shape, "float32")
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        batch = next(iter(input_data.values())).shape[0]
        history = model.fit(input_data, target, batch_size=batch, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
        after = [to_numpy(w) for w in trained.trainable_weights]
        if before:
            assert any(not np.array_equal(a, b) for a, b in zip(before, after))

    # Mixed precision against float32, same weights and the same memory.
    reference = cls(**init_kwargs)
    reference_out = _first(reference(**input_data))
    mixed = cls(**{**init_kwargs, "dtype": "mixed_bfloat16"})
    mixed(**input_data)
    mixed.set_weights(reference.get_weights())
    if getattr(mixed, "stateful", False):
        mixed.reset_state()
        reference.reset_state()
        reference_out = _first(reference(**input_data))
    mixed_out = _first(mixed(**input_data))
    scale = float(np.max(np.abs(to_numpy(reference_out)))) + 1e-6
    error = float(np.max(np.abs(to_numpy(mixed_out).astype("float32") - to_numpy(reference_out))))
    assert error <= mixed_precision_tolerance * scale, (error, scale)
    for name, value in _memory(mixed).items():
        assert value.dtype == np.float32, name

    # .keras round trip: weights and memory come back, the next call agrees.
    inputs = {
        k: keras.Input(v.shape[1:], batch_size=v.shape[0], dtype=str(v.dtype), name=k)
        for k, v in input_data.items()
    }
    saved_layer = cls(**init_kwargs)
    model = keras.Model(inputs, _first(saved_layer(**inputs)))
    model(input_data)  # Fill the memory (stateful layers) before saving.
    path = str(tmp_path / f"{cls.__name__}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    loaded_layer = [x for x in loaded.layers if isinstance(x, cls)][0]
    for a, b in zip(saved_layer.weights, loaded_layer.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    memory = _memory(saved_layer)
    loaded_memory = _memory(loaded_layer)
    assert memory.keys() == loaded_memory.keys()
    for name in memory:
        np.testing.assert_array_equal(memory[name], loaded_memory[name])
    np.testing.assert_allclose(to_numpy(loaded(input_data)), to_numpy(model(input_data)), atol=1e-6)
