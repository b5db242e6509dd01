"""Callbacks: pictures of where the long-term attention looks."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_infformer.memory import ResetMemory  # noqa: F401 (re-export)
from keras_infformer.memory import state_name


def attention_density_grid(mu, sigma_sq, num_points=128):
    """Density of the LTM attention over [0, 1], one row per query.

    Args:
        mu, sigma_sq: arrays `(batch, heads, Lq)`.
        num_points: int. Points of the [0, 1] grid.

    Returns:
        float32 array `(batch, Lq, num_points)`: the Gaussian densities
        averaged over heads, each row scaled to a maximum of 1.
    """
    mu = np.asarray(ops.convert_to_numpy(mu), dtype=np.float64)
    sigma_sq = np.asarray(ops.convert_to_numpy(sigma_sq), dtype=np.float64)
    t = (np.arange(num_points) + 0.5) / num_points
    z = (t - mu[..., None]) ** 2 / sigma_sq[..., None]
    density = np.exp(-0.5 * z) / np.sqrt(2 * np.pi * sigma_sq[..., None])
    density = density.mean(axis=1)
    density /= np.maximum(density.max(axis=-1, keepdims=True), 1e-12)
    return density.astype(np.float32)


class AttentionDensityImages(keras.callbacks.Callback):
    """Write TensorBoard images of each block's LTM attention density.

    At the end of each epoch, streams `segments` (one batch of segments of
    the same rows, oldest first) through the model's explicit-state step,
    and for the last segment writes, per block with a long-term memory, an
    image whose rows are the query positions and whose columns are [0, 1]
    (the memory's time axis, oldest left). With sticky memories it also
    writes the histogram that will place the next memory's samples.

    With `keras.callbacks.TensorBoard`. The images are written whatever the
    TensorBoard callback's `update_freq` is. With an integer `update_freq`,
    Keras' TensorBoard keeps a `tf.summary.record_if(step % update_freq ==
    0)` active through the whole of training, `step` being the last batch:
    every summary written at the end of an epoch whose last batch is not a
    multiple of `update_freq` is dropped silently, its own epoch scalars
    included (tensorflow/tensorflow#49109). This callback writes its images
    under `record_if(True)`, and, at the last batch of each epoch, switches
    that condition of Keras' TensorBoard on until its next batch (when
    Keras replaces it anyway), so that Keras' epoch scalars are written too,
    whatever the order of the two callbacks. A side effect: when this
    callback comes first in the list, the batch scalars of each epoch's last
    batch are written as well. Where this cannot be done (the number of
    steps per epoch unknown, a TensorFlow without this internal state), a
    warning says that Keras' epoch scalars may be missing.

    Args:
        log_dir: str. TensorBoard log directory (images go to
            `log_dir/densities`).
        segments: dict with `"token_ids"` `(num_segments, batch, S)` and
            `"reset"` `(num_segments, batch)`.
        num_points: int. Horizontal resolution. Defaults to `128`.
    """

    def __init__(self, log_dir, segments, num_points=128):
        super().__init__()
        self.log_dir = log_dir
        self.segments = segments
        self.num_points = num_points
        self._writer = None
        self._warned = False

    def compute_images(self):
        """`{name: float32 image (1, height, width, 1)}` for the last segment."""
        model = self.model
        token_ids = np.asarray(self.segments["token_ids"])
        resets = np.asarray(self.segments["reset"])
        state = model.get_initial_state(token_ids.shape[1])
        for s in range(token_ids.shape[0]):
            _, new_state, densities = model.step(
                token_ids[s], resets[s], state, return_density=True
            )
            if s < token_ids.shape[0] - 1:
                state = new_state
        images = {}
        for i, density in enumerate(densities):
            if density is None:
                continue
            grid = attention_density_grid(*density, num_points=self.num_points)
            images[f"layer_{i}/ltm_attention_density"] = grid[:1, :, :, None]
            sticky = state.get(state_name("layer", i, "ltm_density"))
            if sticky is not None:
                hist = np.asarray(ops.convert_to_numpy(sticky))[:1]
                hist = hist / np.maximum(hist.max(axis=-1, keepdims=True), 1e-12)
                images[f"layer_{i}/sticky_histogram"] = np.repeat(
                    hist[:, None, :, None], 16, axis=1
                ).astype(np.float32)
        return images

    def on_train_batch_end(self, batch, logs=None):
        steps = (self.params or {}).get("steps")
        if steps and batch + 1 >= steps:
            _record_epoch_end_summaries()

    def on_epoch_end(self, epoch, logs=None):
        # TensorBoard files are written with tf.summary, whatever the backend.
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/densities")
        with self._writer.as_default():
            if not self._warned and not bool(tf.summary.should_record_summaries()):
                self._warned = True
                warnings.warn(
                    "Summaries written at the end of this epoch are being "
                    "dropped by a `tf.summary.record_if` condition, most "
                    "likely that of `keras.callbacks.TensorBoard` with an "
                    "integer `update_freq` (tensorflow/tensorflow#49109): "
                    "Keras' epoch scalars may be missing. AttentionDensityImages "
                    "writes its images regardless. Use update_freq='epoch' or "
                    "an update_freq that divides the steps per epoch to keep "
                    "Keras' epoch scalars.",
                    stacklevel=2,
                )
            # Whatever condition is active (see the class docstring).
            with tf.summary.record_if(True):
                for name, image in self.compute_images().items():
                    tf.summary.image(name, image, step=epoch)
        self._writer.flush()


def _record_epoch_end_summaries():
    """Lift the `record_if` of `keras.callbacks.TensorBoard(update_freq=N)`
    until its next batch, so that epoch-end summaries are written.

    Keras' TensorBoard enters `record_if(should_record)` (a closure of its
    `_push_writer`) at every batch and leaves it at the next batch or at
    the end of training, restoring what was there before. Replacing the
    condition inside that context (and only when it is that closure)
    leaves everything as it was once Keras leaves the context. Returns
    whether the condition was lifted.
    """
    try:
        from tensorflow.python.ops import summary_ops_v2
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        return False
    state = getattr(summary_ops_v2, "_summary_state", None)
    condition = getattr(state, "is_recording", None)
    if not callable(condition) or not getattr(
        condition, "__qualname__", ""
    ).startswith("TensorBoard._push_writer."):
        return False
    state.is_recording = True
    return True
