import keras
import keras_hub
from keras import ops

from keras_infformer import basis, memory, utils
from keras_infformer.layers import memory_settings
from keras_infformer.layers.infinite_former_decoder import InfiniteFormerDecoder


@keras.saving.register_keras_serializable(package="keras_infformer")
@memory_settings.keyword_settings(
    memory_settings.LONG_TERM_MEMORY, memory_settings.COMPRESSIVE_MEMORY
)
class InfiniteFormerBackbone(keras_hub.models.Backbone):
    """The ∞-former decoder stack: token ids and resets to hidden states.

    A `keras_hub.models.Backbone` (a functional model) of a token embedding,
    `num_layers` `InfiniteFormerDecoder` blocks and a final layer norm. It
    reads a stream segment by segment: inputs `token_ids` `(batch_size,
    segment_length)` int32 and `reset` `(batch_size,)` bool (rows that start
    a new document), output hidden states `(batch_size, segment_length,
    hidden_dim)`. Each block keeps its short- and long-term memory in
    variables between calls (one memory per batch row, so the batch size
    is fixed, like a stateful Keras RNN).

    Three pure (explicit-state) paths compute the same model without
    touching a variable, at any batch size:
    `step(token_ids, reset, state)` a segment at a time,
    `decode(token_ids, state)` a token at a time (generation), with
    `get_initial_state(batch_size)` and `decode_state(state)` to start
    them. A token decoded at position `i` of a segment gets exactly the
    hidden state teacher-forced streaming gives it (same segment
    boundaries, same memory updates).

    Args:
        vocabulary_size: int. Size of the token vocabulary.
        segment_length: int. Tokens per segment (per call).
        batch_size: int. Number of parallel streams (static).
        num_layers: int. Number of decoder blocks. Defaults to `3`.
        hidden_dim: int. Model width. Defaults to `300`.
        num_heads: int. Attention heads. Defaults to `6`.
        intermediate_dim: int. Feed-forward width. Defaults to
            `4 * hidden_dim`.
        memory_length: int. Short-term memory length. Defaults to
            `segment_length`.
        use_long_term_memory: bool. `False` gives the Transformer-XL
            baseline. Defaults to `True`.
        num_basis, basis_widths, ridge_penalty, tau, num_samples,
        sticky_memories, sticky_mode, num_bins, sticky_uniform_share,
        sigma_0, kl_weight,
        zero_memory_output: the long-term memory's settings, see
            `InfiniteFormerDecoder`.
        compressed_memory_length, compression_rate, reconstruction_weight: a
            Compressive Transformer memory (0 slots by default: none).
        dropout: float. Dropout rate. Defaults to `0.1`.
        normalize_first: bool. Pre-norm blocks. Defaults to `True`.
        tie_weights: bool. Share the input embedding with the output
            projection of a task model. Defaults to `True`.
        dtype: the dtype policy of the model.
        **kwargs: passed to `keras_hub.models.Backbone` (e.g. `name`).

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    backbone = keras_infformer.models.InfiniteFormerBackbone(
        vocabulary_size=256, segment_length=16, batch_size=2,
        num_layers=2, hidden_dim=32, num_heads=2, num_basis=32, num_samples=32,
    )
    hidden = backbone({
        "token_ids": np.random.randint(0, 256, (2, 16)).astype("int32"),
        "reset": np.array([True, True]),
    })  # (2, 16, 32)
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    # The settings passed on to every block as they are.
    BLOCK_SETTINGS = (
        ("use_long_term_memory",)
        + tuple(memory_settings.LONG_TERM_MEMORY)
        + ("zero_memory_output",)
        + tuple(memory_settings.COMPRESSIVE_MEMORY)
        + ("dropout", "normalize_first")
    )
    # Every setting of the config, in order (also properties of the task
    # models over this backbone).
    SETTINGS = (
        (
            "vocabulary_size",
            "segment_length",
            "batch_size",
            "num_layers",
            "hidden_dim",
            "num_heads",
            "intermediate_dim",
            "memory_length",
        )
        + BLOCK_SETTINGS
        + ("tie_weights",)
    )

    def __init__(
        self,
        vocabulary_size,
        segment_length,
        batch_size,
        num_layers=3,
        hidden_dim=300,
        num_heads=6,
        intermediate_dim=None,
        memory_length=None,
        use_long_term_memory=True,
        zero_memory_output=True,
        dropout=0.1,
        normalize_first=True,
        tie_weights=True,
        dtype=None,
        **kwargs,
    ):
        memory = memory_settings.take(kwargs, memory_settings.LONG_TERM_MEMORY)
        memory.update(memory_settings.take(kwargs, memory_settings.COMPRESSIVE_MEMORY))
        # Resolved here so that `basis_widths` and the config say the widths used.
        memory["relative_basis_widths"] = basis.check_widths(
            memory["relative_basis_widths"], "relative_basis_widths"
        )
        memory["basis_widths"] = basis.resolve_basis_widths(
            memory["num_basis"], memory["basis_widths"], memory["relative_basis_widths"]
        )
        utils.check_model_keywords(kwargs, type(self).__name__, ("name", "trainable"))
        vocabulary_size = utils.check_positive_int(vocabulary_size, "vocabulary_size")
        segment_length = utils.check_positive_int(segment_length, "segment_length")
        batch_size = utils.check_positive_int(batch_size, "batch_size")
        num_layers = utils.check_positive_int(num_layers, "num_layers")
        hidden_dim = utils.check_positive_int(hidden_dim, "hidden_dim")
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        memory_length = memory_length or segment_length
        settings = memory_settings.collect(dict(locals(), **memory), self.SETTINGS)

        # === Layers ===
        token_embedding = keras.layers.ReversibleEmbedding(
            vocabulary_size,
            hidden_dim,
            tie_weights=tie_weights,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
            dtype=dtype,
            name="token_embedding",
        )
        blocks = [
            InfiniteFormerDecoder(
                intermediate_dim=intermediate_dim,
                num_heads=num_heads,
                memory_length=memory_length,
                **memory_settings.collect(settings, self.BLOCK_SETTINGS),
                dtype=dtype,
                name=f"decoder_layer_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="final_norm")

        # === Functional model ===
        token_ids = keras.Input(
            (segment_length,), batch_size=batch_size, dtype="int32", name="token_ids"
        )
        reset = keras.Input((), batch_size=batch_size, dtype="bool", name="reset")
        x = token_embedding(token_ids)
        for block in blocks:
            x = block(x, reset=reset)
        if normalize_first:
            x = final_norm(x)
        super().__init__(
            inputs={"token_ids": token_ids, "reset": reset},
            outputs=x,
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        memory_settings.assign(self, settings)
        self.token_embedding = token_embedding
        self.decoder_blocks = blocks
        self.final_norm = final_norm

    # -- memory ------------------------------------------------------------

    @staticmethod
    def _prefix(index):
        return memory.state_name("layer", index)

    def state_spec(self, batch_size=None):
        """Flat dict `layer_{i}_{name}` of every piece of memory state."""
        return memory.flatten_state(
            {
                self._prefix(i): block.state_spec(batch_size)
                for i, block in enumerate(self.decoder_blocks)
            }
        )

    def get_initial_state(self, batch_size):
        """The empty memory of `batch_size` rows, as a flat dict."""
        return memory.flatten_state(
            {
                self._prefix(i): block.get_initial_state(batch_size)
                for i, block in enumerate(self.decoder_blocks)
            }
        )

    def get_state(self):
        """The memory held in the variables, as a flat dict (copies)."""
        return memory.flatten_state(
            {self._prefix(i): block.get_state() for i, block in enumerate(self.decoder_blocks)}
        )

    def set_state(self, state):
        """Write a flat state dict into the variables (all or nothing)."""
        spec = self.state_spec(self.batch_size)
        memory.check_state(state, spec, float_only=True)  # Errors name the flat keys.
        nested = self._nested(state, spec)
        checked = [
            block._checked_state(nested[self._prefix(i)], "state")
            for i, block in enumerate(self.decoder_blocks)
        ]
        for block, values in zip(self.decoder_blocks, checked):
            block._assign_state(values)

    def reset_state(self):
        """Empty the memory of every block (all rows)."""
        memory.reset_memory(self)

    def _nested(self, state, spec, what="state"):
        structure = {
            self._prefix(i): {name: None for name in block.state_spec()}
            for i, block in enumerate(self.decoder_blocks)
        }
        memory.check_state_keys(state, spec, what)
        return memory.unflatten_state(state, structure, what)

    # -- pure paths --------------------------------------------------------

    def step(self, token_ids, reset, state, training=False, return_density=False):
        """One segment as a pure function: `(hidden, new_state)`.

        Any batch size; no memory variable is read or assigned. With
        `return_density=True` a third output lists, per block, the LTM
        attention's `(mu, sigma_sq)` (`None` for blocks without an LTM).
        """
        nested = self._nested(state, self.state_spec())
        x = self.token_embedding(token_ids)
        new_state, densities = {}, []
        for i, block in enumerate(self.decoder_blocks):
            with_density = return_density and block.use_long_term_memory
            outputs, new_state[self._prefix(i)] = block(
                x,
                reset=reset,
                state=nested[self._prefix(i)],
                training=training,
                return_density=with_density,
            )
            if with_density:
                x, mu, sigma_sq = outputs
                densities.append((mu, sigma_sq))
            else:
                x = outputs
                densities.append(None)
        if self.normalize_first:
            x = self.final_norm(x)
        new_state = memory.flatten_state(new_state)
        if return_density:
            return x, new_state, densities
        return x, new_state

    def decode_state_spec(self, batch_size=None):
        """`state_spec()` plus, per block, the partial segment (and its
        summed sticky mass), and `position` `(batch_size,)`: the position
        in the segment of the next token (float32, equal in every row)."""
        spec = memory.flatten_state(
            {
                self._prefix(i): block.decode_state_spec(batch_size)
                for i, block in enumerate(self.decoder_blocks)
            }
        )
        spec["position"] = keras.KerasTensor((batch_size,), dtype="float32")
        return spec

    def decode_state(self, state):
        """The `decode` state that continues a `step` state (a segment
        boundary: position 0, empty partial segment)."""
        nested = self._nested(state, self.state_spec())
        decode_state = memory.flatten_state(
            {
                self._prefix(i): block.decode_state(nested[self._prefix(i)])
                for i, block in enumerate(self.decoder_blocks)
            }
        )
        first = next(iter(state.values()))
        decode_state["position"] = ops.zeros((ops.shape(first)[0],), "float32")
        return decode_state

    def decode(self, token_ids, state):
        """One token per row: `token_ids` `(batch_size, 1)` ->
        `(hidden (batch_size, 1, hidden_dim), new_state)`.

        Equal to `step` over whole segments: at position 0 the memories
        take what leaves the short-term window, after the segment's last
        position the window moves on.
        """
        structure = {
            self._prefix(i): {name: None for name in block.decode_state_spec()}
            for i, block in enumerate(self.decoder_blocks)
        }
        flat = {k: v for k, v in state.items() if k != "position"}
        nested = memory.unflatten_state(flat, structure, "state")
        position = ops.cast(state["position"][0], "int32")
        x = self.token_embedding(token_ids)
        new_state = {}
        for i, block in enumerate(self.decoder_blocks):
            x, new_state[self._prefix(i)] = block.decode(x, nested[self._prefix(i)], position)
        if self.normalize_first:
            x = self.final_norm(x)
        new_state = memory.flatten_state(new_state)
        following = ops.mod(state["position"] + 1.0, float(self.segment_length))
        new_state["position"] = following
        return x, new_state

    def get_config(self):
        config = super().get_config()
        config.update(memory_settings.config(self, self.SETTINGS))
        return config
