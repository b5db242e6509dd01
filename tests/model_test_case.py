"""The battery every memory causal LM goes through (as keras-hub's
`run_backbone_test` / `run_task_test` for its model families).

`run_memory_lm_test(model, tmp_path)` checks the contract that
`StreamingCausalLM` builds on (`state_spec`, `get_state` / `set_state` /
`reset_state`, a pure `step`, token-by-token `decode`) and what a Keras
user does with any of our models: the config round trip, the stateful call
against the pure step, resets by row, saving with the memory, `fit` on a
stream and `generate()`. The references are the model's own independent
paths (the stateful call for `step`, `step` for `decode`, a fresh model for
a reset row), each computed separately.
"""

import json

import keras
import numpy as np

from keras_infformer.data import StreamingDataset


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def _assert_states_close(a, b, atol):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_allclose(to_numpy(a[name]), to_numpy(b[name]), atol=atol, err_msg=name)


def run_memory_lm_test(model, tmp_path, seed=0, atol=1e-4, decode_positions=2):
    """Run the battery on a built memory causal LM (any family).

    Args:
        model: a `keras_infformer.models.StreamingCausalLM` whose memory
            shows in its logits (non-zero memory output).
        tmp_path: a folder for the saved model.
        seed: the token draw.
        atol: tolerance of logits compared along two paths.
        decode_positions: how many positions of a segment `decode` is
            checked on, from its start (defaults to 2: the memory read
            at position 0 and one token of the partial segment).
    """
    rows, length = model.batch_size, model.segment_length
    vocabulary = model.vocabulary_size
    rng = np.random.default_rng(seed)
    segments = [rng.integers(1, vocabulary, size=(rows, length)).astype("int32") for _ in range(3)]
    first = np.ones((rows,), bool)
    later = np.zeros((rows,), bool)

    # The config is JSON and gives back an equal model config.
    config = model.get_config()
    revived = type(model).from_config(json.loads(json.dumps(config)))
    assert json.dumps(revived.get_config(), sort_keys=True) == json.dumps(config, sort_keys=True)

    # The state is what state_spec declares; a reset empties it.
    model.reset_state()
    spec = model.state_spec(rows)
    state = model.get_state()
    assert sorted(state) == sorted(spec)
    _assert_states_close(state, model.get_initial_state(rows), 0.0)
    for name, value in state.items():
        assert tuple(value.shape) == tuple(spec[name].shape), name

    # The stateful call equals the pure step, segment by segment, and
    # writes the step's new state into the variables.
    pure = model.get_initial_state(rows)
    for segment, reset in ((segments[0], first), (segments[1], later)):
        expected, pure = model.step(segment, reset, pure)
        logits = model.predict_on_batch({"token_ids": segment, "reset": reset})
        assert tuple(logits.shape) == (rows, length, vocabulary)
        np.testing.assert_allclose(to_numpy(logits), to_numpy(expected), atol=atol)
        _assert_states_close(model.get_state(), pure, atol)
    assert any(np.any(to_numpy(value)) for value in pure.values()), "memory stayed empty"

    # The memory is read: the next segment differs from an empty memory's.
    carried, _ = model.step(segments[2], later, pure)
    empty, _ = model.step(segments[2], first, model.get_initial_state(rows))
    assert np.max(np.abs(to_numpy(carried) - to_numpy(empty))) > 10 * atol

    # A reset row forgets its past; the other rows keep theirs.
    mixed = later.copy()
    mixed[0] = True
    mixed_logits, _ = model.step(segments[2], mixed, pure)
    np.testing.assert_allclose(to_numpy(mixed_logits)[0], to_numpy(empty)[0], atol=atol)
    np.testing.assert_allclose(to_numpy(mixed_logits)[1:], to_numpy(carried)[1:], atol=atol)

    # Decoding token by token gives the step's logits, position by position.
    state = model.decode_state(pure)
    for position in range(decode_positions):
        logits, state = model.decode(segments[2][:, position : position + 1], state)
        np.testing.assert_allclose(
            to_numpy(logits), to_numpy(carried)[:, position], atol=atol, err_msg=f"{position}"
        )

    # Saving keeps the weights and the memory; the reloaded model goes on
    # as the original.
    path = str(tmp_path / "battery.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model)
    assert type(loaded.backbone) is type(model.backbone)
    assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
    for saved, restored in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(restored), to_numpy(saved), err_msg=saved.path)
    _assert_states_close(loaded.get_state(), model.get_state(), 0.0)
    inputs = {"token_ids": segments[2], "reset": later}
    np.testing.assert_allclose(
        to_numpy(loaded.predict_on_batch(inputs)),
        to_numpy(model.predict_on_batch(inputs)),
        atol=atol,
    )

    # fit on a stream trains (finite loss) and leaves the memory filled;
    # generate() continues the prompt.
    documents = [rng.integers(1, vocabulary, size=3 * length) for _ in range(rows)]
    stream = StreamingDataset(documents, batch_size=rows, segment_length=length)
    loaded.compile(optimizer=keras.optimizers.Adam(1e-3), sampler="greedy")
    history = loaded.fit(stream, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert any(np.any(to_numpy(value)) for value in loaded.get_state().values())
    prompt = segments[0][:, : max(1, length // 2)]
    output = loaded.generate(
        {"token_ids": prompt, "padding_mask": np.ones_like(prompt, bool)},
        max_length=prompt.shape[1] + 2,
    )
    np.testing.assert_array_equal(to_numpy(output["token_ids"])[:, : prompt.shape[1]], prompt)
    model.reset_state()
