import keras
import keras_hub
from keras import ops

from keras_infformer import memory, utils
from keras_infformer.layers import memory_settings
from keras_infformer.layers.compressive_memory import CompressiveMemory
from keras_infformer.layers.long_term_memory import VIEW_NAMES, LongTermMemory


@keras.saving.register_keras_serializable(package="keras_infformer")
@memory_settings.keyword_settings(
    memory_settings.LONG_TERM_MEMORY, memory_settings.COMPRESSIVE_MEMORY
)
class InfiniteFormerDecoder(memory.MemoryLayer):
    """∞-former decoder block: short-term cache plus continuous long-term memory.

    Each call takes a segment of `L` hidden vectors. The block keeps a
    Transformer-XL style short-term memory (STM): a cache of the last
    `memory_length` layer inputs (no gradient). A segment attends causally
    over `[STM; segment]` (rotary positions relative to the window, so
    positions stay exact for streams of any length) and, with the same
    queries, over the continuous long-term memory (`GaussianAttention` over
    a `ContinuousLTM`). The two attention outputs are summed, followed by
    dropout, the residual, and a feed-forward sub-block. Then the STM moves
    on: the `L` oldest cached vectors leave it and are absorbed into the
    LTM. So the LTM holds exactly what is older than the STM window: no
    token sees its own segment or the future through it, and no vector is
    read through both memories.

    The long-term attention's output projection starts at zero
    (`zero_memory_output=True`): a fresh block computes exactly what its
    Transformer-XL of the same seed computes, and training decides how much
    to read from the memory.

    With `sticky_memories=True` the old signal is read where the previous
    LTM attention pass of this block went (`StickyMemorySampler`), and the
    density of that pass is kept in state. With `use_long_term_memory=False`
    the same code is the plain Transformer-XL block (the baseline).

    Memory lives in non-trainable variables when `stateful=True` (static
    batch size, like a stateful Keras RNN). Passing `state=` instead runs the
    explicit-state path, `(inputs, state) -> (outputs, new_state)`, which
    touches no variable and accepts any batch size (used for serving). The
    block is a `keras_infformer.MemoryLayer`; its LTM and compressed memory
    are MemoryLayers too, used through their pure `step`.

    Args:
        intermediate_dim: int. Hidden size of the feed-forward network.
        num_heads: int. Number of attention heads (STM and LTM).
        memory_length: int. Length of the short-term memory. Must be at least
            the segment length when the long-term memory is used.
        use_long_term_memory: bool. Add the continuous LTM. Defaults to
            `True`.
        num_basis: int. Basis functions of the LTM. Defaults to `512`.
        basis_widths: tuple of floats or `None`. Basis widths on [0, 1].
            `None` (default) scales `relative_basis_widths` with `num_basis`.
        relative_basis_widths: tuple of floats. The widths in units of
            `1 / C`, `C = num_basis / len(relative_basis_widths)` centres per
            width, used when `basis_widths` is `None`. Defaults to
            `(2.56, 12.8)`: the paper's `(0.01, 0.05)` at `num_basis=512`,
            `(0.16, 0.8)` at 32.
        density_mode: str. How a query places its Gaussian over the LTM:
            `"affine"` (the paper's: `μ`, `σ²` from fixed linear
            combinations of the scores) or `"content"` (the mean and
            variance of a softmax over keys of the signal sampled at
            `num_basis` points, which finds one token far back; see
            `GaussianAttention`). Defaults to `"affine"`.
        ridge_penalty: float. Ridge penalty of the LTM fit. Defaults to `1.0`.
        tau: float. Share of [0, 1] kept for the old signal. Defaults to
            `0.75`.
        num_samples: int. Points at which the old signal is read. Defaults to
            `512`.
        sticky_memories: bool. Read the old signal where attention went.
            Defaults to `False`.
        sticky_mode: `"quantile"` (deterministic) or `"random"` (paper).
            Defaults to `"quantile"`.
        num_bins: int. Histogram bins of the sticky memories. Defaults to
            `128`.
        sticky_uniform_share: float in [0, 1]. Share of the flat histogram
            mixed into the sticky one (`StickyMemorySampler.uniform_share`):
            every region of the memory keeps at least this share of its
            uniform room. `0` is the paper's sampler. Defaults to `0.5`.
        sigma_0: float. Reference deviation of the KL regulariser. Defaults
            to `0.05`.
        kl_weight: float. Weight of the KL regulariser. Defaults to `1e-6`.
        zero_memory_output: bool. Start the long-term attention's output
            projection at zero: at initialisation the block is exactly its
            Transformer-XL (`use_long_term_memory=False`, same seed), and
            the gradient decides how much to read. `False` draws it like the
            other projections (the paper's initialisation), which adds a
            near-uniform average of the past to every position from the
            first step. Defaults to `True`.
        compressed_memory_length: int. Slots of a Compressive Transformer
            memory (`CompressiveMemory`) fed by what leaves the STM and
            attended jointly with it; `0` (default) disables it. With
            `use_long_term_memory=False` this is the Compressive Transformer
            baseline.
        compression_rate: int. Its compression rate. Defaults to `4`.
        reconstruction_weight: float. Weight of the Compressive
            Transformer's attention-reconstruction loss (Rae et al., 2019),
            added with `add_loss` in training: the content attention of the
            segment's queries over the block that leaves the STM, versus over
            its compression. Its gradient reaches the compression only (the
            block, queries and projections are held fixed). `0` disables it.
            Defaults to `1.0`; unused without a compressed memory.
        dropout: float. Dropout rate. Defaults to `0.1`.
        activation: activation of the feed-forward network. Defaults to
            `"relu"`.
        layer_norm_epsilon: float. Defaults to `1e-5`.
        normalize_first: bool. Pre-norm (`True`) or post-norm (`False`).
            Defaults to `True`.
        rotary_max_wavelength: int. Maximum wavelength of the rotary
            positions. Defaults to `10000`.
        kernel_initializer: initializer of the dense kernels. Defaults to
            `"glorot_uniform"`.
        stateful: bool. Keep the memory in variables. Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: tensor of shape `(batch_size, L, hidden_dim)`.
        reset: optional tensor of shape `(batch_size,)`, bools or 0/1: rows
            that start a new document. Each memory of the block (STM, LTM,
            compressed memory, sticky density) starts them from empty.
        state: optional dict from `get_initial_state()`; selects the
            explicit-state path.
        training: bool, for dropout.
        return_density: bool. Also return the LTM attention's `(mu,
            sigma_sq)`, each `(batch_size, num_heads, L)` (for pictures).

    Returns:
        Tensor `(batch_size, L, hidden_dim)`, or `(outputs, mu, sigma_sq)`
        with `return_density`; with `state`, that and the new state:
        `(outputs, new_state)`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    block = keras_infformer.layers.InfiniteFormerDecoder(
        intermediate_dim=64, num_heads=2, memory_length=16,
        num_basis=32, num_samples=32,
    )
    for _ in range(5):  # A stream of five segments of 16 vectors.
        outputs = block(np.random.rand(2, 16, 32).astype("float32"))
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
     - [Dai et al., 2019](https://arxiv.org/abs/1901.02860)
    """

    LONG_TERM_SETTINGS = tuple(memory_settings.LONG_TERM_MEMORY)
    # Every setting of the config, in order (`activation` and
    # `kernel_initializer` serialised).
    SETTINGS = (
        ("intermediate_dim", "num_heads", "memory_length", "use_long_term_memory")
        + LONG_TERM_SETTINGS
        + ("zero_memory_output",)
        + tuple(memory_settings.COMPRESSIVE_MEMORY)
        + (
            "dropout",
            "activation",
            "layer_norm_epsilon",
            "normalize_first",
            "rotary_max_wavelength",
            "kernel_initializer",
        )
    )

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        memory_length,
        use_long_term_memory=True,
        zero_memory_output=True,
        dropout=0.1,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=True,
        rotary_max_wavelength=10000,
        kernel_initializer="glorot_uniform",
        stateful=True,
        **kwargs,
    ):
        long_term = memory_settings.take(kwargs, memory_settings.LONG_TERM_MEMORY)
        compressive = memory_settings.take(kwargs, memory_settings.COMPRESSIVE_MEMORY)
        super().__init__(stateful=stateful, **kwargs)
        self.intermediate_dim = utils.check_positive_int(intermediate_dim, "intermediate_dim")
        self.num_heads = utils.check_positive_int(num_heads, "num_heads")
        self.memory_length = utils.check_positive_int(memory_length, "memory_length")
        self.use_long_term_memory = bool(use_long_term_memory)
        # The memories inside the block are made in build(); their settings
        # are checked now, so that bad ones fail at construction.
        if self.use_long_term_memory:
            long_term = memory_settings.check_long_term_memory(long_term)
        else:  # Unused, kept for the config (tuples, as JSON gives back).
            for name in ("basis_widths", "relative_basis_widths"):
                if long_term[name] is not None:
                    long_term[name] = tuple(float(w) for w in long_term[name])
        memory_settings.assign(self, long_term)
        self.zero_memory_output = bool(zero_memory_output)
        memory_settings.assign(
            self,
            memory_settings.check_compressive_memory(compressive),
        )
        self.dropout = utils.check_range(dropout, "dropout", 0.0, 1.0, low_open=False)
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = bool(normalize_first)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # One draw per block, whatever its memories: every sublayer's seed
        # follows from it and the sublayer's name, so blocks of different
        # kinds built from the same seed share the weights they have in
        # common (an ∞-former and its Transformer-XL start equal).
        self._seed = utils.draw_seed(self.kernel_initializer)

    # -- build -------------------------------------------------------------

    def build(self, inputs_shape):
        if len(inputs_shape) != 3 or inputs_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch_size, L, hidden_dim) with a "
                f"static hidden_dim. Received: inputs_shape={inputs_shape}"
            )
        batch_size, segment_length, hidden_dim = inputs_shape
        if hidden_dim % self.num_heads:
            raise ValueError(
                "hidden_dim must be divisible by `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={self.num_heads}"
            )
        if (
            (self.use_long_term_memory or self.compressed_memory_length > 0)
            and segment_length is not None
            and segment_length > self.memory_length
        ):
            raise ValueError(
                "With a long-term memory, `memory_length` must be at least "
                "the segment length, so that only vectors older than the "
                "short-term window enter the LTM. Received: "
                f"memory_length={self.memory_length}, segment length "
                f"{segment_length}"
            )
        self.hidden_dim = hidden_dim
        self._make_memories()
        self.segment_length = segment_length
        head_dim = hidden_dim // self.num_heads
        self._head_dim = head_dim
        window_shape = (batch_size, None, hidden_dim)

        def dense(name):
            # Each sublayer its own initializer: a shared unseeded instance
            # would give every kernel the same values (Q = K = V).
            return dict(
                kernel_initializer=self._initializer(name),
                dtype=self.dtype_policy,
                name=name,
            )

        self._attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="attention_norm",
        )
        self._attention_norm.build(window_shape)
        self._query_dense = keras.layers.EinsumDense(
            "btd,dhk->bthk",
            output_shape=(None, self.num_heads, head_dim),
            **dense("query"),
        )
        self._query_dense.build(window_shape)
        self._key_dense = keras.layers.EinsumDense(
            "btd,dhk->bthk",
            output_shape=(None, self.num_heads, head_dim),
            **dense("key"),
        )
        self._key_dense.build(window_shape)
        self._value_dense = keras.layers.EinsumDense(
            "btd,dhk->bthk",
            output_shape=(None, self.num_heads, head_dim),
            **dense("value"),
        )
        self._value_dense.build(window_shape)
        self._attention_output_dense = keras.layers.EinsumDense(
            "bthk,hkd->btd",
            output_shape=(None, hidden_dim),
            **dense("attention_output"),
        )
        self._attention_output_dense.build((batch_size, None, self.num_heads, head_dim))
        self._rotary = keras_hub.layers.RotaryEmbedding(
            max_wavelength=self.rotary_max_wavelength,
            dtype=self.dtype_policy,
            name="rotary_embedding",
        )
        self._attention_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="attention_dropout"
        )
        self._feedforward_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_norm",
        )
        self._feedforward_norm.build(window_shape)
        self._feedforward_intermediate = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            **dense("feedforward_intermediate"),
        )
        self._feedforward_intermediate.build(window_shape)
        self._feedforward_output = keras.layers.Dense(
            hidden_dim,
            **dense("feedforward_output"),
        )
        self._feedforward_output.build((batch_size, None, self.intermediate_dim))
        self._feedforward_dropout = keras.layers.Dropout(
            self.dropout, dtype=self.dtype_policy, name="feedforward_dropout"
        )

        if self.compressed_memory_length > 0:
            self._compressive.build((batch_size, segment_length, hidden_dim))
        if self.use_long_term_memory:
            # Reuses the short-term attention's (un-rotated) query, as the
            # paper does; keys, values and output are its own.
            self._ltm_attention = self._long_term.make_attention(
                "long_term_attention",
                key_dim=head_dim,
                num_heads=self.num_heads,
                output_dim=hidden_dim,
                project_query=False,
                zero_output=self.zero_memory_output,
                kernel_initializer=self._initializer("long_term_attention"),
            )
            self._long_term.build(
                (batch_size, segment_length, hidden_dim),
                (batch_size, None, self.num_heads, head_dim),
            )

        # The memory variables, named by state_spec().
        super().build(inputs_shape)

    def _initializer(self, name):
        """The kernel initializer of sublayer `name`, seeded by the block."""
        return utils.seeded_initializer(self.kernel_initializer, self._seed, name)

    def _make_memories(self):
        """The memories inside the block (no weights drawn yet).

        Made before the other sublayers, so that the block's weights keep
        their order (`get_weights()` lists, checkpoints); each is built
        where its weights were always drawn, so a seeded model keeps them.
        """
        if self.compressed_memory_length > 0:
            self._compressive = CompressiveMemory(
                memory_length=self.compressed_memory_length,
                compression_rate=self.compression_rate,
                kernel_initializer=self._initializer("compressive_memory"),
                stateful=False,
                dtype=self.dtype_policy,
                name="compressive_memory",
            )
        if self.use_long_term_memory:
            self._long_term = LongTermMemory(
                memory_settings.config(self, self.LONG_TERM_SETTINGS),
                self._seed,
                self.dtype_policy,
                density_name="ltm_density",
            )
            # Tracked here, under the names they always had.
            self._ltm = self._long_term.ltm
            if self.sticky_memories:
                self._sampler = self._long_term.sampler

    # -- state -------------------------------------------------------------

    def state_spec(self, batch_size=None):
        """Names, shapes and dtypes of the memory state (all float32).

        `stm` / `stm_mask`: the short-term cache of the last `memory_length`
        layer inputs and which slots hold a token; then the state of the
        memories inside the block (`cmem*`, `ltm_*`) and, with sticky
        memories, `ltm_density`, the histogram of the last LTM attention.
        """
        spec = {
            "stm": keras.KerasTensor(
                (batch_size, self.memory_length, self.hidden_dim), dtype="float32"
            ),
            "stm_mask": keras.KerasTensor((batch_size, self.memory_length), dtype="float32"),
        }
        if self.compressed_memory_length > 0:
            spec.update(self._compressive.named_state_spec(batch_size))
        if self.use_long_term_memory:
            spec.update(self._long_term.state_spec(batch_size))
            spec.update(self._long_term.density_spec(batch_size))
        return spec

    def get_initial_state(self, batch_size):
        """The empty memory for `batch_size` rows (explicit-state path).

        Zeros, but for the sticky density: uniform before any attention.
        """
        state = super().get_initial_state(batch_size)
        if self.use_long_term_memory:
            state = self._long_term.initial_density(state, batch_size)
        return state

    def validate_inputs(self, inputs, return_density=False):
        utils.check_rank(inputs, 3, "inputs")
        _, length, width = inputs.shape
        if width != self.hidden_dim or (
            self.segment_length is not None and length != self.segment_length
        ):
            raise ValueError(
                f"`inputs` of layer '{self.name}' must have shape (batch_size, "
                f"{self.segment_length}, {self.hidden_dim}). Received: "
                f"inputs.shape={tuple(inputs.shape)}"
            )
        if return_density and not self.use_long_term_memory:
            raise ValueError(
                "`return_density=True` needs use_long_term_memory=True. "
                f"Received: use_long_term_memory={self.use_long_term_memory}"
            )

    # -- forward -----------------------------------------------------------

    def step(self, inputs, state, reset=None, training=None, return_density=False):
        """The pure step: `(inputs, state) -> (outputs, new_state)`.

        One segment in three phases, the ones token-by-token decoding
        (`decode`) replays: `_begin_segment` (reset rows are emptied),
        `_attend` (every position over the STM, the segment up to itself and
        the memories), `_end_segment` (the STM moves on and what leaves it
        enters the memories, read where this segment's attention went with
        sticky memories).

        With `return_density=True` the outputs are `(outputs, mu,
        sigma_sq)`, the LTM attention's densities, each `(batch_size,
        num_heads, L)`.
        """
        x = ops.cast(inputs, self.compute_dtype)
        context, begun = self._begin_segment(state, reset)
        outputs, query, mu, sigma_sq = self._attend(x, x, 0, context, training)
        if self.compressed_memory_length > 0 and training and self.reconstruction_weight > 0:
            self.add_loss(
                self.reconstruction_weight
                * self.attention_reconstruction_loss(query, context["leaving"], context["leaves"])
            )
        mass = None
        if self.use_long_term_memory and self.sticky_memories:
            mass = self._long_term.bin_mass(mu, sigma_sq)
        new_state = dict(begun)
        new_state.update(self._end_segment(begun, x, mass))
        if return_density:
            outputs = (outputs, mu, sigma_sq)
        return outputs, new_state

    def _begin_segment(self, state, reset=None):
        """The state at the start of a segment, rows in `reset` emptied.

        Returns `(context, state)`: what the segment's positions read (the
        normed STM and its mask, the LTM coefficients, the compressed
        slots, and the block that will leave the STM at the end of this
        segment, for the compression's reconstruction loss) and the whole
        state after the reset. Nothing is written here: the memories hold
        only what left the STM at the end of earlier segments.
        """
        # Reset rows are replaced by the empty state of each memory.
        begun = self.read_state({k: state[k] for k in self.state_spec()}, reset)
        context = self._context_of(begun)
        if self.compressed_memory_length > 0:
            context.update(
                leaving=context["normed_stm"][:, : self.segment_length],
                leaves=begun["stm_mask"][:, 0] > 0.5,
            )
        return context, begun

    def _context_of(self, begun):
        """The `context` of `_begin_segment`, read back from its state."""
        stm = ops.cast(begun["stm"], self.compute_dtype)
        context = {
            "normed_stm": self._attention_norm(stm) if self.normalize_first else stm,
            "stm_mask": begun["stm_mask"],
        }
        if self.use_long_term_memory:
            context["ltm"] = begun
        if self.compressed_memory_length > 0:
            context.update(slots=begun["cmem"], slots_mask=begun["cmem_mask"])
        return context

    def _attend(self, x, segment, position, context, training, regularize=True):
        """The block's output for the positions `position, ...` of `x`.

        `x` `(B, T, d)` holds the layer inputs of positions `position` to
        `position + T - 1` of the segment whose inputs so far are `segment`
        `(B, L, d)` (slots after `position + T - 1` are never read). Each
        attends causally over `[STM; segment]` (and the compressed slots,
        jointly) and, with the same un-rotated query, over the LTM; the two
        are summed. Returns `(outputs, query, mu, sigma_sq)`.
        """
        mem = self.memory_length
        length = self.segment_length
        steps = int(x.shape[1])
        normed_segment = self._attention_norm(segment) if self.normalize_first else segment
        if x is segment:
            normed_x = normed_segment
        else:
            normed_x = self._attention_norm(x) if self.normalize_first else x
        query = self._query_dense(normed_x)
        window = ops.concatenate(
            [ops.cast(context["normed_stm"], normed_segment.dtype), normed_segment],
            axis=1,
        )
        key = self._rotary(self._key_dense(window))
        value = self._value_dense(window)
        rotated_query = self._rotary(query, start_index=mem + position)
        batch = ops.shape(x)[0]
        key_valid = ops.concatenate(
            [context["stm_mask"] > 0.5, ops.ones((batch, length), dtype="bool")],
            axis=1,
        )  # (B, mem + L)
        query_positions = ops.arange(steps) + position + mem
        causal = ops.arange(mem + length)[None, :] <= query_positions[:, None]
        mask = ops.logical_and(causal[None, :, :], key_valid[:, None, :])
        if self.compressed_memory_length > 0:
            key, value, mask = self._with_compressed_slots(context, key, value, mask)
        attended = ops.dot_product_attention(rotated_query, key, value, mask=mask[:, None, :, :])
        attention_output = self._attention_output_dense(attended)
        mu = sigma_sq = None
        if self.use_long_term_memory:
            # Decoding (`regularize=False`) collects no loss and adds none.
            ltm_output, mu, sigma_sq = self._long_term.read(
                query,
                context["ltm"],
                regularize=regularize,
                view=context.get("ltm_view"),
            )
            attention_output = attention_output + ops.cast(ltm_output, attention_output.dtype)
        outputs = self._feedforward(x, attention_output, training)
        return outputs, query, mu, sigma_sq

    def _with_compressed_slots(self, context, key, value, mask):
        """Prepend the compressed slots (oldest first) to keys, values, mask."""
        slots = ops.cast(context["slots"], key.dtype)
        slot_key = self._rotary(
            self._key_dense(slots),
            positions=self._compressive.slot_positions(self.segment_length),
        )
        return self._compressive.prepend_slots(
            context["slots_mask"], slot_key, self._value_dense(slots), key, value, mask
        )

    def _end_segment(self, begun, segment, mass):
        """The STM moves on by one segment, and the block that leaves it
        enters the memories.

        The STM keeps the last `memory_length` layer inputs; the `L` oldest
        cached ones (normed, as the attention saw them) leave it now, after
        this segment's attention: a vector is in the STM or in the LTM,
        never in both. With sticky memories the old signal is read where
        this segment's LTM attention went (the summed `mass` of its
        positions), and that histogram is kept in state.
        """
        length = self.segment_length
        # Through the compute dtype, as the layer inputs were.
        stm = ops.cast(begun["stm"], self.compute_dtype)
        window = ops.concatenate([stm, ops.cast(segment, self.compute_dtype)], axis=1)
        stm_mask = begun["stm_mask"]
        ended = {
            "stm": ops.stop_gradient(ops.cast(window[:, length:], "float32")),
            "stm_mask": ops.concatenate(
                [stm_mask, ops.ones_like(ops.cast(segment[:, :, 0], "float32"))], axis=1
            )[:, length:],
        }
        if not (self.use_long_term_memory or self.compressed_memory_length > 0):
            return ended
        leaving = stm[:, :length]
        if self.normalize_first:
            leaving = self._attention_norm(leaving)
        if self.use_long_term_memory:
            histogram = None
            if mass is not None:
                histogram = self._long_term.histogram(mass)
                ended["ltm_density"] = histogram
            # The cache fills from the right, so the leaving block holds a
            # token iff its newest slot does. When memory_length is not a
            # multiple of L, the first block to leave after a reset is only
            # partly filled: its empty (or stale, pre-reset) slots enter as
            # zeros, rather than the block being dropped with its tokens.
            leaving_mask = stm_mask[:, :length]
            ended.update(
                self._long_term.absorb(
                    leaving * ops.cast(leaving_mask[:, :, None], leaving.dtype),
                    begun,
                    absorb=leaving_mask[:, length - 1] > 0.5,
                    histogram=histogram,
                )
            )
        if self.compressed_memory_length > 0:
            ended.update(
                self._compressive.absorb_named(leaving, begun, absorb=stm_mask[:, 0] > 0.5)
            )
        return ended

    # -- token-by-token decoding -------------------------------------------

    def decode_state_spec(self, batch_size=None):
        """The state of `decode`: `state_spec()` plus the partial segment
        (`segment`, its layer inputs so far) and, with sticky memories, the
        attention mass summed over it (`segment_mass`)."""
        spec = dict(self.state_spec(batch_size))
        spec["segment"] = keras.KerasTensor(
            (batch_size, self.segment_length, self.hidden_dim), dtype="float32"
        )
        if self.use_long_term_memory:
            # The LTM's read view, made at the segment's first token and
            # read by the others.
            spec.update(self._long_term.view_spec(batch_size))
        if self.use_long_term_memory and self.sticky_memories:
            spec["segment_mass"] = keras.KerasTensor((batch_size, self.num_bins), dtype="float32")
        return spec

    def decode_state(self, state):
        """A `decode` state from a `step` state (at a segment boundary)."""
        first = state["stm"]
        batch = ops.shape(first)[0]
        decode_state = dict(state)
        for name, spec in self.decode_state_spec().items():
            if name not in state:
                decode_state[name] = ops.zeros((batch,) + tuple(spec.shape[1:]), dtype="float32")
        return decode_state

    def decode(self, inputs, state, position):
        """One position at a time, equal to `step` over whole segments.

        Args:
            inputs: `(batch_size, 1, hidden_dim)`, the layer input of the
                token at `position` of the current segment.
            state: a `decode_state_spec()` dict: at `position == 0`, the
                state `step` leaves at a segment boundary (plus zeros);
                afterwards, what `decode` returned.
            position: scalar int, the token's position in its segment
                (shared by every row).

        Returns `(outputs (batch_size, 1, hidden_dim), new_state)`. At
        `position == 0` the memories are updated as `step` updates them at
        the start of a segment; after position `L - 1` the STM moves on and
        the partial segment is cleared, so the state is again a `step`
        state (plus zeros).
        """
        position = ops.cast(position, "int32")
        names = list(self.state_spec())
        view_names = VIEW_NAMES if self.use_long_term_memory else ()
        sticky = "segment_mass" in state

        def begin(boundary):
            begun = self._begin_segment({k: boundary[k] for k in names})[1]
            if view_names:
                begun.update(self._long_term.view(begun))
            return begun

        def advance(begun):
            x = ops.cast(inputs, self.compute_dtype)
            segment = ops.slice_update(
                ops.cast(state["segment"], self.compute_dtype), [0, position, 0], x
            )
            context = self._context_of(begun)
            if view_names:
                context["ltm_view"] = tuple(begun[k] for k in view_names)
            outputs, _, mu, sigma_sq = self._attend(
                x,
                segment,
                position,
                context,
                training=False,
                regularize=False,
            )
            new_state = dict(begun)
            new_state["segment"] = ops.cast(segment, "float32")
            if sticky:
                new_state["segment_mass"] = state["segment_mass"] + (
                    self._long_term.bin_mass(mu, sigma_sq)
                )
            return outputs, new_state

        def end(new_state):
            # The float32 segment casts back to the compute dtype exactly.
            new_state.update(
                self._end_segment(
                    {k: new_state[k] for k in names},
                    new_state["segment"],
                    new_state.get("segment_mass"),
                )
            )
            return new_state

        return memory.decode_position(
            position,
            self.segment_length,
            {k: state[k] for k in names + list(view_names)},
            begin,
            advance,
            end,
            partial=("segment",) + (("segment_mass",) if sticky else ()),
        )

    def _feedforward(self, x, attention_output, training):
        """Dropout and residual around the attention, then the feed-forward
        sub-block (pre- or post-norm)."""
        attention_output = self._attention_dropout(attention_output, training=training)
        x = x + attention_output
        if not self.normalize_first:
            x = self._attention_norm(x)
        residual = x
        h = self._feedforward_norm(x) if self.normalize_first else x
        h = self._feedforward_output(self._feedforward_intermediate(h))
        h = self._feedforward_dropout(h, training=training)
        x = residual + h
        if not self.normalize_first:
            x = self._feedforward_norm(x)
        return x

    def attention_reconstruction_loss(self, query, block, valid):
        """Rae et al.'s auxiliary loss for the compression, a scalar (see
        `CompressiveMemory.reconstruction_loss`), with this block's key and
        value projections."""
        return self._compressive.reconstruction_loss(
            query, block, valid, self._key_dense.kernel, self._value_dense.kernel
        )

    def compute_step_output_spec(self, inputs, return_density=False):
        outputs = keras.KerasTensor(tuple(inputs.shape), dtype=self.compute_dtype)
        if not return_density:
            return outputs
        batch, length = inputs.shape[0], inputs.shape[1]
        density = keras.KerasTensor((batch, self.num_heads, length), dtype="float32")
        return outputs, density, keras.KerasTensor(density.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(memory_settings.config(self, self.SETTINGS))
        config["activation"] = keras.activations.serialize(self.activation)
        config["kernel_initializer"] = keras.initializers.serialize(self.kernel_initializer)
        return config
