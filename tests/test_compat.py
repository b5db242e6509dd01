"""keras_infformer.compat: each workaround works here, and what it relies on exists.

The `test_pinned_*` tests check that every private name a workaround uses is
still there on the installed Keras / keras-hub / TensorFlow; an upgrade that
moves one fails with a message naming the workaround to update.
"""

import inspect
import os

import keras
import keras_hub
import numpy as np
import pytest

from keras_infformer import compat

BACKEND = keras.backend.backend()


def _pinned(owner, name, workaround):
    assert hasattr(owner, name), (
        f"`{getattr(owner, '__name__', type(owner).__name__)}.{name}` is gone "
        f"(keras {keras.__version__}, keras-hub {keras_hub.__version__}): "
        f"update keras_infformer.compat.{workaround}, written for keras "
        f"{compat.KERAS_VERSION} / keras-hub {compat.KERAS_HUB_VERSION}."
    )


def _in_source(function, text, workaround):
    assert text in inspect.getsource(function), (
        f"`{function.__qualname__}` no longer mentions `{text}` (keras "
        f"{keras.__version__}): update keras_infformer.compat.{workaround}, "
        f"written for keras {compat.KERAS_VERSION}."
    )


def _dense_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    outputs = keras.Sequential([keras.layers.Dense(2, name="inner")], name="nested")(hidden)
    return keras.Model(inputs, outputs)


def _gpt2():
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )


def _llama(cls=keras_hub.models.LlamaBackbone, **kwargs):
    return cls(
        vocabulary_size=50,
        num_layers=1,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        **kwargs,
    )


def test_versions_are_the_installed_ones():
    """The versions named in compat are those this suite runs (constraints)."""
    assert keras.__version__ == compat.KERAS_VERSION
    assert keras_hub.__version__ == compat.KERAS_HUB_VERSION
    if BACKEND == "tensorflow":
        import tensorflow as tf

        assert tf.__version__ == compat.TENSORFLOW_VERSION


# -- Keras: layers and variables ---------------------------------------------------


def test_pinned_layer_privates():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    for name in ("_flatten_layers", "_track_variable", "_check_load_own_variables"):
        _pinned(
            keras.layers.Layer, name, "flatten_layers / track_variable / check_load_own_variables"
        )
    for name in ("_trainable_variables", "_non_trainable_variables"):
        _pinned(layer, name, "own_variables")
    from keras.src.backend.common import symbolic_scope

    _pinned(symbolic_scope, "in_symbolic_scope", "in_symbolic_scope")


def test_flatten_layers_reaches_nested_layers():
    model = _dense_model()
    names = [layer.name for layer in compat.flatten_layers(model)]
    assert "hidden" in names and "nested" in names and "inner" in names
    assert model not in compat.flatten_layers(model)
    assert compat.flatten_layers(model, include_self=True)[0] is model


def test_in_symbolic_scope_is_true_only_while_inferring_shapes():
    seen = []

    class Probe(keras.layers.Layer):
        def call(self, x):
            seen.append(compat.in_symbolic_scope())
            return x

    probe = Probe()
    probe.compute_output_spec(keras.KerasTensor((2, 3)))
    probe(np.zeros((2, 3), "float32"))
    assert seen == [True, False]


def test_track_variable_makes_the_layer_own_it():
    layer = keras.layers.Layer()
    variable = keras.Variable(np.zeros((2,), "float32"), trainable=False, name="kept")
    compat.track_variable(layer, variable)
    assert any(v is variable for v in layer.non_trainable_variables)


def test_own_variables_number_as_keras_saves_them():
    layer = keras.layers.BatchNormalization()
    layer.build((None, 3))
    for k, v in enumerate(layer.weights):
        v.assign(np.full(v.shape, float(k), "float32"))
    store = {}
    layer.save_own_variables(store)
    own = compat.own_variables(layer)
    assert len(own) == len(store)
    for i, v in enumerate(own):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), np.asarray(store[f"{i}"]))


def test_check_load_own_variables_refuses_a_mismatched_store():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    compat.check_load_own_variables(layer, {"0": np.zeros((3, 2)), "1": np.zeros((2,))})
    with pytest.raises(ValueError):
        compat.check_load_own_variables(layer, {"0": np.zeros((3, 2))})


# -- Keras: trainers -----------------------------------------------------------------


def test_pinned_trainer_privates():
    _in_source(keras.Model.fit, "_use_cached_eval_dataset", "is_fit_validation")
    _in_source(keras.Model.evaluate, "_use_cached_eval_dataset", "is_fit_validation")
    if BACKEND == "tensorflow":
        _pinned(keras.Model, "_maybe_symbolic_build", "SymbolicBuildBatch")
        parameters = inspect.signature(keras.Model._maybe_symbolic_build).parameters
        assert {"iterator", "data_batch"} <= set(parameters), (
            "keras.Model._maybe_symbolic_build changed its arguments: update "
            "keras_infformer.compat.SymbolicBuildBatch"
        )
        _pinned(_dense_model(), "_distribute_strategy", "tf_distribute_strategy")
    if BACKEND == "jax":
        from keras.src.backend.jax import trainer

        for name in ("_jax_state", "_jax_state_synced"):
            _in_source(trainer.JAXTrainer.fit, name, "restore_jax_step_state")


def test_tf_distribute_strategy_is_none_without_a_strategy():
    assert compat.tf_distribute_strategy(_dense_model()) is None


def _xy():
    return np.ones((4, 3), "float32"), np.ones((4, 2), "float32")


def test_is_fit_validation_tells_fit_calls_from_user_calls():
    calls = []

    class Model(keras.Model):
        def evaluate(self, *args, **kwargs):
            calls.append(compat.is_fit_validation(kwargs))
            return super().evaluate(*args, **kwargs)

    inner = _dense_model()
    model = Model(inner.inputs, inner.outputs)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(*_xy(), validation_data=_xy(), epochs=1, verbose=0)
    model.evaluate(*_xy(), verbose=0)
    assert calls == [True, False]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's trainer only")
def test_symbolic_build_batch_is_asked_for_the_build_batch():
    asked = []

    class Model(compat.SymbolicBuildBatch, keras.Model):
        def symbolic_build_batch(self, iterator):
            asked.append(True)
            return None  # Keras' own choice.

    inner = _dense_model()
    model = Model(inner.inputs, inner.outputs)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(*_xy(), epochs=1, verbose=0)
    # Only with a strategy does Keras build from an iterator.
    assert asked == [] or asked == [True]
    assert model.predict(_xy()[0], verbose=0).shape == (4, 2)


class _FailingData(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise RuntimeError("no data")


@pytest.mark.skipif(BACKEND != "jax", reason="Keras' JAX trainer only")
def test_restore_jax_step_state_keeps_the_variables_of_a_failed_first_step():
    class Model(keras.Model):
        def make_train_function(self, force=False):
            super().make_train_function(force)

            def wrap(function):
                def guarded(state, iterator):
                    try:
                        return function(state, iterator)
                    except BaseException:
                        compat.restore_jax_step_state(self, "train_function", state)
                        raise

                return guarded

            compat.wrap_step_function(self, "train_function", wrap)
            compat.wrap_step_function(self, "train_function", wrap)  # No-op.
            return self.train_function

    inner = _dense_model()
    model = Model(inner.inputs, inner.outputs)
    model.compile(optimizer="sgd", loss="mse")
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(RuntimeError, match="no data"):
        model.fit(_FailingData(), epochs=1, verbose=0)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert model.predict(_xy()[0], verbose=0).shape == (4, 2)


def test_wrap_step_function_wraps_once_and_skips_a_missing_function():
    class Holder:
        train_function = None

    holder = Holder()
    compat.wrap_step_function(holder, "train_function", lambda f: f)
    assert holder.train_function is None
    holder.train_function = lambda: 1
    compat.wrap_step_function(holder, "train_function", lambda f: lambda: f() + 1)
    compat.wrap_step_function(holder, "train_function", lambda f: lambda: f() + 1)
    assert holder.train_function() == 2
    assert set(compat.JAX_STEP_STATE) == {"train_function", "test_function", "predict_function"}


# -- keras-hub: presets --------------------------------------------------------------


def test_pinned_preset_privates():
    from keras_hub.src.utils import preset_utils

    for name in ("BUILTIN_PRESETS_FOR_BACKBONE", "get_preset_loader", "TOKENIZER_CONFIG_FILE"):
        _pinned(preset_utils, name, "share_builtin_presets / preset_loader / preset_tokenizer_file")


def test_share_builtin_presets_lists_the_family_presets():
    class Own(keras_hub.models.GPT2Backbone):
        pass

    assert keras_hub.models.GPT2Backbone.presets and not Own.presets
    compat.share_builtin_presets(Own, keras_hub.models.GPT2Backbone)
    assert set(Own.presets) == set(keras_hub.models.GPT2Backbone.presets)


def test_preset_loader_reads_a_saved_backbone(tmp_path):
    folder = str(tmp_path / "preset")
    _gpt2().save_to_preset(folder)
    loader = compat.preset_loader(folder)
    assert issubclass(loader.check_backbone_class(), keras_hub.models.GPT2Backbone)
    assert compat.preset_tokenizer_file() == "tokenizer.json"
    assert not os.path.exists(os.path.join(folder, compat.preset_tokenizer_file()))


# -- keras-hub: decoder layers ---------------------------------------------------------


def test_keras_hub_part_names_the_attribute_and_the_version():
    class Block:
        pass

    with pytest.raises(RuntimeError, match=r"Block\._query_dense.*keras-hub 0\.32\.0"):
        compat.keras_hub_part(Block(), "_query_dense")


def test_pinned_decoder_privates():
    """Every part is found (a moved one raises `keras_hub_part`'s error)."""
    block = _gpt2().transformer_layers[0]
    for role, part in compat.transformer_decoder_parts(block).items():
        assert isinstance(part, keras.layers.Layer), role
    _pinned(block, "_compute_self_attention_mask", "transformer_decoder_causal_mask")
    attention = compat.transformer_decoder_parts(block)["attention"]
    _pinned(attention, "_compute_attention", "multi_head_attention")
    for name in ("query_dense", "key_dense", "value_dense", "output_dense"):
        assert isinstance(getattr(attention, name), keras.layers.Layer), name
    for backbone in (_llama(), _llama(keras_hub.models.Qwen3Backbone, head_dim=4)):
        parts = compat.llama_decoder_parts(backbone.transformer_layers[0])
        for role in ("attention_norm", "attention", "query", "ffn_norm", "gate", "up", "down"):
            assert isinstance(parts[role], keras.layers.Layer), role
    qwen3 = _llama(keras_hub.models.Qwen3Backbone, head_dim=4)
    attention = compat.llama_decoder_parts(qwen3.transformer_layers[0])["attention"]
    assert isinstance(compat.qwen3_query_norm(attention), keras.layers.Layer)


def test_gpt2_attention_by_parts_equals_the_layer():
    """Mask + projections + `multi_head_attention` + output projection is
    the attention layer's own call."""
    block = _gpt2().transformer_layers[0]
    attention = compat.transformer_decoder_parts(block)["attention"]
    h = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    mask = compat.transformer_decoder_causal_mask(block, h)
    attended = compat.multi_head_attention(
        attention,
        attention.query_dense(h),
        attention.key_dense(h),
        attention.value_dense(h),
        mask,
    )
    got = attention.output_dense(attended)
    want = attention(h, h, attention_mask=mask)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-6
    )
    # Causal: the first query sees only itself.
    assert not bool(keras.ops.convert_to_numpy(mask)[0, 0, 1])
