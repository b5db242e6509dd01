"""A pretrained keras-hub decoder with a continuous long-term memory per layer."""

import keras
import numpy as np
from keras import ops

from keras_infformer import memory, utils
from keras_infformer.data import text as text_utils
from keras_infformer.layers import memory_settings
from keras_infformer.layers.continuous_memory_attention import ContinuousMemoryAttention
from keras_infformer.models import stream_guards
from keras_infformer.models.streaming_causal_lm import StreamingCausalLM

_FINETUNE = ("all", "memory")


@memory_settings.keyword_settings(memory_settings.PRETRAINED_LONG_TERM_MEMORY)
class PretrainedMemoryCausalLM(StreamingCausalLM):
    """A pretrained decoder whose every layer also reads a continuous memory.

    The generic part of `InfiniteFormerGPT2CausalLM` (paper §5.2): each
    layer of a pretrained keras-hub backbone gains a
    `ContinuousMemoryAttention` over a `ContinuousLTM` of the vectors it
    saw in earlier segments; the memory's read, with the layer's own
    projected query, is added to the layer's attention output. Segments
    are independent forward passes of the pretrained network (positions
    restart at 0), the pretrained causal attention over the segment being
    the short-term part. Every weight of the backbone is used as it is
    (its layer objects are called, nothing is copied) and the memories'
    output projections start at zero, so before fine-tuning the model is
    exactly the pretrained one, segment by segment.

    How a backbone's layers are run is delegated to `wiring_cls` (see
    `keras_infformer.models.backbone_wiring`), the only part to write for a
    new decoder family. The memory is kept per batch row in non-trainable
    variables for `fit` / `evaluate` / `predict` (a static `batch_size`)
    and passed explicitly in `step` / `decode`, which `generate()` and
    `keras_infformer.export_for_serving` use.

    Args:
        backbone: the pretrained backbone (`wiring_cls.backbone_cls`).
        preprocessor: optional keras-hub causal LM preprocessor (text for
            `generate()`).
        segment_length: int. Tokens per segment, at most the backbone's
            maximum sequence length. Defaults to `min(512, max length)`.
        batch_size: int. Parallel streams of `fit` (static). Defaults to
            `1`.
        num_basis: int. Basis functions of each memory. Defaults to `512`.
        basis_widths: tuple of floats or `None`. Widths on [0, 1]; `None`
            (default) scales `relative_basis_widths` with `num_basis`.
        relative_basis_widths: tuple of floats. Widths in units of `1 / C`
            (`C = num_basis / 2` centres per width). Defaults to
            `(1.28, 2.56)`: the paper's `(0.005, 0.01)` at `num_basis=512`,
            `(0.08, 0.16)` at 32 (absolute widths fitted to one `N` are
            spikes between the centres of a smaller memory, which then
            holds no single token).
        density_mode: `"affine"` (the paper's) or `"content"` (the
            density placed by a softmax over keys of the sampled signal;
            what a small backbone needs to learn to read one token far
            back, README "One far token through GPT-2's memory").
            Defaults to `"affine"`.
        ridge_penalty: float. Defaults to `0.5`.
        tau: float. Share of [0, 1] kept for the old signal. Defaults to
            `0.5`.
        num_samples: int. Points where the old signal is read. Defaults to
            `num_basis`.
        sticky_memories: bool. Defaults to `True`.
        sticky_mode: `"quantile"` (deterministic, servable) or `"random"`
            (the paper's draw). Defaults to `"quantile"`.
        num_bins: int. Sticky histogram bins. Defaults to `128`.
        sticky_uniform_share: float in [0, 1]. Share of the flat histogram
            mixed into the sticky one. Defaults to `0.5`.
        sigma_0: float. Defaults to `0.05`.
        kl_weight: float. Defaults to `1e-6`.
        finetune: `"all"` (every weight trains) or `"memory"` (only the
            memories' weights train; the backbone is frozen). Defaults to
            `"all"`. Change it later with `set_finetune()`, then compile.
        **kwargs: passed to `keras_hub.models.CausalLM` (e.g. `name`).

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    wiring_cls = None
    LONG_TERM_SETTINGS = tuple(memory_settings.PRETRAINED_LONG_TERM_MEMORY)

    def __init__(
        self,
        backbone,
        preprocessor=None,
        segment_length=None,
        batch_size=1,
        finetune="all",
        **kwargs,
    ):
        # Everything is checked before any layer or memory exists.
        wiring = self.wiring_cls(backbone)
        if segment_length is None:
            segment_length = min(512, wiring.max_length or 512)
        segment_length = utils.check_positive_int(segment_length, "segment_length")
        if wiring.max_length is not None and segment_length > wiring.max_length:
            raise ValueError(
                "`segment_length` must be at most the backbone's maximum "
                f"sequence length ({wiring.max_length}): each segment is one "
                "forward pass of the pretrained network. Received: "
                f"segment_length={segment_length}"
            )
        batch_size = utils.check_positive_int(batch_size, "batch_size")
        if finetune not in _FINETUNE:
            raise ValueError(
                f"`finetune` must be one of {_FINETUNE}. Received: finetune={finetune!r}"
            )
        settings = memory_settings.take(kwargs, memory_settings.PRETRAINED_LONG_TERM_MEMORY)
        utils.check_model_keywords(kwargs, type(self).__name__)
        if settings["num_samples"] is None:
            settings["num_samples"] = settings["num_basis"]
        settings = memory_settings.check_long_term_memory(settings)

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.memory_layers = [
            ContinuousMemoryAttention(
                num_heads=wiring.num_heads,
                key_dim=wiring.head_dim,
                output_dim=wiring.hidden_dim,
                project_query=False,
                **settings,
                zero_output=True,
                stateful=True,
                dtype=backbone.dtype_policy,
                name=f"memory_{i}",
            )
            for i in range(wiring.num_layers)
        ]
        for layer in self.memory_layers:
            layer.build(
                (batch_size, segment_length, wiring.hidden_dim),
                (batch_size, segment_length, wiring.num_heads, wiring.head_dim),
            )
        self._wiring = wiring

        # === Functional model ===
        # keras-hub tasks are functional models; the whole segment runs in
        # one node so that the backbone's layers are called, not re-wired.
        token_ids = keras.Input(
            (segment_length,), batch_size=batch_size, dtype="int32", name="token_ids"
        )
        reset = keras.Input((), batch_size=batch_size, dtype="bool", name="reset")
        logits = _Segment(
            self._forward,
            (batch_size, segment_length, wiring.vocabulary_size),
            dtype=backbone.dtype_policy,
            name="segment",
        )(token_ids, reset)
        memory_layers = self.memory_layers
        super().__init__(inputs={"token_ids": token_ids, "reset": reset}, outputs=logits, **kwargs)
        # Tracked again now that the model is initialised: the graph holds
        # no weight (one `_Segment` node), and on PyTorch attributes set
        # before `Model.__init__` are not registered as sub-modules.
        self.backbone = backbone
        self.memory_layers = memory_layers

        # === Config ===
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.vocabulary_size = wiring.vocabulary_size
        memory_settings.assign(self, settings)
        self.set_finetune(finetune)

    @classmethod
    def from_backbone(cls, backbone, preprocessor=None, **kwargs):
        """The memory model over a built pretrained `backbone` (its weights
        used as they are). `**kwargs`: the constructor's memory settings."""
        return cls(backbone, preprocessor=preprocessor, **kwargs)

    def set_finetune(self, finetune):
        """`"all"`: every weight trains; `"memory"`: only the memories'.

        Compile again after a change (Keras fixes the trainable weights
        of a compiled step).
        """
        if finetune not in _FINETUNE:
            raise ValueError(
                f"`finetune` must be one of {_FINETUNE}. Received: finetune={finetune!r}"
            )
        self.finetune = finetune
        self.backbone.trainable = finetune == "all"

    # -- memory ------------------------------------------------------------

    @staticmethod
    def _prefix(index):
        return memory.state_name("layer", index)

    def _per_layer(self, function):
        return memory.flatten_state(
            {self._prefix(i): function(layer) for i, layer in enumerate(self.memory_layers)}
        )

    def state_spec(self, batch_size=None):
        """Flat dict `layer_{i}_{name}` of every piece of memory state."""
        return self._per_layer(lambda layer: layer.state_spec(batch_size))

    def get_initial_state(self, batch_size):
        """The empty memory of `batch_size` rows, as a flat dict."""
        return self._per_layer(lambda layer: layer.get_initial_state(batch_size))

    def get_state(self):
        """The memory held in the variables, as a flat dict (copies)."""
        return self._per_layer(lambda layer: layer.get_state())

    def set_state(self, state):
        """Write a flat state dict into the variables (all or nothing)."""
        spec = self.state_spec(self.batch_size)
        memory.check_state(state, spec, float_only=True)
        nested = self._nested(state, lambda layer: layer.state_spec())
        checked = [
            layer._checked_state(nested[self._prefix(i)], "state")
            for i, layer in enumerate(self.memory_layers)
        ]
        for layer, values in zip(self.memory_layers, checked):
            layer._assign_state(values)

    def reset_state(self):
        """Empty the memory of every layer (all rows)."""
        for layer in self.memory_layers:
            layer.reset_state()

    def _nested(self, state, spec_of, what="state"):
        structure = {
            self._prefix(i): {name: None for name in spec_of(layer)}
            for i, layer in enumerate(self.memory_layers)
        }
        return memory.unflatten_state(state, structure, what)

    # -- the network ---------------------------------------------------------

    def _forward(self, token_ids, reset, state, training):
        """Logits of one segment; the memories read (and keep) through
        their variables (`state=None`) or through `state`."""
        nested = None if state is None else self._nested(state, lambda layer: layer.state_spec())
        new_state = {}
        x = self._wiring.embed(token_ids, 0, training=training)
        for i, layer in enumerate(self.memory_layers):
            prefix = self._prefix(i)

            def read(inputs, query, layer=layer, prefix=prefix):
                if nested is None:
                    return layer(inputs, query=query, reset=reset, training=training)
                outputs, new_state[prefix] = layer(
                    inputs,
                    query=query,
                    reset=reset,
                    state=nested[prefix],
                    training=training,
                )
                return outputs

            x = self._wiring.layer(i, x, read, training=training)
        return self._wiring.logits(x), memory.flatten_state(new_state)

    def __call__(self, inputs, *args, **kwargs):
        # Our checks first: they name the argument and the model's sizes
        # (Keras' own input check would only speak of "Input 1").
        stream_guards.check_call_inputs(self, inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, training=None, mask=None):
        inputs = stream_guards.check_call_inputs(self, inputs)
        return super().call(inputs, training=training, mask=mask)

    def step(self, token_ids, reset, state, training=False):
        """Pure streaming step: `(token_ids, reset, state) -> (logits, state)`.

        Any batch size; no memory variable is read or assigned.
        """
        token_ids, reset = self._step_inputs(token_ids, reset, state)
        return self._forward(token_ids, reset, state, training)

    # -- token-by-token decoding ----------------------------------------------

    def _decode_extras(self, layer, batch_size):
        extras = {
            "cache": keras.KerasTensor(
                (batch_size,) + self._wiring.cache_shape(self.segment_length), "float32"
            ),
            "segment": keras.KerasTensor(
                (batch_size, self.segment_length, self._wiring.hidden_dim), "float32"
            ),
        }
        if layer.sticky_memories:
            extras["segment_mass"] = keras.KerasTensor((batch_size, layer.num_bins), "float32")
        return extras

    def decode_state_spec(self, batch_size=None):
        """`state_spec()` plus, per layer, the backbone's key/value cache of
        the partial segment (`cache`), that segment's memory inputs
        (`segment`) and summed sticky mass (`segment_mass`); and `position`
        `(batch_size,)`, the position of the next token in its segment."""
        spec = self._per_layer(
            lambda layer: dict(
                layer.state_spec(batch_size), **self._decode_extras(layer, batch_size)
            )
        )
        spec["position"] = keras.KerasTensor((batch_size,), dtype="float32")
        return spec

    def decode_state(self, state=None, batch_size=None):
        """The decoding state that continues `state` (a `step` state, at a
        segment boundary), or the empty one for `batch_size` rows."""
        if state is None:
            state = self.get_initial_state(batch_size)
        rows = ops.shape(next(iter(state.values())))[0]
        decode_state = dict(state)
        for name, spec in self.decode_state_spec().items():
            if name not in state:
                decode_state[name] = ops.zeros((rows,) + tuple(spec.shape[1:]), "float32")
        return decode_state

    def decode(self, token_ids, state):
        """One token per row: `token_ids` `(batch_size, 1)` -> `(logits
        (batch_size, vocabulary_size), new_state)`, equal to `step`'s.

        At position 0 each memory absorbs the previous segment (as `step`
        does at the start of a segment); after the segment's last position
        the partial segment becomes the vectors kept for the next one and
        the backbone's cache is cleared.
        """
        token_ids = ops.convert_to_tensor(token_ids)
        self._validate_inputs(token_ids, None, length=1)
        flat = {k: v for k, v in state.items() if k != "position"}
        nested = self._nested(
            flat,
            lambda layer: dict(layer.state_spec(), **self._decode_extras(layer, None)),
        )
        position = ops.cast(state["position"][0], "int32")
        x = self._wiring.embed(token_ids, position, training=False)
        new_state = {}
        for i, layer in enumerate(self.memory_layers):
            names = list(layer.state_spec())
            sticky = layer.sticky_memories

            def begin(own, layer=layer, names=names):
                begun = dict(own)
                begun.update(layer.begin_segment({k: own[k] for k in names}))
                return begun

            def advance(begun, i=i, layer=layer, sticky=sticky):
                seen = {}

                def read(inputs, query):
                    outputs, seen["mu"], seen["sigma_sq"] = layer.read(
                        begun, query, regularize=False
                    )
                    seen["inputs"] = inputs
                    return outputs

                y, cache = self._wiring.decode_layer(i, x, begun["cache"], position, read)
                layer_state = dict(begun, cache=ops.cast(cache, "float32"))
                layer_state["segment"] = ops.slice_update(
                    begun["segment"], [0, position, 0], ops.cast(seen["inputs"], "float32")
                )
                if sticky:
                    layer_state["segment_mass"] = begun["segment_mass"] + layer.bin_mass(
                        seen["mu"], seen["sigma_sq"]
                    )
                return y, layer_state

            def end(layer_state, layer=layer):
                return layer.end_segment(
                    layer_state, layer_state["segment"], layer_state.get("segment_mass")
                )

            x, new_state[self._prefix(i)] = memory.decode_position(
                position,
                self.segment_length,
                nested[self._prefix(i)],
                begin,
                advance,
                end,
                partial=("cache", "segment") + (("segment_mass",) if sticky else ()),
            )
        logits = self._wiring.logits(x)
        new_state = memory.flatten_state(new_state)
        new_state["position"] = ops.mod(state["position"] + 1.0, float(self.segment_length))
        return logits[:, 0], new_state

    # -- text (keras-hub causal LM preprocessors) ------------------------------

    def _preprocess_prompts(self, prompts, max_length):
        tokenizer = self.preprocessor.tokenizer
        start = None
        if getattr(self.preprocessor, "add_start_token", False):
            start = getattr(tokenizer, "start_token_id", None)
        rows = []
        for prompt in prompts:
            ids = np.asarray(text_utils._to_numpy(tokenizer(prompt)), "int32").reshape(-1)
            if start is not None:
                ids = np.concatenate([[start], ids]).astype("int32")
            rows.append(ids)
        longest = max(len(ids) for ids in rows)
        if max_length is None:
            max_length = longest + self.segment_length
        if longest > max_length:
            raise ValueError(
                f"`max_length` ({max_length}) must be at least the longest "
                f"prompt ({longest} tokens)."
            )
        token_ids = np.zeros((len(rows), max_length), "int32")
        padding_mask = np.zeros((len(rows), max_length), bool)
        for row, ids in enumerate(rows):
            token_ids[row, : len(ids)] = ids
            padding_mask[row, : len(ids)] = True
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    def _postprocess_tokens(self, result):
        tokenizer = self.preprocessor.tokenizer
        special = set(int(i) for i in getattr(tokenizer, "special_token_ids", []) or [])
        texts = []
        for ids, mask in zip(result["token_ids"], result["padding_mask"]):
            ids = [int(i) for i in ids[mask.astype(bool)] if int(i) not in special]
            value = text_utils._to_numpy(tokenizer.detokenize(np.asarray(ids, "int32")))
            if isinstance(value, np.ndarray):
                value = value.item() if value.ndim == 0 else value.tolist()
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            texts.append(value)
        return texts

    def _end_token_id(self):
        if self.preprocessor is None:
            return None
        return getattr(self.preprocessor.tokenizer, "end_token_id", None)

    def get_config(self):
        config = super().get_config()  # The backbone and the preprocessor.
        config.update(
            {
                "segment_length": self.segment_length,
                "batch_size": self.batch_size,
                **memory_settings.config(self, self.LONG_TERM_SETTINGS),
                "finetune": self.finetune,
            }
        )
        return config


class _Segment(keras.layers.Layer):
    """One segment through the memory model, as one functional node.

    Holds no weights of its own: `forward` (the model's) calls the
    backbone's layers and the memories, which the model itself tracks.
    """

    def __init__(self, forward, output_shape, **kwargs):
        super().__init__(**kwargs)
        self._forward_function = forward
        self._logits_shape = tuple(output_shape)
        self.built = True

    def call(self, token_ids, reset, training=None):
        if reset is not None:
            reset = ops.cast(reset, "bool")
        return self._forward_function(token_ids, reset, None, training)[0]

    def compute_output_spec(self, token_ids, reset, training=None):
        return keras.KerasTensor(self._logits_shape, dtype=self.compute_dtype)
