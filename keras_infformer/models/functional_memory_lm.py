"""`generate()` and serving for a functional model built from memory layers.

A user's own `keras.Model` built from the package's memory layers (any
`MemoryLayer`: `InfiniteFormerDecoder`, `ContinuousMemoryAttention`, a
subclass of yours) trains and saves like any Keras model, but `generate()`
and `export_for_serving` need the explicit-state contract of
`StreamingCausalLM` (`state_spec`, a pure `step`, token-by-token `decode`).
`FunctionalMemoryLM` derives that contract from the memory layers inside
the model, without touching its code.
"""

import keras
import numpy as np
from keras import ops

from keras_infformer import compat, memory, utils
from keras_infformer.models import stream_guards
from keras_infformer.models.streaming_causal_lm import StreamingCausalLM


def _memory_layers(model):
    """The layers of `model` that keep memory in variables (outermost)."""
    found = []
    for layer in memory.stateful_layers(model):
        if not isinstance(layer, memory.MemoryLayer) or not layer._state_variables:
            continue
        if any(layer in compat.flatten_layers(other) for other in found):
            continue
        found.append(layer)
    return found


@keras.saving.register_keras_serializable(package="keras_infformer")
class FunctionalMemoryLM(StreamingCausalLM):
    """A functional language model with memory layers, made a causal LM.

    Wraps `backbone`, any functional `keras.Model` that maps `{"token_ids":
    int (batch_size, segment_length), "reset": bool (batch_size,)}` to
    logits `(batch_size, segment_length, vocabulary_size)` and keeps its
    memory in stateful `MemoryLayer`s (the `reset` input reaching them),
    and gives it what `StreamingCausalLM` builds on the contract:

    - `state_spec()`, `get_state()`, `set_state()`, `reset_state()`: the
      memory of every memory layer, as one flat dict named
      `<layer name>_<state name>`;
    - `step(token_ids, reset, state)`: one segment, pure: the model's own
      forward pass with its memory variables read from `state` and their
      new values returned instead of written (a `keras.StatelessScope`);
      any number of rows up to `batch_size` (padded with empty rows);
    - `decode(token_ids, state)`: one token per row, for `generate()` and
      the exported `decode_step`. The decoding state keeps the memory at
      the start of the current segment and the segment's tokens so far;
      each token re-runs the segment's step (a causal model's logit at a
      position depends only on the tokens up to it) and the memory moves
      on when the segment is full, so decoding equals `step` exactly, at
      the cost of one segment's forward pass per token.

    Then `fit` on streams (with the host-side checks), `generate()` (ids,
    or text with a preprocessor) and `keras_infformer.export_for_serving`
    work as for the package's own models; `.keras` saving keeps the wrapped
    model, its weights and memory.

    Args:
        backbone: the functional `keras.Model` (see above), built with a
            fixed batch size and segment length.
        preprocessor: optional `InfiniteFormerCausalLMPreprocessor` (text in
            `generate()`).
        **kwargs: passed to `keras_hub.models.CausalLM`.

    Examples:

    ```python
    import keras
    import keras_infformer as kif

    token_ids = keras.Input((16,), batch_size=2, dtype="int32", name="token_ids")
    reset = keras.Input((), batch_size=2, dtype="bool", name="reset")
    x = keras.layers.Embedding(64, 32)(token_ids)
    x = kif.InfiniteFormerDecoder(64, 4, memory_length=16, num_basis=32,
                                  num_samples=32)(x, reset=reset)
    logits = keras.layers.Dense(64)(x)
    network = keras.Model({"token_ids": token_ids, "reset": reset}, logits)

    model = kif.models.FunctionalMemoryLM(network)
    model.compile(sampler="greedy")
    model.generate([[1, 2, 3]], max_length=40)
    kif.export_for_serving(model, "saved_models/mine")
    ```
    """

    backbone_cls = None

    def __init__(self, backbone, preprocessor=None, **kwargs):
        utils.check_model_keywords(kwargs, type(self).__name__)
        _check_network(backbone)
        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        outputs = backbone(inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    # -- sizes ---------------------------------------------------------------

    @property
    def segment_length(self):
        return int(self.backbone.input["token_ids"].shape[1])

    @property
    def batch_size(self):
        return int(self.backbone.input["token_ids"].shape[0])

    @property
    def vocabulary_size(self):
        return int(self.backbone.output.shape[-1])

    @property
    def memory_layers(self):
        """The memory layers of the wrapped model, in order."""
        return _memory_layers(self.backbone)

    # -- the memory ------------------------------------------------------------

    def _names(self):
        return [
            (layer, name, memory.state_name(layer.name, name))
            for layer in self.memory_layers
            for name in layer._state_variables
        ]

    def state_spec(self, batch_size=None):
        spec = {}
        for layer in self.memory_layers:
            for name, tensor in layer.state_spec(batch_size).items():
                spec[memory.state_name(layer.name, name)] = tensor
        return spec

    def get_initial_state(self, batch_size):
        state = {}
        for layer in self.memory_layers:
            for name, value in layer.get_initial_state(batch_size).items():
                state[memory.state_name(layer.name, name)] = value
        return state

    def get_state(self):
        state = {}
        for layer in self.memory_layers:
            for name, value in layer.get_state().items():
                state[memory.state_name(layer.name, name)] = value
        return state

    def set_state(self, state):
        """Write a flat state dict into the variables (all or nothing)."""
        memory.check_state(state, self.state_spec(self.batch_size), float_only=True)
        checked = [
            layer._checked_state(
                {name: state[memory.state_name(layer.name, name)] for name in layer.state_spec()},
                "state",
            )
            for layer in self.memory_layers
        ]
        for layer, values in zip(self.memory_layers, checked):
            layer._assign_state(values)

    def reset_state(self):
        for layer in self.memory_layers:
            layer.reset_state()

    # -- the pure step ----------------------------------------------------------

    def step(self, token_ids, reset, state, training=False):
        """Pure streaming step: `(token_ids, reset, state) -> (logits,
        new_state)`, for up to `batch_size` rows; no variable is written."""
        if not hasattr(token_ids, "shape"):
            token_ids = np.asarray(token_ids)
        self._validate_inputs(token_ids, reset)
        rows = token_ids.shape[0]
        if rows is not None and rows > self.batch_size:
            raise ValueError(
                f"{type(self).__name__} runs the wrapped model, built for "
                f"batch_size={self.batch_size}: at most that many rows per "
                f"step. Received: token_ids.shape={tuple(token_ids.shape)}"
            )
        memory.check_state(state, self.state_spec(rows), "state", reset)
        token_ids = stream_guards.clip_traced_token_ids(
            ops.cast(ops.convert_to_tensor(token_ids), "int32"), self.vocabulary_size
        )
        flags = (
            ops.zeros(ops.shape(token_ids)[:1], "bool")
            if reset is None
            else ops.cast(reset, "bool")
        )
        size = self.batch_size
        # Padded to the wrapped model's batch with empty rows (any static
        # or traced number of rows), then sliced back.
        empty = self.get_initial_state(size)
        padded_ids = _pad_rows(token_ids, ops.zeros((size, self.segment_length), "int32"))
        padded_reset = _pad_rows(flags, ops.ones((size,), "bool"))
        names = self._names()
        mapping = [
            (variable, variable.value)
            for variable in self.backbone.variables
            if not memory_variable(variable, names)
        ]
        for layer, name, key in names:
            value = _pad_rows(ops.cast(state[key], "float32"), empty[key])
            mapping.append((layer._state_variables[name], value))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logits = self.backbone(
                {"token_ids": padded_ids, "reset": padded_reset}, training=training
            )
            new_state = {
                key: scope.get_current_value(layer._state_variables[name])
                for layer, name, key in names
            }
        rows = ops.shape(token_ids)[0]
        logits = logits[:rows]
        new_state = {key: ops.cast(value[:rows], "float32") for key, value in new_state.items()}
        return logits, new_state

    # -- token-by-token decoding -----------------------------------------------

    def decode_state_spec(self, batch_size=None):
        spec = self.state_spec(batch_size)
        spec["segment_tokens"] = keras.KerasTensor((batch_size, self.segment_length))
        spec["position"] = keras.KerasTensor((batch_size,))
        return spec

    def decode_state(self, state=None, batch_size=None):
        """The decoding state that continues `state` (a `step` state, at a
        segment boundary), or the empty one for `batch_size` rows."""
        if state is None:
            state = self.get_initial_state(batch_size)
        state = {key: state[key] for key in self.state_spec()}
        first = state[next(iter(state))]
        rows = ops.shape(first)[0]
        state["segment_tokens"] = ops.zeros((rows, self.segment_length), "float32")
        state["position"] = ops.zeros((rows,), "float32")
        return state

    def decode(self, token_ids, state):
        """One token per row: `token_ids` `(rows, 1)` -> `(logits (rows,
        vocabulary_size), new_state)`, equal to `step`'s logit there."""
        token_ids = ops.convert_to_tensor(token_ids)
        self._validate_inputs(token_ids, None, length=1)
        length = self.segment_length
        position = ops.cast(state["position"], "float32")
        here = ops.one_hot(ops.cast(position, "int32"), length, dtype="float32")
        segment = state["segment_tokens"] * (1.0 - here) + here * ops.cast(token_ids, "float32")
        memory_state = {key: state[key] for key in self.state_spec()}
        logits, moved_on = self.step(ops.cast(segment, "int32"), None, memory_state)
        logits = ops.sum(ops.cast(logits, "float32") * here[:, :, None], axis=1)
        full = position + 1.0 >= length
        new_state = {}
        for key, value in memory_state.items():
            rows_full = ops.reshape(full, (-1,) + (1,) * (len(value.shape) - 1))
            new_state[key] = ops.where(rows_full, moved_on[key], ops.cast(value, "float32"))
        new_state["segment_tokens"] = ops.where(full[:, None], 0.0, segment)
        new_state["position"] = ops.where(full, 0.0, position + 1.0)
        return logits, new_state


def memory_variable(variable, names):
    return any(variable is layer._state_variables[name] for layer, name, _ in names)


def _pad_rows(value, filler):
    """`value`'s rows, then `filler`'s, cut to `filler`'s (static) rows."""
    stacked = ops.concatenate([ops.cast(value, filler.dtype), filler], axis=0)
    return ops.slice(stacked, [0] * len(filler.shape), list(filler.shape))


def _check_network(backbone):
    described = f"Received: backbone of type {type(backbone).__name__}"
    if not isinstance(backbone, keras.Model) or not isinstance(
        getattr(backbone, "input", None), dict
    ):
        raise TypeError(
            "`backbone` must be a functional keras.Model whose inputs are a "
            "dict {'token_ids', 'reset'}. " + described
        )
    inputs = backbone.input
    if set(inputs) != {"token_ids", "reset"}:
        raise ValueError(
            "`backbone`'s inputs must be exactly {'token_ids', 'reset'}. "
            f"Received: inputs {sorted(inputs)}"
        )
    shape = tuple(inputs["token_ids"].shape)
    if len(shape) != 2 or None in shape:
        raise ValueError(
            "`backbone`'s `token_ids` input needs a fixed (batch_size, "
            "segment_length) shape (keras.Input((segment_length,), "
            f"batch_size=...)). Received: token_ids shape {shape}"
        )
    output = tuple(backbone.output.shape) if not isinstance(backbone.output, (list, dict)) else None
    if output is None or len(output) != 3 or output[:2] != shape or output[2] is None:
        raise ValueError(
            "`backbone` must output logits (batch_size, segment_length, "
            f"vocabulary_size). Received: output shape {output}"
        )
    if not _memory_layers(backbone):
        raise ValueError(
            "`backbone` holds no stateful memory layer (a keras_infformer "
            "MemoryLayer): it has no memory to carry. " + described
        )
