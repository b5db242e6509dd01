import keras
import numpy as np
from keras import ops

from keras_infformer import utils

_MODES = ("quantile", "random")


@keras.saving.register_keras_serializable(package="keras_infformer")
class StickyMemorySampler(keras.layers.Layer):
    """Sticky memories: read the old signal where attention went.

    [0, 1] is split into `num_bins` equal bins. For each batch row the mass
    that every Gaussian density `N(μ, σ²)` of the last attention pass puts
    into bin `k`, `Φ((e_{k+1} − μ)/σ) − Φ((e_k − μ)/σ)`, is summed over
    queries and heads and normalised into a histogram `p`. `num_samples`
    points are then drawn from the piecewise-uniform density of `p`:

    - `mode="quantile"`: deterministic, the inverse CDF at `m/M`,
      `m = 1..M` (reproducible, XLA-friendly). A flat histogram gives
      exactly the points `m/M` of the uniform update, so a memory without
      preference is updated as without sticky memories;
    - `mode="random"`: the paper's behaviour, `M` bins drawn from `p` with
      replacement, each point uniform within its bin.

    The points are sorted and lie in [0, 1]; regions that attention used get
    more of the next memory's room. The layer has no state of its own: the
    decoder keeps the previous pass's histogram.

    Args:
        num_samples: int. Number of points `M` to return.
        num_bins: int. Number of histogram bins `D`. Defaults to `128`.
        mode: `"quantile"` or `"random"`. Defaults to `"quantile"`.
        seed: optional int. Seed of the random mode.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        mu: tensor of shape `(batch_size, ...)` (e.g. `(batch_size, heads,
            Lq)`), the means of the attention densities.
        sigma_sq: tensor of the same shape, their variances.

    Returns:
        float32 tensor of shape `(batch_size, num_samples)`, sorted points in
        [0, 1].

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    sampler = keras_infformer.layers.StickyMemorySampler(num_samples=16)
    mu = np.full((1, 2, 5), 0.8, dtype="float32")
    points = sampler(mu, np.full_like(mu, 1e-3))  # Crowded around 0.8.
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    def __init__(self, num_samples, num_bins=128, mode="quantile", seed=None, **kwargs):
        super().__init__(**kwargs)
        self.num_samples, self.num_bins, self.mode = self.check_arguments(
            num_samples, num_bins, mode
        )
        self.seed = seed
        if mode == "random":
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.bin_edges = utils.constant(np.linspace(0.0, 1.0, self.num_bins + 1))
        self.quantile_levels = utils.constant(
            # m/M rather than (m - 1/2)/M: the latter parks a point of the
            # signal near t = 0 that every update re-reads (a fixed point of
            # the read-and-squeeze map) where the fit overshoots.
            np.arange(1, self.num_samples + 1) / self.num_samples
        )

    @staticmethod
    def check_arguments(num_samples, num_bins, mode):
        """The hyper-parameters checked (raises on bad ones)."""
        num_samples = utils.check_positive_int(num_samples, "num_samples")
        num_bins = utils.check_positive_int(num_bins, "num_bins")
        if mode not in _MODES:
            raise ValueError(
                f"`mode` must be one of {_MODES}. Received: mode={mode!r}"
            )
        return num_samples, num_bins, mode

    @property
    def input_dtype(self):
        # The Gaussian terms run in float32: `mu` and `sigma_sq` are not
        # autocast down to the compute dtype under mixed precision.
        return "float32"

    def histogram(self, mu, sigma_sq):
        """Normalised attention mass per bin, shape `(batch_size, num_bins)`."""
        mu = ops.cast(mu, "float32")
        sigma = ops.sqrt(ops.cast(sigma_sq, "float32"))
        batch = ops.shape(mu)[0]
        mu = ops.reshape(mu, (batch, -1, 1))
        sigma = ops.reshape(sigma, (batch, -1, 1))
        cdf = 0.5 * (1.0 + ops.erf((self.bin_edges - mu) / (sigma * np.sqrt(2.0))))
        mass = ops.sum(cdf[..., 1:] - cdf[..., :-1], axis=1)
        # A small floor keeps every bin reachable and the division safe.
        mass = ops.maximum(mass, 0.0) + 1e-6 / self.num_bins
        return mass / ops.sum(mass, axis=-1, keepdims=True)

    def uniform_histogram(self, batch_size):
        """The flat histogram, the density before any attention pass."""
        return ops.full((batch_size, self.num_bins), 1.0 / self.num_bins)

    def sample(self, histogram):
        """Sorted points `(batch_size, num_samples)` drawn from a histogram."""
        histogram = ops.cast(histogram, "float32")
        histogram = histogram / ops.sum(histogram, axis=-1, keepdims=True)
        if self.mode == "quantile":
            levels = ops.broadcast_to(
                self.quantile_levels, (ops.shape(histogram)[0], self.num_samples)
            )
        else:
            levels = keras.random.uniform(
                (ops.shape(histogram)[0], self.num_samples),
                seed=self.seed_generator,
            )
            # Sorted uniform levels through the monotone inverse CDF give
            # sorted points: i.i.d. draws from the histogram's density.
            levels = ops.sort(levels, axis=-1)
        cdf = ops.cumsum(histogram, axis=-1)
        # Bin of each level: how many bin-ends lie at or below it.
        upper = cdf[:, :-1]
        index = ops.sum(
            ops.cast(ops.expand_dims(levels, -1) >= ops.expand_dims(upper, 1), "int32"),
            axis=-1,
        )
        cdf_below = ops.take_along_axis(
            ops.pad(cdf, ((0, 0), (1, 0)))[:, :-1], index, axis=-1
        )
        mass = ops.take_along_axis(histogram, index, axis=-1)
        within = ops.clip((levels - cdf_below) / mass, 0.0, 1.0)
        points = (ops.cast(index, "float32") + within) / self.num_bins
        return ops.stop_gradient(ops.clip(points, 0.0, 1.0))

    def call(self, mu, sigma_sq):
        if tuple(mu.shape) != tuple(sigma_sq.shape):
            raise ValueError(
                "`mu` and `sigma_sq` must have the same shape. Received: "
                f"mu.shape={tuple(mu.shape)}, sigma_sq.shape={tuple(sigma_sq.shape)}"
            )
        utils.check_finite(mu, "mu")
        utils.check_finite(sigma_sq, "sigma_sq")
        return self.sample(self.histogram(mu, sigma_sq))

    def compute_output_spec(self, mu, sigma_sq):
        return keras.KerasTensor((mu.shape[0], self.num_samples), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_samples": self.num_samples,
                "num_bins": self.num_bins,
                "mode": self.mode,
                "seed": self.seed,
            }
        )
        return config
