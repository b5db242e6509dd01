import keras
from keras import ops

from keras_infformer import memory, utils


@keras.saving.register_keras_serializable(package="keras_infformer")
class CompressiveMemory(memory.MemoryLayer):
    """Compressed memory of the Compressive Transformer (a baseline).

    Vectors that leave a short-term memory are compressed at rate
    `compression_rate` by a strided 1-D convolution (kernel = stride = `c`)
    and appended to a first-in-first-out memory of `memory_length` slots;
    the oldest slots fall off. The memory has a fixed size however long the
    stream; attention over it is done by the caller (e.g. jointly with the
    short-term memory, as in the Compressive Transformer). The compression
    is trained by the task loss through the slots compressed at the current
    step (older slots are stored without gradient) and, inside
    `InfiniteFormerDecoder`, by the attention-reconstruction loss of Rae et
    al. (`reconstruction_weight`).

    With `stateful=True` the memory lives in non-trainable float32 variables
    (static batch size); passing `state=` runs the explicit-state path
    instead, `(inputs, state) -> ((memory, mask), new_state)`, touching no
    variable (any batch size).

    Args:
        memory_length: int. Number of compressed slots `n_cm`.
        compression_rate: int. Compression rate `c`; the length of what is
            absorbed must be a multiple of it. Defaults to `4`.
        kernel_initializer: initializer of the convolution. Defaults to
            `"glorot_uniform"`.
        stateful: bool. Keep the memory in variables. Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        inputs: tensor `(batch_size, L, d)`, the vectors to absorb.
        reset: optional tensor `(batch_size,)` of bools or 0/1: rows emptied
            first.
        absorb: optional bool tensor `(batch_size,)`: rows that absorb
            (others keep their memory, after `reset`). Defaults to all rows.
        state: optional dict `{"memory": (batch_size, n_cm, d), "mask":
            (batch_size, n_cm)}` selecting the explicit-state path.

    Returns:
        `(memory, mask)`: the compressed slots (oldest first, with gradient
        to the current step's compression), float32, and their validity
        (1 = holds a compressed vector); with `state`, `((memory, mask),
        new_state)`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    memory = keras_infformer.CompressiveMemory(memory_length=8)
    for _ in range(10):
        slots, mask = memory(np.random.rand(2, 16, 32).astype("float32"))
    ```

    References:
     - [Rae et al., 2019](https://arxiv.org/abs/1911.05507)
    """

    def __init__(
        self,
        memory_length,
        compression_rate=4,
        kernel_initializer="glorot_uniform",
        stateful=True,
        **kwargs,
    ):
        super().__init__(stateful=stateful, **kwargs)
        self.memory_length, self.compression_rate = self.check_arguments(
            memory_length, compression_rate
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.memory_dim = None

    @staticmethod
    def check_arguments(memory_length, compression_rate):
        """The hyper-parameters checked (raises on bad ones)."""
        return (
            utils.check_positive_int(memory_length, "memory_length"),
            utils.check_positive_int(compression_rate, "compression_rate"),
        )

    def build(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(
                "`inputs` must have shape (batch_size, L, d) with static d. "
                f"Received: input_shape={input_shape}"
            )
        batch_size, length, dim = input_shape
        if length is not None and length % self.compression_rate:
            raise ValueError(
                "The absorbed length must be a multiple of `compression_rate`. "
                f"Received: length={length}, compression_rate="
                f"{self.compression_rate}"
            )
        self.memory_dim = dim
        self._compression = keras.layers.Conv1D(
            dim,
            kernel_size=self.compression_rate,
            strides=self.compression_rate,
            kernel_initializer=utils.clone_initializer(self.kernel_initializer),
            dtype=self.dtype_policy,
            name="compression",
        )
        self._compression.build((batch_size, length, dim))
        super().build(input_shape)

    def state_spec(self, batch_size=None):
        return {
            "memory": keras.KerasTensor(
                (batch_size, self.memory_length, self.memory_dim), dtype="float32"
            ),
            "mask": keras.KerasTensor((batch_size, self.memory_length), dtype="float32"),
        }

    def validate_inputs(self, inputs, absorb=None):
        utils.check_rank(inputs, 3, "inputs")
        if inputs.shape[-1] != self.memory_dim:
            raise ValueError(
                f"`inputs` must have feature dimension {self.memory_dim}. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        length = inputs.shape[1]
        if length is None or length % self.compression_rate:
            raise ValueError(
                "The length of `inputs` must be static and a multiple of "
                f"`compression_rate`={self.compression_rate}. Received: "
                f"inputs.shape={tuple(inputs.shape)}"
            )

    def compress(self, inputs):
        """The compression alone: `(B, L, d) -> (B, L / c, d)`, float32."""
        return ops.cast(self._compression(inputs), "float32")

    def step(self, inputs, state, reset=None, absorb=None):
        """Pure update: `(inputs, state) -> ((memory, mask), new_state)`."""
        state = self.read_state(state, reset)
        slots, mask = state["memory"], state["mask"]
        compressed = self.compress(inputs)
        num_new = compressed.shape[1]
        # First in, first out: the new slots enter on the right.
        appended = ops.concatenate([slots, compressed], axis=1)[:, num_new:]
        appended_mask = ops.concatenate([mask, ops.ones_like(compressed[:, :, 0])], axis=1)[
            :, num_new:
        ]
        if absorb is not None:
            absorbs = ops.cast(absorb, "bool")
            appended = memory.select_rows(absorbs, appended, slots)
            appended_mask = memory.select_rows(absorbs, appended_mask, mask)
        new_state = {
            "memory": ops.stop_gradient(appended),
            "mask": appended_mask,
        }
        return (appended, appended_mask), new_state

    def absorb(self, inputs, state, reset=None, absorb=None):
        """`step` under its former name."""
        return self.step(inputs, state, reset=reset, absorb=absorb)

    # -- inside a decoder block ----------------------------------------------

    # The names of this memory's state inside a block's state (served names).
    STATE_NAMES = {"memory": "cmem", "mask": "cmem_mask"}

    def named_state_spec(self, batch_size=None):
        """`state_spec()` under the block's names (`STATE_NAMES`)."""
        return {self.STATE_NAMES[k]: v for k, v in self.state_spec(batch_size).items()}

    def absorb_named(self, inputs, state, absorb=None):
        """The `STATE_NAMES` entries of a block's `state` after absorbing
        `inputs` (pure; rows not flagged in `absorb` keep theirs)."""
        _, new_state = self.step(
            inputs,
            {key: state[name] for key, name in self.STATE_NAMES.items()},
            absorb=absorb,
        )
        return {self.STATE_NAMES[k]: v for k, v in new_state.items()}

    def slot_positions(self, length):
        """Rotary positions of the slots, oldest first, for a block reading
        segments of `length` tokens.

        The newest `L / c` slots summarise the block that just left, window
        positions [0, L); each older group of `L / c` slots sits `L` earlier.
        A slot's position is the centre of the `c` tokens it summarises.
        """
        c = self.compression_rate
        index_from_newest = ops.arange(self.memory_length - 1, -1, -1)
        return ops.cast(length - c * (index_from_newest + 1), "float32") + 0.5 * (c - 1)

    def prepend_slots(self, slots_mask, slot_key, slot_value, key, value, mask):
        """Keys, values and attention mask with the slots (oldest first)
        before the window's, attended jointly with it.

        `slot_key` / `slot_value` `(B, n_cm, heads, head_dim)` are the
        caller's projections of the slots; `mask` `(B or 1, T, window)`.
        """
        batch = ops.shape(slots_mask)[0]
        steps = mask.shape[1]
        slot_visible = ops.broadcast_to(
            (slots_mask > 0.5)[:, None, :], (batch, steps, self.memory_length)
        )
        mask = ops.concatenate(
            [slot_visible, ops.broadcast_to(mask, (batch,) + tuple(mask.shape[1:]))],
            axis=-1,
        )
        key = ops.concatenate([slot_key, key], axis=1)
        value = ops.concatenate([slot_value, value], axis=1)
        return key, value, mask

    def reconstruction_loss(self, query, block, valid, key_kernel, value_kernel):
        """Rae et al.'s auxiliary loss for the compression, a scalar.

        Mean squared difference between the content attention (no positions)
        of `query` `(B, Lq, heads, head_dim)` over `block` `(B, L, d)` and
        over its compression, both projected by the caller's `key_kernel` and
        `value_kernel` `(d, heads, head_dim)`, averaged over the batch with
        the rows not flagged in `valid` `(B,)` counting zero: a mean over
        every row, like Keras' `"sum_over_batch_size"`, so that replicas
        holding equal shares of the batch average to the single-device
        value. Everything but the compression is held fixed.
        """
        block = ops.stop_gradient(ops.cast(block, "float32"))
        query = ops.stop_gradient(ops.cast(query, "float32"))
        kernels = [
            ops.stop_gradient(ops.cast(kernel, "float32")) for kernel in (key_kernel, value_kernel)
        ]

        def attend(memory):
            key, value = (ops.einsum("btd,dhk->bthk", memory, kernel) for kernel in kernels)
            return ops.dot_product_attention(query, key, value)

        compressed = self.compress(block)
        error = ops.mean(ops.square(attend(block) - attend(compressed)), axis=(1, 2, 3))
        return ops.mean(error * ops.cast(valid, "float32"))

    def compute_step_output_spec(self, inputs, absorb=None):
        batch = inputs.shape[0]
        return (
            keras.KerasTensor((batch, self.memory_length, inputs.shape[-1]), dtype="float32"),
            keras.KerasTensor((batch, self.memory_length), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "memory_length": self.memory_length,
                "compression_rate": self.compression_rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
