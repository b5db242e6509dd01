import keras
from keras import ops

from keras_infformer import distribution
from keras_infformer import utils


@keras.saving.register_keras_serializable(package="keras_infformer")
class CompressiveMemory(keras.layers.Layer):
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

    With `stateful=True` the memory lives in non-trainable variables (static
    batch size); passing `state=` runs the explicit-state path instead.

    Args:
        memory_length: int. Number of compressed slots `n_cm`.
        compression_rate: int. Compression rate `c`; the length of what is
            absorbed must be a multiple of it. Defaults to `4`.
        kernel_initializer: initializer of the convolution. Defaults to
            `"glorot_uniform"`.
        stateful: bool. Keep the memory in variables. Defaults to `True`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`.

    Call arguments:
        inputs: tensor `(batch_size, L, d)`, the vectors to absorb.
        reset: optional bool tensor `(batch_size,)`: rows emptied first.
        absorb: optional bool tensor `(batch_size,)`: rows that absorb
            (others keep their memory unchanged). Defaults to all rows.
        state: optional dict `{"memory": (batch_size, n_cm, d), "mask":
            (batch_size, n_cm)}` selecting the explicit-state path.

    Returns:
        `(memory, mask)`: the compressed slots (oldest first, with gradient
        to the current step's compression) and their validity (1 = holds a
        compressed vector); with `state`, `((memory, mask), new_state)`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    memory = keras_infformer.layers.CompressiveMemory(memory_length=8)
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
        super().__init__(**kwargs)
        self.memory_length = utils.check_positive_int(memory_length, "memory_length")
        self.compression_rate = utils.check_positive_int(
            compression_rate, "compression_rate"
        )
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.stateful = bool(stateful)
        self.memory = None
        self.mask = None
        self._memory_rows = None

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
        if self.stateful:
            if batch_size is None:
                raise ValueError(
                    "A stateful CompressiveMemory needs a static batch size. "
                    f"Received: input_shape={input_shape}"
                )
            self.batch_size = batch_size
            # Under a tf.distribute strategy each replica keeps the memory of
            # its own rows only (see keras_infformer.distribution).
            self._memory_rows = distribution.per_replica_batch(batch_size, self)
            self.memory = distribution.add_memory_variable(
                self, (self._memory_rows, self.memory_length, dim), "memory"
            )
            self.mask = distribution.add_memory_variable(
                self, (self._memory_rows, self.memory_length), "mask"
            )
        self.built = True

    def get_initial_state(self, batch_size):
        return {
            "memory": ops.zeros((batch_size, self.memory_length, self.memory_dim)),
            "mask": ops.zeros((batch_size, self.memory_length)),
        }

    def reset_state(self):
        if self.memory is not None:
            self.memory.assign(ops.zeros_like(self.memory))
            self.mask.assign(ops.zeros_like(self.mask))

    def get_state(self):
        if self.memory is None:
            raise ValueError(f"Layer '{self.name}' keeps no memory variables.")
        return {
            "memory": distribution.read_memory(self.memory),
            "mask": distribution.read_memory(self.mask),
        }

    def save_own_variables(self, store):
        # Every row of the memory, also from per-replica (tf.distribute) variables.
        distribution.save_own_variables(self, store)

    def load_own_variables(self, store):
        distribution.load_own_variables(self, store)

    def compress(self, inputs):
        """The compression alone: `(B, L, d) -> (B, L / c, d)`, float32."""
        return ops.cast(self._compression(inputs), "float32")

    def absorb(self, inputs, state, reset=None, absorb=None):
        """Pure update: `(inputs, state) -> ((memory, mask), new_state)`."""
        memory = ops.stop_gradient(ops.cast(state["memory"], "float32"))
        mask = ops.stop_gradient(ops.cast(state["mask"], "float32"))
        if reset is not None:
            keep = 1.0 - ops.cast(reset, "float32")
            memory = memory * keep[:, None, None]
            mask = mask * keep[:, None]
        compressed = self.compress(inputs)
        num_new = compressed.shape[1]
        appended = ops.concatenate([memory, compressed], axis=1)[:, num_new:]
        appended_mask = ops.concatenate(
            [mask, ops.ones_like(compressed[:, :, 0])], axis=1
        )[:, num_new:]
        if absorb is not None:
            absorbs = ops.cast(absorb, "bool")
            appended = ops.where(absorbs[:, None, None], appended, memory)
            appended_mask = ops.where(absorbs[:, None], appended_mask, mask)
        new_state = {
            "memory": ops.stop_gradient(appended),
            "mask": appended_mask,
        }
        return (appended, appended_mask), new_state

    def call(self, inputs, reset=None, absorb=None, state=None):
        utils.check_rank(inputs, 3, "inputs")
        if inputs.shape[-1] != self.memory_dim:
            raise ValueError(
                f"`inputs` must have feature dimension {self.memory_dim}. "
                f"Received: inputs.shape={tuple(inputs.shape)}"
            )
        utils.check_finite(inputs, "inputs")
        if state is not None:
            return self.absorb(inputs, state, reset, absorb)
        if self.memory is None:
            raise ValueError(
                f"Layer '{self.name}' keeps no memory variables "
                f"(stateful={self.stateful}). Pass `state=`."
            )
        # Inside a tf.distribute replica it is the per-replica batch.
        if inputs.shape[0] not in (self.batch_size, self._memory_rows):
            raise ValueError(
                f"Layer '{self.name}' is stateful and was built for batch size "
                f"{self.batch_size}. Received: inputs.shape={tuple(inputs.shape)}"
            )
        current = {"memory": ops.copy(self.memory.value), "mask": ops.copy(self.mask.value)}
        outputs, new_state = self.absorb(inputs, current, reset, absorb)
        self.memory.assign(new_state["memory"])
        self.mask.assign(new_state["mask"])
        return outputs

    def compute_output_spec(self, inputs, reset=None, absorb=None, state=None):
        batch = inputs.shape[0]
        outputs = (
            keras.KerasTensor((batch, self.memory_length, inputs.shape[-1])),
            keras.KerasTensor((batch, self.memory_length)),
        )
        if state is None:
            return outputs
        return outputs, {"memory": outputs[0], "mask": outputs[1]}

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "memory_length": self.memory_length,
                "compression_rate": self.compression_rate,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
                "stateful": self.stateful,
            }
        )
        return config
