"""Callbacks: pictures of where the long-term attention looks."""

import warnings

import keras
import numpy as np
from keras import ops

from keras_infformer.memory import (
    ResetMemory,  # noqa: F401 (re-export)
    state_name,
)


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


def attention_density_per_head(mu, sigma_sq, row=0, num_points=128):
    """The LTM attention density of each head for one batch row.

    Args:
        mu, sigma_sq: arrays `(batch, heads, Lq)`.
        row: int. The batch row.
        num_points: int. Points of the [0, 1] grid (memory time, old to new).

    Returns:
        float64 array `(heads, Lq, num_points)`: the Gaussian density
        `N(t; mu, sigma_sq)` of each query at each point (a pdf over [0, 1]:
        not rescaled, so heads and queries compare).
    """
    mu = np.asarray(ops.convert_to_numpy(mu), dtype=np.float64)[row]
    sigma_sq = np.asarray(ops.convert_to_numpy(sigma_sq), dtype=np.float64)[row]
    t = (np.arange(num_points) + 0.5) / num_points
    z = (t - mu[..., None]) ** 2 / sigma_sq[..., None]
    return np.exp(-0.5 * z) / np.sqrt(2 * np.pi * sigma_sq[..., None])


def _figure_image(figure):
    """A matplotlib `Figure` as a uint8 RGB image `(1, height, width, 3)`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[None, :, :, :3].copy()


def density_figure(mu, sigma_sq, row=0, num_points=128, title=None):
    """A labelled picture of the LTM attention density, one panel per head.

    Rows: the query positions of the segment (top: its first token);
    columns: the memory's time axis, oldest left, newest right; colour: the
    density of each query's Gaussian (viridis, bright = where the query
    reads; one colour scale for every head, shown on the bar). Needs
    matplotlib. Returns a uint8 RGB image `(1, height, width, 3)`.
    """
    from matplotlib.figure import Figure

    density = attention_density_per_head(mu, sigma_sq, row, num_points)
    heads, queries, _ = density.shape
    figure = Figure(figsize=(2.4 * heads + 1.4, 3.2), dpi=100, layout="constrained")
    axes = figure.subplots(1, heads, sharey=True, squeeze=False)[0]
    top = max(float(density.max()), 1e-12)
    for head, axis in enumerate(axes):
        picture = axis.imshow(
            density[head],
            aspect="auto",
            cmap="viridis",
            vmin=0.0,
            vmax=top,
            extent=(0.0, 1.0, queries - 0.5, -0.5),
            interpolation="nearest",
        )
        axis.set_title(f"head {head}", fontsize=9)
        axis.set_xticks([0.0, 0.5, 1.0], ["old", "0.5", "new"], fontsize=8)
        axis.set_xlabel("memory time", fontsize=8)
        axis.tick_params(axis="y", labelsize=8)
    axes[0].set_ylabel("query position", fontsize=8)
    bar = figure.colorbar(picture, ax=list(axes), shrink=0.9)
    bar.set_label("attention density", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    figure.suptitle(title or f"long-term attention, batch row {row}", fontsize=9)
    return _figure_image(figure)


def sticky_histogram_figure(histogram, row=0, title=None):
    """A labelled bar chart of a sticky memory's histogram (one batch row):
    the share of the next memory's samples placed in each bin of memory
    time, old to new. Needs matplotlib."""
    from matplotlib.figure import Figure

    values = np.asarray(ops.convert_to_numpy(histogram), dtype=np.float64)[row]
    values = values / max(values.sum(), 1e-12)
    bins = len(values)
    figure = Figure(figsize=(4.8, 2.6), dpi=100, layout="constrained")
    axis = figure.subplots()
    axis.bar((np.arange(bins) + 0.5) / bins, values, width=1.0 / bins, color="#2a788e")
    axis.axhline(1.0 / bins, color="#999999", linestyle="--", linewidth=1, label="uniform")
    axis.set_xlim(0.0, 1.0)
    axis.set_xticks([0.0, 0.5, 1.0], ["old", "0.5", "new"], fontsize=8)
    axis.set_xlabel("memory time", fontsize=8)
    axis.set_ylabel("share of the next samples", fontsize=8)
    axis.tick_params(axis="y", labelsize=8)
    axis.legend(fontsize=7, frameon=False)
    axis.set_title(title or f"sticky memory histogram, batch row {row}", fontsize=9)
    return _figure_image(figure)


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
    under `record_if(True)`, so they are never dropped, and warns once when
    it finds such a condition active: Keras' epoch scalars are then
    missing (use `update_freq="epoch"` or one that divides the steps per
    epoch). It does not change Keras' own condition.

    With matplotlib installed, the images are labelled figures
    (`density_figure`, `sticky_histogram_figure`): one panel per head for
    batch row `row`, query positions down, memory time across (old left,
    new right), a colour bar of the density; the histogram as bars against
    the uniform share. Without matplotlib (a warning says so), the raw
    grids of `compute_images()` are written: heads averaged, row `row`,
    each query scaled to its own maximum, white high.

    What to look for: after training, bright spots or bands that differ
    between heads and move with the query (the memory is read where it
    matters); a density spread evenly over the whole width in every head
    (a flat picture) means the long-term attention reads an average, not a
    place. The sticky histogram starts uniform (the dashed line) and leans
    towards the times that were attended.

    Args:
        log_dir: str. TensorBoard log directory (images go to
            `log_dir/densities`).
        segments: dict with `"token_ids"` `(num_segments, batch, S)` and
            `"reset"` `(num_segments, batch)`.
        num_points: int. Horizontal resolution. Defaults to `128`.
        row: int. The batch row drawn. Defaults to `0`.
    """

    def __init__(self, log_dir, segments, num_points=128, row=0):
        super().__init__()
        self.log_dir = log_dir
        self.segments = segments
        self.num_points = num_points
        self.row = int(row)
        batch = np.asarray(segments["token_ids"]).shape[1]
        if not 0 <= self.row < batch:
            raise ValueError(
                f"`row` must be a batch row of `segments` (0 to {batch - 1}). Received: row={row!r}"
            )
        self._writer = None
        self._warned = False

    def _densities(self):
        """Per block: `(mu, sigma_sq)` of the last segment (or `None`), and
        the state it was read from."""
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
        return densities, state

    def compute_images(self):
        """`{name: float32 image (1, height, width, 1)}` for the last
        segment: the raw grids (heads averaged, batch row `row`, each query
        scaled to its maximum)."""
        densities, state = self._densities()
        row = slice(self.row, self.row + 1)
        images = {}
        for i, density in enumerate(densities):
            if density is None:
                continue
            grid = attention_density_grid(*density, num_points=self.num_points)
            images[f"layer_{i}/ltm_attention_density"] = grid[row, :, :, None]
            sticky = state.get(state_name("layer", i, "ltm_density"))
            if sticky is not None:
                hist = np.asarray(ops.convert_to_numpy(sticky))[row]
                hist = hist / np.maximum(hist.max(axis=-1, keepdims=True), 1e-12)
                images[f"layer_{i}/sticky_histogram"] = np.repeat(
                    hist[:, None, :, None], 16, axis=1
                ).astype(np.float32)
        return images

    def compute_figures(self):
        """`{name: uint8 RGB image (1, height, width, 3)}`: the labelled
        figures of the last segment (needs matplotlib)."""
        densities, state = self._densities()
        images = {}
        for i, density in enumerate(densities):
            if density is None:
                continue
            images[f"layer_{i}/ltm_attention_density"] = density_figure(
                *density,
                row=self.row,
                num_points=self.num_points,
                title=f"block {i}: long-term attention, batch row {self.row}",
            )
            sticky = state.get(state_name("layer", i, "ltm_density"))
            if sticky is not None:
                images[f"layer_{i}/sticky_histogram"] = sticky_histogram_figure(
                    sticky,
                    row=self.row,
                    title=f"block {i}: sticky histogram, batch row {self.row}",
                )
        return images

    def _images(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            if not getattr(self, "_warned_matplotlib", False):
                self._warned_matplotlib = True
                warnings.warn(
                    "AttentionDensityImages draws labelled figures with "
                    "matplotlib, which is not installed: writing the raw "
                    "grids instead (`pip install matplotlib`).",
                    stacklevel=3,
                )
            return self.compute_images()
        return self.compute_figures()

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
                for name, image in self._images().items():
                    tf.summary.image(name, image, step=epoch)
        self._writer.flush()
