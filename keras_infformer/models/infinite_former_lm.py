import keras
from keras import ops

from keras_infformer import distribution
from keras_infformer import memory
from keras_infformer import utils
from keras_infformer.layers.infinite_former_decoder import InfiniteFormerDecoder
from keras_infformer.models import stream_guards


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerLM(keras.Model):
    """A causal language model of stacked ∞-former decoder blocks.

    A functional `keras.Model` with a fixed batch size and segment length,
    made to read arbitrarily long streams segment by segment: inputs
    `token_ids` `(batch_size, segment_length)` int32 and `reset`
    `(batch_size,)` bool (rows that start a new document); output logits
    `(batch_size, segment_length, vocabulary_size)`. Each block keeps its
    short- and long-term memory in variables between calls, so `model.fit`
    on a `keras_infformer.data.StreamingDataset` (with `shuffle=False`)
    trains on the stream in order. `reset_state()` empties all memory.

    `step(token_ids, reset, state)` is the same model as a pure function of
    an explicit state (any batch size, no variable touched), used for
    serving; `get_initial_state(batch_size)` makes the empty state.

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
        sticky_memories, sticky_mode, num_bins, sigma_0, kl_weight: the
            long-term memory's settings, see `InfiniteFormerDecoder`.
        compressed_memory_length, compression_rate, reconstruction_weight: a
            Compressive Transformer memory (0 slots by default, i.e. none)
            and the weight of its attention-reconstruction loss; with
            `use_long_term_memory=False` this is that baseline.
        dropout: float. Dropout rate. Defaults to `0.1`.
        normalize_first: bool. Pre-norm blocks. Defaults to `True`.
        tie_weights: bool. Share the input embedding with the output
            projection. Defaults to `True`.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    model = keras_infformer.models.InfiniteFormerLM(
        vocabulary_size=100, segment_length=16, batch_size=2,
        num_layers=2, hidden_dim=32, num_heads=2, num_basis=32, num_samples=32,
    )
    tokens = np.random.randint(0, 100, (2, 16)).astype("int32")
    logits = model({"token_ids": tokens, "reset": np.array([True, True])})
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

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
        num_basis=512,
        basis_widths=(0.01, 0.05),
        ridge_penalty=1.0,
        tau=0.75,
        num_samples=512,
        sticky_memories=False,
        sticky_mode="quantile",
        num_bins=128,
        sigma_0=0.05,
        kl_weight=1e-6,
        compressed_memory_length=0,
        compression_rate=4,
        reconstruction_weight=1.0,
        dropout=0.1,
        normalize_first=True,
        tie_weights=True,
        dtype=None,
        **kwargs,
    ):
        vocabulary_size = utils.check_positive_int(vocabulary_size, "vocabulary_size")
        segment_length = utils.check_positive_int(segment_length, "segment_length")
        batch_size = utils.check_positive_int(batch_size, "batch_size")
        num_layers = utils.check_positive_int(num_layers, "num_layers")
        hidden_dim = utils.check_positive_int(hidden_dim, "hidden_dim")
        intermediate_dim = intermediate_dim or 4 * hidden_dim
        memory_length = memory_length or segment_length
        # Resolved now (None: the global policy), and set on the model below:
        # a functional model ignores `dtype=`, and the saved config must
        # bring back this policy whatever the global one is at load time.
        dtype = keras.dtype_policies.get(dtype)

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
                use_long_term_memory=use_long_term_memory,
                num_basis=num_basis,
                basis_widths=basis_widths,
                ridge_penalty=ridge_penalty,
                tau=tau,
                num_samples=num_samples,
                sticky_memories=sticky_memories,
                sticky_mode=sticky_mode,
                num_bins=num_bins,
                sigma_0=sigma_0,
                kl_weight=kl_weight,
                compressed_memory_length=compressed_memory_length,
                compression_rate=compression_rate,
                reconstruction_weight=reconstruction_weight,
                dropout=dropout,
                normalize_first=normalize_first,
                dtype=dtype,
                name=f"decoder_layer_{i}",
            )
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=dtype, name="final_norm"
        )

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
        logits = token_embedding(x, reverse=True)
        super().__init__(
            inputs={"token_ids": token_ids, "reset": reset},
            outputs=logits,
            dtype=dtype,
            **kwargs,
        )
        self.dtype_policy = dtype

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.segment_length = segment_length
        self.batch_size = batch_size
        self.num_layers = num_layers
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.memory_length = memory_length
        self.use_long_term_memory = use_long_term_memory
        self.num_basis = num_basis
        self.basis_widths = tuple(basis_widths)
        self.ridge_penalty = ridge_penalty
        self.tau = tau
        self.num_samples = num_samples
        self.sticky_memories = sticky_memories
        self.sticky_mode = sticky_mode
        self.num_bins = num_bins
        self.sigma_0 = sigma_0
        self.kl_weight = kl_weight
        self.compressed_memory_length = compressed_memory_length
        self.compression_rate = compression_rate
        self.reconstruction_weight = reconstruction_weight
        self.dropout = dropout
        self.normalize_first = normalize_first
        self.tie_weights = tie_weights
        self.token_embedding = token_embedding
        self.decoder_blocks = blocks
        self.final_norm = final_norm

    # -- validation ----------------------------------------------------------

    def _validate_inputs(self, token_ids, reset, batch_size=None):
        stream_guards.validate_inputs(self, token_ids, reset, batch_size)

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        # The memory carries each row from one batch to the next, so the
        # batches must come in order: Keras' default `shuffle=True` would
        # reorder them (a PyDataset's too). Default to False, refuse True.
        shuffle = args[5] if len(args) > 5 else kwargs.get("shuffle", False)
        if shuffle:
            raise ValueError(
                "InfiniteFormerLM keeps one memory per batch row and must read "
                "the batches of a stream in order; shuffling would mix "
                f"unrelated segments into the memory. Received: shuffle={shuffle!r}"
            )
        if len(args) <= 5:
            kwargs["shuffle"] = False
        # Every batch is checked on the host before its step (stream_guards).
        x, batch_size, args, kwargs = stream_guards.check_fit_arguments(
            self, x, batch_size, args, kwargs
        )
        with stream_guards.refusals_as_errors():
            return super().fit(x, y, batch_size, *args, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, *args, **kwargs):
        if not kwargs.get("_use_cached_eval_dataset"):  # (Else fit's, checked.)
            x, batch_size = stream_guards.check_data(self, x, batch_size)
        with stream_guards.refusals_as_errors():
            return super().evaluate(x, y, batch_size, *args, **kwargs)

    def predict(self, x, batch_size=None, *args, **kwargs):
        x, batch_size = stream_guards.check_data(self, x, batch_size)
        with stream_guards.refusals_as_errors():
            return super().predict(x, batch_size, *args, **kwargs)

    def train_on_batch(self, x, *args, **kwargs):
        stream_guards.check_batch(self, x)
        return super().train_on_batch(x, *args, **kwargs)

    def test_on_batch(self, x, *args, **kwargs):
        stream_guards.check_batch(self, x)
        return super().test_on_batch(x, *args, **kwargs)

    def predict_on_batch(self, x):
        stream_guards.check_batch(self, x)
        return super().predict_on_batch(x)

    # JAX: a step that raises puts the variables back (stream_guards).
    def make_train_function(self, force=False):
        super().make_train_function(force)
        stream_guards.guard_step_function(self, "train_function")
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        stream_guards.guard_step_function(self, "test_function")
        return self.test_function

    def make_predict_function(self, force=False):
        super().make_predict_function(force)
        stream_guards.guard_step_function(self, "predict_function")
        return self.predict_function

    def call(self, inputs, training=None, mask=None):
        inputs = stream_guards.check_call_inputs(self, inputs)
        return super().call(inputs, training=training, mask=mask)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # TensorFlow trainer with a tf.distribute strategy only: Keras would
        # average the first batch over the replicas to build symbolically,
        # which fails on the bool `reset`; replica 0's part builds the same.
        if iterator is not None and data_batch is None:
            data_batch = distribution.first_replica_batch(self, iterator)
            if data_batch is not None:
                iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    # -- memory ------------------------------------------------------------

    def reset_state(self):
        """Empty the memory of every block (all rows)."""
        memory.reset_memory(self)

    def _block_prefixes(self):
        """`[(block, prefix)]`: block `i`'s state is named `layer_{i}_...`."""
        return [
            (block, memory.state_name("layer", i))
            for i, block in enumerate(self.decoder_blocks)
        ]

    def _nested_state_spec(self, batch_size=None):
        return {
            prefix: block.state_spec(batch_size)
            for block, prefix in self._block_prefixes()
        }

    def state_spec(self, batch_size=None):
        """Flat dict `layer_{i}_{name}` of every piece of memory state."""
        return memory.flatten_state(self._nested_state_spec(batch_size))

    def get_initial_state(self, batch_size):
        """The empty memory of every block, as a flat dict."""
        return memory.flatten_state(
            {
                prefix: block.get_initial_state(batch_size)
                for block, prefix in self._block_prefixes()
            }
        )

    def set_state(self, state):
        """Write a flat state dict (as from `step`) into the variables.

        Every block's part is checked first (keys, shapes, finite values);
        then all is written, or nothing when a check fails.
        """
        memory.check_state(state, self.state_spec(self.batch_size))  # Flat names.
        nested = memory.unflatten_state(state, self._nested_state_spec())
        checked = {
            prefix: block._checked_state(nested[prefix], f"state['{prefix}_...']")
            for block, prefix in self._block_prefixes()
        }
        for block, prefix in self._block_prefixes():
            block._assign_state(checked[prefix])

    def get_state(self):
        """The memory held in the variables, as a flat dict (copies)."""
        return memory.flatten_state(
            {prefix: block.get_state() for block, prefix in self._block_prefixes()}
        )

    def step(self, token_ids, reset, state, training=False, return_density=False):
        """Pure streaming step: `(token_ids, reset, state) -> (logits, state)`.

        Any batch size; no variable is read for memory or assigned. `reset`
        holds bools (or 0/1) per row. With `return_density=True` a third
        output lists, per block, the LTM attention's `(mu, sigma_sq)` (`None`
        for blocks without an LTM).
        """
        token_ids = ops.convert_to_tensor(token_ids)
        self._validate_inputs(token_ids, reset)
        token_ids = stream_guards.clip_traced_token_ids(token_ids, self.vocabulary_size)
        batch_size = token_ids.shape[0]
        memory.check_state(state, self.state_spec(batch_size), "state", reset)
        if reset is not None:
            reset = ops.cast(reset, "bool")  # Once, for every block.
        nested = memory.unflatten_state(state, self._nested_state_spec())
        x = self.token_embedding(token_ids)
        new_state = {}
        densities = []
        for block, prefix in self._block_prefixes():
            with_density = return_density and block.use_long_term_memory
            outputs, new_state[prefix] = block(
                x, reset=reset, state=nested[prefix], training=training,
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
        logits = self.token_embedding(x, reverse=True)
        new_state = memory.flatten_state(new_state)
        if return_density:
            return logits, new_state, densities
        return logits, new_state

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "segment_length": self.segment_length,
            "batch_size": self.batch_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "memory_length": self.memory_length,
            "use_long_term_memory": self.use_long_term_memory,
            "num_basis": self.num_basis,
            "basis_widths": self.basis_widths,
            "ridge_penalty": self.ridge_penalty,
            "tau": self.tau,
            "num_samples": self.num_samples,
            "sticky_memories": self.sticky_memories,
            "sticky_mode": self.sticky_mode,
            "num_bins": self.num_bins,
            "sigma_0": self.sigma_0,
            "kl_weight": self.kl_weight,
            "compressed_memory_length": self.compressed_memory_length,
            "compression_rate": self.compression_rate,
            "reconstruction_weight": self.reconstruction_weight,
            "dropout": self.dropout,
            "normalize_first": self.normalize_first,
            "tie_weights": self.tie_weights,
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
