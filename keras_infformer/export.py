"""SavedModel export of a streaming model for TensorFlow Serving.

The served model is the model's pure, explicit-state step: every request
carries the memory of its own stream(s) and gets the new memory back, so the
server holds no per-client state (TF Serving assumes pure functions; a memory
kept in server-side variables would be shared by every request). Two
signatures:

- `serving_default`: `token_ids` int32 `(batch, segment_length)`, `reset`
  bool `(batch,)` and every piece of memory state by name (the model's
  `state_spec()` names, e.g. `layer_0_stm`) -> `logits` float32
  `(batch, segment_length, vocabulary_size)` and the new state under the same
  names. Any batch size, whatever batch the training model was built with.
- `initial_state`: `batch_size` int32 scalar -> the empty state.

Models that decode token by token (`decode_state_spec`, `decode_state`,
`decode`, as `InfiniteFormerCausalLM` has) get two more, for generation:

- `decode_state`: a `serving_default` state (at a segment boundary) -> the
  decoding state: the same tensors plus the partial segment's buffers
  (zeros) and `position` float32 `(batch,)` (the next token's position in
  its segment, equal in every row).
- `decode_step`: `token_ids` int32 `(batch, 1)` and the decoding state ->
  `logits` float32 `(batch, vocabulary_size)` (the next token's) and the
  new decoding state. Its logits equal `serving_default`'s at the same
  positions. Whenever `position` is back at 0, the decoding state's
  `serving_default` names form a `serving_default` state again.

So a client reads a long prompt a segment per request, turns the state into
a decoding state, feeds the prompt's last partial segment and then each
sampled token through `decode_step` (`examples/serving_client.py`).

Warm-up. Each version also holds `assets.extra/tf_serving_warmup_requests`:
one request per signature and warm-up batch size (empty memory, token 0),
as `tensorflow.serving.PredictionLog` records in a TFRecord file. TF Serving
replays them when it loads the version, before the version serves, so the
first client request finds the graph built and, with `jit_compile=True`, the
step compiled for that batch size (`read_warmup_requests` decodes them).

The served graph is always traced by TensorFlow from the model's own Keras
code, so it holds plain TensorFlow ops (and, with `jit_compile=True`, one
XLA-compiled function) whichever backend the model was trained with. Under
the TensorFlow backend this happens in-process. Under JAX the model is saved
as a `.keras` file and traced by a fresh Python process started with
`KERAS_BACKEND=tensorflow` (Keras' own cross-backend path), so that no JAX
lowering, StableHLO serialisation or JAX/TensorFlow version pairing is
involved. PyTorch models cannot be exported directly (save them as `.keras`
and export under TensorFlow or JAX).
"""

import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping

import keras
import numpy as np

from keras_infformer import compat, validation

# Inputs and outputs of `serving_default` besides the state.
_RESERVED_NAMES = ("token_ids", "reset", "logits")
# The optional members that add the `decode_state`/`decode_step` signatures.
_DECODING = ("decode_state_spec", "decode_state", "decode")
# TensorFlow's rule for op (and so SignatureDef tensor) names.
_TF_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_.\\/>-]*")
# Graph ops that would make a served step impure: they write variables
# (shared by every request of a server) or draw from a stateful generator.
_IMPURE_PREFIXES = (
    "Assign",
    "ResourceScatter",
    "ResourceApply",
    "ResourceSparseApply",
    "RngReadAndSkip",
    "RngSkip",
    "StatefulUniform",
    "StatefulStandardNormal",
    "StatefulTruncatedNormal",
    "StatefulRandomBinomial",
)
# Where TF Serving looks for the requests it replays on loading a version.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# The order the warm-up requests follow (a client's order too).
_WARMUP_SIGNATURES = ("initial_state", "serving_default", "decode_state", "decode_step")
_IMPURE_OPS = {
    "RandomUniform",
    "RandomUniformInt",
    "RandomStandardNormal",
    "TruncatedNormal",
    "ParameterizedTruncatedNormal",
    "Multinomial",
    "RandomShuffle",
    "RandomGamma",
    "RandomPoisson",
    "RandomPoissonV2",
}


def export_for_serving(
    model,
    export_dir,
    version=None,
    jit_compile=None,
    warmup_batch_sizes=(1,),
    verbose=False,
):
    """Write `model` as a TF Serving SavedModel under `export_dir/<version>/`.

    The layout is the one `tensorflow_model_server --model_base_path=
    export_dir` watches: one integer-named folder per version, each holding
    `saved_model.pb` and `variables/`. The version is written to a temporary
    folder first and renamed into place, so a server never sees half of it.

    The model contract. `model` is a built Keras model (TensorFlow or JAX
    backend; `keras_infformer.models.InfiniteFormerLM` follows it) with:

    - `segment_length`: int >= 1. Tokens per request row (the static second
      axis of `token_ids`).
    - `vocabulary_size`: int >= 1. The last axis of the logits; token ids
      must lie in `[0, vocabulary_size)`.
    - `state_spec(batch_size=None)`: a dict `name -> spec` (anything with
      `.shape` and `.dtype`, e.g. a `keras.KerasTensor`) of every piece of
      memory state. Float32, batch first, batch axis `None` when
      `batch_size` is `None`. The names become the served tensor names:
      valid TensorFlow names, none of `token_ids`, `reset`, `logits`.
    - `get_initial_state(batch_size)`: the empty state, a dict with the same
      names of tensors `(batch_size, ...)`, every row equal (one row is
      served, tiled per request).
    - `step(token_ids, reset, state, training=False)`: the streaming step,
      `token_ids` int32 `(batch, segment_length)`, `reset` bool `(batch,)`
      (rows whose memory is emptied before this segment), `state` a dict as
      above -> `(logits, new_state)`, logits `(batch, segment_length,
      vocabulary_size)` and `new_state` with the same names and shapes. Any
      batch size; pure: it reads the weights and its inputs only, and
      assigns no variable and draws from no random generator (checked on the
      traced graph).
    - Optionally, for the `decode_state`/`decode_step` signatures (all
      three or none): `decode_state_spec(batch_size=None)` (as
      `state_spec`, a superset of its names, plus `position` `(batch,)`),
      `decode_state(state)` (a `step` state at a segment boundary -> a
      decoding state, `position` 0) and `decode(token_ids, state)`
      (`token_ids` int32 `(batch, 1)` -> `(logits (batch,
      vocabulary_size), new_state)`; pure, like `step`).
    - Under JAX, the model must also round-trip through `model.save()` /
      `keras.saving.load_model()` (a registered class with `get_config()`),
      in a process that imports the package (module) of its class.

    `_check_model` checks the members above (a `TypeError` names what is
    missing); purity is checked on the traced graph (a `ValueError` names the
    ops).

    Args:
        model: a built Keras model that follows the contract above.
        export_dir: str or path-like. The model's base path.
        version: optional int >= 1. Defaults to one more than the highest
            version already in `export_dir` (`1` for an empty folder). An
            existing version is never overwritten.
        jit_compile: optional bool. `True` serves the step as one
            XLA-compiled function (compiled at the first request of each batch
            size; faster per request, but a CPU `tensorflow_model_server`
            needs `--xla_cpu_compilation_enabled=true`). `False` serves it as
            plain TensorFlow ops, which every TensorFlow Serving runs.
            Defaults to `None`: `True` when exporting from JAX, `False` from
            TensorFlow (what each backend has always written).
        warmup_batch_sizes: tuple of ints >= 1. The batch sizes of the
            warm-up requests written to `assets.extra/
            tf_serving_warmup_requests` (one request per signature and
            batch size; TF Serving replays them on loading the version, so
            the first real request at those batch sizes is as fast as the
            next ones). An XLA step is compiled per batch size: list the
            ones clients send. `()` (or `None`) writes no warm-up file.
            Defaults to `(1,)`.
        verbose: bool. Print the endpoints written. Defaults to `False`.

    Returns:
        The path (str) of the version folder written.

    Examples:

    ```python
    import keras_infformer

    model = keras_infformer.models.InfiniteFormerLM(
        vocabulary_size=100, segment_length=16, batch_size=8,
        num_layers=2, hidden_dim=32, num_heads=2, num_basis=32, num_samples=32,
    )
    path = keras_infformer.export_for_serving(model, "saved_models/lm")

    import tensorflow as tf

    served = tf.saved_model.load(path)
    state = served.signatures["initial_state"](batch_size=tf.constant(1))
    outputs = served.signatures["serving_default"](
        token_ids=tf.zeros((1, 16), tf.int32), reset=tf.constant([True]), **state
    )
    logits = outputs.pop("logits")  # `outputs` is now the next state.
    ```
    """
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        raise NotImplementedError(
            "`export_for_serving()` can export from the TensorFlow and JAX "
            "backends only (the served graph is a TensorFlow SavedModel, "
            "traced with tf.function). Received: "
            f"backend={backend!r}. Save the model (`model.save('lm.keras')`), "
            "then load and export it in a process started with "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
        )
    _check_model(model)
    if jit_compile is None:
        jit_compile = backend == "jax"
    elif not isinstance(jit_compile, bool):
        raise ValueError(
            f"`jit_compile` must be True, False or None. Received: jit_compile={jit_compile!r}"
        )
    warmup_batch_sizes = _check_warmup_batch_sizes(warmup_batch_sizes)
    version_dir = _version_dir(export_dir, version)
    # Warm-up requests name the model as TF Serving does: its base folder.
    model_name = os.path.basename(os.path.normpath(os.fspath(export_dir)))
    options = dict(
        jit_compile=jit_compile,
        warmup_batch_sizes=warmup_batch_sizes,
        model_name=model_name,
        verbose=verbose,
    )

    parent = os.path.dirname(version_dir)
    created = [] if os.path.isdir(parent) else [parent]
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        if backend == "tensorflow":
            _write_saved_model(model, staging, **options)
        else:
            _write_saved_model_in_tensorflow_process(model, staging, options)
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # Leave no empty base folder behind.
            if not os.listdir(folder):
                os.rmdir(folder)
        raise
    return version_dir


# -- checks and layout -----------------------------------------------------------


def _check_model(model):
    """Check that `model` offers the members `export_for_serving` relies on.

    Exactly the contract of `export_for_serving`'s docstring: a `TypeError`
    names every missing or ill-typed member, a `ValueError` a bad value.
    """
    described = f"Received: model={model!r} of type {type(model).__name__}"
    problems = []
    if not isinstance(model, keras.layers.Layer):
        problems.append("be a Keras Model or Layer (its weights are served as variables)")
    for name in ("segment_length", "vocabulary_size"):
        if not hasattr(model, name):
            problems.append(f"have an int attribute `{name}`")
            continue
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            problems.append(f"have `{name}` an int >= 1 (it is {value!r})")
    signatures = {
        "state_spec": "state_spec(batch_size=None)",
        "get_initial_state": "get_initial_state(batch_size)",
        "step": "step(token_ids, reset, state, training=False)",
    }
    calls = {
        "state_spec": ((), {}),
        "get_initial_state": ((1,), {}),
        "step": ((None, None, {}), {"training": False}),
    }
    for name, signature in signatures.items():
        method = getattr(model, name, None)
        if not callable(method):
            problems.append(f"have a method `{signature}`")
            continue
        args, kwargs = calls[name]
        try:
            bound = inspect.signature(method)
        except (TypeError, ValueError):  # Uninspectable (a builtin): trust it.
            continue
        try:
            bound.bind(*args, **kwargs)
        except TypeError:
            problems.append(f"have a method `{signature}` (it is `{name}{bound}`)")
    if problems:
        raise TypeError(
            "`model` does not follow the contract of `export_for_serving()` "
            "(see its docstring). It must:\n- " + "\n- ".join(problems) + f"\n{described}"
        )
    if not model.built:
        raise ValueError(
            "`model` must be built before export (its weights must exist): call "
            f"it once on a batch or call `model.build(...)`. {described}"
        )

    _check_spec(model.state_spec(), "state_spec", described)
    decoding = [name for name in _DECODING if callable(getattr(model, name, None))]
    if decoding and len(decoding) < len(_DECODING):
        raise TypeError(
            "A model that decodes token by token for `decode_step` needs all of "
            f"{list(_DECODING)}; it has only {decoding}. {described}"
        )
    if decoding:
        spec = _check_spec(model.decode_state_spec(), "decode_state_spec", described)
        missing = sorted(set(model.state_spec()) - set(spec))
        if missing or "position" not in spec:
            raise ValueError(
                "`model.decode_state_spec()` must hold every name of "
                f"`state_spec()` and `position`; missing: "
                f"{missing + ([] if 'position' in spec else ['position'])}. "
                f"{described}"
            )


def decodes(model):
    """Whether `model` offers token-by-token decoding (`decode_step`)."""
    return all(callable(getattr(model, name, None)) for name in _DECODING)


def _check_spec(spec, method, described):
    """Check a dict of served state specs (names, shapes, dtypes)."""
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"`model.{method}()` must return a dict `name -> spec`. Received: "
            f"{type(spec).__name__}. {described}"
        )
    for name, tensor in spec.items():
        if not hasattr(tensor, "shape") or not hasattr(tensor, "dtype"):
            raise TypeError(
                f"`model.{method}()['{name}']` must have `.shape` and "
                f"`.dtype` (e.g. a keras.KerasTensor). Received: {tensor!r}"
            )
        shape = tuple(tensor.shape)
        if not isinstance(name, str) or not _TF_NAME.fullmatch(name) or name in _RESERVED_NAMES:
            raise ValueError(
                f"The names of `model.{method}()` become served tensor names: "
                "they must be valid TensorFlow names other than "
                f"{list(_RESERVED_NAMES)}. Received: {name!r}"
            )
        if not shape or shape[0] is not None or None in shape[1:]:
            raise ValueError(
                f"`model.{method}()['{name}']` must be batch first with the "
                "batch axis `None` and every other axis known. Received: "
                f"shape={shape}"
            )
        if keras.backend.standardize_dtype(tensor.dtype) != "float32":
            raise ValueError(
                f"Served state is float32: `model.{method}()['{name}']` must "
                f"be float32. Received: dtype={tensor.dtype}"
            )
    return spec


def _check_warmup_batch_sizes(batch_sizes):
    if batch_sizes is None:
        return ()
    sizes = batch_sizes if isinstance(batch_sizes, (tuple, list)) else None
    if sizes is None or any(
        isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in sizes
    ):
        raise ValueError(
            "`warmup_batch_sizes` must be a tuple of ints >= 1 (`()` for no "
            f"warm-up file). Received: warmup_batch_sizes={batch_sizes!r}"
        )
    return tuple(dict.fromkeys(int(b) for b in sizes))


def _version_dir(export_dir, version):
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a folder. Received: export_dir={export_dir!r} (an existing file)"
        )
    if version is None:
        existing = []
        if os.path.isdir(export_dir):
            existing = [
                int(name) for name in os.listdir(export_dir) if re.fullmatch(r"[0-9]+", name)
            ]
        version = max(existing, default=0) + 1
    elif isinstance(version, bool) or not isinstance(version, (int, np.integer)) or (version < 1):
        raise ValueError(f"`version` must be an int >= 1 or None. Received: version={version!r}")
    path = os.path.join(export_dir, str(int(version)))
    if os.path.exists(path):
        raise ValueError(
            f"Version {int(version)} already exists at {path!r}; a served "
            "version is never overwritten. Pass another `version`, or "
            "`version=None` for the next one."
        )
    return path


# -- the served functions --------------------------------------------------------


def _state_signature(model, tf):
    return {
        name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
        for name, spec in model.state_spec().items()
    }


def _serving_function(model, tf, jit_compile):
    """`serving_default`: request checks around `model.step`, traced by TF."""
    segment_length = model.segment_length
    vocabulary_size = model.vocabulary_size
    state_signature = _state_signature(model, tf)
    signature = {
        "token_ids": tf.TensorSpec((None, segment_length), tf.int32, name="token_ids"),
        "reset": tf.TensorSpec((None,), tf.bool, name="reset"),
        **state_signature,
    }

    def step(token_ids, reset, state):
        return model.step(token_ids, reset, state, training=False)

    if jit_compile:
        # One XLA computation, compiled per batch size at its first request;
        # the request checks stay outside it, as plain TensorFlow ops.
        step = tf.function(step, jit_compile=True, autograph=False)

    def serving_default(inputs):
        inputs = dict(inputs)
        # Checked in the graph too: a server that feeds the graph directly
        # must fail on a bad request, never answer it wrongly.
        token_ids = tf.ensure_shape(inputs.pop("token_ids"), (None, segment_length))
        reset = tf.ensure_shape(inputs.pop("reset"), (None,))
        batch = tf.shape(token_ids)[0]
        checks = _token_checks(token_ids, vocabulary_size, tf) + [
            tf.debugging.assert_equal(
                tf.shape(reset)[0],
                batch,
                message="reset must have one entry per row of token_ids",
            ),
        ]
        state = _checked_state(inputs, state_signature, batch, reset, checks, tf)
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
        logits, new_state = step(token_ids, reset, state)
        return _step_outputs(logits, new_state, state_signature, "model.step", tf)

    function = tf.function(serving_default, input_signature=[signature], autograph=False)
    function.get_concrete_function()
    return function


def _token_checks(token_ids, vocabulary_size, tf):
    return [validation.tf_assert("token_ids", token_ids, vocabulary_size)]


def _checked_state(inputs, state_signature, batch, reset, checks, tf):
    """The state tensors of a request, with their checks appended to
    `checks`: one row per request row, finite in the rows that go on
    (`reset` None: every row goes on)."""
    state = {}
    for name, spec in state_signature.items():
        value = tf.ensure_shape(inputs[name], spec.shape)
        checks.append(
            tf.debugging.assert_equal(
                tf.shape(value)[0],
                batch,
                message=f"{name} must have one row per row of token_ids",
            )
        )
        # NaN or Inf in the memory of a row that goes on would poison its
        # logits and every later state; a row being reset is replaced by
        # the empty state, whatever it holds (as in `model.step`).
        # InvalidArgument naming the tensor.
        if reset is not None:
            continuing = tf.reshape(
                tf.logical_not(reset),
                tf.concat([[-1], tf.ones_like(tf.shape(value)[1:])], 0),
            )
            value_checked = tf.where(continuing, value, tf.zeros_like(value))
            rule = "in the rows whose reset is False (a reset row may hold anything)"
        else:
            value_checked, rule = value, "(NaN or Inf would poison every later step)"
        checks.append(
            tf.debugging.assert_all_finite(
                value_checked,
                message=f"state tensor '{name}' must hold only finite values {rule}",
            )
        )
        state[name] = value
    return state


def _float_outputs(values, names, tf):
    return {name: tf.cast(values[name], tf.float32) for name in names}


def _step_outputs(logits, new_state, names, function, tf):
    """A signature's outputs: float32 logits and every state tensor `names`
    lists, which `function` must have returned."""
    missing = sorted(set(names) - set(new_state))
    if missing:
        raise ValueError(f"`{function}` must return the whole new state; missing: {missing}")
    outputs = {"logits": tf.cast(logits, tf.float32)}
    outputs.update(_float_outputs(new_state, names, tf))
    return outputs


def _decoding_functions(model, tf, jit_compile):
    """`decode_state` and `decode_step`, traced by TF (see the module doc)."""
    segment_length = model.segment_length
    vocabulary_size = model.vocabulary_size
    step_signature = _state_signature(model, tf)
    decode_signature = {
        name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
        for name, spec in model.decode_state_spec().items()
    }

    def to_decode_state(inputs):
        first = inputs[next(iter(step_signature))]
        checks = []
        state = _checked_state(inputs, step_signature, tf.shape(first)[0], None, checks, tf)
        with tf.control_dependencies(checks):
            state = {name: tf.identity(value) for name, value in state.items()}
        return _float_outputs(model.decode_state(state), decode_signature, tf)

    def decode(token_ids, state):
        return model.decode(token_ids, state)

    if jit_compile:
        decode = tf.function(decode, jit_compile=True, autograph=False)

    def decode_step(inputs):
        inputs = dict(inputs)
        token_ids = tf.ensure_shape(inputs.pop("token_ids"), (None, 1))
        batch = tf.shape(token_ids)[0]
        checks = _token_checks(token_ids, vocabulary_size, tf) + [
            tf.debugging.assert_positive(
                batch, message="token_ids must have at least one row (batch >= 1)"
            ),
        ]
        state = _checked_state(inputs, decode_signature, batch, None, checks, tf)
        # Every row decodes the same position of its segment (the state
        # holds it per row so that it travels with the batch).
        position = state["position"]
        checks += [
            tf.debugging.assert_equal(
                position,
                tf.round(position),
                message="position must hold whole numbers",
            ),
            tf.debugging.assert_non_negative(position, message="position must be >= 0"),
            tf.debugging.assert_less(
                position,
                tf.constant(float(segment_length)),
                message=f"position must be < segment_length={segment_length}",
            ),
            tf.debugging.assert_equal(
                position,
                position[:1],  # (No row: nothing to compare.)
                message="position must be equal in every row",
            ),
        ]
        # Nothing is computed before every check passed (a batch of 0 would
        # otherwise fail inside the model with an indexing error).
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
            state = {name: tf.identity(value) for name, value in state.items()}
        logits, new_state = decode(token_ids, state)
        return _step_outputs(logits, new_state, decode_signature, "model.decode", tf)

    token_spec = tf.TensorSpec((None, 1), tf.int32, name="token_ids")
    functions = (
        tf.function(to_decode_state, input_signature=[step_signature], autograph=False),
        tf.function(
            decode_step,
            input_signature=[{"token_ids": token_spec, **decode_signature}],
            autograph=False,
        ),
    )
    for function in functions:
        function.get_concrete_function()
    return functions


def _initial_state_function(model, tf):
    """`initial_state`: the empty state, one library-made row tiled `batch_size` times."""
    rows = {k: keras.ops.convert_to_numpy(v) for k, v in model.get_initial_state(1).items()}
    two = {k: keras.ops.convert_to_numpy(v) for k, v in model.get_initial_state(2).items()}
    for name, row in rows.items():
        if not np.array_equal(np.repeat(row, 2, axis=0), two[name]):
            raise ValueError(
                f"The empty state '{name}' differs between rows; it cannot be "
                "served as one row tiled per request."
            )
    state_signature = _state_signature(model, tf)

    def initial_state(batch_size):
        check = tf.debugging.assert_positive(batch_size, message="batch_size must be >= 1")
        with tf.control_dependencies([check]):
            batch_size = tf.identity(batch_size)
        return {
            name: tf.ensure_shape(
                tf.repeat(tf.constant(rows[name], tf.float32), batch_size, axis=0),
                state_signature[name].shape,
            )
            for name in state_signature
        }

    function = tf.function(
        initial_state,
        input_signature=[tf.TensorSpec((), tf.int32, name="batch_size")],
        autograph=False,
    )
    function.get_concrete_function()
    return function


def _check_pure(concrete_function, tf):
    """Refuse a served step that writes variables or draws random numbers."""
    graph_def = concrete_function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    impure = sorted(
        {
            f"{node.name} ({node.op})"
            for node in nodes
            if node.op in _IMPURE_OPS or node.op.startswith(_IMPURE_PREFIXES)
        }
    )
    if impure:
        shown = ", ".join(impure[:8]) + (f" and {len(impure) - 8} more" if len(impure) > 8 else "")
        raise ValueError(
            "`model.step` is not a pure function, so it cannot be served: its "
            f"graph writes variables or draws from a stateful generator: {shown}. "
            "TF Serving shares variables (and generator states) between all "
            "requests; a served step must keep its state in its inputs and "
            "outputs. A draw from a keras.random.SeedGenerator is such a "
            "state, e.g. an InfiniteFormerLM built with sticky_mode='random': "
            "export a model built with sticky_mode='quantile' and the same "
            "weights."
        )


# -- warm-up requests ------------------------------------------------------------


def _warmup_requests(model, functions, batch_sizes, tf):
    """`[(signature, inputs)]`: one valid request per signature and batch
    size, in a client's order, as at the start of a stream: the empty
    memory (its decoding state for `decode_step`) and token 0."""
    requests = []
    for batch in batch_sizes:
        state = {k: v.numpy() for k, v in functions["initial_state"](tf.constant(batch)).items()}
        inputs = {
            "initial_state": {"batch_size": np.array(batch, "int32")},
            "serving_default": {
                "token_ids": np.zeros((batch, model.segment_length), "int32"),
                "reset": np.ones((batch,), bool),
                **state,
            },
        }
        if "decode_step" in functions:
            decoding = functions["decode_state"](state)
            inputs["decode_state"] = dict(state)
            inputs["decode_step"] = {
                "token_ids": np.zeros((batch, 1), "int32"),
                **{k: v.numpy() for k, v in decoding.items()},
            }
        requests.extend((name, inputs[name]) for name in _WARMUP_SIGNATURES if name in inputs)
    return requests


def _tensor_proto(array, tf):
    """A TensorProto; an array of one repeated value in the compact form
    (its value once and the shape), which TensorFlow and TF Serving expand:
    an empty memory then costs a few bytes, not megabytes."""
    array = np.asarray(array)
    if array.size > 1 and np.all(array == array.flat[0]):
        return tf.make_tensor_proto(array.flat[0], dtype=array.dtype, shape=array.shape)
    return tf.make_tensor_proto(array)


# The protobuf messages of TF Serving (tensorflow_serving/apis/*.proto) are
# encoded by hand, so that exporting needs no tensorflow-serving-api (which
# requires a TensorFlow at least as new as itself): only these fields.
# PredictionLog.predict_log = 6; PredictLog.request = 1; PredictRequest
# .model_spec = 1, .inputs = 2 (map<string, TensorProto>: key 1, value 2);
# ModelSpec.name = 1, .signature_name = 3.


def _varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (wire type 2): string, bytes or a message."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _prediction_log(model_name, signature, inputs, tf):
    spec = _field(1, model_name) + _field(3, signature)
    request = _field(1, spec) + b"".join(
        _field(2, _field(1, name) + _field(2, _tensor_proto(value, tf).SerializeToString()))
        for name, value in inputs.items()
    )
    return _field(6, _field(1, request))


def _parse_fields(data):
    """The length-delimited fields of a message: `[(number, bytes)]`
    (other wire types, which these messages do not use here, are skipped)."""
    fields, at = [], 0

    def varint():
        nonlocal at
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = varint()
        wire = key & 7
        if wire == 2:
            length = varint()
            fields.append((key >> 3, data[at : at + length]))
            at += length
        elif wire == 0:
            varint()
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"Unexpected protobuf wire type {wire} in a warm-up record")
    return fields


def _write_warmup_file(path, model_name, requests, tf):
    target = os.path.join(path, WARMUP_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with tf.io.TFRecordWriter(target) as writer:
        for signature, inputs in requests:
            writer.write(_prediction_log(model_name, signature, inputs, tf))


def read_warmup_requests(path):
    """The warm-up requests of an exported version, decoded.

    Args:
        path: str or path-like. A version folder written by
            `export_for_serving` (the one holding `saved_model.pb`).

    Returns:
        A list of `(model_name, signature_name, inputs)`, `inputs` a dict
        `name -> np.ndarray`, in the order TF Serving replays them (`[]` for
        a version written without warm-up requests).

    Examples:

    ```python
    import tensorflow as tf

    from keras_infformer.export import read_warmup_requests

    path = "saved_models/lm/1"
    served = tf.saved_model.load(path)
    for _, signature, inputs in read_warmup_requests(path):
        served.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    ```
    """
    import tensorflow as tf

    target = os.path.join(os.fspath(path), WARMUP_FILE)
    if not os.path.exists(target):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(target).as_numpy_iterator():
        (log,) = [v for n, v in _parse_fields(record) if n == 6]
        (request,) = [v for n, v in _parse_fields(log) if n == 1]
        spec, inputs = {}, {}
        for number, value in _parse_fields(request):
            if number == 1:
                spec = dict(_parse_fields(value))
            elif number == 2:
                entry = dict(_parse_fields(value))
                proto = tf.make_tensor_proto(0)  # Any TensorProto, to parse into.
                proto.ParseFromString(entry[2])
                inputs[entry[1].decode("utf-8")] = tf.make_ndarray(proto)
        requests.append(
            (spec.get(1, b"").decode("utf-8"), spec.get(3, b"").decode("utf-8"), inputs)
        )
    return requests


# -- writing ---------------------------------------------------------------------


def _write_saved_model(model, path, jit_compile, warmup_batch_sizes, model_name, verbose):
    """TensorFlow backend: trace the endpoints, write them to `path`, then
    the warm-up requests."""
    import tensorflow as tf

    serving_default = _serving_function(model, tf, jit_compile)
    _check_pure(serving_default.get_concrete_function(), tf)
    initial_state = _initial_state_function(model, tf)

    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("initial_state", initial_state)
    functions = {"serving_default": serving_default, "initial_state": initial_state}
    if decodes(model):
        decode_state, decode_step = _decoding_functions(model, tf, jit_compile)
        _check_pure(decode_step.get_concrete_function(), tf)
        archive.add_endpoint("decode_state", decode_state)
        archive.add_endpoint("decode_step", decode_step)
        functions.update(decode_state=decode_state, decode_step=decode_step)
    archive.write_out(path, verbose=verbose)
    if warmup_batch_sizes:
        requests = _warmup_requests(model, functions, warmup_batch_sizes, tf)
        _write_warmup_file(path, model_name, requests, tf)


# Exceptions of a TensorFlow export process raised again, as such, here.
_FORWARDED_ERRORS = {e.__name__: e for e in (ValueError, TypeError, NotImplementedError)}


def _write_saved_model_in_tensorflow_process(model, path, options):
    """JAX backend: trace and write the SavedModel in a TensorFlow process.

    The model goes over as a `.keras` file (config and weights; Keras files
    are backend-independent) to a Python process started with
    `KERAS_BACKEND=tensorflow`, which loads it and runs `_write_saved_model`
    (`_main`). The child sees this process's `sys.path` and imports
    the modules of the model's classes, so custom registered classes load too.
    """
    modules = {"keras_infformer"}
    for layer in compat.flatten_layers(model, include_self=True):
        module = type(layer).__module__
        if module != "__main__" and module.split(".")[0] != "keras":
            modules.add(module)
    with tempfile.TemporaryDirectory(prefix=".export-model-") as scratch:
        model_path = os.path.join(scratch, "model.keras")
        result_path = os.path.join(scratch, "error.json")
        model.save(model_path)
        request = {
            "model": model_path,
            "path": path,
            "options": options,
            "modules": sorted(modules),
            "error": result_path,
        }
        here = [os.path.abspath(p or os.curdir) for p in sys.path]
        env = dict(os.environ)
        env.update(
            KERAS_BACKEND="tensorflow",
            PYTHONPATH=os.pathsep.join(dict.fromkeys(here)),
            # Tracing needs no accelerator; leave the GPUs to this process.
            CUDA_VISIBLE_DEVICES="-1",
            TF_CPP_MIN_LOG_LEVEL=env.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        )
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(request)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if options["verbose"] and result.stdout:
            print(result.stdout, end="")
        if result.returncode == 0:
            return
        if os.path.exists(result_path):
            with open(result_path) as f:
                error = json.load(f)
            if error["type"] in _FORWARDED_ERRORS:
                raise _FORWARDED_ERRORS[error["type"]](error["message"])
        raise RuntimeError(
            "Tracing the model under the TensorFlow backend (a fresh process, "
            "KERAS_BACKEND=tensorflow, fed the model's .keras file) failed. Its "
            "last output:\n" + result.stdout[-5000:]
        )


_CHILD = "import sys; from keras_infformer.export import _main; _main(sys.argv[1:])"


def _main(argv):
    """The TensorFlow side of `_write_saved_model_in_tensorflow_process`
    (`argv[0]`: its request, as JSON)."""
    request = json.loads(argv[0])
    try:
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError("keras_infformer.export as a script needs KERAS_BACKEND=tensorflow")
        for module in request["modules"]:
            importlib.import_module(module)
        try:
            model = keras.saving.load_model(request["model"], compile=False)
        except Exception as error:
            raise TypeError(
                "Under JAX, export_for_serving traces the model in a "
                "TensorFlow process, from its .keras file, and that process "
                f"could not load it: {error}\nIt imported "
                f"{request['modules']}; a class defined in a script's "
                "__main__ cannot be found there: define it in a module and "
                "register it (keras.saving.register_keras_serializable)."
            ) from error
        _check_model(model)
        _write_saved_model(model, request["path"], **request["options"])
    except Exception as error:
        with open(request["error"], "w") as f:
            json.dump({"type": type(error).__name__, "message": str(error)}, f)
        raise
