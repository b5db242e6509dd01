"""Losses and metrics of a language model that count only real tokens.

A stream's batches hold padding where a row has run out of documents; the
`sample_weight` of `StreamingDataset` is 0 there. Keras' default loss
reduction divides by every position, padding included, so a mostly padded
batch reports a loss far below the truth. Everything here divides by the
sum of the weights instead.
"""

import math

import keras
import keras_hub
from keras import ops

from keras_infformer import distribution


def masked_token_loss():
    """Sparse cross-entropy over logits, the mean over real tokens only
    (a `MaskedTokenLoss`)."""
    return MaskedTokenLoss(from_logits=True, name="token_loss")


@keras.saving.register_keras_serializable(package="keras_infformer")
class MaskedTokenLoss(keras.losses.Loss):
    """Sparse cross-entropy, the mean over the real tokens of the global batch.

    Sums the weighted losses and divides by the sum of the weights
    (positions with weight 0 count for nothing; without weights, the plain
    mean). Under TensorFlow's `MultiWorkerMirroredStrategy` each process
    sees part of the batch, and the parts hold different numbers of real
    tokens: the mean of the replicas' own means (what Keras'
    `"mean_with_sample_weight"` reduction gives there) is not the mean over
    the batch. So the weight sum is taken over every replica (an all-reduce)
    and each replica returns its share of the global mean: the loss and its
    gradients equal those of one process on the whole batch. (JAX arrays are
    global: nothing to do there. Under a single-process `MirroredStrategy`
    each replica keeps the mean over its own tokens: see
    `keras_infformer.distribution.global_mean_parts`.)

    Args:
        from_logits: bool. Whether `y_pred` holds logits. Defaults to `True`.
        name: str. Defaults to `"token_loss"`.
        **kwargs: passed to `keras.losses.Loss`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    loss = keras_infformer.metrics.MaskedTokenLoss()
    loss(np.array([[1, 2, 0]]), np.zeros((1, 3, 4)), np.array([[1.0, 1.0, 0.0]]))
    # log(4) = 1.386: the padded position does not count.
    ```
    """

    def __init__(self, from_logits=True, name="token_loss", **kwargs):
        kwargs.pop("reduction", None)  # Always the mean over real tokens.
        super().__init__(name=name, **kwargs)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits
        )

    def __call__(self, y_true, y_pred, sample_weight=None):
        losses = ops.cast(self.call(y_true, y_pred), "float32")
        if sample_weight is None:
            weights = ops.ones_like(losses)
        else:
            weights = ops.broadcast_to(ops.cast(sample_weight, "float32"), ops.shape(losses))
        total, count = distribution.global_mean_parts(ops.sum(losses * weights), ops.sum(weights))
        return ops.divide_no_nan(total, count)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


@keras.saving.register_keras_serializable(package="keras_infformer")
class BitsPerToken(keras.metrics.Metric):
    """Cross-entropy in bits, averaged over real tokens.

    Accumulates `Σ w · CE` (nats) and `Σ w · n` over every batch, where `n`
    is the number of bytes (or characters) the target token stands for, and
    reports `Σ w · CE / (ln 2 · Σ w · n)`. With the default `n = 1` this is
    bits per token, which is bits per byte for a byte-level tokenizer
    (`keras_hub.tokenizers.ByteTokenizer`); pass `token_lengths` (one length
    per vocabulary entry) to get bits per byte for any other tokenizer.

    Args:
        token_lengths: optional sequence of `vocabulary_size` positive
            numbers, the bytes each token id stands for (a shorter table
            is a ValueError at the first update). Defaults to `None`
            (every token counts 1).
        from_logits: bool. Whether `y_pred` holds logits. Defaults to `True`.
        name: str. Defaults to `"bits_per_token"`.
        **kwargs: passed to `keras.metrics.Metric`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    metric = keras_infformer.metrics.BitsPerToken()
    metric.update_state(
        np.array([[1, 2, 0]]), np.zeros((1, 3, 4)), np.array([[1.0, 1.0, 0.0]])
    )
    float(metric.result())  # log2(4) = 2.0 bits: the padded position is ignored.
    ```
    """

    def __init__(self, token_lengths=None, from_logits=True, name="bits_per_token", **kwargs):
        super().__init__(name=name, **kwargs)
        self.token_lengths = None if token_lengths is None else [float(n) for n in token_lengths]
        if self.token_lengths is not None and min(self.token_lengths) <= 0:
            raise ValueError(
                "`token_lengths` must all be positive. Received a minimum of "
                f"{min(self.token_lengths)}"
            )
        self.from_logits = bool(from_logits)
        self.total_nats = self.add_variable((), initializer="zeros", name="total_nats")
        self.total_units = self.add_variable((), initializer="zeros", name="total_units")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        y_pred = ops.cast(y_pred, "float32")
        nats = keras.losses.sparse_categorical_crossentropy(
            y_true, y_pred, from_logits=self.from_logits
        )
        weight = (
            ops.ones_like(nats)
            if sample_weight is None
            else ops.cast(ops.broadcast_to(sample_weight, ops.shape(nats)), "float32")
        )
        units = weight
        vocabulary_size = y_pred.shape[-1]
        if (
            self.token_lengths is not None
            and vocabulary_size is not None
            and len(self.token_lengths) < vocabulary_size
        ):
            # A shorter table would be read out of range: JAX clips or
            # fills, reporting nonsense (0.0 bits) without an error.
            raise ValueError(
                "`token_lengths` must hold one length per vocabulary entry "
                f"(vocabulary_size={vocabulary_size}, the last axis of "
                f"`y_pred`). Received: {len(self.token_lengths)} token_lengths"
            )
        if self.token_lengths is not None:
            lengths = ops.convert_to_tensor(self.token_lengths, dtype="float32")
            units = weight * ops.take(lengths, y_true)
        self.total_nats.assign_add(ops.sum(nats * weight))
        self.total_units.assign_add(ops.sum(units))

    def result(self):
        return ops.where(
            self.total_units > 0,
            self.total_nats / (math.log(2.0) * ops.maximum(self.total_units, 1e-12)),
            0.0,
        )

    def reset_state(self):
        self.total_nats.assign(0.0)
        self.total_units.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update({"token_lengths": self.token_lengths, "from_logits": self.from_logits})
        return config


def language_model_metrics():
    """The default `weighted_metrics` of `InfiniteFormerCausalLM.compile()`.

    Accuracy, perplexity (`keras_hub.metrics.Perplexity`) and bits per token,
    all over real tokens only (pass them as `weighted_metrics`).
    """
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras_hub.metrics.Perplexity(from_logits=True, name="perplexity"),
        BitsPerToken(),
    ]
