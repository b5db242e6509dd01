"""Every use of a private Keras, TensorFlow or keras-hub name, in one place.

The rest of the package uses public APIs only; where none does the job, it
calls a function of this module. Each one says why it is needed, the
versions it was written for (`KERAS_VERSION`, `KERAS_HUB_VERSION`,
`TENSORFLOW_VERSION`) and the upstream issue it works around, where one
exists. tests/test_compat.py checks that each works on the installed
versions and that the private names it relies on still exist, so an
upgrade that moves one fails there, naming the workaround.
"""

import keras_hub

# The versions the workarounds below were written and tested for.
KERAS_VERSION = "3.15.1"
KERAS_HUB_VERSION = "0.32.0"
TENSORFLOW_VERSION = "2.21.0"


# -- Keras: layers and variables ---------------------------------------------------


def flatten_layers(layer, include_self=False, recursive=True):
    """`layer` and every layer nested in it, depth first (`Layer._flatten_layers`).

    Why: Keras has no public recursive list of sublayers (`Model.layers`
    stops at the first level). Keras 3.15.1; feature request
    keras-team/keras#4398 (closed, stale).
    """
    return list(layer._flatten_layers(include_self=include_self, recursive=recursive))


def in_symbolic_scope():
    """Whether Keras is only inferring shapes (`compute_output_spec`).

    Why: no public name; PyTorch's shape inference fills tensors with
    uninitialised memory, which must not be checked as data. Keras 3.15.1
    (`keras.src.backend.common.symbolic_scope`); no upstream issue found.
    """
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope as scope
    except ImportError:  # pragma: no cover - a Keras that moved it
        return False
    return scope()


def track_variable(layer, variable):
    """Make `layer` own `variable`, made with `keras.Variable` (`Layer._track_variable`).

    Why: `add_weight` takes no `synchronization`, so a TensorFlow per-replica
    (on-read) memory variable is made directly and must be tracked by hand.
    Keras 3.15.1; no upstream issue found.
    """
    layer._track_variable(variable)


def own_variables(layer):
    """`layer`'s own variables, numbered as `Layer.save_own_variables` numbers them.

    Why: saving memory rows of every replica needs Keras' own numbering
    (trainable first, then non-trainable, own variables only), which has no
    public accessor. Keras 3.15.1; no upstream issue found.
    """
    return layer._trainable_variables + layer._non_trainable_variables


def check_load_own_variables(layer, store):
    """Keras' checks of `Layer.load_own_variables` (the count of variables).

    Why: a layer that overrides `load_own_variables` keeps Keras' error on a
    mismatched file. Keras 3.15.1; no upstream issue found.
    """
    layer._check_load_own_variables(store)


# -- Keras: trainers -----------------------------------------------------------------


def tf_distribute_strategy(model):
    """The `tf.distribute` strategy `model` was made under, else `None`.

    Why: the public `Model.distribute_strategy` returns TensorFlow's default
    strategy when there is none, which cannot be told apart cheaply; the
    TensorFlow trainer's `_distribute_strategy` is `None` then. Keras
    3.15.1; no upstream issue found.
    """
    return getattr(model, "_distribute_strategy", None)


def is_fit_validation(evaluate_kwargs):
    """Whether `Model.evaluate` was called by `fit` for its validation data.

    Why: `fit` passes the private `_use_cached_eval_dataset=True` to
    `evaluate` (data already checked); a user call does not. Keras 3.15.1;
    no upstream issue found.
    """
    return bool(evaluate_kwargs.get("_use_cached_eval_dataset"))


class SymbolicBuildBatch:
    """Mixin: choose the batch Keras' TensorFlow trainer builds a model from.

    A subclass implements `symbolic_build_batch(iterator)` (a batch, or
    `None` for Keras' own choice). Why: under a `tf.distribute` strategy
    Keras' `_maybe_symbolic_build` averages the first distributed batch over
    the replicas to build symbolically, which fails on a bool input; any one
    replica's part has the same shapes and dtypes. Keras 3.15.1 (TensorFlow
    2.21); related keras-team/keras#20045 (the symbolic build under a
    strategy); no issue for bool inputs found.
    """

    def symbolic_build_batch(self, iterator):
        return None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            data_batch = self.symbolic_build_batch(iterator)
            if data_batch is not None:
                iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


# The state a JAX step function receives, group by group (Keras' JAX trainer).
JAX_STEP_STATE = {
    "train_function": (
        "trainable_variables",
        "non_trainable_variables",
        "optimizer_variables",
        "metrics_variables",
    ),
    "test_function": (
        "trainable_variables",
        "non_trainable_variables",
        "metrics_variables",
    ),
    "predict_function": ("trainable_variables", "non_trainable_variables"),
}


def _is_deleted(value):
    is_deleted = getattr(value, "is_deleted", None)
    return value is None or (callable(is_deleted) and is_deleted())


def restore_jax_step_state(model, attribute, state):
    """Put the `state` a JAX step function received back into `model`.

    Why: Keras' JAX trainer detaches the variables before the first step
    and reattaches them from the last step that succeeded; when the first
    step raises, the model is left without values. This assigns the step's
    input (values already donated are skipped) and drops the trainer's
    pending `_jax_state`, so its clean-up does not overwrite them. Keras
    3.15.1; related keras-team/keras#21019 (restores on an interrupted
    `fit`, not on a failing first step).
    """
    for group, values in zip(JAX_STEP_STATE[attribute], state):
        if group == "optimizer_variables":
            variables = model.optimizer.variables
        else:
            variables = getattr(model, group)
        for variable, value in zip(variables, values):
            if not _is_deleted(value):
                variable.assign(value)
    model._jax_state = None
    model._jax_state_synced = True


def wrap_step_function(model, attribute, wrap):
    """Replace `model.<attribute>` (a trainer's step function) by `wrap(function)`.

    A no-op for a function not made yet, or one already wrapped. Why: there
    is no public hook around one step of `fit` / `evaluate` / `predict`;
    this relies on the trainer calling `model.<attribute>` after
    `make_*_function` (the JAX trainer as `function(state, iterator)`).
    Keras 3.15.1; no upstream issue found.
    """
    function = getattr(model, attribute, None)
    if function is None or getattr(function, "_infformer_wrapped", False):
        return
    wrapped = wrap(function)
    wrapped._infformer_wrapped = True
    setattr(model, attribute, wrapped)


# -- keras-hub: presets ----------------------------------------------------------------


def _preset_utils():
    from keras_hub.src.utils import preset_utils

    return preset_utils


def share_builtin_presets(own_cls, family_cls):
    """List `family_cls`'s built-in presets under `own_cls.presets` too.

    Why: `Backbone.presets` reads a registry keyed by the exact class, so a
    subclass lists none. keras-hub 0.32.0
    (`preset_utils.BUILTIN_PRESETS_FOR_BACKBONE`); no upstream issue found.
    """
    presets = _preset_utils().BUILTIN_PRESETS_FOR_BACKBONE
    if family_cls in presets:
        presets.setdefault(own_cls, presets[family_cls])


def preset_loader(preset):
    """keras-hub's loader of `preset` (a name or a folder).

    Why: `CausalLM.from_preset` picks the task class from a registry; our
    `from_preset` loads a family preset into our class, through keras-hub's
    own loader (`check_backbone_class()`, `load_task(cls, ...)`). keras-hub
    0.32.0 (`preset_utils.get_preset_loader`); no upstream issue found.
    """
    return _preset_utils().get_preset_loader(preset)


def preset_tokenizer_file():
    """The file name of a preset's tokenizer config (`"tokenizer.json"`).

    Why: a folder saved from a bare backbone has none, and is then loaded
    without a preprocessor. keras-hub 0.32.0
    (`preset_utils.TOKENIZER_CONFIG_FILE`); no upstream issue found.
    """
    return _preset_utils().TOKENIZER_CONFIG_FILE


# -- keras-hub: decoder layers, part by part -------------------------------------------


def keras_hub_part(owner, name):
    """`getattr(owner, name)` for a keras-hub layer attribute we rely on.

    Raises a `RuntimeError` naming the attribute, the installed keras-hub
    version and `KERAS_HUB_VERSION` if the attribute is missing (a keras-hub
    release renamed or moved it).
    """
    try:
        return getattr(owner, name)
    except AttributeError:
        installed = getattr(keras_hub, "__version__", "unknown")
        raise RuntimeError(
            f"keras_infformer runs keras-hub decoder layers part by part and "
            f"needs `{type(owner).__name__}.{name}`, which keras-hub "
            f"{installed} does not have. keras_infformer.compat was written "
            f"against keras-hub {KERAS_HUB_VERSION}: install that version, or "
            f"update the part names there."
        ) from None


def transformer_decoder_parts(block):
    """A keras-hub `TransformerDecoder` (GPT-2's layer) by role.

    Why: the memory read is added inside the layer, between its attention
    and its residual, and keras-hub has no hook there; its sublayers are
    private. keras-hub 0.32.0; keras-team/keras-hub#1261 (modular attention
    in the transformer blocks). The attention layer is a Keras
    `MultiHeadAttention`: its projections are public (`query_dense`, ...).
    """
    return {
        "attention": keras_hub_part(block, "_self_attention_layer"),
        "attention_norm": keras_hub_part(block, "_self_attention_layer_norm"),
        "attention_dropout": keras_hub_part(block, "_self_attention_dropout"),
        "ffn_norm": keras_hub_part(block, "_feedforward_layer_norm"),
        "up": keras_hub_part(block, "_feedforward_intermediate_dense"),
        "down": keras_hub_part(block, "_feedforward_output_dense"),
        "ffn_dropout": keras_hub_part(block, "_feedforward_dropout"),
    }


def transformer_decoder_causal_mask(block, x, cache=None, cache_update_index=None):
    """The causal self-attention mask `TransformerDecoder` builds for `x`.

    Why: the mask (with a cache while decoding) is the layer's private
    `_compute_self_attention_mask`; reusing it keeps GPT-2 exact. keras-hub
    0.32.0; keras-team/keras-hub#1261.
    """
    compute = keras_hub_part(block, "_compute_self_attention_mask")
    return compute(
        decoder_sequence=x,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        use_causal_mask=True,
        self_attention_cache=cache,
        self_attention_cache_update_index=cache_update_index,
    )


def multi_head_attention(attention, query, key, value, mask, training=None):
    """`MultiHeadAttention`'s attention of projected `query`, `key`, `value`.

    Why: the memory reads with the layer's projected query, so the wiring
    projects it itself and cannot call the layer whole; the attention
    proper (`_compute_attention`, keras-hub's cached subclass's override
    included) has no public entry. Keras 3.15.1 / keras-hub 0.32.0; no
    upstream issue found.
    """
    attended, _ = keras_hub_part(attention, "_compute_attention")(
        query=query, key=key, value=value, attention_mask=mask, training=training
    )
    return attended


def llama_decoder_parts(block):
    """A Llama-style keras-hub decoder layer (Llama, Qwen3) by role.

    Why: Llama's and Qwen3's decoder and attention layers keep their parts
    under private names, and the memory needs the query projection and a
    hook between attention and residual. keras-hub 0.32.0;
    keras-team/keras-hub#1261.
    """
    attention = keras_hub_part(block, "_self_attention_layer")
    return {
        "attention_norm": keras_hub_part(block, "_self_attention_layernorm"),
        "attention": attention,
        "query": keras_hub_part(attention, "_query_dense"),
        "post_attention_norm": None,
        "attention_dropout": keras_hub_part(block, "_self_attention_dropout"),
        "ffn_norm": keras_hub_part(block, "_feedforward_layernorm"),
        "gate": keras_hub_part(block, "_feedforward_gate_dense"),
        "up": keras_hub_part(block, "_feedforward_intermediate_dense"),
        "down": keras_hub_part(block, "_feedforward_output_dense"),
        "post_ffn_norm": None,
        "activation": keras_hub_part(block, "activation"),
        "compute_dtype": block.compute_dtype,
    }


def qwen3_query_norm(attention):
    """Qwen3's per-head query norm (part of how it projects a query).

    Why: private in `Qwen3Attention`. keras-hub 0.32.0; keras-team/keras-hub#1261.
    """
    return keras_hub_part(attention, "_query_dense_layer_norm")
