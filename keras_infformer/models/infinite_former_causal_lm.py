import keras
from keras import ops

from keras_infformer import utils
from keras_infformer.layers import memory_settings
from keras_infformer.models.infinite_former_backbone import InfiniteFormerBackbone
from keras_infformer.models.infinite_former_causal_lm_preprocessor import (
    InfiniteFormerCausalLMPreprocessor,
)
from keras_infformer.models.streaming_causal_lm import StreamingCausalLM


@keras.saving.register_keras_serializable(package="keras_infformer")
@memory_settings.forward_attributes(
    # The backbone's settings and parts read as the model's.
    "backbone",
    InfiniteFormerBackbone.SETTINGS + ("token_embedding", "decoder_blocks", "final_norm"),
)
class InfiniteFormerCausalLM(StreamingCausalLM):
    """An ∞-former language model: training on streams and `generate()`.

    The keras-hub task model over an `InfiniteFormerBackbone`: the
    backbone's hidden states projected to the vocabulary with the (tied)
    token embedding. Inputs `token_ids` `(batch_size, segment_length)` and
    `reset` `(batch_size,)`; output logits `(batch_size, segment_length,
    vocabulary_size)`. Train it with `fit` on a
    `keras_infformer.data.StreamingDataset` (or the preprocessor's
    `streaming_dataset()`): the memory carries each row from one batch to
    the next, so `fit` reads batches in order (`shuffle=True` is refused).

    It subclasses `keras_hub.models.CausalLM` for what carries over as is:
    `compile(sampler=...)` with any `keras_hub.samplers` sampler name or
    instance, the compiled generation function (XLA on TensorFlow and
    JAX), and the preset and serialisation conventions. Two things differ
    because a memory model reads streams, not independent padded
    sequences: `fit`/`evaluate`/`predict` take stream batches as they are
    (no per-sample preprocessing, which would break the row layout), and
    `generate()` reads a prompt of any length segment by segment into the
    memories, then decodes one token at a time, and can start from or
    return the memory state (`state=`, `return_state=True`). Every logit
    it computes equals the logit teacher-forced streaming of the same
    tokens gives. Beam and contrastive samplers, which re-run several
    hypotheses, are refused.

    Args:
        backbone: a `keras_infformer.models.InfiniteFormerBackbone`.
        preprocessor: optional `InfiniteFormerCausalLMPreprocessor` (text in
            `generate()`, strings out).
        **kwargs: passed to `keras_hub.models.CausalLM` (e.g. `name`).

    Examples:

    ```python
    import keras_infformer

    preprocessor = keras_infformer.models.InfiniteFormerCausalLMPreprocessor()
    backbone = keras_infformer.models.InfiniteFormerBackbone(
        vocabulary_size=256, segment_length=32, batch_size=2, num_layers=2,
        hidden_dim=32, num_heads=2, num_basis=32, num_samples=32,
    )
    model = keras_infformer.models.InfiniteFormerCausalLM(backbone, preprocessor)
    stream = preprocessor.streaming_dataset(
        ["Some text. " * 50, "Other text. " * 40], batch_size=2, segment_length=32
    )
    model.fit(stream, epochs=1)
    model.compile(sampler="greedy")
    model.generate(["Some"], max_length=40)
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    backbone_cls = InfiniteFormerBackbone
    preprocessor_cls = InfiniteFormerCausalLMPreprocessor

    def __init__(self, backbone, preprocessor=None, **kwargs):
        if not isinstance(backbone, InfiniteFormerBackbone):
            raise TypeError(
                "`backbone` must be a keras_infformer.models.InfiniteFormerBackbone. "
                f"Received: backbone of type {type(backbone).__name__}"
            )
        utils.check_model_keywords(kwargs, type(self).__name__)
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)
        outputs = backbone.token_embedding(hidden_states, reverse=True)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

    # -- memory ------------------------------------------------------------

    def reset_state(self):
        """Empty the memory of every block (all rows)."""
        self.backbone.reset_state()

    def state_spec(self, batch_size=None):
        """Flat dict `layer_{i}_{name}` of every piece of memory state."""
        return self.backbone.state_spec(batch_size)

    def get_initial_state(self, batch_size):
        """The empty memory of `batch_size` rows, as a flat dict."""
        return self.backbone.get_initial_state(batch_size)

    def get_state(self):
        """The memory held in the variables, as a flat dict (copies)."""
        return self.backbone.get_state()

    def set_state(self, state):
        """Write a flat state dict into the variables (all or nothing)."""
        self.backbone.set_state(state)

    def step(self, token_ids, reset, state, training=False, return_density=False):
        """Pure streaming step: `(token_ids, reset, state) -> (logits, state)`.

        Any batch size; no variable is read for memory or assigned. `reset`
        holds bools (or 0/1) per row. With `return_density=True` a third
        output lists, per block, the LTM attention's `(mu, sigma_sq)`.
        """
        token_ids, reset = self._step_inputs(token_ids, reset, state)
        outputs = self.backbone.step(
            token_ids, reset, state, training=training, return_density=return_density
        )
        logits = self.backbone.token_embedding(outputs[0], reverse=True)
        return (logits,) + tuple(outputs[1:])

    def decode_state_spec(self, batch_size=None):
        """The state of token-by-token decoding (see `decode`)."""
        return self.backbone.decode_state_spec(batch_size)

    def decode_state(self, state=None, batch_size=None):
        """The decoding state that continues `state` (a `step` state), or
        the empty one for `batch_size` rows."""
        if state is None:
            state = self.get_initial_state(batch_size)
        return self.backbone.decode_state(state)

    def decode(self, token_ids, state):
        """One token per row: `token_ids` `(batch_size, 1)` -> `(logits
        (batch_size, vocabulary_size), new_state)`, equal to `step`'s."""
        token_ids = ops.convert_to_tensor(token_ids)
        self._validate_inputs(token_ids, None, length=1)
        hidden, state = self.backbone.decode(token_ids, state)
        logits = self.backbone.token_embedding(hidden, reverse=True)
        return logits[:, 0], state
