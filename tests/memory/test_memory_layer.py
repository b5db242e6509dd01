"""The MemoryLayer base and the rules every memory layer shares.

- A tiny user-defined subclass gets variables, reset, get/set state, saving
  and the distribution layout rules from the base.
- `set_state` checks everything (keys, shapes, finite values) before it
  writes anything; the explicit-state path refuses non-finite state.
- A row flagged in `reset` gives exactly (bit for bit) what an empty memory
  gives, even when it held NaN, in ContinuousLTM, CompressiveMemory,
  InfiniteFormerDecoder and InfiniteFormerLM.
- Reset flags are bools or 0/1 on every path; 2 or 0.5 are refused.
- Under mixed_bfloat16 the stateful path, the explicit-state path and
  `model.step()` agree, and the memory stays float32.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_infformer import memory
from keras_infformer.layers import CompressiveMemory, ContinuousLTM, InfiniteFormerDecoder
from keras_infformer.models import InfiniteFormerLM

B, L, E = 2, 8, 4
VOCAB, HIDDEN = 24, 8


def _np(x):
    if isinstance(x, keras.Variable):
        x = x.value
    return np.array(ops.convert_to_numpy(x))


def _states_np(state):
    return {k: _np(v) for k, v in state.items()}


def _assert_states_equal(a, b):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(_np(a[key]), _np(b[key]), err_msg=key)


def _inputs(seed, batch=B, length=L, width=E):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, length, width)).astype("float32")


def _tokens(seed, batch=B):
    return np.random.default_rng(seed).integers(0, VOCAB, (batch, L)).astype("int32")


# -- a user-defined memory layer ---------------------------------------------------


_CLASSES = {}


def _decaying_sum_class():
    """A tiny MemoryLayer: `total <- decay * total + mean(inputs)`, where
    `decay` starts at 1 (so the empty state is not all zeros) and halves at
    every call. Only `build`, `state_spec`, `get_initial_state` and `step`."""
    if "DecayingSum" not in _CLASSES:

        class DecayingSum(memory.MemoryLayer):
            def build(self, input_shape):
                self.units = input_shape[-1]
                super().build(input_shape)

            def state_spec(self, batch_size=None):
                return {
                    "total": keras.KerasTensor((batch_size, self.units)),
                    "decay": keras.KerasTensor((batch_size,)),
                }

            def get_initial_state(self, batch_size):
                state = super().get_initial_state(batch_size)
                state["decay"] = ops.ones((batch_size,))
                return state

            def step(self, inputs, state, reset=None):
                state = self.read_state(state, reset)
                total = state["decay"][:, None] * state["total"] + ops.mean(inputs, axis=1)
                return total, {"total": total, "decay": 0.5 * state["decay"]}

        _CLASSES["DecayingSum"] = DecayingSum
    return _CLASSES["DecayingSum"]


def test_user_subclass_gets_the_plumbing(tmp_path):
    DecayingSum = _decaying_sum_class()
    layer = DecayingSum(name="decaying_sum")
    xs = [_inputs(s) for s in range(3)]
    layer.build(xs[0].shape)
    # Variables: float32, non-trainable, one per state name, also as attributes.
    assert [v.name for v in layer.non_trainable_weights] == ["total", "decay"]
    assert layer.trainable_weights == []
    assert layer.total.shape == (B, E) and layer.decay.dtype == "float32"
    assert memory.is_memory_variable(layer.total)
    np.testing.assert_array_equal(_np(layer.decay), 1.0)  # the initial state
    # ... found by the layout rules of keras_infformer.distribution.
    assert memory.DECLARED_STATES.ranks()["total"] == 2
    assert memory.DECLARED_STATES.ranks()["decay"] == 1
    import re

    patterns = memory.DECLARED_STATES.path_patterns()
    assert re.fullmatch(patterns[2], layer.total.path)
    assert re.fullmatch(patterns[1], layer.decay.path)

    # Stateful stream == NumPy; the explicit path gives the same, any batch.
    total, decay = np.zeros((B, E)), np.ones(B)
    state = layer.get_initial_state(B)
    for x in xs:
        total = decay[:, None] * total + x.mean(1)
        decay = decay / 2
        out = layer(x)
        explicit, state = layer(x, state=state)
        np.testing.assert_allclose(_np(out), total, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(_np(explicit), _np(out))
    _assert_states_equal(state, layer.get_state())
    # A reset row starts from the initial state (decay 1), the other goes on.
    out = _np(layer(xs[0], reset=np.array([True, False])))
    np.testing.assert_allclose(out[0], xs[0][0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(out[1], decay[1] * total[1] + xs[0][1].mean(0), rtol=1e-6)

    # get_state copies; set_state round-trips; reset_state empties.
    saved = _states_np(layer.get_state())
    layer(xs[1])
    layer.set_state(saved)
    _assert_states_equal(saved, layer.get_state())
    layer.reset_state()
    _assert_states_equal(_states_np(layer.get_initial_state(B)), layer.get_state())

    # Saving keeps the memory (save_own_variables / load_own_variables).
    layer.set_state(saved)
    inputs = keras.Input((L, E), batch_size=B)
    model = keras.Model(inputs, layer(inputs))
    path = str(tmp_path / "decaying.weights.h5")
    model.save_weights(path)
    inputs = keras.Input((L, E), batch_size=B)
    restored = DecayingSum(name="decaying_sum")
    keras.Model(inputs, restored(inputs)).load_weights(path)
    _assert_states_equal(saved, restored.get_state())

    # The base's checks.
    with pytest.raises(ValueError, match=r"static batch size.*None"):
        DecayingSum()(keras.Input((L, E)))
    with pytest.raises(ValueError, match=r"batch size 2.*\(3, 8, 4\)"):
        layer(_inputs(9, batch=3))
    with pytest.raises(ValueError, match=r"Missing: \['decay'\]"):
        layer(xs[0], state={"total": np.zeros((B, E), "float32")})
    with pytest.raises(ValueError, match="keeps no memory variables"):
        stateless = DecayingSum(stateful=False)
        stateless.build((None, L, E))
        stateless(xs[0])
    _assert_states_equal(saved, layer.get_state())


def test_state_names_and_nesting():
    assert memory.state_name("layer", 0, "ltm", "coefficients") == "layer_0_ltm_coefficients"
    nested = {"layer_0": {"stm": 1, "ltm": {"filled": 2}}, "layer_1": {"stm": 3}}
    flat = memory.flatten_state(nested)
    assert flat == {"layer_0_stm": 1, "layer_0_ltm_filled": 2, "layer_1_stm": 3}
    assert memory.unflatten_state(flat, nested) == nested
    with pytest.raises(ValueError, match=r"Missing: \['layer_1_stm'\]; unknown: \['x'\]"):
        memory.unflatten_state({"layer_0_stm": 1, "layer_0_ltm_filled": 2, "x": 0}, nested)
    # The LM's public (served) names are unchanged.
    model = _lm("compressive")
    assert list(model.state_spec()) == [
        "layer_0_stm",
        "layer_0_stm_mask",
        "layer_0_cmem",
        "layer_0_cmem_mask",
        "layer_0_ltm_coefficients",
        "layer_0_ltm_filled",
        "layer_0_ltm_max_abs",
        "layer_0_ltm_density",
    ]


# -- set_state: all or nothing --------------------------------------------------------


def _filled_ltm():
    layer = ContinuousLTM(num_basis=16, num_samples=16)
    layer(_inputs(0))
    return layer


def test_set_state_checks_everything_before_writing():
    layer = _filled_ltm()
    before = _states_np(layer.get_state())
    good = {k: v + 1.0 for k, v in before.items()}
    bad_shape = dict(good, filled=np.ones((B + 1,), "float32"))
    with pytest.raises(ValueError, match=r"state\['filled'\].*\(3,\)"):
        layer.set_state(bad_shape)
    missing = {k: v for k, v in good.items() if k != "max_abs"}
    with pytest.raises(ValueError, match=r"Missing: \['max_abs'\]"):
        layer.set_state(missing)
    with pytest.raises(ValueError, match=r"unknown: \['bogus'\]"):
        layer.set_state(dict(good, bogus=np.zeros(B, "float32")))
    not_finite = dict(good, max_abs=np.array([1.0, np.inf], "float32"))
    with pytest.raises(ValueError, match=r"state\['max_abs'\].*finite"):
        layer.set_state(not_finite)
    _assert_states_equal(before, layer.get_state())  # nothing was written
    layer.set_state(good)
    _assert_states_equal(good, layer.get_state())


def test_lm_set_state_checks_every_block_before_writing():
    model = _lm("ltm")
    model.reset_state()
    model({"token_ids": _tokens(1), "reset": np.ones(B, bool)})
    before = _states_np(model.get_state())
    good = {k: v + 1.0 for k, v in before.items()}
    # Block 0's part is fine, block 1's is not: nothing may be written.
    bad = dict(good, layer_1_stm=np.zeros((B, L + 1, HIDDEN), "float32"))
    with pytest.raises(ValueError, match=r"stm.*\(2, 9, 8\)"):
        model.set_state(bad)
    nan = dict(
        good, layer_1_ltm_coefficients=np.full_like(good["layer_1_ltm_coefficients"], np.nan)
    )
    with pytest.raises(ValueError, match=r"ltm_coefficients.*finite"):
        model.set_state(nan)
    with pytest.raises(ValueError, match=r"Missing: \['layer_1_stm_mask'\]"):
        model.set_state({k: v for k, v in good.items() if k != "layer_1_stm_mask"})
    _assert_states_equal(before, model.get_state())
    model.set_state(good)
    _assert_states_equal(good, model.get_state())


@pytest.mark.parametrize("dtype", ["bool", "int32", "complex64"])
def test_set_state_refuses_values_that_are_not_floats(dtype):
    """Issue 23 item 20: bool, int and complex tensors were written (complex
    losing its imaginary part with only a NumPy warning)."""
    layer = _filled_ltm()
    before = _states_np(layer.get_state())
    bad = {k: v + 1.0 for k, v in before.items()}
    bad["max_abs"] = np.ones_like(before["max_abs"]).astype(dtype)
    with pytest.raises(TypeError, match=rf"state\['max_abs'\].*dtype={dtype}"):
        layer.set_state(bad)
    _assert_states_equal(before, layer.get_state())
    model = _lm("ltm")
    model({"token_ids": _tokens(1), "reset": np.ones(B, bool)})
    before = _states_np(model.get_state())
    bad = {k: v + 1.0 for k, v in before.items()}
    bad["layer_1_ltm_filled"] = np.zeros_like(before["layer_1_ltm_filled"]).astype(dtype)
    with pytest.raises(TypeError, match=rf"layer_1_ltm_filled.*dtype={dtype}"):
        model.set_state(bad)
    _assert_states_equal(before, model.get_state())


@pytest.mark.parametrize("wrong", ["shape", "dtype"])
def test_a_stateful_call_checks_every_new_state_tensor_before_writing(wrong):
    """Issue 23 item 18: the stateful call assigned the new state one
    variable at a time: a subclass step returning a bad second tensor left
    the first written."""
    DecayingSum = _decaying_sum_class()

    class Broken(DecayingSum):
        def step(self, inputs, state, reset=None):
            outputs, new_state = super().step(inputs, state, reset=reset)
            decay = new_state["decay"]
            if wrong == "shape":
                decay = ops.concatenate([decay, decay])
            else:
                decay = ops.cast(decay, "int32")
            return outputs, {"total": new_state["total"], "decay": decay}

    layer = Broken()
    layer.build((B, L, E))
    layer.set_state({"total": np.full((B, E), 3.0, "float32"), "decay": np.ones(B, "float32")})
    before = _states_np(layer.get_state())
    error = ValueError if wrong == "shape" else TypeError
    with pytest.raises(error, match=r"new_state\['decay'\]"):
        layer(_inputs(0))
    _assert_states_equal(before, layer.get_state())


def test_explicit_path_refuses_non_finite_state():
    layer = _filled_ltm()
    state = _states_np(layer.get_state())
    state["coefficients"][1, 3, 0] = np.nan
    with pytest.raises(ValueError, match=r"state\['coefficients'\].*finite"):
        layer(_inputs(1), state=state)
    block = _block()
    block.build((B, L, HIDDEN))
    state = _states_np(block.get_initial_state(B))
    state["stm"][0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"state\['stm'\].*finite"):
        block(_inputs(2, width=HIDDEN), state=state)
    model = _lm("ltm")
    state = _states_np(model.get_initial_state(B))
    state["layer_1_ltm_max_abs"][1] = np.nan
    with pytest.raises(ValueError, match=r"layer_1_ltm_max_abs.*finite"):
        model.step(_tokens(3), np.zeros(B, bool), state)


# -- a reset row is an empty row, whatever it held ------------------------------------


def _block(**kwargs):
    config = dict(
        intermediate_dim=16,
        num_heads=2,
        memory_length=12,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        sticky_memories=True,
        compressed_memory_length=4,
        dropout=0.0,
    )
    config.update(kwargs)
    return InfiniteFormerDecoder(**config)


_MODELS = {}


def _lm(kind):
    """One small model per kind for the module (built once)."""
    if kind not in _MODELS:
        extra = (
            dict(sticky_memories=True, compressed_memory_length=4) if kind == "compressive" else {}
        )
        keras.utils.set_random_seed(len(_MODELS))
        _MODELS[kind] = InfiniteFormerLM(
            vocabulary_size=VOCAB,
            segment_length=L,
            batch_size=B,
            num_layers=1 if kind == "compressive" else 2,
            hidden_dim=HIDDEN,
            num_heads=2,
            intermediate_dim=16,
            memory_length=12,
            num_basis=16,
            num_samples=16,
            num_bins=16,
            dropout=0.0,
            **extra,
        )
    return _MODELS[kind]


def _poison(variables_or_state, row):
    """NaN in `row` of every piece of state (variables written directly)."""
    for value in variables_or_state:
        if isinstance(value, keras.Variable):
            data = _np(value)
            data[row] = np.nan
            value.assign(data)
        else:
            value[row] = np.nan


@pytest.mark.parametrize("kind", ["ltm", "cmem", "decoder", "lm"])
def test_reset_row_equals_an_empty_row_even_after_nan(kind):
    """Row 0 holds NaN everywhere and is reset: its outputs and new state
    are bit for bit those of an empty memory, on the stateful path and (for
    the LM) on `model.step`; row 1 is untouched by the poison."""
    reset = np.array([True, False])
    if kind == "lm":
        model = owner = _lm("compressive")
        layer_variables = [v for v in model.non_trainable_weights if memory.is_memory_variable(v)]

        def run(state=None, x=_tokens(4)):
            if state is None:
                return model({"token_ids": x, "reset": reset}), model.get_state()
            return model.step(x, reset, state)

        model.reset_state()
        model({"token_ids": _tokens(5), "reset": np.ones(B, bool)})
        initial = model.get_initial_state(B)
    else:
        if kind == "ltm":
            layer, x = ContinuousLTM(num_basis=16, num_samples=16), _inputs(4)
        elif kind == "cmem":
            layer, x = CompressiveMemory(memory_length=4), _inputs(4)
        else:
            layer, x = _block(), _inputs(4, width=HIDDEN)
        layer(x)
        layer(x)
        owner = layer
        layer_variables = layer.non_trainable_weights
        initial = layer.get_initial_state(B)

        def run(state=None):
            if state is None:
                return layer(x, reset=reset), layer.get_state()
            return layer(x, reset=reset, state=state)

    empty_out, empty_state = run(dict(initial))  # explicit, from empty
    kept = _states_np(owner.get_state())
    _poison(layer_variables, row=0)
    out, state = run()
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(empty_out)):
        np.testing.assert_array_equal(_np(a)[0], _np(b)[0])
        assert np.all(np.isfinite(_np(a)))
    for key in state:
        np.testing.assert_array_equal(_np(state[key])[0], _np(empty_state[key])[0], err_msg=key)
        assert np.all(np.isfinite(_np(state[key]))), key
    if kind == "lm":
        # The explicit step accepts NaN in a row it resets, with the same result.
        poisoned = {k: v.copy() for k, v in kept.items()}
        _poison(poisoned.values(), row=0)
        logits, step_state = model.step(_tokens(4), reset, poisoned)
        np.testing.assert_array_equal(_np(logits)[0], _np(empty_out)[0])
        for key in step_state:
            np.testing.assert_array_equal(
                _np(step_state[key])[0], _np(empty_state[key])[0], err_msg=key
            )


# -- reset flags ----------------------------------------------------------------------


def _flag_paths():
    """`{path: call(reset)}` over the stateful and explicit paths of the
    ContinuousLTM, the decoder and the LM; each returns NumPy outputs."""
    ltm = ContinuousLTM(num_basis=16, num_samples=16)
    block = _block()
    model = _lm("ltm")
    x, h = _inputs(6), _inputs(7, width=HIDDEN)
    ltm(x)
    block(h)
    tokens = _tokens(8)
    ltm_state, block_state = ltm.get_state(), block.get_state()
    model_state = model.get_initial_state(B)
    return {
        "ltm_stateful": (ltm, lambda r: _np(ltm(x, reset=r))),
        "ltm_explicit": (ltm, lambda r: _np(ltm(x, reset=r, state=ltm_state)[0])),
        "decoder_stateful": (block, lambda r: _np(block(h, reset=r))),
        "decoder_explicit": (block, lambda r: _np(block(h, reset=r, state=block_state)[0])),
        "lm_call": (model, lambda r: _np(model({"token_ids": tokens, "reset": r}))),
        "lm_step": (model, lambda r: _np(model.step(tokens, r, model_state)[0])),
    }


def test_reset_flags_are_bools_or_zero_one():
    for name, (owner, call) in _flag_paths().items():
        before = _states_np(owner.get_state())
        for bad in (np.array([2, 0]), np.array([0.5, 0.0], "float32"), np.array([1, -1])):
            with pytest.raises(ValueError, match=r"reset.*0 and 1"):
                call(bad)
        _assert_states_equal(before, owner.get_state())  # nothing was written
        results = []
        for flags in (np.array([True, False]), np.array([1, 0]), np.array([1.0, 0.0], "float32")):
            owner.set_state(before)
            results.append(call(flags))
        for other in results[1:]:
            np.testing.assert_array_equal(results[0], other, err_msg=name)


# -- mixed precision ---------------------------------------------------------------------


def test_mixed_bfloat16_paths_agree_and_memory_stays_float32(mixed_bfloat16):
    """The explicit `state` is never autocast to bfloat16: the stateful and
    explicit paths of a block, and the stateful model and `model.step()`,
    carry the same float32 memory."""
    keras.utils.set_random_seed(3)
    block = _block()
    assert block.compute_dtype == "bfloat16"
    segments = [_inputs(20 + s, width=HIDDEN) for s in range(4)]
    block.build(segments[0].shape)
    state = block.get_initial_state(B)
    for s, x in enumerate(segments):
        reset = np.array([s in (0, 2), s == 0])
        out, state = block(x, reset=reset, state=state)
        np.testing.assert_array_equal(_np(out), _np(block(x, reset=reset)))
        for key, value in block.get_state().items():
            assert keras.backend.standardize_dtype(state[key].dtype) == "float32", key
            assert keras.backend.standardize_dtype(value.dtype) == "float32", key
            np.testing.assert_array_equal(_np(state[key]), _np(value), err_msg=key)

    model = InfiniteFormerLM(
        vocabulary_size=VOCAB,
        segment_length=L,
        batch_size=B,
        num_layers=2,
        hidden_dim=HIDDEN,
        num_heads=2,
        intermediate_dim=16,
        memory_length=12,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        dropout=0.0,
        sticky_memories=True,
        compressed_memory_length=4,
    )
    state = model.get_initial_state(B)
    for s in range(4):
        tokens, reset = _tokens(10 + s), np.array([s in (0, 2), s == 0])
        stateful = _np(ops.cast(model({"token_ids": tokens, "reset": reset}), "float32"))
        logits, state = model.step(tokens, reset, state)
        for key, value in model.get_state().items():
            assert keras.backend.standardize_dtype(state[key].dtype) == "float32", key
            assert keras.backend.standardize_dtype(value.dtype) == "float32", key
            np.testing.assert_allclose(
                _np(state[key]), _np(value), rtol=1e-6, atol=1e-6, err_msg=key
            )
        # The logits only to bfloat16 rounding: inside the functional model
        # Keras reads the final norm's and the tied embedding's weights in
        # float32, when `step` calls them directly in bfloat16 (Keras'
        # autocast scopes); the memory above is the same either way.
        logits = _np(ops.cast(logits, "float32"))
        np.testing.assert_allclose(logits, stateful, rtol=0, atol=2e-2 * np.abs(stateful).max())
