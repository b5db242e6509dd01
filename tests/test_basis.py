"""keras_infformer.basis against NumPy float64 formulas and quadrature."""

import numpy as np
import pytest
from keras import ops

from keras_infformer import basis

# float32 evaluations against float64 references: the values tested here are
# at most ~8 (normalised Gaussians of width >= 0.05), where float32 keeps
# ~1e-6 absolute accuracy, so an absolute tolerance of 1e-5 is meaningful.
ATOL_F32 = 1e-5


def test_basis_parameters_layout():
    centers, widths = basis.basis_parameters(12, (0.01, 0.05, 0.1))
    # 4 centres evenly over [0, 1] (ends included), each with every width.
    np.testing.assert_array_equal(centers, np.repeat([0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0], 3))
    np.testing.assert_array_equal(widths, np.tile([0.01, 0.05, 0.1], 4))
    assert centers.dtype == np.float64 and widths.dtype == np.float64


def test_basis_parameters_matches_reference(ref):
    centers, widths = basis.basis_parameters(64, (0.01, 0.05))
    ref_centers, ref_widths = ref.basis(64, (0.01, 0.05))
    np.testing.assert_allclose(centers, ref_centers, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(widths, ref_widths)


@pytest.mark.parametrize("num_basis, widths", [(10, (0.01, 0.05, 0.1)), (7, (0.01, 0.05))])
def test_basis_parameters_rejects_indivisible(num_basis, widths):
    with pytest.raises(ValueError, match=rf"num_basis.*{num_basis}"):
        basis.basis_parameters(num_basis, widths)


def test_basis_parameters_rejects_bad_types_and_widths():
    with pytest.raises(TypeError, match=r"num_basis.*'64'"):
        basis.basis_parameters("64", (0.01, 0.05))
    with pytest.raises(TypeError, match=r"num_basis.*64\.0"):
        basis.basis_parameters(64.0, (0.01, 0.05))
    with pytest.raises(ValueError, match=r"basis_widths.*-0\.1"):
        basis.basis_parameters(64, (0.01, -0.1))


def test_rbf_matches_numpy(ref, rng, to_numpy):
    centers, widths = ref.basis(16, (0.05, 0.1))
    t = rng.uniform(-0.2, 1.2, size=(3, 5))
    out = basis.rbf(t.astype("float32"), centers, widths)
    assert tuple(out.shape) == (3, 5, 16)
    out = to_numpy(out)
    expected = ref.rbf(t, centers, widths)
    err = np.abs(out - expected).max()
    print(f"rbf max abs error vs NumPy float64: {err:.2e}")
    np.testing.assert_allclose(out, expected, rtol=0, atol=ATOL_F32)


def test_rbf_is_a_normalised_density(to_numpy):
    centers, widths = basis.basis_parameters(8, (0.05, 0.1))
    t = np.linspace(-1.0, 2.0, 30001)
    psi = to_numpy(basis.rbf(t.astype("float32"), centers, widths)).astype(np.float64)
    np.testing.assert_allclose(np.trapezoid(psi, t, axis=0), 1.0, atol=1e-5)
    # Peak at the centre, height 1 / (w sqrt(2 pi)).
    peak = to_numpy(basis.rbf(np.float32(centers[2]), centers, widths))[2]
    np.testing.assert_allclose(peak, 1.0 / (widths[2] * np.sqrt(2 * np.pi)), rtol=1e-6)


def test_rbf_scalar_and_1d_shapes():
    centers, widths = basis.basis_parameters(6, (0.1, 0.2))
    assert tuple(basis.rbf(np.float32(0.3), centers, widths).shape) == (6,)
    assert tuple(basis.rbf(np.zeros((7,), "float32"), centers, widths).shape) == (7, 6)


def test_gaussian_expectation_matches_closed_form(ref, rng, to_numpy):
    centers, widths = ref.basis(16, (0.05, 0.1))
    mu = rng.uniform(0.0, 1.0, size=(2, 3, 4))
    sigma_sq = rng.uniform(0.02, 0.2, size=(2, 3, 4)) ** 2
    out = basis.gaussian_expectation(
        mu.astype("float32"), sigma_sq.astype("float32"), centers, widths
    )
    assert tuple(out.shape) == (2, 3, 4, 16)
    expected = ref.expectation(mu, sigma_sq, centers, widths)
    err = np.abs(to_numpy(out) - expected).max()
    print(f"gaussian_expectation max abs error vs closed form: {err:.2e}")
    np.testing.assert_allclose(to_numpy(out), expected, rtol=0, atol=ATOL_F32)


@pytest.mark.parametrize(
    "num_basis, widths", [(16, (0.05, 0.1)), (12, (0.01, 0.05, 0.1)), (8, (0.2,))]
)
def test_gaussian_expectation_by_width_matches_closed_form(ref, rng, to_numpy, num_basis, widths):
    """The factored form used by GaussianAttention: same values, grouped
    by width (`r[..., w, c]` is basis function `c·W + w`), and in the basis
    order through `gaussian_expectation_grid`."""
    centers, basis_widths = ref.basis(num_basis, widths)
    W = len(widths)
    mu = rng.uniform(-0.2, 1.2, size=(2, 3, 4))
    sigma_sq = rng.uniform(0.003, 0.3, size=(2, 3, 4)) ** 2
    expected = ref.expectation(mu, sigma_sq, centers, basis_widths)
    args = (mu.astype("float32"), sigma_sq.astype("float32"), centers[::W], basis_widths[:W])
    by_width = to_numpy(basis.gaussian_expectation_by_width(*args))
    assert by_width.shape == (2, 3, 4, W, num_basis // W)
    np.testing.assert_allclose(
        np.swapaxes(by_width, -1, -2).reshape(2, 3, 4, num_basis),
        expected,
        rtol=1e-5,
        atol=ATOL_F32,
    )
    grid = to_numpy(basis.gaussian_expectation_grid(*args))
    np.testing.assert_allclose(grid, expected, rtol=1e-5, atol=ATOL_F32)


def test_gaussian_expectation_matches_quadrature(ref, to_numpy):
    """r_j = integral over R of N(t; mu, sigma^2) psi_j(t) dt, by trapezoid."""
    centers, widths = ref.basis(16, (0.05, 0.1))
    t = np.linspace(-3.0, 4.0, 140001)  # step 5e-5, >= 60 sigma beyond [0, 1]
    psi = ref.rbf(t, centers, widths)  # (T, N)
    mu = np.array([0.0, 0.13, 0.5, 0.77, 1.0, 0.95])
    sigma = np.array([0.03, 0.1, 0.3, 0.05, 0.2, 0.01])
    quad = np.stack(
        [
            np.trapezoid(ref.normal_pdf(t, m, s**2)[:, None] * psi, t, axis=0)
            for m, s in zip(mu, sigma)
        ]
    )
    out = to_numpy(
        basis.gaussian_expectation(
            mu.astype("float32"), (sigma**2).astype("float32"), centers, widths
        )
    )
    err = np.abs(out - quad).max()
    print(
        f"gaussian_expectation max abs error vs quadrature: {err:.2e} "
        f"(values up to {quad.max():.2f})"
    )
    assert err <= ATOL_F32


def test_design_matrix(ref, rng):
    centers, widths = ref.basis(12, (0.01, 0.05))
    positions = rng.uniform(0, 1, size=9)
    F = basis.design_matrix(positions, centers, widths)
    assert F.shape == (12, 9)
    np.testing.assert_allclose(F, ref.rbf(positions, centers, widths).T, rtol=1e-12)


@pytest.mark.parametrize("penalty", [0.5, 1.0])
def test_ridge_matrix_without_padding_solves_normal_equations(ref, rng, penalty):
    centers, widths = ref.basis(16, (0.05, 0.1))
    positions = np.sort(rng.uniform(0.0, 1.0, size=40))
    x = rng.standard_normal((40, 3))
    G = basis.ridge_matrix(positions, centers, widths, penalty, edge_padding=False)
    assert G.shape == (40, 16)
    expected = ref.ridge_fit(positions, x, centers, widths, penalty, False)
    err = np.abs(G.T @ x - expected).max() / np.abs(expected).max()
    print(f"ridge fit (no padding) relative error vs normal equations: {err:.2e}")
    np.testing.assert_allclose(G.T @ x, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("num_positions", [40, 41])
def test_ridge_matrix_with_padding_solves_padded_normal_equations(ref, rng, num_positions):
    centers, widths = ref.basis(16, (0.05, 0.1))
    positions = np.sort(rng.uniform(0.0, 1.0, size=num_positions))
    x = rng.standard_normal((num_positions, 2))
    G = basis.ridge_matrix(positions, centers, widths, 1.0, edge_padding=True)
    assert G.shape == (num_positions, 16)
    expected = ref.ridge_fit(positions, x, centers, widths, 1.0, True)
    err = np.abs(G.T @ x - expected).max() / np.abs(expected).max()
    print(f"ridge fit (edge padding) relative error vs normal equations: {err:.2e}")
    np.testing.assert_allclose(G.T @ x, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    # The padding changes the fit: it is not the unpadded one.
    unpadded = ref.ridge_fit(positions, x, centers, widths, 1.0, False)
    assert np.abs(expected - unpadded).max() > 1e-3 * np.abs(expected).max()


def test_ridge_matrix_padding_grid_of_the_reference_code(ref, rng):
    """For L uniform positions the padded grid is the reference code's
    linspace(-0.5 + 1/(2L), 1.5 - 1/(2L), 2L), real rows in the middle."""
    L = 32
    centers, widths = ref.basis(16, (0.01, 0.05))
    full = np.linspace(-0.5 + 1 / (2 * L), 1.5 - 1 / (2 * L), 2 * L)
    F = ref.rbf(full, centers, widths).T
    G_full = F.T @ np.linalg.inv(F @ F.T + 1.0 * np.eye(16))
    G = basis.ridge_matrix((np.arange(L) + 0.5) / L, centers, widths, 1.0, edge_padding=True)
    np.testing.assert_allclose(G, G_full[L // 2 : L // 2 + L], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("num_positions", [1, 2, 7, 8])
def test_padding_positions(ref, num_positions):
    left, right = basis.padding_positions(num_positions)
    ref_left, ref_right = ref.padding(num_positions)
    assert len(left) + len(right) == num_positions
    np.testing.assert_allclose(left, ref_left, atol=1e-15)
    np.testing.assert_allclose(right, ref_right, atol=1e-15)
    assert np.all(left < 0.0) and np.all(left >= -0.5)
    assert np.all(right > 1.0) and np.all(right <= 1.5)


def test_positions():
    np.testing.assert_allclose(basis.uniform_positions(4), [0.125, 0.375, 0.625, 0.875])
    np.testing.assert_allclose(basis.uniform_sample_points(4), [0.25, 0.5, 0.75, 1.0])
    # Old samples at tau m / M, new vectors at tau + (1 - tau) l / L.
    np.testing.assert_allclose(
        basis.update_positions(4, 2, 0.5),
        [0.125, 0.25, 0.375, 0.5, 0.75, 1.0],
    )


def test_rbf_from_constants_matches_rbf(ref, rng, to_numpy):
    """The sticky read's psi from precomputed -1/(2w^2) and -log(w sqrt(2 pi))."""
    centers, widths = ref.basis(16, (0.01, 0.05))
    t = rng.uniform(0.0, 1.0, size=(3, 7))
    scale, log_norm = basis.rbf_constants(centers, widths)
    out = to_numpy(basis.rbf_from_constants(t.astype("float32"), centers, scale, log_norm))
    assert out.shape == (3, 7, 16)
    np.testing.assert_allclose(out, ref.rbf(t, centers, widths), rtol=1e-5, atol=ATOL_F32)


@pytest.mark.parametrize("widths", [(0.005, 0.01), (0.01, 0.05)])
def test_gaussian_expectation_gradient_matches_float64_derivatives(ref, rng, gradients, widths):
    """The written-out gradient of `gaussian_expectation_by_width` (its sums
    over the centres as three centred moments) against the derivatives of
    the closed form in float64, down to the narrowest densities (σ² = 1e-6,
    the widths of the pretrained models): d/dμ of r = −r (μ − c) / v and
    d/dσ² of r = r ((μ − c)² / (2v²) − 1 / (2v)), v = σ² + w²."""
    C, W = 64, len(widths)
    centers = np.linspace(0.0, 1.0, C)
    mu = rng.uniform(0.0, 1.0, size=(3, 40))
    sigma_sq = np.exp(rng.uniform(np.log(1e-6), np.log(0.5), size=(3, 40)))
    upstream = rng.standard_normal((3, 40, W, C))

    def loss(m, s):
        r = basis.gaussian_expectation_by_width(m, s, centers, np.asarray(widths))
        return ops.sum(r * ops.convert_to_tensor(upstream, "float32"))

    _, (d_mu, d_sigma_sq) = gradients(loss, [], [mu, sigma_sq])
    d = mu[..., None, None] - centers  # (3, 40, 1, C)
    v = sigma_sq[..., None, None] + np.square(widths)[:, None]  # (3, 40, W, 1)
    r = np.exp(-0.5 * d**2 / v) / np.sqrt(2 * np.pi * v)
    p = upstream * r
    expected_mu = np.sum(-p * d / v, axis=(-1, -2))
    expected_sigma_sq = np.sum(p * (d**2 / (2 * v**2) - 1 / (2 * v)), axis=(-1, -2))
    # Relative to the largest gradient of each row of densities: float32 sums.
    for got, want in ((d_mu, expected_mu), (d_sigma_sq, expected_sigma_sq)):
        scale = np.max(np.abs(want), axis=-1, keepdims=True)
        assert np.max(np.abs(got - want) / scale) < 1e-4


# -- widths relative to the number of centres (DESIGN §6) -----------------------


@pytest.mark.parametrize(
    "relative, absolute_at_512",
    [((2.56, 12.8), (0.01, 0.05)), ((1.28, 2.56), (0.005, 0.01))],
)
def test_relative_widths_are_the_papers_at_n_512(relative, absolute_at_512):
    # 512 basis functions, two widths: 256 centres, so the unit is 1/256.
    assert basis.resolve_basis_widths(512, None, relative) == absolute_at_512


@pytest.mark.parametrize("num_basis", [8, 32, 96, 512, 2048])
def test_relative_widths_keep_their_share_of_a_centre_spacing(num_basis):
    widths = basis.resolve_basis_widths(num_basis, None, (2.56, 12.8))
    centers, _ = basis.basis_parameters(num_basis, widths)
    spacing = np.diff(np.unique(centers))[0]
    num_centers = num_basis // 2
    np.testing.assert_allclose(
        np.asarray(widths) / spacing, np.array([2.56, 12.8]) * (num_centers - 1) / num_centers
    )
    assert basis.resolve_basis_widths(num_basis) == widths  # the default


def test_given_widths_are_used_as_they_are():
    assert basis.resolve_basis_widths(32, (0.05, 0.1), (9.0, 9.0)) == (0.05, 0.1)
    assert basis.resolve_basis_widths(30, None, (1.0, 2.0, 3.0)) == (0.1, 0.2, 0.3)


@pytest.mark.parametrize(
    "num_basis, widths, relative, error, match",
    [
        (32, None, (1.0, -2.0), ValueError, r"relative_basis_widths.*-2\.0"),
        (32, None, (), ValueError, r"relative_basis_widths=\(\)"),
        (32, None, 2.56, TypeError, r"relative_basis_widths=2\.56"),
        (32, ("a", 1.0), None, TypeError, r"basis_widths=\('a', 1\.0\)"),
        (31, None, (1.0, 2.0), ValueError, r"num_basis.*31"),
        (1, None, (1.0, 2.0), ValueError, r"num_basis.*1"),
        ("32", None, (1.0, 2.0), TypeError, r"num_basis.*'32'"),
    ],
)
def test_resolve_basis_widths_rejects_bad_values(num_basis, widths, relative, error, match):
    with pytest.raises(error, match=match):
        basis.resolve_basis_widths(num_basis, widths, relative)


def test_scaled_widths_hold_one_token_where_the_papers_absolute_ones_spike(ref):
    # One distinct token among 16 fitted (ridge 0.5, NumPy float64) into
    # N = 32 functions, 16 centres, at the positions an empty memory uses.
    # The paper's absolute GPT-2 widths are a tenth of a centre spacing
    # there: the fitted signal is a row of spikes at the centres, several
    # times the stored value, and what a Gaussian read or a squeeze
    # resamples between them is not the token. The same widths scaled to
    # N = 32 (the pretrained default) give a signal whose peak is the
    # token, at its place, no higher than what was stored.
    positions = basis.uniform_positions(16)
    grid = np.linspace(0.0, 1.0, 1601)
    spikes = []
    for place in (3, 8, 12):
        signal = np.zeros((16, 1))
        signal[place] = 1.0
        read = {}
        for name, widths in (
            ("absolute", (0.005, 0.01)),
            ("scaled", basis.resolve_basis_widths(32, None, (1.28, 2.56))),
        ):
            centers, all_widths = ref.basis(32, widths)
            coefficients = ref.ridge_fit(positions, signal, centers, all_widths, 0.5, False)
            read[name] = ref.signal(coefficients, grid, centers, all_widths)[:, 0]
        peak = grid[np.argmax(read["scaled"])]
        assert abs(peak - positions[place]) < 0.5 / 16
        assert 0.5 < read["scaled"].max() <= 1.0
        spikes.append(read["absolute"].max())
    assert max(spikes) > 3.0
