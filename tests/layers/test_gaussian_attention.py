"""GaussianAttention against a NumPy float64 forward pass; gradients."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_infformer.layers import GaussianAttention

B, LQ, D, N, E = 2, 5, 6, 16, 8
H, DK, DV = 2, 3, 4
WIDTHS = (0.05, 0.1)


def _weights(layer, to_numpy):
    """The layer's weights by short name, as float64 NumPy arrays."""
    out = {}
    for w in layer.weights:
        name = w.path.split("/", 1)[1].replace("/kernel", "")
        out[name] = to_numpy(w).astype(np.float64)
    return out


def _softplus(x):
    return np.logaddexp(0.0, x)


def _reference(ref, w, query, coefficients, num_basis, min_variance=1e-6, project_query=True):
    """The forward pass of docs/theory.md §3 in NumPy float64."""
    query = np.asarray(query, np.float64)
    coefficients = np.asarray(coefficients, np.float64)
    q = np.einsum("bqd,dhk->bqhk", query, w["query"]) if project_query else query
    k = np.einsum("bne,ehk->bnhk", coefficients, w["key"])
    v = np.einsum("bne,ehk->bnhk", coefficients, w["value"])
    scores = np.einsum("bqhk,bnhk->bhqn", q, k) / np.sqrt(q.shape[-1])
    mu = 1.0 / (1.0 + np.exp(-scores @ w["mu_kernel"]))
    sigma_sq = np.maximum(_softplus(scores @ w["sigma_kernel"]), min_variance)
    centers, widths = ref.basis(num_basis, WIDTHS)
    r = ref.expectation(mu, sigma_sq, centers, widths)  # (b, h, q, N)
    z = np.einsum("bhqn,bnhk->bqhk", r, v)
    return np.einsum("bqhk,hko->bqo", z, w["output"]), mu, sigma_sq


def _inputs(rng, project_query=True):
    shape = (B, LQ, D) if project_query else (B, LQ, H, DK)
    query = rng.standard_normal(shape).astype("float32")
    coefficients = rng.standard_normal((B, N, E)).astype("float32")
    return query, coefficients


def _layer(**kwargs):
    config = dict(num_heads=H, key_dim=DK, value_dim=DV, basis_widths=WIDTHS)
    config.update(kwargs)
    return GaussianAttention(**config)


@pytest.mark.parametrize("project_query", [True, False])
def test_forward_matches_numpy(ref, rng, to_numpy, project_query):
    query, coefficients = _inputs(rng, project_query)
    layer = _layer(output_dim=7, project_query=project_query)
    out, mu, sigma_sq = layer(query, coefficients, return_density=True)
    assert tuple(out.shape) == (B, LQ, 7)
    assert tuple(mu.shape) == (B, H, LQ) and tuple(sigma_sq.shape) == (B, H, LQ)
    expected, ref_mu, ref_sigma_sq = _reference(
        ref,
        _weights(layer, to_numpy),
        query,
        coefficients,
        N,
        project_query=project_query,
    )
    np.testing.assert_allclose(to_numpy(mu), ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(sigma_sq), ref_sigma_sq, rtol=1e-5, atol=1e-7)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(to_numpy(out), expected, rtol=0, atol=1e-4 * scale)


def test_default_output_dim(rng):
    query, coefficients = _inputs(rng)
    assert tuple(_layer()(query, coefficients).shape) == (B, LQ, D)
    query, coefficients = _inputs(rng, project_query=False)
    out = _layer(project_query=False)(query, coefficients)
    assert tuple(out.shape) == (B, LQ, H * DV)


def test_density_is_in_range_and_variance_is_floored(rng, to_numpy):
    query, coefficients = _inputs(rng)
    query *= 10.0  # large scores: mu saturates towards 0 / 1
    _, mu, sigma_sq = _layer(min_variance=0.5)(query, coefficients, return_density=True)
    mu, sigma_sq = to_numpy(mu), to_numpy(sigma_sq)
    assert np.all(mu >= 0.0) and np.all(mu <= 1.0)
    assert np.all(sigma_sq >= 0.5)
    assert np.any(sigma_sq == np.float32(0.5)) and np.any(sigma_sq > 0.5)


def test_kl_regulariser_is_added(rng, to_numpy):
    query, coefficients = _inputs(rng)
    layer = _layer(kl_weight=0.1, sigma_0=0.2)
    _, _, sigma_sq = layer(query, coefficients, return_density=True)
    assert len(layer.losses) == 1
    ratio = to_numpy(sigma_sq).astype(np.float64) / 0.2**2
    expected = 0.1 * np.mean(0.5 * (ratio - np.log(ratio) - 1.0))
    np.testing.assert_allclose(to_numpy(layer.losses[0]), expected, rtol=1e-5)
    no_kl = _layer(kl_weight=0.0)
    no_kl(query, coefficients)
    assert no_kl.losses == []


def test_gradients_are_finite_and_non_zero(rng, gradients):
    query, coefficients = _inputs(rng)
    layer = _layer()
    layer(query, coefficients)
    weights = ops.convert_to_tensor(rng.standard_normal((B, LQ, D)).astype("float32"))

    def loss(q, c):
        return ops.sum(layer(q, c) * weights)

    variables = layer.trainable_variables
    assert len(variables) == 6
    grad_vars, (grad_query, grad_coefficients) = gradients(loss, variables, [query, coefficients])
    for v, g in zip(variables, grad_vars + [grad_query, grad_coefficients]):
        assert np.all(np.isfinite(g)), v.path
        assert np.abs(g).max() > 1e-6, v.path
    for name, g in [("query", grad_query), ("coefficients", grad_coefficients)]:
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-6, name


def test_gradients_match_finite_differences(ref, rng, to_numpy, gradients):
    """Autodiff through the closed form equals central differences of the
    NumPy float64 forward pass (w.r.t. the query and w_mu, w_sigma)."""
    query, coefficients = _inputs(rng)
    layer = _layer(kl_weight=0.0)
    layer(query, coefficients)
    weights = rng.standard_normal((B, LQ, D))
    w = _weights(layer, to_numpy)

    def numpy_loss(q, mu_kernel, sigma_kernel):
        params = dict(w, mu_kernel=mu_kernel, sigma_kernel=sigma_kernel)
        return np.sum(_reference(ref, params, q, coefficients, N)[0] * weights)

    def loss(q):
        return ops.sum(layer(q, coefficients) * ops.convert_to_tensor(weights, "float32"))

    variables = [layer.mu_kernel, layer.sigma_kernel]
    (grad_mu, grad_sigma), (grad_query,) = gradients(loss, variables, [query])
    eps = 1e-5
    q64 = query.astype(np.float64)
    for grad, which in [(grad_query, 0), (grad_mu, 1), (grad_sigma, 2)]:
        base = [q64, w["mu_kernel"], w["sigma_kernel"]]
        direction = rng.standard_normal(base[which].shape)
        plus = list(base)
        minus = list(base)
        plus[which] = base[which] + eps * direction
        minus[which] = base[which] - eps * direction
        numeric = (numpy_loss(*plus) - numpy_loss(*minus)) / (2 * eps)
        analytic = np.sum(grad * direction)
        np.testing.assert_allclose(analytic, numeric, rtol=2e-3, atol=1e-4)


def test_mixed_precision_matches_float32(rng, mixed_bfloat16, to_numpy):
    """Under "mixed_bfloat16": bfloat16 output, float32 density and weights,
    and the values of a float32 layer with the same weights, to bfloat16
    accuracy (measured: 0.4% of the output scale, 2e-3 on mu, 1% on sigma^2)."""
    query, coefficients = _inputs(rng)
    reference = _layer(dtype="float32")
    expected, expected_mu, expected_sigma_sq = (
        to_numpy(t) for t in reference(query, coefficients, return_density=True)
    )
    layer = _layer()
    layer(query, coefficients)  # Build, then copy the float32 layer's weights.
    weights = {w.path.split("/", 1)[1]: w for w in reference.weights}
    for w in layer.weights:
        w.assign(weights[w.path.split("/", 1)[1]].value)
    out, mu, sigma_sq = layer(query, coefficients, return_density=True)
    assert out.dtype == "bfloat16" or "bfloat16" in str(out.dtype)
    assert "float32" in str(mu.dtype) and "float32" in str(sigma_sq.dtype)
    assert all(v.dtype == "float32" for v in layer.weights)
    out = to_numpy(ops.cast(out, "float32"))
    scale = np.abs(expected).max()
    print(
        f"mixed_bfloat16 vs float32: output {np.abs(out - expected).max() / scale:.1e} "
        f"of scale, mu {np.abs(to_numpy(mu) - expected_mu).max():.1e}"
    )
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-2 * scale)
    np.testing.assert_allclose(to_numpy(mu), expected_mu, rtol=0, atol=1e-2)
    np.testing.assert_allclose(to_numpy(sigma_sq), expected_sigma_sq, rtol=5e-2)


def test_symbolic_call():
    layer = _layer(output_dim=9)
    out, mu, sigma_sq = layer(keras.Input((LQ, D)), keras.Input((N, E)), return_density=True)
    assert tuple(out.shape) == (None, LQ, 9)
    assert tuple(mu.shape) == (None, H, LQ) and tuple(sigma_sq.shape) == (None, H, LQ)


def test_errors(rng):
    query, coefficients = _inputs(rng)
    with pytest.raises(TypeError, match=r"num_heads.*'2'"):
        GaussianAttention(num_heads="2", key_dim=DK)
    with pytest.raises(ValueError, match=r"key_dim.*0"):
        GaussianAttention(num_heads=2, key_dim=0)
    with pytest.raises(ValueError, match=r"min_variance.*-1"):
        GaussianAttention(num_heads=2, key_dim=DK, min_variance=-1.0)
    with pytest.raises(ValueError, match=r"num_basis.*15"):
        _layer()(query, coefficients[:, :15])
    with pytest.raises(ValueError, match=r"coefficients.*\(2, 16\)"):
        _layer()(query, coefficients[:, :, 0])
    with pytest.raises(
        ValueError, match=rf"query.*\(batch_size, Lq, {H}, {DK}\).*\({B}, {LQ}, {D}\)"
    ):
        _layer(project_query=False)(query, coefficients)


# -- density_mode="content" -----------------------------------------------------


def _content_reference(ref, w, query, coefficients, num_basis, min_variance=1e-6):
    """The content density of GaussianAttention's docstring in NumPy float64:
    the signal sampled at N points, a softmax over their keys, its moments."""
    query = np.asarray(query, np.float64)
    coefficients = np.asarray(coefficients, np.float64)
    centers, widths = ref.basis(num_basis, WIDTHS)
    points = np.linspace(0.0, 1.0, num_basis)
    psi = ref.normal_pdf(points[:, None], centers[None, :], widths[None, :] ** 2)  # (M, N)
    signal = np.einsum("mn,bne->bme", psi, coefficients)
    q = np.einsum("bqd,dhk->bqhk", query, w["query"])
    k = np.einsum("bme,ehk->bmhk", signal, w["key"])
    v = np.einsum("bne,ehk->bnhk", coefficients, w["value"])
    scores = np.einsum("bqhk,bmhk->bhqm", q, k) / np.sqrt(q.shape[-1])
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    mu = p @ points
    sigma_sq = np.maximum((p * (points - mu[..., None]) ** 2).sum(-1), min_variance)
    r = ref.expectation(mu, sigma_sq, centers, widths)
    z = np.einsum("bhqn,bnhk->bqhk", r, v)
    return np.einsum("bqhk,hko->bqo", z, w["output"]), mu, sigma_sq


def test_content_density_matches_numpy(ref, rng, to_numpy):
    query, coefficients = _inputs(rng)
    layer = _layer(output_dim=7, density_mode="content")
    out, mu, sigma_sq = layer(query, coefficients, return_density=True)
    # Nothing of the affine density is made: query, key, value, output.
    assert sorted(w.path.split("/")[1] for w in layer.weights) == [
        "key",
        "output",
        "query",
        "value",
    ]
    expected, ref_mu, ref_sigma_sq = _content_reference(
        ref, _weights(layer, to_numpy), query, coefficients, N
    )
    np.testing.assert_allclose(to_numpy(mu), ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(sigma_sq), ref_sigma_sq, rtol=1e-4, atol=1e-7)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(to_numpy(out), expected, rtol=0, atol=1e-4 * scale)


def test_content_density_gradients_match_finite_differences(ref, rng, to_numpy, gradients):
    """Through the softmax over the samples: the query's and the stored
    coefficients' gradients equal central differences of the NumPy pass."""
    query, coefficients = _inputs(rng)
    layer = _layer(kl_weight=0.0, density_mode="content")
    layer(query, coefficients)
    weights = rng.standard_normal((B, LQ, D))
    w = _weights(layer, to_numpy)

    def numpy_loss(q, c):
        return np.sum(_content_reference(ref, w, q, c, N)[0] * weights)

    def loss(q, c):
        return ops.sum(layer(q, c) * ops.convert_to_tensor(weights, "float32"))

    _, (grad_query, grad_coefficients) = gradients(loss, [], [query, coefficients])
    eps = 1e-5
    base = [query.astype(np.float64), coefficients.astype(np.float64)]
    for grad, which in [(grad_query, 0), (grad_coefficients, 1)]:
        direction = rng.standard_normal(base[which].shape)
        plus, minus = list(base), list(base)
        plus[which] = base[which] + eps * direction
        minus[which] = base[which] - eps * direction
        numeric = (numpy_loss(*plus) - numpy_loss(*minus)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("position", [2, 9, 14])
def test_content_density_finds_one_token_wherever_it_is(position, to_numpy):
    """One distinct vector among 16 written into a memory (the ridge fit of
    ContinuousLTM's basis) is found by a query that matches it: the content
    density's mean lands on the token's place, within half a token, and its
    spread is below a token's width."""
    from keras_infformer import basis

    length, num_basis, e = 16, 32, 8
    vectors = np.zeros((1, length, e))
    vectors[0, :, 1:] = np.random.default_rng(position).standard_normal((length, e - 1)) * 0.1
    vectors[0, position, 0] = 1.0  # the one token whose first channel is set
    centers, widths = basis.basis_parameters(num_basis, WIDTHS)
    places = basis.uniform_positions(length)
    fit = basis.ridge_matrix(places, centers, widths, 0.5)  # (P, N): B = Gᵀ X
    coefficients = np.einsum("pn,bpe->bne", fit, vectors).astype("float32")
    layer = GaussianAttention(
        num_heads=1,
        key_dim=e,
        basis_widths=WIDTHS,
        project_query=False,
        density_mode="content",
    )
    query = np.zeros((1, 1, 1, e), "float32")
    query[..., 0] = 60.0  # scores: 60 / √8 per unit of the first channel
    layer(query, coefficients)
    layer._key_dense.kernel.assign(np.eye(e, dtype="float32")[:, None, :])  # keys = signal
    _, mu, sigma_sq = layer(query, coefficients, return_density=True)
    mu, sigma_sq = float(to_numpy(mu).item()), float(to_numpy(sigma_sq).item())
    assert abs(mu - places[position]) < 0.5 / length, (mu, places[position])
    assert sigma_sq < (1.0 / length) ** 2


def test_content_density_view_and_config(rng, to_numpy):
    query, coefficients = _inputs(rng)
    layer = _layer(density_mode="content")
    direct = to_numpy(layer(query, coefficients))
    view = layer.memory_view(coefficients)
    assert (
        [tuple(v.shape) for v in view]
        == [tuple(s) for s in layer.memory_view_shapes(B)]
        == [(B, N, H, DK), (B, N, H, DV)]
    )
    np.testing.assert_allclose(to_numpy(layer.read(query, view=view)[0]), direct, atol=1e-6)
    affine = _layer()
    affine(query, coefficients)
    assert (
        [tuple(v.shape) for v in affine.memory_view(coefficients)]
        == [
            (B, H, DK, 2),
            (B, N, H, DV),
        ]
        == list(affine.memory_view_shapes(B))
    )
    config = layer.get_config()
    assert config["density_mode"] == "content"
    clone = GaussianAttention.from_config(config)
    clone(query, coefficients)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(clone(query, coefficients)), direct, atol=1e-6)


@pytest.mark.parametrize("bad", ["softmax", "", None, 1])
def test_density_mode_errors(bad):
    with pytest.raises(ValueError, match=r"density_mode.*" + repr(bad).replace("'", ".")):
        _layer(density_mode=bad)


def test_default_widths_follow_the_coefficients_n(rng, to_numpy):
    """Without `basis_widths` the layer scales `relative_basis_widths` with
    the N of the coefficients it is built on ((2.56, 12.8) / 16 centres at
    N = 32), reads exactly as with those widths given, and a config taken
    before building rebuilds to the same widths."""
    query = rng.standard_normal((2, 5, 8)).astype("float32")
    coefficients = rng.standard_normal((2, 32, 8)).astype("float32")
    default = GaussianAttention(num_heads=2, key_dim=4)
    unbuilt_config = default.get_config()
    assert unbuilt_config["basis_widths"] is None
    out = to_numpy(default(query, coefficients))
    assert default.basis_widths == (0.16, 0.8)
    given = GaussianAttention(num_heads=2, key_dim=4, basis_widths=(0.16, 0.8))
    given(query, coefficients)
    given.set_weights(default.get_weights())
    np.testing.assert_array_equal(to_numpy(given(query, coefficients)), out)
    twin = GaussianAttention.from_config(unbuilt_config)
    twin(query, coefficients)
    assert twin.basis_widths == (0.16, 0.8)
