"""Model-level memory helpers: reset every stateful layer, as a callback too."""

import keras


def stateful_layers(model):
    """Every layer inside `model` that keeps memory in variables."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if getattr(layer, "stateful", False) and callable(getattr(layer, "reset_state", None))
    ]


def reset_memory(model):
    """Empty the memory of every stateful layer of `model` (all rows).

    Keras 3 models have no `reset_state()` of their own; this reaches every
    nested layer that has one and is stateful (ours, and stateful RNNs).
    Returns the number of layers reset.
    """
    layers = stateful_layers(model)
    for layer in layers:
        layer.reset_state()
    return len(layers)


class ResetMemory(keras.callbacks.Callback):
    """Empty all memory at the start of each epoch, evaluation and prediction.

    A stream read by `model.fit` starts again at each epoch, so the memory
    of the previous pass must not leak into it; evaluation and prediction
    share the model's memory variables with training, so they start empty
    too.

    Args:
        on_epoch_begin: bool. Reset at the start of each training epoch.
        on_test_begin: bool. Reset before each evaluation (also the
            validation at the end of an epoch).
        on_predict_begin: bool. Reset before each prediction.

    Examples:

    ```python
    model.fit(dataset, epochs=3, shuffle=False,
              callbacks=[keras_infformer.ResetMemory()])
    ```
    """

    def __init__(self, on_epoch_begin=True, on_test_begin=True, on_predict_begin=True):
        super().__init__()
        self.reset_on_epoch_begin = on_epoch_begin
        self.reset_on_test_begin = on_test_begin
        self.reset_on_predict_begin = on_predict_begin

    def on_epoch_begin(self, epoch, logs=None):
        if self.reset_on_epoch_begin:
            reset_memory(self.model)

    def on_test_begin(self, logs=None):
        if self.reset_on_test_begin:
            reset_memory(self.model)

    def on_predict_begin(self, logs=None):
        if self.reset_on_predict_begin:
            reset_memory(self.model)
