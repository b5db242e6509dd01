import keras
import numpy as np
from keras import ops

from keras_infformer import utils

_MODES = ("quantile", "random")

# Variances are clamped at this floor inside `histogram()`: far below
# GaussianAttention's own floor (1e-6 in float32), so valid densities are
# untouched, and large enough that `(e_k - mu) / sigma` stays finite.
_MIN_SIGMA_SQ = 1e-12


def _check_positive(x, name):
    """Raise a ValueError if a concrete `x` holds a value <= 0."""
    value = utils.concrete_value(x)
    if value is None:
        return
    value = value.astype(np.float64)
    positive = value > 0
    if not positive.all():
        bad = value.reshape(-1)[np.argmin(positive.reshape(-1))]
        raise ValueError(
            f"`{name}` must hold only positive values (variances). Received "
            f"{name} with {int((~positive).sum())} entries <= 0 (e.g. "
            f"{name}={float(bad)!r}) of shape {tuple(value.shape)}."
        )


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
    more of the next memory's room. With `uniform_share > 0` the histogram
    is first mixed with the flat one, `(1 − s)·p + s/D`: every region keeps
    at least the share `s` of the room a uniform update gives it, so what
    no query has needed yet (a far key, before the question that needs it)
    is squeezed, not dropped. Measured on the single-token far-recall task
    (benchmarks/recall_task.py): `s = 0` 0.29 answer accuracy, `s = 0.25`
    0.16, `s = 0.5` 1.00 (uniform updates 1.00). The layer has no state of its own: the
    decoder keeps the previous pass's histogram.

    Bad densities. Calling the layer on concrete (eager) values checks them:
    a NaN or infinite `mu` or `sigma_sq`, or a `sigma_sq <= 0`, raises a
    ValueError that names the argument and shows a received value. `mu`
    outside [0, 1] is valid: only the mass of `N(μ, σ²)` inside [0, 1]
    counts (a density with no mass there leaves the histogram flat).
    Inside compiled code (a traced `tf.function`, `jax.jit`) values cannot
    be checked, so `histogram()` and `sample()` are made safe instead and
    never return NaN: a variance below `1e-12` (zero or negative included)
    is clamped to it (a point mass at `μ`); a density whose `mu` or
    `sigma_sq` is not finite is left out of the histogram; in `sample()`,
    non-finite or negative histogram entries count as 0 and a row without
    any mass reads at the uniform points. Valid inputs give the same result
    as without these guards.

    Args:
        num_samples: int. Number of points `M` to return.
        num_bins: int. Number of histogram bins `D`. Defaults to `128`.
        mode: `"quantile"` or `"random"`. Defaults to `"quantile"`.
        uniform_share: float in [0, 1]. Share of the flat histogram mixed
            into the attention histogram before sampling. `0` is the
            paper's sampler; `1` is the uniform update. Defaults to `0.5`.
        seed: optional int. Seed of the random mode.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        mu: tensor of shape `(batch_size, ...)` (e.g. `(batch_size, heads,
            Lq)`), the means of the attention densities. Finite.
        sigma_sq: tensor of the same shape, their variances. Finite and
            positive.

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

    def __init__(
        self,
        num_samples,
        num_bins=128,
        mode="quantile",
        uniform_share=0.5,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.uniform_share = utils.check_range(
            uniform_share, "uniform_share", 0.0, 1.0, low_open=False, high_open=False
        )
        self.num_samples, self.num_bins, self.mode = self.check_arguments(
            num_samples, num_bins, mode
        )
        self.seed = seed
        if mode == "random":
            self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.bin_edges = utils.constant(np.linspace(0.0, 1.0, self.num_bins + 1))
        # No weights to make: built at once. A layer used through its
        # methods (the decoder calls `sample`, never `__call__`) would
        # otherwise stay unbuilt, and Keras' trainer re-traces a model with
        # an unbuilt layer at every train_on_batch / predict_on_batch call.
        self.built = True
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
            raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
        return num_samples, num_bins, mode

    @property
    def input_dtype(self):
        # The Gaussian terms run in float32: `mu` and `sigma_sq` are not
        # autocast down to the compute dtype under mixed precision.
        return "float32"

    def histogram(self, mu, sigma_sq):
        """Normalised attention mass per bin, shape `(batch_size, num_bins)`.

        Safe inside compiled code (see the class docstring): variances are
        clamped at `1e-12`, densities with a non-finite `mu` or `sigma_sq`
        are left out, and a row without mass gives the flat histogram.
        """
        return self.normalize_mass(self.bin_mass(mu, sigma_sq))

    def bin_mass(self, mu, sigma_sq):
        """Attention mass per bin summed over densities, not normalised.

        Masses of several passes add up (token-by-token decoding sums them
        over a segment) and `normalize_mass` of the sum is the `histogram`
        of all the densities at once.
        """
        mu = ops.cast(mu, "float32")
        sigma_sq = ops.cast(sigma_sq, "float32")
        batch = ops.shape(mu)[0]
        count = 1
        for dim in mu.shape[1:]:
            if dim is None:
                count = -1
                break
            count *= int(dim)
        mu = ops.reshape(mu, (batch, count, 1))
        sigma_sq = ops.reshape(sigma_sq, (batch, count, 1))
        valid = ops.logical_and(ops.isfinite(mu), ops.isfinite(sigma_sq))
        mu = ops.where(valid, mu, 0.5)
        sigma = ops.sqrt(ops.where(valid, ops.maximum(sigma_sq, _MIN_SIGMA_SQ), 1.0))
        cdf = 0.5 * (1.0 + ops.erf(ops.subtract(self.bin_edges, mu) / (sigma * np.sqrt(2.0))))
        mass = ops.where(valid, cdf[..., 1:] - cdf[..., :-1], 0.0)
        return ops.sum(mass, axis=1)

    def normalize_mass(self, mass):
        """`bin_mass` output as a histogram that sums to 1 per row."""
        # A small floor keeps every bin reachable and the division safe.
        mass = ops.maximum(mass, 0.0) + 1e-6 / self.num_bins
        return mass / ops.sum(mass, axis=-1, keepdims=True)

    def uniform_histogram(self, batch_size):
        """The flat histogram, the density before any attention pass."""
        return ops.full((batch_size, self.num_bins), 1.0 / self.num_bins)

    def sample(self, histogram):
        """Sorted points `(batch_size, num_samples)` drawn from a histogram.

        `histogram`: `(batch_size, num_bins)` non-negative weights (need not
        sum to 1). Safe inside compiled code: non-finite or negative entries
        count as 0, and a row without mass reads at the uniform points.
        """
        if not hasattr(histogram, "shape"):
            histogram = ops.convert_to_tensor(histogram, "float32")
        if len(histogram.shape) != 2 or (
            histogram.shape[-1] is not None and int(histogram.shape[-1]) != self.num_bins
        ):
            raise ValueError(
                "`histogram` must have shape (batch_size, num_bins) = "
                f"(batch_size, {self.num_bins}). Received: "
                f"histogram.shape={tuple(histogram.shape)}"
            )
        histogram = ops.cast(histogram, "float32")
        usable = ops.logical_and(ops.isfinite(histogram), histogram > 0.0)
        histogram = ops.where(usable, histogram, 0.0)
        total = ops.sum(histogram, axis=-1, keepdims=True)
        histogram = ops.where(
            total > 0.0,
            histogram / ops.where(total > 0.0, total, 1.0),
            1.0 / self.num_bins,
        )
        if self.uniform_share > 0:
            histogram = (1.0 - self.uniform_share) * histogram + (
                self.uniform_share / self.num_bins
            )
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
        cdf_below = ops.take_along_axis(ops.pad(cdf, ((0, 0), (1, 0)))[:, :-1], index, axis=-1)
        mass = ops.take_along_axis(histogram, index, axis=-1)
        # A level lands in an empty bin only past the last bin with mass (a
        # level at or above the total, after rounding): it reads the end of
        # that last bin with mass, not 0 / 0.
        nonempty = mass > 0.0
        within = ops.clip((levels - cdf_below) / ops.where(nonempty, mass, 1.0), 0.0, 1.0)
        points = (ops.cast(index, "float32") + within) / self.num_bins
        bin_ends = ops.cast(ops.arange(1, self.num_bins + 1), "float32")
        last_end = ops.max(
            ops.where(histogram > 0.0, bin_ends / self.num_bins, 0.0),
            axis=-1,
            keepdims=True,
            initial=0.0,  # A batch of 0 rows is valid too.
        )
        points = ops.where(nonempty, points, last_end)
        return ops.stop_gradient(ops.clip(points, 0.0, 1.0))

    def call(self, mu, sigma_sq):
        if len(mu.shape) < 1:
            raise ValueError(
                "`mu` must have rank >= 1 (a batch axis first). Received: "
                f"mu.shape={tuple(mu.shape)}"
            )
        if tuple(mu.shape) != tuple(sigma_sq.shape):
            raise ValueError(
                "`mu` and `sigma_sq` must have the same shape. Received: "
                f"mu.shape={tuple(mu.shape)}, sigma_sq.shape={tuple(sigma_sq.shape)}"
            )
        utils.check_finite(mu, "mu")
        utils.check_finite(sigma_sq, "sigma_sq")
        _check_positive(sigma_sq, "sigma_sq")
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
                "uniform_share": self.uniform_share,
                "seed": self.seed,
            }
        )
        return config
