"""StickyMemorySampler: histogram, inverse CDF, random draws, errors."""

import keras
import numpy as np
import pytest

from keras_infformer.layers import StickyMemorySampler

MODES = ["quantile", "random"]


def _two_bump_density(batch=3, heads=2, queries=5, seed=0):
    """Per row a different mixture of narrow and wide Gaussians."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.0, 1.0, size=(batch, heads, queries))
    sigma_sq = rng.uniform(0.01, 0.2, size=(batch, heads, queries)) ** 2
    return mu.astype("float32"), sigma_sq.astype("float32")


@pytest.mark.parametrize("mode", MODES)
def test_points_are_sorted_in_range_with_the_right_shape(to_numpy, mode):
    mu, sigma_sq = _two_bump_density()
    sampler = StickyMemorySampler(num_samples=40, num_bins=32, mode=mode, seed=3)
    points = sampler(mu, sigma_sq)
    assert tuple(points.shape) == (3, 40)
    points = to_numpy(points)
    assert points.dtype == np.float32
    assert np.all(points >= 0.0) and np.all(points <= 1.0)
    assert np.all(np.diff(points, axis=-1) >= 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_concentrated_attention_concentrates_the_points(to_numpy, mode):
    mu = np.full((2, 3, 4), 0.8, "float32")
    sigma_sq = np.full((2, 3, 4), 0.01**2, "float32")
    # The paper's sampler (no uniform share): nearly every point there.
    sampler = StickyMemorySampler(num_samples=256, mode=mode, uniform_share=0.0, seed=1)
    points = to_numpy(sampler(mu, sigma_sq))
    share = np.mean(np.abs(points - 0.8) <= 0.05, axis=-1)
    print(f"{mode}: share of points within 0.8 +- 0.05: {share}")
    assert np.all(share >= 0.9)
    # The default mixes in half of the flat histogram: the interval gets
    # 1/2 (attention) + 1/2 * 0.1 (its uniform room) = 0.55 of the points,
    # and every other region keeps half of its uniform room.
    sampler = StickyMemorySampler(num_samples=256, mode=mode, seed=1)
    assert sampler.uniform_share == 0.5
    points = to_numpy(sampler(mu, sigma_sq))
    share = np.mean(np.abs(points - 0.8) <= 0.05, axis=-1)
    tolerance = 0.02 if mode == "quantile" else 0.1
    assert np.all(np.abs(share - 0.55) <= tolerance), share
    below = np.mean(points < 0.5, axis=-1)  # Unattended: half of 0.5.
    assert np.all(np.abs(below - 0.25) <= tolerance), below


def test_uniform_share_is_checked():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="uniform_share"):
            StickyMemorySampler(num_samples=8, uniform_share=bad)


def test_flat_histogram_gives_uniform_points(ref, to_numpy):
    for mode in MODES:
        sampler = StickyMemorySampler(num_samples=512, num_bins=64, mode=mode, seed=6)
        points = to_numpy(sampler.sample(sampler.uniform_histogram(2)))
        ks = [ref.ks_distance(row, lambda x: x) for row in points]
        print(f"{mode}: KS distance to U(0, 1) from the flat histogram: {ks}")
        # quantile: exactly m / M, KS = 1 / M; random: 1.95/sqrt(M)
        # is the 0.1% critical value (the seeded draws are deterministic per
        # backend, so this cannot flake).
        bound = 1.0 / 512 + 1e-6 if mode == "quantile" else 1.95 / np.sqrt(512)
        assert max(ks) <= bound
    np.testing.assert_allclose(
        to_numpy(
            StickyMemorySampler(num_samples=4, num_bins=8).sample(np.full((1, 8), 1 / 8, "float32"))
        ),
        [[0.25, 0.5, 0.75, 1.0]],
        atol=1e-6,
    )
    # A flat histogram reads exactly where the uniform update reads.
    flat = StickyMemorySampler(num_samples=100, num_bins=128)
    np.testing.assert_allclose(
        to_numpy(flat.sample(flat.uniform_histogram(1)))[0],
        np.arange(1, 101) / 100,
        atol=2e-6,
    )


def test_attention_spread_evenly_gives_near_uniform_points(ref, to_numpy):
    mu = np.linspace(0.0, 1.0, 101, dtype="float32")[None, None, :]
    sigma_sq = np.full_like(mu, 0.02**2)
    sampler = StickyMemorySampler(num_samples=256, num_bins=128)
    points = to_numpy(sampler(mu, sigma_sq))[0]
    ks = ref.ks_distance(points, lambda x: x)
    print(f"attention spread evenly: KS distance to U(0, 1) = {ks:.4f}")
    assert ks < 0.02


def test_histogram_is_the_normalised_phi_differences(ref, to_numpy):
    mu, sigma_sq = _two_bump_density()
    sampler = StickyMemorySampler(num_samples=8, num_bins=50)
    hist = to_numpy(sampler.histogram(mu, sigma_sq))
    assert hist.shape == (3, 50)
    np.testing.assert_allclose(hist.sum(-1), 1.0, rtol=1e-5)
    expected = ref.sticky_histogram(mu, sigma_sq, 50)
    np.testing.assert_allclose(hist, expected, rtol=0, atol=1e-5)


def test_quantile_mode_is_the_inverse_cdf(ref, to_numpy):
    mu, sigma_sq = _two_bump_density()
    num_samples, num_bins = 64, 40
    sampler = StickyMemorySampler(num_samples=num_samples, num_bins=num_bins)
    points = to_numpy(sampler(mu, sigma_sq))
    levels = np.arange(1, num_samples + 1) / num_samples
    # The default sampler reads from the attention histogram mixed with
    # the flat one (uniform_share = 1/2).
    share = sampler.uniform_share
    hist = (1 - share) * ref.sticky_histogram(mu, sigma_sq, num_bins) + share / num_bins
    for row in range(len(mu)):
        expected = ref.inverse_cdf(hist[row], levels)
        err = np.abs(points[row] - expected).max()
        assert err < 1e-4, (row, err)
    # Deterministic: the same inputs give the same points.
    np.testing.assert_array_equal(points, to_numpy(sampler(mu, sigma_sq)))


def test_random_mode_follows_the_histogram(ref, to_numpy):
    mu, sigma_sq = _two_bump_density()
    num_samples, num_bins = 2048, 40
    sampler = StickyMemorySampler(num_samples=num_samples, num_bins=num_bins, mode="random", seed=7)
    points = to_numpy(sampler(mu, sigma_sq))
    # The default sampler reads from the attention histogram mixed with
    # the flat one (uniform_share = 1/2).
    share = sampler.uniform_share
    hist = (1 - share) * ref.sticky_histogram(mu, sigma_sq, num_bins) + share / num_bins
    critical = 1.95 / np.sqrt(num_samples)  # KS at the 0.1% level
    for row in range(len(mu)):
        ks = ref.ks_distance(points[row], lambda x: ref.piecewise_uniform_cdf(hist[row], x))
        # The flat law is far from this histogram: the test can tell them apart.
        ks_flat = ref.ks_distance(points[row], lambda x: x)
        print(f"row {row}: KS to the histogram's CDF {ks:.4f}, to U(0, 1) {ks_flat:.4f}")
        assert ks < critical
        assert ks_flat > critical
    # Chi-square of the bin counts (bins expecting < 5 pooled into one).
    for row in range(len(mu)):
        bins = np.minimum((points[row] * num_bins).astype(int), num_bins - 1)
        counts = np.bincount(bins, minlength=num_bins)
        expected = hist[row] * num_samples
        keep = expected >= 5
        observed, expected = counts[keep], expected[keep]
        if not keep.all():
            observed = np.append(observed, counts[~keep].sum())
            expected = np.append(expected, hist[row][~keep].sum() * num_samples)
        chi2 = np.sum((observed - expected) ** 2 / expected)
        dof = len(observed) - 1
        # Wilson-Hilferty approximation of the 0.1% upper quantile.
        bound = dof * (1 - 2 / (9 * dof) + 3.09 * np.sqrt(2 / (9 * dof))) ** 3
        print(f"row {row}: chi-square {chi2:.1f} ({dof} dof, 0.1% bound {bound:.1f})")
        assert chi2 < bound


def test_random_mode_is_seeded(to_numpy):
    mu, sigma_sq = _two_bump_density()
    a = StickyMemorySampler(num_samples=32, mode="random", seed=11)
    b = StickyMemorySampler(num_samples=32, mode="random", seed=11)
    first = to_numpy(a(mu, sigma_sq))
    np.testing.assert_array_equal(first, to_numpy(b(mu, sigma_sq)))
    # The seed generator advances: a second draw differs.
    assert np.abs(first - to_numpy(a(mu, sigma_sq))).max() > 0


def test_float32_under_mixed_precision(to_numpy):
    """The Gaussian terms are float32: mixed_bfloat16 gives the same points."""
    mu = np.full((1, 1, 3), 0.8003, "float32")
    sigma_sq = np.full((1, 1, 3), 1.3e-4, "float32")
    expected = to_numpy(StickyMemorySampler(num_samples=16)(mu, sigma_sq))
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        points = StickyMemorySampler(num_samples=16)(mu, sigma_sq)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert "float32" in str(points.dtype)
    np.testing.assert_allclose(to_numpy(points), expected, rtol=0, atol=1e-6)


def test_symbolic_call():
    out = StickyMemorySampler(num_samples=24)(keras.Input((2, 7)), keras.Input((2, 7)))
    assert tuple(out.shape) == (None, 24)


def test_errors():
    with pytest.raises(ValueError, match=r"mode.*'sticky'"):
        StickyMemorySampler(num_samples=8, mode="sticky")
    with pytest.raises(TypeError, match=r"num_samples.*8\.0"):
        StickyMemorySampler(num_samples=8.0)
    with pytest.raises(ValueError, match=r"num_bins.*0"):
        StickyMemorySampler(num_samples=8, num_bins=0)
    sampler = StickyMemorySampler(num_samples=8)
    mu = np.full((2, 3), 0.5, "float32")
    with pytest.raises(ValueError, match=r"mu.*sigma_sq.*\(2, 3\).*\(2, 4\)"):
        sampler(mu, np.full((2, 4), 0.1, "float32"))
    bad = mu.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"mu.*finite.*nan"):
        sampler(bad, np.full((2, 3), 0.1, "float32"))


@pytest.mark.parametrize("value", [0.0, -1e-3, -4.0])
def test_non_positive_variance_is_a_clear_error(value):
    """Defect 8 of issue 12: sigma_sq <= 0 gave NaN points, no error."""
    sampler = StickyMemorySampler(num_samples=8)
    mu = np.full((2, 3), 0.5, "float32")
    sigma_sq = np.full((2, 3), 0.01, "float32")
    sigma_sq[1, 2] = value
    with pytest.raises(ValueError, match=r"sigma_sq.*positive.*" + repr(value)[:4]):
        sampler(mu, sigma_sq)
    with pytest.raises(ValueError, match=r"sigma_sq.*finite.*inf"):
        sampler(mu, np.full((2, 3), np.inf, "float32"))


def test_bad_densities_in_compiled_code_give_finite_points(to_numpy):
    """Inside a compiled function nothing can be checked: a non-positive
    variance is clamped at the floor (a point mass at `mu`), a density with
    a non-finite `mu` or `sigma_sq` is left out of the histogram, and a row
    left with no mass reads uniformly. Valid densities are untouched."""
    import keras_infformer.layers.sticky_memory_sampler as module

    sampler = StickyMemorySampler(num_samples=16, num_bins=16)
    mu = np.array([[0.2, 0.8, np.nan], [0.3, 0.3, 0.3], [np.inf, 0.5, 0.5]], "float32")
    sigma_sq = np.array(
        [[-1.0, 0.0, 0.01], [np.nan, 1e-40, -0.0], [0.01, np.nan, np.inf]], "float32"
    )
    hist = to_numpy(sampler.histogram(mu, sigma_sq))
    points = to_numpy(sampler.sample(hist))
    assert np.isfinite(hist).all() and np.isfinite(points).all()
    np.testing.assert_allclose(hist.sum(-1), 1.0, rtol=1e-5)
    # Row 0: point masses at 0.2 and 0.8 (the NaN density is left out).
    expected = np.zeros(16)
    expected[[3, 12]] = 0.5
    np.testing.assert_allclose(hist[0], expected, atol=1e-5)
    # Row 2: nothing valid, a flat histogram: the uniform points m / M.
    np.testing.assert_allclose(hist[2], np.full(16, 1 / 16), atol=1e-6)
    np.testing.assert_allclose(points[2], np.arange(1, 17) / 16, atol=1e-5)
    # Valid densities: exactly the reference values, floor and all.
    good_mu, good_sigma_sq = _two_bump_density()
    assert module._MIN_SIGMA_SQ < 1e-6  # below GaussianAttention's floor
    np.testing.assert_allclose(
        to_numpy(sampler.histogram(good_mu, good_sigma_sq)),
        to_numpy(sampler.histogram(good_mu, np.maximum(good_sigma_sq, 1e-9))),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    "histogram",
    [
        [[0.0] * 8],  # no mass at all
        [[np.nan] + [1.0] * 7],
        [[np.inf] + [1.0] * 7],
        [[-1.0, 2.0] + [0.0] * 6],
        [[0.0] * 7 + [1.0]],  # zero-mass bins before the mass
        [[1.0] + [0.0] * 7],  # ... and after it
    ],
)
def test_sample_from_a_degenerate_histogram_is_finite(to_numpy, histogram):
    sampler = StickyMemorySampler(num_samples=8, num_bins=8)
    points = to_numpy(sampler.sample(np.array(histogram, "float32")))
    assert np.isfinite(points).all(), points
    assert np.all((points >= 0) & (points <= 1))
    assert np.all(np.diff(points, axis=-1) >= 0)


def test_sample_checks_the_histogram_shape():
    sampler = StickyMemorySampler(num_samples=8, num_bins=8)
    with pytest.raises(ValueError, match=r"histogram.*\(batch_size, 8\).*\(2, 5\)"):
        sampler.sample(np.full((2, 5), 0.2, "float32"))
    with pytest.raises(ValueError, match=r"mu.*rank.*\(\)"):
        sampler(np.float32(0.5), np.float32(0.1))


def test_densities_outside_the_unit_interval_are_accepted(to_numpy):
    """`mu` outside [0, 1] is valid: only the mass inside [0, 1] counts;
    a density with none there leaves the histogram flat (paper's sampler,
    no uniform share)."""
    sampler = StickyMemorySampler(num_samples=4, num_bins=4, uniform_share=0.0)
    mu = np.array([[-3.0], [1.05]], "float32")
    sigma_sq = np.array([[1e-4], [0.01]], "float32")
    points = to_numpy(sampler(mu, sigma_sq))
    np.testing.assert_allclose(points[0], [0.25, 0.5, 0.75, 1.0], atol=1e-5)
    assert points[1].min() > 0.75  # crowded at the right end
