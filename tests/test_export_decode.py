"""Generation through an exported model: the `decode_state` and
`decode_step` signatures, and `examples/serving_client.generate`.

The specification: tokens and logits generated with the SavedModel alone
(in a process where Keras and this package cannot be imported) equal
in-process `InfiniteFormerCausalLM.generate()`'s.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_infformer

BACKEND = keras.backend.backend()
pytestmark = pytest.mark.skipif(
    BACKEND == "torch",
    reason="SavedModel export needs the TensorFlow or JAX backend",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))

VOCAB = 37
SEGMENT = 4
NEW_TOKENS = 6
ATOL = 1e-5
# Prompt lengths: 1, segment - 1, segment, 3 * segment + 5.
PROMPT_LENGTHS = (1, SEGMENT - 1, SEGMENT, 3 * SEGMENT + 5)
SETTINGS = {
    "sticky": dict(sticky_memories=True, sticky_mode="quantile", num_bins=16),
}
if BACKEND == "tensorflow":
    # The compressive memory's decoding is the same served graph from either
    # backend (traced by TensorFlow); one backend keeps the suite's time.
    SETTINGS["compressive"] = dict(
        use_long_term_memory=False, compressed_memory_length=4, compression_rate=2
    )


def build_model(**overrides):
    config = dict(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=2,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        num_basis=8,
        num_samples=8,
    )
    config.update(overrides)
    model = keras_infformer.models.InfiniteFormerLM(**config)
    model({"token_ids": np.zeros((2, SEGMENT), "int32"), "reset": np.ones((2,), bool)})
    model.compile(sampler="greedy")
    return model


def prompts(length, batch=2, seed=0):
    return np.random.default_rng(seed + length).integers(0, VOCAB, (batch, length)).astype("int32")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Each setting exported once, with in-process greedy generations: one
    batch whose rows hold the prompts of every length (each row is read
    and continued on its own, so one compiled generate covers them all)."""
    found = {}
    total = max(PROMPT_LENGTHS) + NEW_TOKENS
    token_ids = np.zeros((len(PROMPT_LENGTHS), total), "int32")
    padding_mask = np.zeros_like(token_ids, dtype=bool)
    for row, length in enumerate(PROMPT_LENGTHS):
        token_ids[row, :length] = prompts(length, batch=1)[0]
        padding_mask[row, :length] = True
    for label, settings in SETTINGS.items():
        keras.utils.set_random_seed(5)
        model = build_model(**settings)
        path = keras_infformer.export_for_serving(model, tmp_path_factory.mktemp("export") / label)
        outputs, logits = model.generate(
            {"token_ids": token_ids, "padding_mask": padding_mask},
            stop_token_ids=None,
            return_logits=True,
        )
        tokens = keras.ops.convert_to_numpy(outputs["token_ids"])
        logits = keras.ops.convert_to_numpy(logits)
        expected = {
            length: (tokens[row : row + 1], logits[row : row + 1, : total - 1])
            for row, length in enumerate(PROMPT_LENGTHS)
        }
        found[label] = dict(model=model, path=path, expected=expected, total=total)
    return found


@pytest.fixture(scope="module")
def loaded(exports):
    import tensorflow as tf

    return {label: tf.saved_model.load(e["path"]) for label, e in exports.items()}


_TF_ONLY_GENERATION = textwrap.dedent(
    """
    import json
    import sys

    # A TensorFlow-only environment: these packages count as absent.
    for name in ("keras", "keras_infformer", "keras_hub", "jax", "jaxlib", "tf_keras"):
        sys.modules[name] = None

    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, sys.argv[1])
    import serving_client

    request = json.loads(sys.argv[2])
    worst = {}
    for label, path in request["paths"].items():
        # As a client loads it: one warm-up request per signature first.
        served, loaded_path = serving_client.load(path)
        assert loaded_path == path
        data = np.load(request["data"][label])
        for length in request["lengths"]:
            prompt = data[f"prompt_{length}"]
            tokens, logits, _ = serving_client.generate(
                served, prompt, request["total"] - length
            )
            np.testing.assert_array_equal(tokens, data[f"tokens_{length}"])
            error = float(np.abs(logits - data[f"logits_{length}"]).max())
            assert error <= request["atol"], (label, length, error)
            worst[f"{label}_{length}"] = error
    imported = sorted(
        n for n, m in sys.modules.items()
        if m is not None and n.split(".")[0] in ("keras", "keras_infformer", "jax")
    )
    assert not imported, imported
    print("OK", json.dumps(worst))
    """
)


def test_tensorflow_only_generation_equals_generate(exports, tmp_path):
    """`decode_step` from a SavedModel loaded with TensorFlow alone: every
    token and logit equal in-process `generate()` (plain LTM with sticky
    memories in quantile mode, and the compressive memory), for prompts of
    1, segment - 1, segment and 3 * segment + 5 tokens."""
    data = {}
    for label, export in exports.items():
        arrays = {}
        for length, (tokens, logits) in export["expected"].items():
            arrays[f"prompt_{length}"] = prompts(length, batch=1)
            arrays[f"tokens_{length}"] = tokens
            arrays[f"logits_{length}"] = logits
        data[label] = str(tmp_path / f"{label}.npz")
        np.savez(data[label], **arrays)
    request = dict(
        paths={label: e["path"] for label, e in exports.items()},
        data=data,
        lengths=list(PROMPT_LENGTHS),
        atol=ATOL,
        total=next(iter(exports.values()))["total"],
    )
    script = tmp_path / "generate.py"
    script.write_text(_TF_ONLY_GENERATION)
    result = subprocess.run(
        [sys.executable, str(script), os.path.join(ROOT, "examples"), json.dumps(request)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout


def test_signatures_and_their_names(loaded, exports):
    for label, served in loaded.items():
        model = exports[label]["model"]
        assert {"serving_default", "initial_state", "decode_state", "decode_step"} <= set(
            served.signatures
        )
        step_inputs = served.signatures["decode_state"].structured_input_signature[1]
        assert set(step_inputs) == set(model.state_spec())
        decode = served.signatures["decode_step"]
        inputs = decode.structured_input_signature[1]
        assert set(inputs) == set(model.decode_state_spec()) | {"token_ids"}
        assert tuple(inputs["token_ids"].shape) == (None, 1)
        outputs = decode.structured_outputs
        assert set(outputs) == set(model.decode_state_spec()) | {"logits"}
        assert tuple(outputs["logits"].shape) == (None, VOCAB)


def test_decode_state_equals_the_models(loaded, exports):
    import tensorflow as tf

    served = loaded["sticky"]
    model = exports["sticky"]["model"]
    state = served.signatures["initial_state"](batch_size=tf.constant(3))
    got = served.signatures["decode_state"](**state)
    want = model.decode_state(batch_size=3)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(
            got[name].numpy(), keras.ops.convert_to_numpy(want[name]), err_msg=name
        )


def test_decoding_a_whole_segment_gives_back_a_step_state(loaded):
    """At position 0 again, the decoding state's `serving_default` names
    continue `serving_default` exactly as if the segment had been sent
    whole: the two kinds of request compose both ways."""
    import tensorflow as tf

    served = loaded["sticky"]
    signatures = served.signatures
    step_names = list(signatures["decode_state"].structured_input_signature[1])
    first, second = prompts(SEGMENT, seed=1), prompts(SEGMENT, seed=2)

    state = signatures["initial_state"](batch_size=tf.constant(2))
    whole = dict(
        signatures["serving_default"](
            token_ids=tf.constant(first), reset=tf.constant([True, True]), **state
        )
    )
    whole.pop("logits")
    want = signatures["serving_default"](
        token_ids=tf.constant(second), reset=tf.constant([False, False]), **whole
    )

    decoding = signatures["decode_state"](**state)
    for index in range(SEGMENT):
        decoding = dict(
            signatures["decode_step"](
                token_ids=tf.constant(first[:, index : index + 1]), **decoding
            )
        )
        decoding.pop("logits")
    np.testing.assert_array_equal(decoding["position"].numpy(), [0.0, 0.0])
    back = {name: decoding[name] for name in step_names}
    got = signatures["serving_default"](
        token_ids=tf.constant(second), reset=tf.constant([False, False]), **back
    )
    np.testing.assert_allclose(got["logits"].numpy(), want["logits"].numpy(), rtol=0, atol=ATOL)


def test_bad_decode_requests_fail(loaded):
    import tensorflow as tf

    errors = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    signatures = loaded["sticky"].signatures
    decode = signatures["decode_step"]
    state = signatures["decode_state"](**signatures["initial_state"](batch_size=tf.constant(2)))
    good = dict(token_ids=tf.zeros((2, 1), tf.int32), **state)
    decode(**good)  # The baseline request works.
    stm = state["layer_0_stm"].numpy()
    poisoned = stm.copy()
    poisoned[1, 0, 0] = np.nan
    bad_requests = {
        "two tokens per row": dict(good, token_ids=tf.zeros((2, 2), tf.int32)),
        "token id >= vocabulary": dict(good, token_ids=tf.fill((2, 1), VOCAB)),
        "negative token id": dict(good, token_ids=tf.fill((2, 1), -1)),
        "positions differ between rows": dict(good, position=tf.constant([0.0, 1.0])),
        "position == segment_length": dict(good, position=tf.fill((2,), float(SEGMENT))),
        "negative position": dict(good, position=tf.fill((2,), -1.0)),
        "fractional position": dict(good, position=tf.fill((2,), 0.5)),
        "NaN in the memory": dict(good, layer_0_stm=tf.constant(poisoned)),
        "state of another batch": dict(good, layer_0_stm=tf.constant(stm[:1])),
    }
    for label, inputs in bad_requests.items():
        with pytest.raises(errors):
            decode(**inputs)
            pytest.fail(f"no error for {label}")
    with pytest.raises(errors):
        signatures["decode_state"](
            **dict(
                signatures["initial_state"](batch_size=tf.constant(2)),
                layer_0_stm=tf.constant(poisoned),
            )
        )


def test_served_decoding_is_pure(loaded):
    """No variable written, no random generator read: requests of different
    clients cannot see each other."""
    from keras_infformer.export import _IMPURE_OPS, _IMPURE_PREFIXES

    for served in loaded.values():
        graph = served.signatures["decode_step"].graph.as_graph_def()
        nodes = list(graph.node)
        for function in graph.library.function:
            nodes.extend(function.node_def)
        impure = [n.op for n in nodes if n.op in _IMPURE_OPS or n.op.startswith(_IMPURE_PREFIXES)]
        assert not impure, impure
        assert any(n.op == "ReadVariableOp" for n in nodes)


class _HalfDecoder(keras.layers.Layer):
    """Follows the step contract and has `decode` but not the rest."""

    vocabulary_size = 5
    segment_length = 2

    def state_spec(self, batch_size=None):
        return {"total": keras.KerasTensor((batch_size, 3), "float32")}

    def get_initial_state(self, batch_size):
        return {"total": keras.ops.zeros((batch_size, 3))}

    def step(self, token_ids, reset, state, training=False):
        return keras.ops.zeros(token_ids.shape + (5,)), state

    def decode(self, token_ids, state):
        return keras.ops.zeros((token_ids.shape[0], 5)), state


def test_a_model_with_part_of_the_decoding_contract_is_refused(tmp_path):
    model = _HalfDecoder()
    model.build(None)
    with pytest.raises(TypeError, match="decode_state_spec"):
        keras_infformer.export_for_serving(model, tmp_path / "half")
    assert not (tmp_path / "half").exists()


def test_a_batch_of_no_rows_is_a_clear_error(loaded):
    """Issue 23 item 22: decode_step on a batch of 0 failed inside the model
    ("slice index 0 ... out of bounds")."""
    import tensorflow as tf

    signatures = loaded["sticky"].signatures
    state = signatures["decode_state"](**signatures["initial_state"](batch_size=tf.constant(2)))
    empty = {name: value[:0] for name, value in state.items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match="at least one row"):
        signatures["decode_step"](token_ids=tf.zeros((0, 1), tf.int32), **empty)


def test_serving_client_with_no_new_token(loaded, exports):
    """Issue 23 item 22: a 1-token prompt and 0 new tokens failed ("need at
    least one array to stack"); longer prompts give the prompt's logits."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    import serving_client

    served = loaded["sticky"]
    for length in (1, SEGMENT - 1, 3 * SEGMENT + 5):
        tokens, logits, _ = serving_client.generate(served, prompts(length, batch=1), 0)
        np.testing.assert_array_equal(tokens, prompts(length, batch=1))
        assert logits.shape == (1, length - 1, VOCAB)
        expected = exports["sticky"]["expected"][length][1][:, : length - 1]
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        serving_client.generate(served, prompts(2, batch=1), -1)


def test_serving_client_warm_up(loaded):
    """`serving_client.warm_up` sends one request per signature and batch
    size (what `load` runs); the generation test above loads through it."""
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    import serving_client

    assert serving_client.warm_up(loaded["sticky"], (1,)) >= 0.0
    for bad in ((0,), (1.0,), 1, (True,)):
        with pytest.raises(ValueError, match="batch_sizes"):
            serving_client.warm_up(loaded["sticky"], bad)


def test_a_functional_memory_lm_exports_and_generates_through_decode_step(tmp_path):
    """Issue 23 item 8: a user's functional model, wrapped in
    FunctionalMemoryLM, exports; generation through the served
    `decode_step` equals in-process `generate()`."""
    import tensorflow as tf

    sys.path.insert(0, os.path.dirname(__file__))
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    import serving_client
    from test_causal_lm import functional_network

    model = keras_infformer.models.FunctionalMemoryLM(functional_network())
    model.compile(sampler="greedy")
    path = keras_infformer.export_for_serving(model, tmp_path / "functional")
    served = tf.saved_model.load(path)
    for length in (1, 7, 13):
        prompt = np.random.default_rng(length).integers(1, 40, (1, length)).astype("int32")
        want, want_logits = model.generate(
            prompt, max_length=length + 5, stop_token_ids=None, return_logits=True
        )
        tokens, logits, _ = serving_client.generate(served, prompt, 5)
        np.testing.assert_array_equal(tokens, want["token_ids"])
        np.testing.assert_allclose(logits, want_logits[:, :-1], rtol=0, atol=1e-4)
