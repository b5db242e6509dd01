import math

import keras
import numpy as np
from keras import ops

from keras_infformer import basis, utils

# How a query places its density (`GaussianAttention`'s `density_mode`).
DENSITY_MODES = ("affine", "content")


def check_density_mode(density_mode):
    """`density_mode` checked: one of `DENSITY_MODES`."""
    if not isinstance(density_mode, str) or density_mode not in DENSITY_MODES:
        raise ValueError(
            f"`density_mode` must be one of {DENSITY_MODES}. "
            f"Received: density_mode={density_mode!r}"
        )
    return density_mode


@keras.saving.register_keras_serializable(package="keras_infformer")
class GaussianAttention(keras.layers.Layer):
    """Continuous (Gaussian) multi-head attention over a basis-coded memory.

    Keys and values are projections of the memory coefficients `B`
    (`K = B W_K`, `V = B W_V`, no bias). For each query and head the `N`
    scores `s = K_h q / √d_h` give the mean and variance of a Gaussian
    density over [0, 1]: `μ = sigmoid(w_μ · s)`, `σ² = softplus(w_σ · s)`
    (clamped at `min_variance`), with `w_μ, w_σ ∈ ℝ^N` shared by the heads.
    The head output is the value signal's expectation under that density,
    `z_h = V_hᵀ r` with `r_j = N(μ; c_j, σ² + w_j²)` in closed form, so the
    cost is `O(N)` per query however long the past. Heads are concatenated
    and projected with `W_O` (no bias). The Gaussian terms run in float32
    whatever the dtype policy.

    With `density_mode="content"` the density is placed by content instead:
    the memory's signal `X̄(t) = Bᵀ ψ(t)` is sampled at `N` evenly spaced
    points `t_m` of [0, 1], each sample gets a key `W_Kᵀ X̄(t_m)`, and `μ`
    and `σ²` are the mean and variance of the points under the softmax of
    the query's scores against those keys (`σ²` floored as above). Every
    place of the memory then moves `μ` through its own score, as in a
    softmax attention, where the affine density only feels the signal
    within a few `σ` of `μ`; one token far back is found by what it is
    (docs/theory.md §6a). Scoring the `N` samples costs `O(N · e)` per
    query instead of `O(e)`.

    A KL regulariser `kl_weight · mean(½(σ²/σ₀² − log(σ²/σ₀²) − 1))` (mean
    over batch, heads and queries) is added with `add_loss`; it keeps the
    densities from collapsing.

    Args:
        num_heads: int. Number of attention heads `h`.
        key_dim: int. Size of each query/key head `d_h`.
        value_dim: int. Size of each value head. Defaults to `key_dim`.
        output_dim: int. Size of the output. Defaults to the query's last
            dimension when `project_query=True`, else `num_heads * value_dim`.
        basis_widths: tuple of floats or `None`. The widths of the memory's
            basis functions (must match the `ContinuousLTM`'s). `None`
            (default) scales `relative_basis_widths` with the `N` of the
            coefficients, as `ContinuousLTM` does.
        relative_basis_widths: tuple of floats. The widths in units of
            `1 / C` (`C` centres per width), used when `basis_widths` is
            `None`. Defaults to `(2.56, 12.8)`.
        density_mode: str. How the query places its Gaussian: `"affine"` (the
            paper's `μ = sigmoid(w_μ · s)`, `σ² = softplus(w_σ · s)`) or
            `"content"` (the moments of a softmax over keys of the signal
            sampled at `N` points). Defaults to `"affine"`.
        sigma_0: float. Reference standard deviation of the KL regulariser.
            Defaults to `0.05`.
        kl_weight: float. Weight of the KL regulariser (0 disables it).
            Defaults to `1e-6`.
        min_variance: float. Floor on `σ²`. Defaults to `1e-6`.
        zero_output: bool. Start the output projection `W_O` at zero, so the
            layer reads exactly zero until training moves it (a read added
            to a residual stream or to another attention then starts as if
            it were absent). Defaults to `False`.
        project_query: bool. Project the query with an own `W_Q`. With
            `False` the query must already be split into heads,
            `(batch_size, Lq, num_heads, key_dim)` (e.g. the short-term
            attention's projected query, as in the paper). Defaults to `True`.
        kernel_initializer: initializer of the projections. Defaults to
            `"glorot_uniform"`.
        **kwargs: other keyword arguments passed to `keras.layers.Layer`,
            including `name`, `dtype` etc.

    Call arguments:
        query: tensor of shape `(batch_size, Lq, d)`, or
            `(batch_size, Lq, num_heads, key_dim)` when `project_query=False`.
        coefficients: tensor of shape `(batch_size, N, e)`, the memory's
            basis coefficients (from `ContinuousLTM`).
        return_density: bool. Also return `μ` and `σ²`, each of shape
            `(batch_size, num_heads, Lq)`.

    Returns:
        Tensor of shape `(batch_size, Lq, output_dim)`, or
        `(outputs, mu, sigma_sq)` with `return_density=True`.

    Examples:

    ```python
    import numpy as np
    import keras_infformer

    attention = keras_infformer.layers.GaussianAttention(num_heads=2, key_dim=4)
    query = np.random.rand(2, 10, 8).astype("float32")
    coefficients = np.random.rand(2, 64, 8).astype("float32")
    outputs, mu, sigma_sq = attention(query, coefficients, return_density=True)
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        output_dim=None,
        basis_widths=None,
        relative_basis_widths=basis.RELATIVE_BASIS_WIDTHS,
        density_mode="affine",
        sigma_0=0.05,
        kl_weight=1e-6,
        min_variance=1e-6,
        project_query=True,
        zero_output=False,
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = utils.check_positive_int(num_heads, "num_heads")
        self.key_dim = utils.check_positive_int(key_dim, "key_dim")
        self.value_dim = (
            self.key_dim if value_dim is None else utils.check_positive_int(value_dim, "value_dim")
        )
        self.output_dim = (
            None if output_dim is None else utils.check_positive_int(output_dim, "output_dim")
        )
        # Resolved against N in build() when None (N is the coefficients').
        self.basis_widths = (
            None if basis_widths is None else basis.check_widths(basis_widths, "basis_widths")
        )
        self.relative_basis_widths = basis.check_widths(
            relative_basis_widths, "relative_basis_widths"
        )
        self.density_mode = check_density_mode(density_mode)
        self.sigma_0 = utils.check_range(sigma_0, "sigma_0", 0.0, float("inf"))
        self.kl_weight = utils.check_range(
            kl_weight, "kl_weight", 0.0, float("inf"), low_open=False
        )
        self.min_variance = utils.check_range(min_variance, "min_variance", 0.0, float("inf"))
        self.project_query = bool(project_query)
        self.zero_output = bool(zero_output)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Each projection's seed follows from this one and its name.
        self._seed = utils.draw_seed(self.kernel_initializer)

    def _initializer(self, name):
        return utils.seeded_initializer(self.kernel_initializer, self._seed, name)

    def build(self, query_shape, coefficients_shape):
        if len(coefficients_shape) != 3 or coefficients_shape[1] is None:
            raise ValueError(
                "`coefficients` must have shape (batch_size, N, e) with static "
                f"N and e. Received: coefficients_shape={coefficients_shape}"
            )
        self.num_basis = int(coefficients_shape[1])
        self.basis_widths = basis.resolve_basis_widths(
            self.num_basis, self.basis_widths, self.relative_basis_widths
        )
        centers, widths = basis.basis_parameters(self.num_basis, self.basis_widths)
        self.centers = utils.constant(centers)
        self.widths = utils.constant(widths)
        # The distinct centres and widths: the basis is their grid (centre
        # c·W + w), which `basis.gaussian_expectation_grid` exploits.
        num_widths = len(self.basis_widths)
        self._grid_centers = utils.constant(centers[::num_widths])
        self._grid_widths = utils.constant(widths[:num_widths])
        h, dk, dv = self.num_heads, self.key_dim, self.value_dim
        if self.project_query:
            if len(query_shape) != 3:
                raise ValueError(
                    "`query` must have shape (batch_size, Lq, d). Received: "
                    f"query_shape={query_shape}"
                )
            query_dim = int(query_shape[-1])
            self._query_dense = keras.layers.EinsumDense(
                "bqd,dhk->bqhk",
                output_shape=(None, h, dk),
                kernel_initializer=self._initializer("query"),
                dtype=self.dtype_policy,
                name="query",
            )
            self._query_dense.build(query_shape)
        else:
            if len(query_shape) != 4 or tuple(query_shape[2:]) != (h, dk):
                raise ValueError(
                    "With project_query=False, `query` must have shape "
                    f"(batch_size, Lq, {h}, {dk}). Received: "
                    f"query_shape={query_shape}"
                )
            query_dim = h * dv
        output_dim = self.output_dim or query_dim
        self._key_dense = keras.layers.EinsumDense(
            "bne,ehk->bnhk",
            output_shape=(None, h, dk),
            kernel_initializer=self._initializer("key"),
            dtype=self.dtype_policy,
            name="key",
        )
        self._key_dense.build(coefficients_shape)
        self._value_dense = keras.layers.EinsumDense(
            "bne,ehk->bnhk",
            output_shape=(None, h, dv),
            kernel_initializer=self._initializer("value"),
            dtype=self.dtype_policy,
            name="value",
        )
        self._value_dense.build(coefficients_shape)
        self._output_dense = keras.layers.EinsumDense(
            "bqhk,hko->bqo",
            output_shape=(None, output_dim),
            kernel_initializer=("zeros" if self.zero_output else self._initializer("output")),
            dtype=self.dtype_policy,
            name="output",
        )
        self._output_dense.build((None, None, h, dv))
        if self.density_mode == "content":
            # The N points where the signal is sampled and scored, and the
            # basis functions there: X̄(t_m) = Σ_j ψ_j(t_m) B_j.
            points = np.linspace(0.0, 1.0, self.num_basis)
            self._sample_points = utils.constant(points)
            self._sample_basis = utils.constant(basis.design_matrix(points, centers, widths).T)
            self._output_dim = output_dim
            self.built = True
            return
        # Like PyTorch's nn.Linear(N, 1) of the reference: U(±1/√N).
        limit = 1.0 / math.sqrt(self.num_basis)
        self.mu_kernel = self.add_weight(
            shape=(self.num_basis,),
            initializer=utils.seeded_initializer(
                keras.initializers.RandomUniform(-limit, limit), self._seed, "mu_kernel"
            ),
            name="mu_kernel",
        )
        self.sigma_kernel = self.add_weight(
            shape=(self.num_basis,),
            initializer=utils.seeded_initializer(
                keras.initializers.RandomUniform(-limit, limit), self._seed, "sigma_kernel"
            ),
            name="sigma_kernel",
        )
        self._output_dim = output_dim
        self.built = True

    def memory_view(self, coefficients):
        """What reading needs of a memory, computed once per memory.

        Returns `(keys, values)`, float32. The keys are, with the affine
        density, the memory's keys contracted with the μ and σ kernels,
        `(batch_size, num_heads, key_dim, 2)`; with the content density,
        the keys of the signal's `num_basis` samples,
        `(batch_size, num_basis, num_heads, key_dim)`
        (`memory_view_shapes`). The values are
        `(batch_size, num_basis, num_heads, value_dim)`. Token-by-token
        decoding reads one memory many times; keeping its view saves
        projecting the `num_basis` coefficients at every token.
        """
        values = ops.cast(self._value_dense(ops.cast(coefficients, self.compute_dtype)), "float32")
        if self.density_mode == "content":
            signal = ops.einsum(
                "mn,bne->bme", self._sample_basis, ops.cast(coefficients, "float32")
            )
            keys = ops.cast(self._key_dense(ops.cast(signal, self.compute_dtype)), "float32")
            return keys, values
        # μ and σ² see the scores s = K_h q / √d_h only through w·s, and
        # w·s = q · (K_hᵀ w) / √d_h: contracting the keys with the two
        # kernels first gives the same values without ever forming the
        # (L × N) score matrix per head (O((L + N)·e) instead of O(L·N·e)).
        # And K_hᵀ w = W_K,hᵀ (Bᵀ w) (no bias): the coefficients are
        # contracted with the kernels first and only these 2 rows go
        # through the key projection, instead of the N rows of B
        # (O(N·e) instead of O(N·e²)).
        kernels = ops.stack(
            [ops.cast(self.mu_kernel, "float32"), ops.cast(self.sigma_kernel, "float32")],
            axis=-1,
        )  # (N, 2)
        weighted_coefficients = ops.einsum(
            "bne,nj->bje", ops.cast(coefficients, "float32"), kernels
        )  # (B, 2, e)
        weighted_keys = ops.transpose(
            ops.cast(
                self._key_dense(ops.cast(weighted_coefficients, self.compute_dtype)),
                "float32",
            ),
            (0, 2, 3, 1),
        )  # (B, h, d_h, 2)
        return weighted_keys, values

    def memory_view_shapes(self, batch_size=None):
        """The shapes of `memory_view()`'s `(keys, values)`."""
        h, n = self.num_heads, self.num_basis
        keys = (batch_size, n, h, self.key_dim)
        if self.density_mode == "affine":
            keys = (batch_size, h, self.key_dim, 2)
        return keys, (batch_size, n, h, self.value_dim)

    def density(self, query, coefficients=None, view=None):
        """`(mu, sigma_sq)` of shape `(batch_size, num_heads, Lq)`, float32.

        From the `coefficients`, or from their `memory_view()` (`view`).
        """
        q = self._query_dense(query) if self.project_query else query
        if view is None:
            view = self.memory_view(coefficients)
        if self.density_mode == "content":
            scores = ops.einsum("bqhk,bmhk->bhqm", ops.cast(q, "float32"), view[0])
            weights = ops.softmax(scores / math.sqrt(self.key_dim), axis=-1)
            mu = ops.sum(ops.multiply(weights, self._sample_points), axis=-1)
            spread = ops.square(ops.subtract(self._sample_points, ops.expand_dims(mu, -1)))
            sigma_sq = ops.sum(ops.multiply(weights, spread), axis=-1)
            return mu, ops.maximum(sigma_sq, self.min_variance)
        weighted_keys = view[0]
        logits = ops.einsum("bqhk,bhkj->bhqj", ops.cast(q, "float32"), weighted_keys) / math.sqrt(
            self.key_dim
        )
        mu = ops.sigmoid(logits[..., 0])
        sigma_sq = ops.maximum(ops.softplus(logits[..., 1]), self.min_variance)
        return mu, sigma_sq

    def kl_regularizer(self, sigma_sq):
        """`mean(½(σ²/σ₀² − log(σ²/σ₀²) − 1))`, the unweighted KL term."""
        ratio = sigma_sq / (self.sigma_0**2)
        return ops.mean(0.5 * (ratio - ops.log(ratio) - 1.0))

    def read(self, query, coefficients=None, view=None):
        """`(outputs, mu, sigma_sq)` without adding the regulariser.

        The forward pass alone, for inference paths (token-by-token
        decoding) where no training loss is collected. Reads the
        `coefficients`, or their `memory_view()` (`view`).
        """
        if view is None:
            view = self.memory_view(coefficients)
        mu, sigma_sq = self.density(query, view=view)
        # r[b, h, q, w, c] is basis function c·W + w: read the values
        # grouped the same way, (B, N, h, k) -> (B, C, W, h, k). (With the
        # batch axes (b, h) first in both operands instead, JAX's inference
        # step at the paper's size was 8% slower.)
        r = basis.gaussian_expectation_by_width(mu, sigma_sq, self._grid_centers, self._grid_widths)
        values = view[1]
        num_widths = len(self.basis_widths)
        values = ops.reshape(
            values, (-1, self.num_basis // num_widths, num_widths) + tuple(values.shape[2:])
        )
        z = ops.einsum("bhqwc,bcwhk->bqhk", r, values)
        outputs = self._output_dense(ops.cast(z, self.compute_dtype))
        return outputs, mu, sigma_sq

    def call(self, query, coefficients, return_density=False, training=None):
        outputs, mu, sigma_sq = self.read(query, coefficients)
        if self.kl_weight > 0:
            self.add_loss(self.kl_weight * self.kl_regularizer(sigma_sq))
        if return_density:
            return outputs, mu, sigma_sq
        return outputs

    def compute_output_spec(self, query, coefficients, return_density=False, training=None):
        batch, length = query.shape[0], query.shape[1]
        outputs = keras.KerasTensor((batch, length, self._output_dim), dtype=self.compute_dtype)
        if not return_density:
            return outputs
        density = keras.KerasTensor((batch, self.num_heads, length), dtype="float32")
        return outputs, density, keras.KerasTensor(density.shape, dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "output_dim": self.output_dim,
                "basis_widths": self.basis_widths,
                "relative_basis_widths": self.relative_basis_widths,
                "density_mode": self.density_mode,
                "sigma_0": self.sigma_0,
                "kl_weight": self.kl_weight,
                "min_variance": self.min_variance,
                "project_query": self.project_query,
                "zero_output": self.zero_output,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            }
        )
        return config
