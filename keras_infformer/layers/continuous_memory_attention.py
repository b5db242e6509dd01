import keras
from keras import ops

from keras_infformer import memory, utils
from keras_infformer.layers import memory_settings
from keras_infformer.layers.long_term_memory import LongTermMemory


@keras.saving.register_keras_serializable(package="keras_infformer")
@memory_settings.keyword_settings(memory_settings.LONG_TERM_MEMORY)
class ContinuousMemoryAttention(memory.MemoryLayer):
    """Attention over a continuous memory of everything before this segment.

    Adds an ∞-former long-term memory to any transformer block, causal by
    construction. Each call takes a segment's queries and the vectors the
    block wants remembered (e.g. its input hidden states) and, in this order:

    1. absorbs the vectors kept by the *previous* call into the
       `ContinuousLTM` (with sticky memories, read where the previous
       call's attention went);
    2. attends to the memory with the queries (`GaussianAttention`);
    3. keeps this call's vectors for the next call.

    So a position never reads its own segment (nor anything after it)
    through the memory: what it reads was written at least one call
    earlier. Add the output to the block's own attention output, as the
    paper does for GPT-2. An empty memory reads as zeros.

    The output projection starts at zero (`zero_output=True`), so a block
    it is added to computes what it computed without it until training
    moves it (a pretrained block is unchanged before fine-tuning).

    Args:
        num_heads: int. Attention heads.
        key_dim: int. Size of a query/key head.
        output_dim: int. Size of the output. Defaults to the query's width
            (`num_heads * key_dim` when `project_query=False`).
        project_query: bool. Project the query with an own kernel. With
            `False` the query comes split in heads,
            `(batch_size, L, num_heads, key_dim)` (e.g. the block's own
            projected query). Defaults to `True`.
        num_basis: int. Basis functions of the memory. Defaults to `512`.
        basis_widths: tuple of floats or `None`. Widths on [0, 1]; `None`
            (default) scales `relative_basis_widths` with `num_basis`.
        relative_basis_widths: tuple of floats. Widths in units of `1 / C`
            (`C` centres per width). Defaults to `(2.56, 12.8)` (the
            paper's `(0.01, 0.05)` at `num_basis=512`).
        density_mode: `"affine"` or `"content"` (`GaussianAttention`).
            Defaults to `"affine"`.
        ridge_penalty: float. Defaults to `1.0`.
        tau: float. Share of [0, 1] kept for the old signal. Defaults to
            `0.75`.
        num_samples: int. Points where the old signal is read. Defaults to
            `512`.
        sticky_memories: bool. Read the old signal where attention went.
            Defaults to `False`.
        sticky_mode: `"quantile"` or `"random"`. Defaults to `"quantile"`.
        num_bins: int. Histogram bins of the sticky memories. Defaults to
            `128`.
        sticky_uniform_share: float in [0, 1]. Share of the flat histogram
            mixed into the sticky one (`StickyMemorySampler.uniform_share`).
            `0` is the paper's sampler. Defaults to `0.5`.
        sigma_0: float. Reference deviation of the KL regulariser. Defaults
            to `0.05`.
        kl_weight: float. Weight of the KL regulariser. Defaults to `1e-6`.
        zero_output: bool. Start the output projection at zero. `False`
            draws it like the other projections (the paper's
            initialisation). Defaults to `True`.
        kernel_initializer: initializer of the projections. Defaults to
            `"glorot_uniform"`.
        stateful: bool. Keep the memory in variables (static batch size).
            Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: tensor `(batch_size, L, e)`. The vectors to remember (kept
            now, absorbed at the next call).
        query: tensor `(batch_size, Lq, d)`, or `(batch_size, Lq, num_heads,
            key_dim)` with `project_query=False`.
        reset: optional bool tensor `(batch_size,)`: rows that start a new
            document; their memory is emptied first.
        state: optional dict from `get_initial_state()`; selects the
            explicit-state path.

    Returns:
        Tensor `(batch_size, Lq, output_dim)`; with `state`, `(outputs,
        new_state)`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    memory = keras_infformer.layers.ContinuousMemoryAttention(
        num_heads=2, key_dim=8, num_basis=32, num_samples=32
    )
    for _ in range(5):  # A stream of segments of 16 vectors of width 16.
        hidden = np.random.rand(2, 16, 16).astype("float32")
        read = memory(hidden, query=hidden)  # Reads only earlier segments.
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    LONG_TERM_SETTINGS = tuple(memory_settings.LONG_TERM_MEMORY)
    # Every setting of the config, in order (`kernel_initializer`
    # serialised).
    SETTINGS = (
        ("num_heads", "key_dim", "output_dim", "project_query")
        + LONG_TERM_SETTINGS
        + ("zero_output", "kernel_initializer")
    )

    def __init__(
        self,
        num_heads,
        key_dim,
        output_dim=None,
        project_query=True,
        zero_output=True,
        kernel_initializer="glorot_uniform",
        stateful=True,
        **kwargs,
    ):
        long_term = memory_settings.take(kwargs, memory_settings.LONG_TERM_MEMORY)
        super().__init__(stateful=stateful, **kwargs)
        self.num_heads = utils.check_positive_int(num_heads, "num_heads")
        self.key_dim = utils.check_positive_int(key_dim, "key_dim")
        self.output_dim = (
            None if output_dim is None else utils.check_positive_int(output_dim, "output_dim")
        )
        self.project_query = bool(project_query)
        memory_settings.assign(
            self,
            memory_settings.check_long_term_memory(long_term),
        )
        self.zero_output = bool(zero_output)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # One draw at construction; the sublayers' seeds follow from it.
        self._seed = utils.draw_seed(self.kernel_initializer)

    def build(self, inputs_shape, query_shape=None):
        if len(inputs_shape) != 3 or inputs_shape[1] is None or inputs_shape[2] is None:
            raise ValueError(
                "`inputs` must have shape (batch_size, L, e) with static L "
                f"and e. Received: inputs_shape={inputs_shape}"
            )
        if query_shape is None:
            raise ValueError("ContinuousMemoryAttention needs `query=`.")
        batch_size, length, width = inputs_shape
        self.segment_length = int(length)
        self.memory_dim = int(width)
        self._long_term = LongTermMemory(
            memory_settings.config(self, self.LONG_TERM_SETTINGS),
            self._seed,
            self.dtype_policy,
            density_name="density",
        )
        # Tracked here, under the names they always had.
        self._ltm = self._long_term.ltm
        if self.sticky_memories:
            self._sampler = self._long_term.sampler
        self._attention = self._long_term.make_attention(
            "attention",
            key_dim=self.key_dim,
            num_heads=self.num_heads,
            output_dim=self.output_dim,
            project_query=self.project_query,
            zero_output=self.zero_output,
            kernel_initializer=utils.seeded_initializer(
                self.kernel_initializer, self._seed, "attention"
            ),
        )
        self._long_term.build(inputs_shape, query_shape)
        super().build(inputs_shape)

    def state_spec(self, batch_size=None):
        spec = self._long_term.state_spec(batch_size)
        spec["pending"] = keras.KerasTensor(
            (batch_size, self.segment_length, self.memory_dim), dtype="float32"
        )
        spec["pending_filled"] = keras.KerasTensor((batch_size,), dtype="float32")
        spec.update(self._long_term.density_spec(batch_size))
        return spec

    def get_initial_state(self, batch_size):
        state = super().get_initial_state(batch_size)
        return self._long_term.initial_density(state, batch_size)

    def validate_inputs(self, inputs, query=None):
        utils.check_rank(inputs, 3, "inputs")
        if query is None:
            raise ValueError("ContinuousMemoryAttention needs `query=`.")
        if (
            inputs.shape[0] is not None
            and query.shape[0] is not None
            and (inputs.shape[0] != query.shape[0])
        ):
            raise ValueError(
                "`inputs` and `query` must have the same batch size. Received: "
                f"inputs.shape={tuple(inputs.shape)}, query.shape={tuple(query.shape)}"
            )
        if self.built and tuple(inputs.shape[1:]) != (self.segment_length, self.memory_dim):
            raise ValueError(
                f"`inputs` of layer '{self.name}' must have shape (batch_size, "
                f"{self.segment_length}, {self.memory_dim}). Received: "
                f"inputs.shape={tuple(inputs.shape)}"
            )
        utils.check_finite(query, "query")

    def call(self, inputs, query=None, reset=None, state=None, training=None):
        # `query` named here (not in **kwargs) so Keras builds with its shape.
        return super().call(inputs, reset=reset, state=state, training=training, query=query)

    def compute_output_spec(self, inputs, query=None, reset=None, state=None, training=None):
        return super().compute_output_spec(
            inputs, reset=reset, state=state, training=training, query=query
        )

    def read(self, state, query, regularize=True):
        """The memory's answer to `query` for a (read-only) `state`.

        Nothing is absorbed: `state` as it stands is read. Returns
        `(outputs, mu, sigma_sq)`. `regularize=False` adds no KL loss
        (inference paths such as token-by-token decoding).
        """
        return self._long_term.read(query, state, regularize=regularize)

    def absorb_pending(self, state):
        """The state after absorbing the vectors kept by the last call."""
        state = dict(state)
        state.update(
            self._long_term.absorb(
                state["pending"],
                state,
                absorb=state["pending_filled"] > 0.5,
                histogram=state["density"] if self.sticky_memories else None,
            )
        )
        return state

    def begin_segment(self, state, reset=None):
        """The state at the start of a segment: rows in `reset` emptied,
        then what the last call kept absorbed (steps 1 of `step`)."""
        return self.absorb_pending(self.read_state(state, reset))

    def end_segment(self, state, inputs, mass=None):
        """The state after a segment: its `inputs` kept for the next call
        and, with sticky memories, the histogram of its summed attention
        `mass` (step 3 of `step`)."""
        state = dict(state)
        state["pending"] = ops.stop_gradient(ops.cast(inputs, "float32"))
        state["pending_filled"] = ops.ones_like(state["pending_filled"])
        if self.sticky_memories:
            state["density"] = self._long_term.histogram(mass)
        return state

    def bin_mass(self, mu, sigma_sq):
        """The sticky histogram mass of a read (summable over reads)."""
        return self._long_term.bin_mass(mu, sigma_sq)

    def step(self, inputs, state, reset=None, query=None):
        # 1. What the last call kept enters the memory now, not earlier:
        #    this call's queries may read it, never their own segment.
        state = self.begin_segment(state, reset)
        # 2. Read.
        outputs, mu, sigma_sq = self.read(state, query)
        # 3. Keep this segment for the next call.
        mass = self.bin_mass(mu, sigma_sq) if self.sticky_memories else None
        return outputs, self.end_segment(state, inputs, mass)

    def compute_step_output_spec(self, inputs, query=None):
        width = self.output_dim
        if width is None:
            width = query.shape[-1] if self.project_query else self.num_heads * self.key_dim
        return keras.KerasTensor((query.shape[0], query.shape[1], width), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(memory_settings.config(self, self.SETTINGS))
        config["kernel_initializer"] = keras.initializers.serialize(self.kernel_initializer)
        return config
