"""SavedModel export of an `InfiniteFormerLM` for TensorFlow Serving.

The served model is the LM's pure, explicit-state step: every request carries
the memory of its own stream(s) and gets the new memory back, so the server
holds no per-client state (TF Serving assumes pure functions; a memory kept in
server-side variables would be shared by every request). Two signatures:

- `serving_default`: `token_ids` int32 `(batch, segment_length)`, `reset`
  bool `(batch,)` and every piece of memory state by name (the model's
  `state_spec()` names, e.g. `layer_0_stm`) -> `logits` float32
  `(batch, segment_length, vocabulary_size)` and the new state under the same
  names. Any batch size, whatever batch the training model was built with.
- `initial_state`: `batch_size` int32 scalar -> the empty state.

Backend-specific code lives only here: the TensorFlow backend traces
`model.step` with `tf.function`; the JAX backend converts it with `jax2tf`
(batch-polymorphic shapes). PyTorch models cannot be exported to a SavedModel.
"""

import contextlib
import os
import re
import shutil
import tempfile

import keras
import numpy as np

from keras_infformer import distribution

# Platforms a JAX export is lowered for, so that a model exported on a CPU
# machine also serves on a GPU one.
_JAX_PLATFORMS = ("cpu", "cuda")


def export_for_serving(model, export_dir, version=None, verbose=False):
    """Write `model` as a TF Serving SavedModel under `export_dir/<version>/`.

    The layout is the one `tensorflow_model_server --model_base_path=
    export_dir` watches: one integer-named folder per version, each holding
    `saved_model.pb` and `variables/`. The version is written to a temporary
    folder first and renamed into place, so a server never sees half of it.

    Args:
        model: a built `keras_infformer.models.InfiniteFormerLM` (TensorFlow
            or JAX backend).
        export_dir: str or path-like. The model's base path.
        version: optional int >= 1. Defaults to one more than the highest
            version already in `export_dir` (`1` for an empty folder). An
            existing version is never overwritten.
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
            "traced with tf.function or converted with jax2tf). Received: "
            f"backend={backend!r}. Save the model (`model.save('lm.keras')`), "
            "then load and export it in a process started with "
            "KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax."
        )
    _check_model(model)
    version_dir = _version_dir(export_dir, version)

    import tensorflow as tf

    weights = _weights(model)
    if backend == "tensorflow":
        step, patches = _tensorflow_step(model), contextlib.nullcontext()
    else:
        step, patches = _jax_step(model, weights, tf), _stablehlo_for_tensorflow()
    with patches:  # JAX only: jax2tf serialises while the graph is traced.
        serving_default = _serving_function(model, step, tf)
        initial_state = _initial_state_function(model, tf)

    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default", serving_default)
    archive.add_endpoint("initial_state", initial_state)

    parent = os.path.dirname(version_dir)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        archive.write_out(staging, verbose=verbose)
        os.rename(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return version_dir


# -- checks and layout -----------------------------------------------------------


def _check_model(model):
    needed = ("step", "state_spec", "get_initial_state", "segment_length")
    if not all(hasattr(model, name) for name in needed):
        raise ValueError(
            "`model` must be a keras_infformer InfiniteFormerLM (with "
            "`step()`, `state_spec()` and `get_initial_state()`). Received: "
            f"model={model!r} of type {type(model).__name__}"
        )
    for block in model.decoder_blocks:
        if (
            getattr(block, "use_long_term_memory", False)
            and getattr(block, "sticky_memories", False)
            and getattr(block, "sticky_mode", "quantile") == "random"
        ):
            raise ValueError(
                "A model with `sticky_mode='random'` cannot be served: its "
                "step draws from a seed generator whose state is a variable, "
                "so it is not a pure function (and TF Serving would share "
                "that state between clients). Export a model built with "
                "`sticky_mode='quantile'` and the same weights. Received: "
                f"block '{block.name}' with sticky_mode='random'"
            )


def _version_dir(export_dir, version):
    export_dir = os.fspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(
            f"`export_dir` must be a folder. Received: export_dir={export_dir!r} "
            "(an existing file)"
        )
    if version is None:
        existing = []
        if os.path.isdir(export_dir):
            existing = [
                int(name)
                for name in os.listdir(export_dir)
                if re.fullmatch(r"[0-9]+", name)
            ]
        version = max(existing, default=0) + 1
    elif isinstance(version, bool) or not isinstance(version, (int, np.integer)) or (
        version < 1
    ):
        raise ValueError(
            f"`version` must be an int >= 1 or None. Received: version={version!r}"
        )
    path = os.path.join(export_dir, str(int(version)))
    if os.path.exists(path):
        raise ValueError(
            f"Version {int(version)} already exists at {path!r}; a served "
            "version is never overwritten. Pass another `version`, or "
            "`version=None` for the next one."
        )
    return path


def _weights(model):
    """The variables `step` reads: every variable but the memory's."""
    return [v for v in model.variables if not distribution.is_memory_variable(v)]


# -- the served functions --------------------------------------------------------


def _state_signature(model, tf):
    return {
        name: tf.TensorSpec(spec.shape, spec.dtype, name=name)
        for name, spec in model.state_spec().items()
    }


def _serving_function(model, step, tf):
    """`serving_default` as a traced tf.function around a backend `step`."""
    segment_length = model.segment_length
    vocabulary_size = model.vocabulary_size
    state_signature = _state_signature(model, tf)
    signature = {
        "token_ids": tf.TensorSpec((None, segment_length), tf.int32, name="token_ids"),
        "reset": tf.TensorSpec((None,), tf.bool, name="reset"),
        **state_signature,
    }

    def serving_default(inputs):
        inputs = dict(inputs)
        # Checked in the graph too: a server that feeds the graph directly
        # must fail on a bad request, never answer it wrongly.
        token_ids = tf.ensure_shape(inputs.pop("token_ids"), (None, segment_length))
        reset = tf.ensure_shape(inputs.pop("reset"), (None,))
        batch = tf.shape(token_ids)[0]
        checks = [
            tf.debugging.assert_non_negative(
                token_ids, message="token_ids must be >= 0"
            ),
            tf.debugging.assert_less(
                token_ids,
                tf.constant(vocabulary_size, tf.int32),
                message=f"token_ids must be < vocabulary_size={vocabulary_size}",
            ),
            tf.debugging.assert_equal(
                tf.shape(reset)[0], batch,
                message="reset must have one entry per row of token_ids",
            ),
        ]
        state = {}
        for name, spec in state_signature.items():
            value = tf.ensure_shape(inputs[name], spec.shape)
            checks.append(
                tf.debugging.assert_equal(
                    tf.shape(value)[0], batch,
                    message=f"{name} must have one row per row of token_ids",
                )
            )
            state[name] = value
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
        logits, new_state = step(token_ids, reset, state)
        outputs = {"logits": tf.cast(logits, tf.float32)}
        for name in state_signature:
            outputs[name] = tf.cast(new_state[name], tf.float32)
        return outputs

    function = tf.function(serving_default, input_signature=[signature], autograph=False)
    function.get_concrete_function()
    return function


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


# -- backend steps ---------------------------------------------------------------


def _tensorflow_step(model):
    # TensorFlow only: `model.step` is traced as is; its weights are
    # tf.Variables, captured (not copied) by the graph.
    def step(token_ids, reset, state):
        return model.step(token_ids, reset, state, training=False)

    return step


def _jax_step(model, weights, tf):
    # JAX only: jax2tf converts a pure function of (weights, inputs) with a
    # polymorphic batch `b`; the weights are fed from tf.Variables.
    from jax.experimental import jax2tf

    tf_weights = [
        tf.Variable(
            keras.ops.convert_to_numpy(v), trainable=v.trainable,
            name=v.path.replace("/", "_"),
        )
        for v in weights
    ]

    def pure_step(values, token_ids, reset, state):
        with keras.StatelessScope(state_mapping=list(zip(weights, values))):
            return model.step(token_ids, reset, state, training=False)

    def polymorphic(shape):
        return "(" + ", ".join("b" if d is None else str(d) for d in shape) + ")"

    state_shapes = {k: polymorphic(s.shape) for k, s in model.state_spec().items()}
    converted = jax2tf.convert(
        pure_step,
        polymorphic_shapes=[
            None,  # The weights: their static shapes.
            polymorphic((None, model.segment_length)),
            "(b,)",
            state_shapes,
        ],
        with_gradient=False,
        native_serialization_platforms=_JAX_PLATFORMS,
    )

    def step(token_ids, reset, state):
        return converted(list(tf_weights), token_ids, reset, state)

    return step


@contextlib.contextmanager
def _stablehlo_for_tensorflow():
    """Serialise jax2tf's StableHLO in a version this TensorFlow can run.

    JAX only, for a JAX newer than the installed TensorFlow: JAX writes
    StableHLO four weeks old, which an older TensorFlow's `XlaCallModule`
    may fail to read, so the module is written at TensorFlow's own StableHLO
    version. That older reader also cannot refine the dynamic shapes inside
    the `chlo.erf` composite (the sticky memories' normal CDF), so while
    exporting `erf` is lowered to plain StableHLO arithmetic (Eigen's float32
    rational approximation, within 5e-7 of XLA's). Nothing changes when the
    versions agree; everything is restored on exit.
    """
    try:
        from jax import lax
        from jax._src import xla_bridge
        from jax._src.export import _export
        from jax._src.interpreters import mlir as jax_mlir
        from jax._src.lib import _jax
        from jax._src.lib.mlir.dialects import hlo
        from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_stablehlo
    except ImportError:  # Another JAX/TF layout: serialise as JAX does.
        yield
        return

    def key(version):
        return tuple(int(p) for p in str(version).split("."))

    jax_version = hlo.get_version_from_compatibility_requirement(
        hlo.StablehloCompatibilityRequirement.WEEK_4
    )
    tf_version = tf_stablehlo.get_current_version()
    if key(tf_version) >= key(jax_version):
        yield
        return

    def module_to_bytecode(module):
        return _jax.mlir.serialize_portable_artifact(
            module, tf_version, xla_bridge.get_backend().serialize_with_sdy
        )

    original_bytecode = _export._module_to_bytecode
    original_erf = jax_mlir._lowerings.get(lax.erf_p)
    platform_erf = {
        p: rules.pop(lax.erf_p)
        for p, rules in jax_mlir._platform_specific_lowerings.items()
        if lax.erf_p in rules
    }
    _export._module_to_bytecode = module_to_bytecode
    jax_mlir.register_lowering(
        lax.erf_p, jax_mlir.lower_fun(_erf_float32, multiple_results=False)
    )
    try:
        yield
    finally:
        _export._module_to_bytecode = original_bytecode
        if original_erf is None:
            jax_mlir._lowerings.pop(lax.erf_p, None)
        else:
            jax_mlir._lowerings[lax.erf_p] = original_erf
        for p, rule in platform_erf.items():
            jax_mlir._platform_specific_lowerings[p][lax.erf_p] = rule


# Eigen's `generic_fast_erf_float` (odd numerator, even denominator in x).
_ERF_ALPHA = (
    -2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
    -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_BETA = (
    -1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
    -7.37332916720468e-03, -1.42647390514189e-02,
)


def _erf_float32(x):
    import jax.numpy as jnp

    dtype = x.dtype
    x = jnp.clip(x.astype(jnp.float32), -4.0, 4.0)
    x2 = x * x
    p = jnp.full_like(x, _ERF_ALPHA[0])
    for a in _ERF_ALPHA[1:]:
        p = p * x2 + a
    q = jnp.full_like(x, _ERF_BETA[0])
    for b in _ERF_BETA[1:]:
        q = q * x2 + b
    return (x * p / q).astype(dtype)
