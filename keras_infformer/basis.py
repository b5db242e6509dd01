"""Gaussian radial basis functions and ridge-regression matrices.

The ∞-former writes a sequence of vectors as a continuous signal
`X̄(t) = Bᵀ ψ(t)`, `t ∈ [0, 1]`, where `ψ(t)` holds `N` normalised Gaussian
densities. This module holds the pieces that do not depend on the data:

- `basis_parameters`: the centres and widths of the `N` basis functions.
- `rbf`: `ψ_j(t)` for every `j` (on `keras.ops`).
- `gaussian_expectation`: `E_{N(μ, σ²)}[ψ_j]` in closed form (on `keras.ops`);
  `gaussian_expectation_by_width` / `_grid`: the same for the basis of
  `basis_parameters`, in a factored form that does less work per function.
- `design_matrix`, `ridge_matrix`: NumPy float64 precompute of the fit
  `B = Gᵀ X`, built once per set of positions and kept as a constant.
- `update_positions`: where old samples and new vectors sit in a memory update.
"""

import math

import numpy as np
from keras import ops

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
# Blocks of centres whose moments the Gaussian expectation's gradient sums.
_MOMENT_BLOCKS = 8


# The paper's sorting widths {0.01, 0.05} at N = 512 (256 centres per
# width), in units of 1/C for C centres per width: the default resolution.
RELATIVE_BASIS_WIDTHS = (2.56, 12.8)


def resolve_basis_widths(num_basis, basis_widths=None, relative_basis_widths=None):
    """The basis widths on [0, 1]: `basis_widths` when given, else scaled.

    A width that resolves tokens at one `N` is a spike between centres at
    a smaller `N` and a blur at a larger one, so the default is relative:
    `relative_basis_widths[k] / C`, with `C = num_basis /
    len(relative_basis_widths)` centres per width (about one centre
    spacing per unit). `(2.56, 12.8)` gives the paper's `(0.01, 0.05)` at
    `N = 512` exactly and `(0.16, 0.8)` at `N = 32`.

    Args:
        num_basis: int. Total number of basis functions `N`.
        basis_widths: sequence of floats or `None`. Widths on [0, 1]; when
            given they are used as they are.
        relative_basis_widths: sequence of floats or `None`. Widths in
            units of `1 / C`, used when `basis_widths` is `None`. Defaults
            to `RELATIVE_BASIS_WIDTHS`.

    Returns:
        A tuple of floats: the widths on [0, 1].
    """
    if basis_widths is not None:
        widths = check_widths(basis_widths, "basis_widths")
    else:
        if relative_basis_widths is None:
            relative_basis_widths = RELATIVE_BASIS_WIDTHS
        relative = check_widths(relative_basis_widths, "relative_basis_widths")
        if isinstance(num_basis, bool) or not isinstance(num_basis, (int, np.integer)):
            raise TypeError(f"`num_basis` must be an int. Received: num_basis={num_basis!r}")
        num_centers = int(num_basis) // len(relative)
        if num_centers < 1:
            raise ValueError(
                "`num_basis` must be at least len(relative_basis_widths). "
                f"Received: num_basis={num_basis}, "
                f"relative_basis_widths={relative_basis_widths!r}"
            )
        widths = tuple(r / num_centers for r in relative)
    basis_parameters(num_basis, widths)  # N a multiple of the widths.
    return widths


def check_widths(widths, name):
    """`widths` as a tuple of positive finite floats; raises a TypeError or
    ValueError naming the argument `name` and the value received."""
    try:
        checked = tuple(float(w) for w in widths)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a sequence of floats. Received: {name}={widths!r}"
        ) from None
    if not checked or any(not (w > 0 and math.isfinite(w)) for w in checked):
        raise ValueError(
            f"`{name}` must be a non-empty sequence of positive finite "
            f"floats. Received: {name}={widths!r}"
        )
    return checked


def basis_parameters(num_basis, basis_widths):
    """Centres and widths of `num_basis` Gaussian basis functions.

    `num_basis / len(basis_widths)` centres are spaced evenly over [0, 1]
    (both ends included) and every centre is paired with every width.

    Args:
        num_basis: int. Total number of basis functions `N`.
        basis_widths: sequence of floats. Standard deviations of the basis
            functions, e.g. `(0.01, 0.05)`.

    Returns:
        Two float64 NumPy arrays of shape `(num_basis,)`: centres and widths.
    """
    if isinstance(num_basis, bool) or not isinstance(num_basis, (int, np.integer)):
        raise TypeError(f"`num_basis` must be an int. Received: num_basis={num_basis!r}")
    widths = check_widths(basis_widths, "basis_widths")
    if num_basis < 2 * len(widths) or num_basis % len(widths):
        raise ValueError(
            "`num_basis` must be a multiple of len(basis_widths) with at least "
            f"two centres per width. Received: num_basis={num_basis}, "
            f"basis_widths={basis_widths!r}"
        )
    num_centers = num_basis // len(widths)
    centers = np.repeat(np.linspace(0.0, 1.0, num_centers), len(widths))
    widths = np.tile(np.asarray(widths, dtype=np.float64), num_centers)
    return centers, widths


def _as_float(first, *others):
    """`first` and `others` as tensors of `first`'s float dtype (float32
    when `first` is not a float): the positions set the precision."""
    first = ops.convert_to_tensor(first)
    dtype = first.dtype if "float" in str(first.dtype) else "float32"
    return (ops.cast(first, dtype),) + tuple(ops.cast(x, dtype) for x in others)


def rbf(t, centers, widths):
    """Normalised Gaussian basis functions `ψ_j(t)`.

    `ψ_j(t) = exp(-(t - c_j)² / (2 w_j²)) / (w_j √(2π))`.

    Args:
        t: tensor of positions, any shape.
        centers: tensor of shape `(N,)`.
        widths: tensor of shape `(N,)`.

    Returns:
        Tensor of shape `t.shape + (N,)`.
    """
    t, centers, widths = _as_float(t, centers, widths)
    z = (ops.expand_dims(t, -1) - centers) / widths
    return ops.exp(-0.5 * ops.square(z) - ops.log(widths) - _LOG_SQRT_2PI)


def rbf_constants(centers, widths):
    """NumPy float64 `(scale, log_norm)` of `rbf_from_constants`, `(N,)` each:
    `−½ / w_j²` and `−log w_j − ½ log 2π`."""
    widths = np.asarray(widths, dtype=np.float64)
    return -0.5 / widths**2, -np.log(widths) - _LOG_SQRT_2PI


def rbf_from_constants(t, centers, scale, log_norm):
    """`rbf(t, centers, widths)` from the precomputed `rbf_constants`.

    `ψ_j(t) = exp((t − c_j)² · scale_j + log_norm_j)`: the same values as
    `rbf` with one multiply-add per term instead of a division and a
    logarithm.
    """
    t, centers, scale, log_norm = _as_float(t, centers, scale, log_norm)
    return ops.exp(ops.square(ops.expand_dims(t, -1) - centers) * scale + log_norm)


def gaussian_expectation(mu, sigma_sq, centers, widths):
    """Expectation of every basis function under `N(μ, σ²)`.

    `r_j = ∫ N(t; μ, σ²) ψ_j(t) dt = N(μ; c_j, σ² + w_j²)` (integral over ℝ).

    Args:
        mu: tensor of means, any shape.
        sigma_sq: tensor of variances, same shape as `mu`.
        centers: tensor of shape `(N,)`.
        widths: tensor of shape `(N,)`.

    Returns:
        Tensor of shape `mu.shape + (N,)`.
    """
    mu, sigma_sq, centers, widths = _as_float(mu, sigma_sq, centers, widths)
    variance = ops.expand_dims(sigma_sq, -1) + ops.square(widths)
    diff = ops.expand_dims(mu, -1) - centers
    return ops.exp(-0.5 * ops.square(diff) / variance - 0.5 * ops.log(variance) - _LOG_SQRT_2PI)


def gaussian_expectation_by_width(mu, sigma_sq, grid_centers, basis_widths):
    """`gaussian_expectation` for the basis of `basis_parameters`, cheaper.

    The same values as `gaussian_expectation(mu, sigma_sq, centers,
    widths)` with `centers, widths = basis_parameters(C * W, basis_widths)`
    (`C` centres `grid_centers`, each paired with every one of the `W`
    widths as basis function `c·W + w`), grouped by width: the result
    `r[..., w, c]` is basis function `c·W + w`. Computed in a factored form:
    the variance `σ² + w²` takes only `W` values per density, so its
    reciprocal and the normaliser `−½ log(2π (σ² + w²))` are computed on
    `mu.shape + (W, 1)` and the squared distance `(μ − c)²` on
    `mu.shape + (1, C)`; each of the `C·W` terms is then one multiply-add
    and one `exp`:

    `r[..., w, c] = exp((μ − c)² · (−½ / (σ² + w²)) − ½ log(2π (σ² + w²)))`.

    Its gradient is written out (`keras.ops.custom_gradient`): with
    `p = upstream · r` and `v = σ² + w²`,
    `∂/∂μ = −Σ_w Σ_c p (μ − c) / v` and
    `∂/∂σ² = Σ_w (Σ_c p (μ − c)² / v − Σ_c p) / (2v)`. The sums over the
    centres come from one contraction of `p` with a `(C, 3K)` matrix: the
    moments `Σ p (c − b_k)^j`, `j = 0, 1, 2`, of each of `K = min(8, C)`
    blocks of neighbouring centres about the block's mean `b_k`, combined
    as `Σ_k Σ_c p (μ − c)^j` with `μ − c = (μ − b_k) − (c − b_k)`.
    Automatic differentiation makes per-density reductions instead, which
    XLA:CPU runs as one slow multi-output reduction (fwd+bwd at the
    paper's size on JAX: 45 ms, against 6.7 ms this way). Moments about
    each block's own centre keep the float32 cancellation in
    `Σ p (μ − c)²` (narrow densities) `K²` times smaller than about one
    centre: the gradients stay as close to float64 as automatic
    differentiation's (tests/test_basis.py).

    Args:
        mu: tensor of means, any shape.
        sigma_sq: tensor of variances, same shape as `mu`.
        grid_centers: tensor of shape `(C,)`, the distinct centres.
        basis_widths: tensor of shape `(W,)`, the distinct widths.

    Returns:
        Tensor of shape `mu.shape + (W, C)`.
    """
    mu, sigma_sq, grid_centers, basis_widths = _as_float(mu, sigma_sq, grid_centers, basis_widths)
    num_centers = int(grid_centers.shape[0])
    num_blocks = min(_MOMENT_BLOCKS, num_centers)
    # membership[c, k]: centre c is in block k (contiguous, near-equal blocks).
    membership = ops.cast(
        ops.equal(
            ops.expand_dims((ops.arange(num_centers) * num_blocks) // num_centers, -1),
            ops.arange(num_blocks),
        ),
        grid_centers.dtype,
    )  # (C, K)
    block_means = ops.sum(membership * ops.expand_dims(grid_centers, -1), axis=0) / ops.sum(
        membership, axis=0
    )  # (K,)
    offsets = membership * (ops.expand_dims(grid_centers, -1) - block_means)  # (C, K)
    moments = ops.concatenate([membership, offsets, offsets * offsets], axis=-1)  # (C, 3K)

    @ops.custom_gradient
    def expectation(mu, sigma_sq):
        variance = ops.expand_dims(sigma_sq, -1) + ops.square(basis_widths)  # (..., W)
        scale = ops.expand_dims(-0.5 / variance, -1)  # (..., W, 1)
        log_norm = ops.expand_dims(-0.5 * ops.log(variance) - _LOG_SQRT_2PI, -1)
        sq_dist = ops.expand_dims(ops.square(ops.expand_dims(mu, -1) - grid_centers), -2)
        r = ops.exp(sq_dist * scale + log_norm)  # (..., W, C)

        def gradient(*args, upstream=None):
            if upstream is None:  # JAX and TensorFlow pass it positionally.
                (upstream,) = args
            sums = ops.einsum("...wc,cj->...wj", upstream * r, moments)  # (..., W, 3K)
            s0 = sums[..., :num_blocks]
            s1 = sums[..., num_blocks : 2 * num_blocks]
            s2 = sums[..., 2 * num_blocks :]
            shift = ops.expand_dims(ops.expand_dims(mu, -1) - block_means, -2)  # (..., 1, K)
            p_sum = ops.sum(s0, axis=-1)  # Σ_c p
            first = ops.sum(shift * s0 - s1, axis=-1)  # Σ_c p (μ − c)
            second = ops.sum(shift * (shift * s0 - 2.0 * s1) + s2, axis=-1)  # Σ_c p (μ − c)²
            inverse = 1.0 / variance
            d_mu = -ops.sum(inverse * first, axis=-1)
            d_sigma_sq = ops.sum(0.5 * inverse * (inverse * second - p_sum), axis=-1)
            return d_mu, d_sigma_sq

        return r, gradient

    return expectation(mu, sigma_sq)


def gaussian_expectation_grid(mu, sigma_sq, grid_centers, basis_widths):
    """`gaussian_expectation_by_width` in the basis order, `mu.shape + (C·W,)`.

    Equal to `gaussian_expectation(mu, sigma_sq, centers, widths)` for
    `centers, widths = basis_parameters(C * W, basis_widths)`.
    """
    r = gaussian_expectation_by_width(mu, sigma_sq, grid_centers, basis_widths)
    rank = len(r.shape)
    r = ops.transpose(r, tuple(range(rank - 2)) + (rank - 1, rank - 2))
    num_basis = int(grid_centers.shape[0]) * int(basis_widths.shape[0])
    return ops.reshape(r, tuple(ops.shape(r)[:-2]) + (num_basis,))


def design_matrix(positions, centers, widths):
    """`F[j, i] = ψ_j(t_i)` in NumPy float64, shape `(N, P)`."""
    positions = np.asarray(positions, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    widths = np.asarray(widths, dtype=np.float64)
    z = (positions[None, :] - centers[:, None]) / widths[:, None]
    return np.exp(-0.5 * z**2) / (widths[:, None] * math.sqrt(2.0 * math.pi))


def padding_positions(num_positions):
    """Positions of the zero-signal padding used by the edge trick.

    A grid twice as long as the real one: `num_positions // 2` points evenly
    spaced over [-0.5, 0) and the rest over (1, 1.5].
    """
    num_left = num_positions // 2
    num_right = num_positions - num_left
    left = -0.5 + (np.arange(num_left) + 0.5) * (0.5 / max(num_left, 1))
    right = 1.0 + (np.arange(num_right) + 0.5) * (0.5 / max(num_right, 1))
    return left, right


def ridge_matrix(positions, centers, widths, ridge_penalty, edge_padding=False):
    """Ridge-regression matrix `G` such that the fit is `B = Gᵀ X`.

    `G = Fᵀ (F Fᵀ + λ I)⁻¹` with `F[j, i] = ψ_j(t_i)`, solved in float64.

    With `edge_padding=True` the real positions are extended by as many
    padding positions beyond both ends of [0, 1] (half the span on each side),
    where the signal is taken as zero; only the rows of `G` of the real
    positions are returned. This removes the droop of the fit at the edges.

    Args:
        positions: array of shape `(P,)`, positions in [0, 1].
        centers: array of shape `(N,)`.
        widths: array of shape `(N,)`.
        ridge_penalty: float. The ridge penalty `λ > 0`.
        edge_padding: bool. Whether to use the edge trick. Defaults to
            `False` (see `ContinuousLTM`).

    Returns:
        float64 NumPy array of shape `(P, N)`.
    """
    positions = np.asarray(positions, dtype=np.float64)
    num_positions = positions.shape[0]
    if edge_padding:
        left, right = padding_positions(num_positions)
        full = np.concatenate([left, positions, right])
    else:
        full = positions
    F = design_matrix(full, centers, widths)
    num_basis = F.shape[0]
    gram = F @ F.T + ridge_penalty * np.eye(num_basis)
    # G = Fᵀ gram⁻¹, computed as a solve (gram is symmetric positive definite).
    G = np.linalg.solve(gram, F).T
    if edge_padding:
        start = left.shape[0]
        G = G[start : start + num_positions]
    return G


def uniform_positions(num_positions):
    """Evenly spaced positions `(i + ½) / L`, `i = 0 .. L-1`."""
    return (np.arange(num_positions, dtype=np.float64) + 0.5) / num_positions


def update_positions(num_samples, num_new, tau):
    """Where the `M` old samples and the `L` new vectors sit after an update.

    Old samples at `τ m / M` (m = 1..M), new vectors at `τ + (1 - τ) l / L`
    (l = 1..L): the old signal is squeezed into [0, τ].
    """
    old = tau * np.arange(1, num_samples + 1, dtype=np.float64) / num_samples
    new = tau + (1.0 - tau) * np.arange(1, num_new + 1, dtype=np.float64) / num_new
    return np.concatenate([old, new])


def uniform_sample_points(num_samples):
    """Where the old signal is read in a uniform update: `m / M`, m = 1..M."""
    return np.arange(1, num_samples + 1, dtype=np.float64) / num_samples
