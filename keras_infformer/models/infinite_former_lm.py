import keras

from keras_infformer.models.infinite_former_backbone import InfiniteFormerBackbone
from keras_infformer.models.infinite_former_causal_lm import InfiniteFormerCausalLM


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerLM(InfiniteFormerCausalLM):
    """A causal language model of stacked ∞-former decoder blocks, from flat settings.

    The same model as `InfiniteFormerCausalLM(InfiniteFormerBackbone(...))`,
    built from one list of settings (the backbone is made inside): the
    quickest way to a model, and the class of earlier releases.

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
        vocabulary_size, segment_length, batch_size: as the backbone's.
        preprocessor: optional `InfiniteFormerCausalLMPreprocessor` (text
            for `generate()`).
        dtype: the dtype policy of every layer. Defaults to Keras' global
            policy.
        name: optional model name.
        **kwargs: every other `InfiniteFormerBackbone` argument (the model
            size, the long-term memory's settings, `dropout`, ...: the same
            names and defaults), then `keras.Model`'s.

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
        preprocessor=None,
        dtype=None,
        name=None,
        **kwargs,
    ):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in InfiniteFormerBackbone.SETTINGS}
        backbone = InfiniteFormerBackbone(
            vocabulary_size=vocabulary_size,
            segment_length=segment_length,
            batch_size=batch_size,
            dtype=dtype,
            name="backbone",  # Fixed, so a reloaded model names it alike.
            **settings,
        )
        super().__init__(backbone, preprocessor=preprocessor, name=name, **kwargs)

    def get_config(self):
        backbone = self.backbone.get_config()
        config = {k: backbone[k] for k in InfiniteFormerBackbone.SETTINGS}
        config.update(
            {
                "name": self.name,
                "trainable": self.trainable,
                "dtype": backbone["dtype"],
            }
        )
        if self.preprocessor is not None:
            config["preprocessor"] = keras.layers.serialize(self.preprocessor)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        if isinstance(config.get("preprocessor"), dict):
            config["preprocessor"] = keras.layers.deserialize(config["preprocessor"])
        return cls(**config)
