"""SavedModel export for TensorFlow Serving (`keras_infformer.export_for_serving`).

One small LM is exported once per module (TensorFlow or JAX backend); every
test then reads that export the way a server or client would. Under the
PyTorch backend only `test_torch_backend_error_is_clear` runs (and the
contract checks, which export nothing).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from keras import ops

import keras_infformer
from keras_infformer import export as export_lib

BACKEND = keras.backend.backend()
needs_export = pytest.mark.skipif(
    BACKEND == "torch",
    reason="SavedModel export needs the TensorFlow or JAX backend; under "
    "torch export_for_serving raises (test_torch_backend_error_is_clear)",
)

VOCAB = 61
SEGMENT = 8
TRAIN_BATCH = 2
NUM_SEGMENTS = 5
ATOL = 1e-5


def build_model(**overrides):
    config = dict(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=TRAIN_BATCH,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        num_basis=8,
        num_samples=8,
        sticky_memories=True,
        num_bins=16,
    )
    config.update(overrides)
    return keras_infformer.models.InfiniteFormerLM(**config)


@keras.saving.register_keras_serializable(package="keras_infformer_tests")
class RunningSumLM(keras.Model):
    """The smallest model that follows `export_for_serving`'s contract and
    nothing more: its state is the running sum of the token embeddings."""

    def __init__(self, vocabulary_size=13, segment_length=4, hidden_dim=6, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.segment_length = segment_length
        self.hidden_dim = hidden_dim
        self.embedding = keras.layers.Embedding(vocabulary_size, hidden_dim, name="embedding")
        self.head = keras.layers.Dense(vocabulary_size, name="head")
        self.embedding.build((None, segment_length))
        self.head.build((None, segment_length, hidden_dim))
        self.built = True

    def state_spec(self, batch_size=None):
        return {"total": keras.KerasTensor((batch_size, self.hidden_dim), "float32")}

    def get_initial_state(self, batch_size):
        return {"total": ops.zeros((batch_size, self.hidden_dim))}

    def step(self, token_ids, reset, state, training=False):
        total = ops.where(ops.expand_dims(reset, -1), 0.0, state["total"])
        running = ops.expand_dims(total, 1) + ops.cumsum(self.embedding(token_ids), axis=1)
        return self.head(running), {"total": running[:, -1]}

    def call(self, token_ids):
        batch = ops.shape(token_ids)[0]
        reset = ops.ones((batch,), "bool")
        return self.step(token_ids, reset, self.get_initial_state(batch))[0]

    def get_config(self):
        return {
            "name": self.name,
            "vocabulary_size": self.vocabulary_size,
            "segment_length": self.segment_length,
            "hidden_dim": self.hidden_dim,
        }


def tokens(rng, batch, count=1):
    return [rng.integers(0, VOCAB, (batch, SEGMENT)).astype("int32") for _ in range(count)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export once; keep the stateful Keras model's eager logits as reference."""
    if BACKEND == "torch":
        pytest.skip("export needs the TensorFlow or JAX backend")
    keras.utils.set_random_seed(7)
    model = build_model()
    base = tmp_path_factory.mktemp("export") / "lm"
    path = keras_infformer.export_for_serving(model, base)

    rng = np.random.default_rng(11)
    segments = tokens(rng, TRAIN_BATCH, NUM_SEGMENTS)
    # Row 1 starts a new document at segment 3: reset is part of the stream.
    resets = [np.array([i == 0, i == 0 or i == 3]) for i in range(NUM_SEGMENTS)]
    model.reset_state()
    expected = [
        keras.ops.convert_to_numpy(model({"token_ids": s, "reset": r}))
        for s, r in zip(segments, resets)
    ]
    return dict(
        model=model,
        base=str(base),
        path=path,
        segments=segments,
        resets=resets,
        expected=expected,
        state_names=sorted(model.state_spec()),
        trainable_size=int(sum(np.prod(v.shape) for v in model.trainable_weights)),
    )


@pytest.fixture(scope="module")
def served(exported):
    import tensorflow as tf

    return tf.saved_model.load(exported["path"])


def run_stream(served, segments, resets=None, state=None):
    """Feed segments through `serving_default`, round-tripping the state."""
    import tensorflow as tf

    batch = segments[0].shape[0]
    if state is None:
        state = served.signatures["initial_state"](batch_size=tf.constant(batch))
    logits = []
    for i, segment in enumerate(segments):
        reset = resets[i] if resets is not None else np.full((batch,), i == 0)
        outputs = dict(
            served.signatures["serving_default"](
                token_ids=tf.constant(segment), reset=tf.constant(reset), **state
            )
        )
        logits.append(outputs.pop("logits").numpy())
        state = outputs
    return logits, state


def numpy_state(state):
    return {k: np.asarray(v) for k, v in state.items()}


# -- torch ---------------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "torch", reason="checks the PyTorch backend's error")
def test_torch_backend_error_is_clear(tmp_path):
    model = build_model()
    with pytest.raises(NotImplementedError) as info:
        keras_infformer.export_for_serving(model, tmp_path / "lm")
    message = str(info.value)
    for word in ("TensorFlow", "JAX", "'torch'", "KERAS_BACKEND"):
        assert word in message
    assert not (tmp_path / "lm").exists()


# -- layout --------------------------------------------------------------------


@needs_export
def test_layout_is_tf_serving_versions(exported, tmp_path):
    path = exported["path"]
    assert path == os.path.join(exported["base"], "1")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(path, "variables", "variables.index"))
    # Nothing but the version folder is left behind (the staging folder is
    # renamed into place).
    assert os.listdir(exported["base"]) == ["1"]

    base = tmp_path / "lm"
    for name in ("1", "5", "latest"):
        (base / name).mkdir(parents=True)
    assert export_lib._version_dir(base, None) == os.path.join(base, "6")
    assert export_lib._version_dir(tmp_path / "new", None) == os.path.join(tmp_path / "new", "1")
    assert export_lib._version_dir(base, 9) == os.path.join(base, "9")
    with pytest.raises(ValueError, match="already exists"):
        export_lib._version_dir(base, 5)
    for bad in (0, -1, "2", 1.0, True):
        with pytest.raises(ValueError, match="version"):
            export_lib._version_dir(base, bad)


@needs_export
def test_existing_version_is_refused_before_any_work(exported):
    model = build_model()
    with pytest.raises(ValueError, match="already exists"):
        keras_infformer.export_for_serving(model, exported["base"], version=1)


@needs_export
def test_random_sticky_memories_are_refused(tmp_path):
    model = build_model(sticky_mode="random")
    # Refused by the generic purity check on the traced graph (under JAX,
    # raised in the TensorFlow export process and raised again here).
    with pytest.raises(ValueError, match="not a pure function") as info:
        keras_infformer.export_for_serving(model, tmp_path / "lm")
    assert "sticky_mode='quantile'" in str(info.value)
    assert "AssignVariableOp" in str(info.value)
    assert not (tmp_path / "lm").exists()  # No staging or empty base left.


# -- the model contract ------------------------------------------------------------


def test_contract_names_what_is_missing():
    with pytest.raises(TypeError) as info:
        export_lib._check_model(keras.layers.Dense(2))
    message = str(info.value)
    for member in (
        "`segment_length`",
        "`vocabulary_size`",
        "`state_spec(batch_size=None)`",
        "`get_initial_state(batch_size)`",
        "`step(token_ids, reset, state, training=False)`",
        "Dense",
    ):
        assert member in message, (member, message)
    with pytest.raises(TypeError, match="Keras Model or Layer"):
        export_lib._check_model(object())
    # The LM and the smallest contract-only model pass.
    export_lib._check_model(build_model())
    export_lib._check_model(RunningSumLM())


def test_contract_values_are_checked():
    class BadSignature(RunningSumLM):
        def step(self, token_ids, state):
            return None

    class NoSegment(RunningSumLM):
        segment_length = property(lambda self: 0, lambda self, value: None)

    class Unbuilt(RunningSumLM):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.built = False

    def with_spec(spec):
        class Model(RunningSumLM):
            def state_spec(self, batch_size=None):
                return spec

        return Model()

    with pytest.raises(TypeError, match=r"step\(token_ids, reset, state, training=False\)"):
        export_lib._check_model(BadSignature())
    with pytest.raises(TypeError, match="`segment_length` an int >= 1"):
        export_lib._check_model(NoSegment())
    with pytest.raises(ValueError, match="must be built"):
        export_lib._check_model(Unbuilt())
    with pytest.raises(TypeError, match="must return a dict"):
        export_lib._check_model(with_spec([]))
    with pytest.raises(TypeError, match=r"\.shape.*\.dtype"):
        export_lib._check_model(with_spec({"total": 3}))
    bad_values = {
        "other than": {"logits": keras.KerasTensor((None, 6))},
        "valid TensorFlow names": {"a b": keras.KerasTensor((None, 6))},
        "batch axis `None`": {"total": keras.KerasTensor((2, 6))},
        "every other axis known": {"total": keras.KerasTensor((None, None))},
        "must be float32": {"total": keras.KerasTensor((None, 6), "float16")},
    }
    for match, spec in bad_values.items():
        with pytest.raises(ValueError, match=match):
            export_lib._check_model(with_spec(spec))


@needs_export
def test_export_refuses_a_model_outside_the_contract(tmp_path):
    with pytest.raises(TypeError, match="contract of `export_for_serving"):
        keras_infformer.export_for_serving(keras.layers.Dense(2), tmp_path / "lm")
    assert not (tmp_path / "lm").exists()


@needs_export
def test_any_model_that_follows_the_contract(tmp_path):
    """The docstring's contract is all the export needs (under JAX the model
    class comes from this test module, imported by the TensorFlow process)."""
    import tensorflow as tf

    keras.utils.set_random_seed(3)
    model = RunningSumLM()
    path = keras_infformer.export_for_serving(model, tmp_path / "sum")
    served = tf.saved_model.load(path)
    # Decoding signatures only for models that decode token by token.
    assert set(served.signatures) == {"serving_default", "initial_state"}
    # So are the warm-up requests.
    assert [s for _, s, _ in export_lib.read_warmup_requests(path)] == [
        "initial_state",
        "serving_default",
    ]

    rng = np.random.default_rng(4)
    segments = [rng.integers(0, 13, (3, 4)).astype("int32") for _ in range(3)]
    resets = [np.full((3,), True), np.array([False, True, False]), np.full((3,), False)]
    logits, served_state = run_stream(served, segments, resets)
    state = model.get_initial_state(3)
    for segment, reset, got in zip(segments, resets, logits):
        want, state = model.step(segment, reset, state)
        np.testing.assert_allclose(got, keras.ops.convert_to_numpy(want), rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        np.asarray(served_state["total"]),
        keras.ops.convert_to_numpy(state["total"]),
        rtol=0,
        atol=ATOL,
    )


# -- purity ----------------------------------------------------------------------


def xla_compiled_functions(concrete_function):
    """Names of the functions in a graph's library marked for XLA."""
    library = concrete_function.graph.as_graph_def().library.function
    return sorted(f.signature.name for f in library if f.attr["_XlaMustCompile"].b)


def graph_op_types(concrete_function):
    """Op types of a function's graph and of every function in its library."""
    graph_def = concrete_function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types.update(node.op for node in function.node_def)
    return types


@needs_export
def test_served_functions_assign_no_variable(served, exported):
    for name in ("serving_default", "initial_state"):
        types = graph_op_types(served.signatures[name])
        assigns = sorted(t for t in types if "Assign" in t)
        assert not assigns, f"{name} assigns variables: {assigns}"
    types = graph_op_types(served.signatures["serving_default"])
    # Not vacuous: the step's real computation is in the inspected graphs,
    # as TensorFlow ops whichever backend exported it (no StableHLO module
    # whose version a TensorFlow must be able to read).
    assert types & {"BatchMatMulV2", "Einsum"}, sorted(types)
    assert "XlaCallModule" not in types
    # The default `jit_compile`: one XLA function from JAX, plain ops from TF.
    compiled = xla_compiled_functions(served.signatures["serving_default"])
    assert bool(compiled) == (BACKEND == "jax"), compiled
    # The weights are read from variables (not folded into constants).
    assert "ReadVariableOp" in types
    variables = served.signatures["serving_default"].variables
    trainable = sum(int(np.prod(v.shape)) for v in variables if v.trainable)
    assert trainable == exported["trainable_size"]


# -- numbers -------------------------------------------------------------------

_TF_ONLY_CLIENT = textwrap.dedent(
    """
    import sys

    # A TensorFlow-only environment: these packages count as absent
    # (importing them fails). TF itself tries to import keras at start-up.
    for name in ("keras", "keras_infformer", "keras_hub", "jax", "jaxlib", "tf_keras"):
        sys.modules[name] = None

    import numpy as np
    import tensorflow as tf

    path, data = sys.argv[1], np.load(sys.argv[2])
    served = tf.saved_model.load(path)
    segments, resets = data["segments"], data["resets"]
    state = served.signatures["initial_state"](
        batch_size=tf.constant(segments.shape[1])
    )
    worst = 0.0
    for i in range(len(segments)):
        outputs = dict(served.signatures["serving_default"](
            token_ids=tf.constant(segments[i]), reset=tf.constant(resets[i]),
            **state,
        ))
        logits = outputs.pop("logits").numpy()
        state = outputs
        np.testing.assert_allclose(logits, data["expected"][i], rtol=0, atol={atol})
        worst = max(worst, float(np.abs(logits - data["expected"][i]).max()))
    imported = sorted(
        n for n, m in sys.modules.items()
        if m is not None and n.split(".")[0] in ("keras", "keras_infformer", "jax")
    )
    assert not imported, imported
    print("OK", worst)
    """
)


@needs_export
def test_tensorflow_only_process_reproduces_keras(exported, tmp_path):
    data = tmp_path / "stream.npz"
    np.savez(
        data,
        segments=np.stack(exported["segments"]),
        resets=np.stack(exported["resets"]),
        expected=np.stack(exported["expected"]),
    )
    script = tmp_path / "client.py"
    script.write_text(_TF_ONLY_CLIENT.replace("{atol}", repr(ATOL)))
    result = subprocess.run(
        [sys.executable, str(script), exported["path"], str(data)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout


@needs_export
def test_in_process_load_matches_keras(served, exported):
    logits, _ = run_stream(served, exported["segments"], exported["resets"])
    for got, want in zip(logits, exported["expected"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@needs_export
def test_other_jit_compile_mode_matches_keras(exported, tmp_path):
    """The fixture exports with the default `jit_compile`; the other mode
    serves the same numbers (at a batch size the model was not built with)."""
    import tensorflow as tf

    jit_compile = BACKEND != "jax"  # Not the default.
    path = keras_infformer.export_for_serving(
        exported["model"], tmp_path / "lm", jit_compile=jit_compile
    )
    served = tf.saved_model.load(path)
    compiled = xla_compiled_functions(served.signatures["serving_default"])
    assert bool(compiled) == jit_compile, compiled
    logits, _ = run_stream(served, exported["segments"], exported["resets"])
    for got, want in zip(logits, exported["expected"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    rng = np.random.default_rng(12)
    stream = tokens(rng, 3, 2)
    odd, _ = run_stream(served, stream)
    default, _ = run_stream(tf.saved_model.load(exported["path"]), stream)
    for got, want in zip(odd, default):
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    with pytest.raises(ValueError, match="jit_compile"):
        keras_infformer.export_for_serving(exported["model"], tmp_path / "x", jit_compile=1)


@needs_export
def test_interleaved_streams_equal_each_alone(served):
    rng = np.random.default_rng(3)
    stream_a, stream_b = tokens(rng, 1, 4), tokens(rng, 3, 4)
    alone_a, final_a = run_stream(served, stream_a)
    alone_b, final_b = run_stream(served, stream_b)

    import tensorflow as tf

    states = {
        "a": served.signatures["initial_state"](batch_size=tf.constant(1)),
        "b": served.signatures["initial_state"](batch_size=tf.constant(3)),
    }
    got = {"a": [], "b": []}
    for i in range(4):
        for key, stream in (("a", stream_a), ("b", stream_b)):
            batch = stream[i].shape[0]
            outputs = dict(
                served.signatures["serving_default"](
                    token_ids=tf.constant(stream[i]),
                    reset=tf.constant(np.full((batch,), i == 0)),
                    **states[key],
                )
            )
            got[key].append(outputs.pop("logits").numpy())
            states[key] = outputs
    for want, have in ((alone_a, got["a"]), (alone_b, got["b"])):
        for w, h in zip(want, have):
            np.testing.assert_array_equal(h, w)
    for final, key in ((final_a, "a"), (final_b, "b")):
        for name, value in final.items():
            np.testing.assert_array_equal(np.asarray(states[key][name]), np.asarray(value))


@needs_export
@pytest.mark.parametrize("batch", sorted({1, 3, TRAIN_BATCH}))
def test_any_batch_size(served, exported, batch):
    import tensorflow as tf

    rng = np.random.default_rng(5)
    stream = tokens(rng, 3, 2)
    empty = served.signatures["initial_state"](batch_size=tf.constant(batch))
    assert sorted(empty) == exported["state_names"]
    assert all(v.shape[0] == batch for v in empty.values())

    rows = [s[:batch] for s in stream]
    logits, state = run_stream(served, rows)
    assert logits[-1].shape == (batch, SEGMENT, VOCAB)
    assert all(v.shape[0] == batch for v in state.values())
    # Each row is its own stream: the same as that row served alone.
    for r in range(batch):
        alone, _ = run_stream(served, [s[r : r + 1] for s in stream])
        for got, want in zip(logits, alone):
            np.testing.assert_allclose(got[r : r + 1], want, rtol=0, atol=ATOL)


@needs_export
def test_reset_empties_only_its_rows(served):
    import tensorflow as tf

    rng = np.random.default_rng(9)
    history = tokens(rng, 2, 3)
    (segment,) = tokens(rng, 2, 1)
    _, state = run_stream(served, history)

    def step(token_ids, reset, state):
        outputs = dict(
            served.signatures["serving_default"](
                token_ids=tf.constant(token_ids), reset=tf.constant(reset), **state
            )
        )
        return outputs.pop("logits").numpy(), numpy_state(outputs)

    reset_logits, reset_state = step(segment, np.array([True, False]), state)
    kept_logits, kept_state = step(segment, np.array([False, False]), state)
    empty = served.signatures["initial_state"](batch_size=tf.constant(1))
    fresh_logits, fresh_state = step(segment[:1], np.array([True]), empty)

    # Row 0 starts over: as if its stream began with this segment.
    np.testing.assert_allclose(reset_logits[:1], fresh_logits, rtol=0, atol=ATOL)
    for name, value in fresh_state.items():
        np.testing.assert_allclose(reset_state[name][:1], value, rtol=0, atol=ATOL)
    # Row 1 is untouched by row 0's reset.
    np.testing.assert_allclose(reset_logits[1:], kept_logits[1:], rtol=0, atol=ATOL)
    for name, value in kept_state.items():
        np.testing.assert_allclose(reset_state[name][1:], value[1:], rtol=0, atol=ATOL)
    # And the reset did something: row 0 had a memory to forget.
    assert np.abs(reset_logits[:1] - kept_logits[:1]).max() > 1e-4


# -- the SavedModel as tools see it --------------------------------------------------


@needs_export
def test_saved_model_cli_lists_the_signatures(exported):
    cli = shutil.which("saved_model_cli", path=os.path.dirname(sys.executable))
    cli = cli or shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not installed")
    result = subprocess.run(
        [cli, "show", "--all", "--dir", exported["path"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    sections = {}
    for chunk in text.split("signature_def['")[1:]:
        name, body = chunk.split("']", 1)
        sections[name] = body
    assert {"serving_default", "initial_state"} <= set(sections)
    inputs, outputs = sections["serving_default"].split("output(s):")
    for name in ["token_ids", "reset"] + exported["state_names"]:
        assert f"inputs['{name}']" in inputs
    for name in ["logits"] + exported["state_names"]:
        assert f"outputs['{name}']" in outputs
    assert "inputs['batch_size']" in sections["initial_state"]
    for name in exported["state_names"]:
        assert f"outputs['{name}']" in sections["initial_state"]
    assert "DT_INT32" in inputs and "DT_BOOL" in inputs
    decode_names = sorted(exported["model"].decode_state_spec())
    inputs, outputs = sections["decode_step"].split("output(s):")
    for name in ["token_ids"] + decode_names:
        assert f"inputs['{name}']" in inputs
    for name in ["logits"] + decode_names:
        assert f"outputs['{name}']" in outputs
    assert "(-1, 1)" in inputs.split("inputs['token_ids']")[1].split("name:")[0]


# -- warm-up requests --------------------------------------------------------------


def _protobuf_fields(data):
    """`[(field number, bytes)]` of a serialised message, decoded by the
    protobuf library itself (every field of an `Empty` is unknown), not by
    the package's own decoder."""
    from google.protobuf import empty_pb2, unknown_fields

    message = empty_pb2.Empty()
    message.ParseFromString(data)
    return [(f.field_number, f.data) for f in unknown_fields.UnknownFieldSet(message)]


def _warmup_records(path):
    """The warm-up file as `[(model name, signature, {name: ndarray})]`,
    with TF Serving's own classes when they are installed."""
    import tensorflow as tf

    records = list(
        tf.data.TFRecordDataset(os.path.join(path, export_lib.WARMUP_FILE)).as_numpy_iterator()
    )
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        prediction_log_pb2 = None
    decoded = []
    for record in records:
        if prediction_log_pb2 is not None:
            request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
            spec = request.model_spec
            decoded.append(
                (
                    spec.name,
                    spec.signature_name,
                    {k: tf.make_ndarray(v) for k, v in request.inputs.items()},
                )
            )
            continue
        (log,) = [v for n, v in _protobuf_fields(record) if n == 6]  # predict_log
        (request,) = [v for n, v in _protobuf_fields(log) if n == 1]  # request
        spec = dict(next(_protobuf_fields(v) for n, v in _protobuf_fields(request) if n == 1))
        inputs = {}
        for number, entry in _protobuf_fields(request):
            if number == 2:  # One map entry: key 1, TensorProto 2.
                entry = dict(_protobuf_fields(entry))
                proto = tf.make_tensor_proto(0)
                proto.ParseFromString(entry[2])
                inputs[entry[1].decode()] = tf.make_ndarray(proto)
        decoded.append((spec[1].decode(), spec[3].decode(), inputs))
    return decoded


@needs_export
def test_warmup_requests_are_valid_requests(served, exported):
    """TF Serving replays `assets.extra/tf_serving_warmup_requests` on
    loading a version: one request per signature at batch 1, each with the
    signature's input names, dtypes and shapes, each served without error."""
    import tensorflow as tf

    records = _warmup_records(exported["path"])
    assert [name for name, _, _ in records] == ["lm"] * 4
    assert [signature for _, signature, _ in records] == [
        "initial_state",
        "serving_default",
        "decode_state",
        "decode_step",
    ]
    # The package's own decoder reads the same requests.
    ours = export_lib.read_warmup_requests(exported["path"])
    assert [(n, s, sorted(i)) for n, s, i in ours] == [(n, s, sorted(i)) for n, s, i in records]
    for _, signature, inputs in records:
        function = served.signatures[signature]
        specs = function.structured_input_signature[1]
        assert sorted(inputs) == sorted(specs), signature
        for name, spec in specs.items():
            value = inputs[name]
            assert value.dtype == spec.dtype.as_numpy_dtype, (signature, name)
            assert spec.shape.is_compatible_with(value.shape), (signature, name)
            if spec.shape.rank:
                assert value.shape[0] == 1, (signature, name)  # Batch 1.
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        for name, value in outputs.items():
            assert np.all(np.isfinite(value.numpy())), (signature, name)


@needs_export
def test_warmup_batch_sizes_are_checked(exported):
    for bad in (0, [0], (1, -2), ("1",), (True,), 1.5, "1"):
        with pytest.raises(ValueError, match="warmup_batch_sizes"):
            keras_infformer.export_for_serving(
                exported["model"], exported["base"], version=99, warmup_batch_sizes=bad
            )
    assert export_lib._check_warmup_batch_sizes(None) == ()
    assert export_lib._check_warmup_batch_sizes([2, 1, 2]) == (2, 1)


@needs_export
def test_bad_requests_fail(served):
    import tensorflow as tf

    errors = (TypeError, ValueError, tf.errors.InvalidArgumentError)
    serve = served.signatures["serving_default"]
    state = served.signatures["initial_state"](batch_size=tf.constant(2))
    good = dict(
        token_ids=tf.zeros((2, SEGMENT), tf.int32),
        reset=tf.constant([True, False]),
        **state,
    )
    serve(**good)  # The baseline request works.

    def request(**changes):
        inputs = dict(good)
        for key, value in changes.items():
            if value is None:
                inputs.pop(key)
            else:
                inputs[key] = value
        return inputs

    name = "layer_0_stm"
    batch, memory, width = state[name].shape
    bad_requests = {
        "int64 token_ids": request(token_ids=tf.zeros((2, SEGMENT), tf.int64)),
        "float token_ids": request(token_ids=tf.zeros((2, SEGMENT), tf.float32)),
        "long segment": request(token_ids=tf.zeros((2, SEGMENT + 1), tf.int32)),
        "short segment": request(token_ids=tf.zeros((2, SEGMENT - 1), tf.int32)),
        "token id >= vocabulary": request(token_ids=tf.fill((2, SEGMENT), VOCAB)),
        "negative token id": request(token_ids=tf.fill((2, SEGMENT), -1)),
        "missing state": request(**{name: None}),
        "missing reset": request(reset=None),
        "float64 state": request(**{name: tf.zeros((batch, memory, width), tf.float64)}),
        "wrong feature dim": request(**{name: tf.zeros((batch, memory, width + 1))}),
        "wrong memory length": request(**{name: tf.zeros((batch, memory + 1, width))}),
        "wrong state rank": request(**{name: tf.zeros((batch, memory))}),
        "state of another batch": request(**{name: tf.zeros((1, memory, width))}),
        "reset of another batch": request(reset=tf.constant([True])),
    }
    for label, inputs in bad_requests.items():
        with pytest.raises(errors):
            serve(**inputs)
            pytest.fail(f"no error for {label}")
    with pytest.raises(errors):
        served.signatures["initial_state"](batch_size=tf.constant(0))


@needs_export
def test_graph_checks_shapes_without_the_python_signature(served):
    """A server feeds the graph directly, past Python's TensorSpec check:
    the graph's own checks (EnsureShape, batch asserts) must catch it."""
    import tensorflow as tf

    serve = served.signatures["serving_default"]
    if not hasattr(serve, "_call_flat"):
        pytest.skip("this TensorFlow has no ConcreteFunction._call_flat")
    count = len(serve.inputs) - len(serve.captured_inputs)
    names = [t.name.split(":")[0] for t in serve.inputs[:count]]
    state = served.signatures["initial_state"](batch_size=tf.constant(2))
    good = dict(
        token_ids=tf.zeros((2, SEGMENT), tf.int32),
        reset=tf.constant([True, False]),
        **state,
    )
    assert sorted(names) == sorted(good)

    def call(**changes):
        inputs = {**good, **changes}
        return serve._call_flat([inputs[n] for n in names], serve.captured_inputs)

    call()  # The baseline works through this path too.
    batch, memory, width = state["layer_0_stm"].shape
    for changes in (
        {"layer_0_stm": tf.zeros((batch, memory, width + 1))},
        {"layer_1_stm_mask": tf.zeros((batch, memory + 1))},
        {"layer_0_ltm_filled": tf.zeros((1,))},
        {"layer_0_ltm_filled": tf.zeros((batch, 1))},
        {"token_ids": tf.zeros((2, SEGMENT + 1), tf.int32)},
        {"reset": tf.constant([True, False, True])},
    ):
        with pytest.raises(tf.errors.InvalidArgumentError):
            call(**changes)
            pytest.fail(f"no error for {sorted(changes)}")


# -- a real TensorFlow Serving ----------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@needs_export
@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH",
)
def test_tensorflow_model_server_predict(exported, tmp_path):
    rest_port, grpc_port = free_port(), free_port()
    log = open(tmp_path / "server.log", "w")
    # TF Serving has no bind-address flag; the test only talks to 127.0.0.1.
    server = subprocess.Popen(
        [
            "tensorflow_model_server",
            f"--port={grpc_port}",
            f"--rest_api_port={rest_port}",
            "--model_name=infformer",
            f"--model_base_path={os.path.abspath(exported['base'])}",
            # The JAX export's step is XLA-compiled (jit_compile=True).
            "--xla_cpu_compilation_enabled=true",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{rest_port}/v1/models/infformer"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                status = http_json(url, timeout=5)
                states = [v["state"] for v in status["model_version_status"]]
                if "AVAILABLE" in states:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.5)

        state = http_json(
            url + ":predict",
            {"signature_name": "initial_state", "inputs": {"batch_size": TRAIN_BATCH}},
        )["outputs"]
        for i, (segment, reset) in enumerate(zip(exported["segments"], exported["resets"])):
            body = {
                "signature_name": "serving_default",
                "inputs": {
                    "token_ids": segment.tolist(),
                    "reset": reset.tolist(),
                    **state,
                },
            }
            outputs = http_json(url + ":predict", body)["outputs"]
            logits = np.asarray(outputs.pop("logits"), dtype="float32")
            np.testing.assert_allclose(logits, exported["expected"][i], rtol=0, atol=ATOL)
            state = outputs
        # A bad request is an error, not an answer.
        body["inputs"]["token_ids"] = np.zeros((TRAIN_BATCH, SEGMENT + 1)).tolist()
        with pytest.raises(urllib.error.HTTPError):
            http_json(url + ":predict", body)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
        log.close()
