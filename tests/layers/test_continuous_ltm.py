"""ContinuousLTM: the ridge fit, the unbounded update, state, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_infformer.layers import ContinuousLTM

# Small sizes used by most tests.
N, M, L, E, BATCH = 32, 32, 16, 3, 2
WIDTHS = (0.01, 0.05)


def _ltm(**kwargs):
    config = dict(num_basis=N, num_samples=M, basis_widths=WIDTHS)
    config.update(kwargs)
    return ContinuousLTM(**config)


def _smooth(t, phase=0.0):
    """A sum of a few sines, one column per phase."""
    return (
        np.sin(2 * np.pi * t + phase)
        + 0.5 * np.sin(6 * np.pi * t + 0.3 + phase)
        + 0.3 * np.cos(10 * np.pi * t + phase)
    )


def _variables(layer, to_numpy):
    return [to_numpy(v) for v in layer.weights]


def _assert_coefficients_close(actual, expected, rtol=1e-5):
    """Float32 layer output vs float64 reference, relative to the scale."""
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def _ridge_matrix(ref, positions, centers, widths, penalty):
    """G (P, N) with B = Gᵀ X, from conftest's normal equations (X = I)."""
    return ref.ridge_fit(positions, np.eye(len(positions)), centers, widths, penalty, False).T


def _update_positions(num_samples, length, tau):
    """Old samples at tau m/M, new vectors at tau + (1 - tau) l/L (§1.4)."""
    old = tau * np.arange(1, num_samples + 1) / num_samples
    return np.concatenate([old, tau + (1 - tau) * np.arange(1, length + 1) / length])


# -- the fit against independent normal equations ------------------------------


@pytest.mark.parametrize("edge_padding", [False, True])
def test_empty_memory_fit_solves_normal_equations(ref, rng, to_numpy, edge_padding):
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer = _ltm(ridge_penalty=0.5, edge_padding=edge_padding)
    out = to_numpy(layer(x))
    assert out.shape == (BATCH, N, E) and out.dtype == np.float32
    centers, widths = ref.basis(N, WIDTHS)
    positions = (np.arange(L) + 0.5) / L
    for b in range(BATCH):
        expected = ref.ridge_fit(positions, x[b], centers, widths, 0.5, edge_padding)
        err = np.abs(out[b] - expected).max() / np.abs(expected).max()
        print(
            f"empty-memory fit (edge_padding={edge_padding}), row {b}: max "
            f"error / max |B| = {err:.1e}"
        )
        _assert_coefficients_close(out[b], expected)


@pytest.mark.parametrize("edge_padding", [False, True])
@pytest.mark.parametrize("sticky", [False, True])
def test_update_solves_normal_equations(ref, rng, to_numpy, edge_padding, sticky):
    """Second update: old signal read at m/M (or at the given points), clipped
    to the absorbed range, placed at tau m/M; new vectors at
    tau + (1 - tau) l/L; one ridge fit."""
    tau = 0.6
    x1 = rng.standard_normal((BATCH, L, E)).astype("float32")
    x2 = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer = _ltm(tau=tau, ridge_penalty=1.0, edge_padding=edge_padding)
    first = to_numpy(layer(x1))
    if sticky:
        reads = np.sort(rng.uniform(0.0, 1.0, size=(BATCH, M)), axis=-1)
        second = to_numpy(layer(x2, sample_points=reads.astype("float32")))
    else:
        reads = np.tile(np.arange(1, M + 1) / M, (BATCH, 1))
        second = to_numpy(layer(x2))
    centers, widths = ref.basis(N, WIDTHS)
    old_positions = tau * np.arange(1, M + 1) / M
    new_positions = tau + (1 - tau) * np.arange(1, L + 1) / L
    positions = np.concatenate([old_positions, new_positions])
    for b in range(BATCH):
        b1 = ref.ridge_fit((np.arange(L) + 0.5) / L, x1[b], centers, widths, 1.0, edge_padding)
        _assert_coefficients_close(first[b], b1)
        # Read back clipped to twice the largest |value| the row absorbed.
        peak = 2.0 * np.abs(x1[b]).max()
        old_values = np.clip(ref.signal(b1, reads[b], centers, widths), -peak, peak)
        targets = np.concatenate([old_values, x2[b]])
        b2 = ref.ridge_fit(positions, targets, centers, widths, 1.0, edge_padding)
        err = np.abs(second[b] - b2).max() / np.abs(b2).max()
        print(
            f"update fit (edge_padding={edge_padding}, sticky={sticky}), row "
            f"{b}: max error / max |B| = {err:.1e}"
        )
        _assert_coefficients_close(second[b], b2)


# -- reconstruction quality ----------------------------------------------------


def _smooth_reconstruction(to_numpy, edge_padding):
    length = 256
    t = (np.arange(length) + 0.5) / length
    x = np.stack([_smooth(t), _smooth(t, 1.0)], axis=-1)[None].astype("float32")
    layer = ContinuousLTM(
        num_basis=128,
        basis_widths=(0.01, 0.05),
        ridge_penalty=0.5,
        num_samples=64,
        edge_padding=edge_padding,
    )
    rec = to_numpy(layer.reconstruct(layer(x), t))
    assert rec.shape == x.shape
    return t, x, rec


def test_reconstructs_a_smooth_signal(to_numpy):
    _, x, rec = _smooth_reconstruction(to_numpy, edge_padding=False)
    error = np.linalg.norm(rec - x) / np.linalg.norm(x)
    print(f"smooth signal, edge_padding=False: relative L2 error {error:.4f}")
    assert error < 0.05


def test_edge_padding_reconstructs_the_interior(to_numpy):
    """The edge trick takes the signal as zero beyond [0, 1] (as the
    reference code does): the fit is pulled towards zero at the very ends,
    but the interior is reconstructed closely."""
    t, x, rec = _smooth_reconstruction(to_numpy, edge_padding=True)
    inner = (t > 0.05) & (t < 0.95)
    error = np.linalg.norm((rec - x)[:, inner]) / np.linalg.norm(x[:, inner])
    whole = np.linalg.norm(rec - x) / np.linalg.norm(x)
    print(
        f"smooth signal, edge_padding=True: relative L2 error {error:.4f} on "
        f"[0.05, 0.95], {whole:.4f} on [0, 1]"
    )
    assert error < 0.01


def test_smooths_white_noise(ref, rng, to_numpy):
    """The fit is a smoother: white noise keeps the share of its variance
    that the ridge smoother S (positions -> fit -> the same positions)
    passes, tr(SᵀS) / P, computed here in float64 (~0.25). Two-sided: an
    all-zero memory keeps nothing, an interpolating one keeps everything."""
    length = 256
    t = (np.arange(length) + 0.5) / length
    noise = rng.standard_normal((1, length, 4)).astype("float32")
    layer = ContinuousLTM(
        num_basis=128, basis_widths=(0.01, 0.05), ridge_penalty=0.5, num_samples=64
    )
    rec = to_numpy(layer.reconstruct(layer(noise), t))
    ratio = rec.var() / noise.var()
    centers, widths = ref.basis(128, (0.01, 0.05))
    smoother = ref.rbf(t, centers, widths) @ _ridge_matrix(ref, t, centers, widths, 0.5).T
    expected = (smoother**2).sum() / length
    print(
        f"white noise: variance ratio reconstruction / noise = {ratio:.3f} "
        f"(expected share tr(SᵀS)/P = {expected:.3f})"
    )
    assert 0.1 < expected < 0.5
    assert 0.8 * expected < ratio < 1.25 * expected


@pytest.mark.parametrize("edge_padding", [False, True])
def test_two_updates_squeeze_the_old_signal(to_numpy, edge_padding):
    """X2 on (tau, 1] follows the newest vectors; X2(tau s) ~ X1(s)."""
    tau, length = 0.75, 64
    t = (np.arange(length) + 0.5) / length
    x1 = _smooth(t)[None, :, None].astype("float32")
    u = np.arange(1, length + 1) / length  # new vector l sits at tau + (1-tau) u
    x2 = (np.cos(np.pi * u) + 0.5 * u)[None, :, None].astype("float32")
    layer = ContinuousLTM(
        num_basis=128,
        basis_widths=(0.01, 0.05),
        num_samples=128,
        tau=tau,
        ridge_penalty=0.5,
        edge_padding=edge_padding,
    )
    b1 = layer(x1)
    b2 = layer(x2)
    # Away from the ends of [0, 1], where the edge padding pulls both fits
    # towards zero (and places X1's end at tau in X2).
    s = np.linspace(0.1, 0.9, 81)
    old = to_numpy(layer.reconstruct(b2, tau * s))
    first = to_numpy(layer.reconstruct(b1, s))
    old_err = np.abs(old - first).max() / np.abs(first).max()
    inner = (u > 0.1) & (u < 0.9)
    new = to_numpy(layer.reconstruct(b2, tau + (1 - tau) * u[inner]))
    new_err = np.abs(new - x2[:, inner]).max() / np.abs(x2).max()
    print(
        f"two updates, edge_padding={edge_padding}: old part max rel error "
        f"{old_err:.4f}, new part {new_err:.4f}"
    )
    assert old_err < 0.05
    assert new_err < 0.05


@pytest.mark.parametrize("edge_padding, num_basis, length", [(True, 128, 128), (False, 32, 32)])
def test_constant_signal_reaches_a_fixed_point(to_numpy, edge_padding, num_basis, length):
    """Absorbing a constant 1,000 times: no drift, no NaN, mean kept within 1%."""
    value = 2.0
    layer = ContinuousLTM(
        num_basis=num_basis,
        num_samples=num_basis,
        tau=0.75,
        ridge_penalty=1.0,
        edge_padding=edge_padding,
        stateful=False,
    )
    x = ops.convert_to_tensor(np.full((1, length, 2), value, "float32"))
    layer.build(x.shape)
    state = layer.get_initial_state(1)
    t = np.linspace(0.05, 0.95, 181)
    saved = {}
    for step in range(1, 1001):
        coefficients, state = layer.absorb(x, state)
        if step in (1, 100, 1000):
            saved[step] = to_numpy(coefficients)
    means = {k: to_numpy(layer.reconstruct(v, t)).mean() for k, v in saved.items()}
    drift = np.abs(saved[1000] - saved[100]).max()
    print(
        f"constant signal, edge_padding={edge_padding}: mean after 1 / 100 / "
        f"1000 updates {means[1]:.4f} / {means[100]:.4f} / {means[1000]:.4f} "
        f"(target {value}), max |B_1000 - B_100| = {drift:.2e}"
    )
    assert np.all(np.isfinite(saved[1000]))
    np.testing.assert_allclose(saved[1000], saved[100], rtol=1e-5, atol=1e-5)
    assert abs(means[1000] - value) <= 0.01 * value


# -- state ---------------------------------------------------------------------


def test_stateful_memory_starts_empty_and_fills(rng, to_numpy):
    layer = _ltm()
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer.build(x.shape)
    assert layer.coefficients.shape == (BATCH, N, E)
    assert layer.coefficients.dtype == "float32" and not layer.coefficients.trainable
    np.testing.assert_array_equal(to_numpy(layer.coefficients), 0.0)
    out = to_numpy(layer(x))
    np.testing.assert_array_equal(to_numpy(layer.coefficients), out)
    np.testing.assert_array_equal(to_numpy(layer.filled), 1.0)
    assert layer.trainable_weights == []


def test_per_row_reset_empties_only_flagged_rows(rng, to_numpy):
    x1 = rng.standard_normal((3, L, E)).astype("float32")
    x2 = rng.standard_normal((3, L, E)).astype("float32")
    reset = np.array([False, True, False])

    with_reset, without_reset, fresh = _ltm(), _ltm(), _ltm()
    with_reset(x1)
    without_reset(x1)
    out = to_numpy(with_reset(x2, reset=reset))
    no_reset = to_numpy(without_reset(x2))
    from_empty = to_numpy(fresh(x2))

    np.testing.assert_allclose(out[1], from_empty[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[[0, 2]], no_reset[[0, 2]], rtol=1e-6, atol=1e-6)
    assert np.abs(no_reset[1] - from_empty[1]).max() > 1e-2  # reset mattered
    np.testing.assert_array_equal(to_numpy(with_reset.coefficients), out)


def test_reset_state_empties_every_row(rng, to_numpy):
    x1 = rng.standard_normal((BATCH, L, E)).astype("float32")
    x2 = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer, fresh = _ltm(), _ltm()
    layer(x1)
    layer.reset_state()
    np.testing.assert_array_equal(to_numpy(layer.coefficients), 0.0)
    np.testing.assert_array_equal(to_numpy(layer.filled), 0.0)
    np.testing.assert_allclose(to_numpy(layer(x2)), to_numpy(fresh(x2)), rtol=1e-6, atol=1e-6)


def test_stateful_and_explicit_paths_agree(rng, to_numpy):
    stateful = _ltm()
    explicit = _ltm(stateful=False)
    explicit.build((BATCH, L, E))
    assert explicit.weights == []
    state = explicit.get_initial_state(BATCH)
    for step in range(4):
        x = rng.standard_normal((BATCH, L, E)).astype("float32")
        kwargs = {}
        if step == 2:
            kwargs["sample_points"] = np.sort(rng.uniform(0, 1, (BATCH, M)), axis=-1).astype(
                "float32"
            )
        if step == 3:
            kwargs["reset"] = np.array([True, False])
        a = to_numpy(stateful(x, **kwargs))
        b, state = explicit(x, state=state, **kwargs)
        np.testing.assert_allclose(a, to_numpy(b), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(to_numpy(state["coefficients"]), a, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(to_numpy(state["filled"]), 1.0)


def test_explicit_path_touches_no_variable(rng, to_numpy):
    layer = _ltm()
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer(x)  # stateful call: memory now filled
    before = _variables(layer, to_numpy)
    state = layer.get_initial_state(BATCH)
    # A different batch size is fine on the explicit path.
    other = layer.get_initial_state(5)
    for _ in range(2):
        _, state = layer(x, state=state)
    layer(rng.standard_normal((5, L, E)).astype("float32"), state=other)
    for a, b in zip(before, _variables(layer, to_numpy)):
        np.testing.assert_array_equal(a, b)


def test_get_state_returns_copies(rng, to_numpy):
    layer = _ltm()
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    out = to_numpy(layer(x))
    state = layer.get_state()
    layer(x)
    np.testing.assert_array_equal(to_numpy(state["coefficients"]), out)


def test_explicit_state_in_a_jitted_function(rng, to_numpy):
    """The pure path composes with a compiled function (a model without
    variables): three steps through `predict` equal three eager steps."""
    explicit = _ltm(stateful=False)
    x = keras.Input((L, E))
    coefficients_in = keras.Input((N, E))
    filled_in = keras.Input(())
    max_abs_in = keras.Input(())
    out, new_state = explicit(
        x,
        state={"coefficients": coefficients_in, "filled": filled_in, "max_abs": max_abs_in},
    )
    model = keras.Model(
        [x, coefficients_in, filled_in, max_abs_in],
        [out, new_state["filled"], new_state["max_abs"]],
    )
    eager = _ltm(stateful=False)
    eager.build((BATCH, L, E))
    state = eager.get_initial_state(BATCH)
    coeffs = np.zeros((BATCH, N, E), "float32")
    filled = np.zeros((BATCH,), "float32")
    max_abs = np.zeros((BATCH,), "float32")
    for _ in range(3):
        xs = rng.standard_normal((BATCH, L, E)).astype("float32")
        coeffs, filled, max_abs = model.predict_on_batch([xs, coeffs, filled, max_abs])
        expected, state = eager(xs, state=state)
        np.testing.assert_allclose(to_numpy(coeffs), to_numpy(expected), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(to_numpy(max_abs), to_numpy(state["max_abs"]))
    np.testing.assert_array_equal(to_numpy(filled), 1.0)


# -- gradients -----------------------------------------------------------------


def test_no_gradient_into_the_stored_past(rng, gradients):
    layer = _ltm(stateful=False)
    layer.build((BATCH, L, E))
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    past = rng.standard_normal((BATCH, N, E)).astype("float32")
    weights = ops.convert_to_tensor(rng.standard_normal((BATCH, N, E)).astype("float32"))
    filled = ops.ones((BATCH,))
    max_abs = ops.full((BATCH,), 100.0)

    def loss(inputs, old):
        out, _ = layer(inputs, state={"coefficients": old, "filled": filled, "max_abs": max_abs})
        return ops.sum(out * weights)

    _, (grad_inputs, grad_past) = gradients(loss, [], [x, past])
    assert np.all(np.isfinite(grad_inputs)) and np.abs(grad_inputs).max() > 1e-3
    np.testing.assert_array_equal(grad_past, 0.0)


def test_stateful_gradient_reaches_inputs(rng, gradients):
    layer = _ltm()
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    layer(x)  # fill the memory

    def loss(inputs):
        return ops.sum(ops.square(layer(inputs)))

    _, (grad_inputs,) = gradients(loss, [], [x])
    assert np.all(np.isfinite(grad_inputs)) and np.abs(grad_inputs).max() > 1e-3


# -- mixed precision -----------------------------------------------------------


def test_memory_stays_float32_under_mixed_precision(rng, to_numpy):
    """Under "mixed_bfloat16" the fit and the memory are float32: both paths
    give the float32-policy result exactly (not a bfloat16-rounded one)."""
    xs = [rng.standard_normal((BATCH, L, E)).astype("float32") for _ in range(3)]

    def run():
        stateful, explicit = _ltm(), _ltm(stateful=False)
        explicit.build((BATCH, L, E))
        state = explicit.get_initial_state(BATCH)
        out = []
        for x in xs:
            a = stateful(x)
            b, state = explicit(x, state=state)
            out.append((to_numpy(a), to_numpy(b)))
        assert stateful.coefficients.dtype == "float32"
        np.testing.assert_array_equal(to_numpy(stateful.coefficients), out[-1][0])
        return out

    reference = run()
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = run()
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    for (ref_a, _), (a, b) in zip(reference, mixed):
        assert a.dtype == np.float32 and b.dtype == np.float32
        np.testing.assert_allclose(a, ref_a, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b, ref_a, rtol=1e-6, atol=1e-6)


# -- symbolic use --------------------------------------------------------------


def test_symbolic_call_shapes():
    layer = _ltm()
    out = layer(keras.Input((L, E), batch_size=BATCH))
    assert tuple(out.shape) == (BATCH, N, E) and out.dtype == "float32"
    explicit = _ltm(stateful=False)
    out, state = explicit(
        keras.Input((L, E)),
        state={
            "coefficients": keras.Input((N, E)),
            "filled": keras.Input(()),
            "max_abs": keras.Input(()),
        },
    )
    assert tuple(out.shape) == (None, N, E)
    assert tuple(state["filled"].shape) == (None,)
    assert tuple(state["max_abs"].shape) == (None,)


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tau": 1.0}, ValueError, r"tau.*1\.0"),
        ({"tau": 0.0}, ValueError, r"tau.*0\.0"),
        ({"tau": -0.5}, ValueError, r"tau.*-0\.5"),
        ({"tau": "half"}, TypeError, r"tau.*'half'"),
        ({"num_basis": 33}, ValueError, r"num_basis.*33"),
        ({"num_basis": 32.0}, TypeError, r"num_basis.*32\.0"),
        ({"num_samples": 0}, ValueError, r"num_samples.*0"),
        ({"ridge_penalty": 0.0}, ValueError, r"ridge_penalty.*0\.0"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _ltm(**kwargs)


def test_stateful_layer_needs_a_static_batch_size():
    with pytest.raises(ValueError, match=r"static batch size.*None"):
        _ltm()(keras.Input((L, E)))


def _filled_layer(rng, to_numpy):
    layer = _ltm()
    layer(rng.standard_normal((BATCH, L, E)).astype("float32"))
    return layer, _variables(layer, to_numpy)


def _bad_call(name, rng):
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    points = np.sort(rng.uniform(0, 1, (BATCH, M)), axis=-1).astype("float32")
    if name == "batch":
        return (
            (rng.standard_normal((BATCH + 1, L, E)).astype("float32"),),
            {},
            rf"batch size {BATCH}.*\({BATCH + 1}, {L}, {E}\)",
        )
    if name == "width":
        return (
            (rng.standard_normal((BATCH, L, E + 1)).astype("float32"),),
            {},
            rf"feature dimension {E}.*\({BATCH}, {L}, {E + 1}\)",
        )
    if name == "nan":
        x[0, 3, 1] = np.nan
        return (x,), {}, r"inputs.*finite.*nan"
    if name == "inf":
        x[1, 0, 0] = np.inf
        return (x,), {}, r"inputs.*finite.*inf"
    if name == "points_shape":
        return (x,), {"sample_points": points[:, :-1]}, rf"sample_points.*\({BATCH}, {M - 1}\)"
    if name == "points_range":
        points[0, -1] = 1.5
        return (x,), {"sample_points": points}, r"sample_points.*\[0, 1\].*1\.5"
    if name == "points_negative":
        points[1, 0] = -0.25
        return (x,), {"sample_points": points}, r"sample_points.*\[0, 1\].*-0\.25"
    if name == "reset_shape":
        return (x,), {"reset": np.array([True, False, True])}, r"reset.*\(3,\)"
    if name == "rank":
        return (x[:, 0],), {}, rf"inputs.*\({BATCH}, {E}\)"
    raise AssertionError(name)


@pytest.mark.parametrize(
    "name",
    [
        "batch",
        "width",
        "nan",
        "inf",
        "points_shape",
        "points_range",
        "points_negative",
        "reset_shape",
        "rank",
    ],
)
def test_call_errors_leave_the_memory_unchanged(rng, to_numpy, name):
    layer, before = _filled_layer(rng, to_numpy)
    args, kwargs, match = _bad_call(name, rng)
    with pytest.raises(ValueError, match=match):
        layer(*args, **kwargs)
    for a, b in zip(before, _variables(layer, to_numpy)):
        np.testing.assert_array_equal(a, b)


def test_explicit_state_errors(rng):
    layer = _ltm(stateful=False)
    layer.build((BATCH, L, E))
    x = rng.standard_normal((BATCH, L, E)).astype("float32")
    with pytest.raises(ValueError, match=r"keeps no memory variables"):
        layer(x)
    bad = {
        "coefficients": np.zeros((BATCH, N + 2, E), "float32"),
        "filled": np.zeros((BATCH,), "float32"),
        "max_abs": np.zeros((BATCH,), "float32"),
    }
    with pytest.raises(ValueError, match=rf"coefficients.*\({BATCH}, {N + 2}, {E}\)"):
        layer(x, state=bad)
    with pytest.raises(ValueError, match=r"state.*'coefficients'"):
        layer(x, state={"coefficients": np.zeros((BATCH, N, E), "float32")})


def test_unstable_settings_are_refused(ref):
    # N=64, M=32, L=32: the update map has spectral radius ~1.54 (diverges).
    layer = ContinuousLTM(num_basis=64, basis_widths=(0.01, 0.05), num_samples=32)
    with pytest.raises(ValueError, match="num_samples=32"):
        layer.build((2, 32, 4))
    # Independent check of the claim: iterate the update map in NumPy.
    centers, widths = ref.basis(64, (0.01, 0.05))
    psi = ref.rbf(np.arange(1, 33) / 32, centers, widths)  # reads at m/M
    g = _ridge_matrix(ref, _update_positions(32, 32, 0.75), centers, widths, 1.0)
    b = np.random.default_rng(0).normal(size=(64, 1))
    for _ in range(50):
        b = g[:32].T @ (psi @ b)
    assert np.linalg.norm(b) > 1e6
    # Enough samples: accepted.
    ContinuousLTM(num_basis=64, basis_widths=(0.01, 0.05), num_samples=64).build((2, 32, 4))


def test_default_fit_reconstructs_smooth_signal_over_whole_interval(to_numpy):
    t = (np.arange(256) + 0.5) / 256
    x = np.stack([np.sin(2 * np.pi * t) + 0.5 * np.cos(6 * np.pi * t), np.cos(4 * np.pi * t)], -1)
    layer = ContinuousLTM(num_basis=128, num_samples=128, ridge_penalty=0.5)
    coefficients = layer(np.repeat(x[None], 2, 0).astype("float32"))
    rec = to_numpy(layer.reconstruct(coefficients, t))[0]
    error = np.linalg.norm(rec - x) / np.linalg.norm(x)
    print(f"default (no edge padding) smooth-signal error over [0, 1]: {error:.4f}")
    assert error < 0.05


def _sticky_growth_setting():
    """Sticky reads that make the read-and-squeeze map expand (NumPy check).

    A broad density leaning left (μ = 0.075, σ = 0.3) parks a point of the
    signal near the left edge where the fit overshoots; every update re-reads
    it, so the unbounded map has spectral radius ~1.18 for N = M = 64, L = 32.
    """
    from keras_infformer.layers import StickyMemorySampler

    n, m, length = 64, 64, 32
    sampler = StickyMemorySampler(num_samples=m, num_bins=128)
    mu = np.full((1, 1, 1), 0.075, "float32")
    points = np.asarray(ops.convert_to_numpy(sampler(mu, np.full_like(mu, 0.3**2))))
    return n, m, length, points.astype("float32")


def test_sticky_reads_that_expand_stay_bounded(ref, rng, to_numpy):
    n, m, length, points = _sticky_growth_setting()
    centers, widths = ref.basis(n, WIDTHS)
    g = _ridge_matrix(ref, _update_positions(m, length, 0.75), centers, widths, 1.0)
    psi = ref.rbf(points[0].astype(np.float64), centers, widths)
    radius = np.max(np.abs(np.linalg.eigvals(g[:m].T @ psi)))
    assert radius > 1.05  # the setting really expands without the bound

    layer = ContinuousLTM(num_basis=n, num_samples=m, stateful=False)
    layer.build((1, length, 2))
    state = layer.get_initial_state(1)
    xs = rng.uniform(-1.0, 1.0, (400, 1, length, 2)).astype("float32")
    unbounded = None
    for x in xs:
        _, state = layer.absorb(x, state, sample_points=points)
        # The same map without the bound, in float64.
        if unbounded is None:
            unbounded = (
                _ridge_matrix(ref, (np.arange(length) + 0.5) / length, centers, widths, 1.0).T
                @ x[0]
            )
        else:
            unbounded = g.T @ np.concatenate([psi @ unbounded, x[0]])
    t = np.linspace(0.0, 1.0, 501)
    signal = to_numpy(layer.reconstruct(state["coefficients"], t))
    free = ref.rbf(t, centers, widths) @ unbounded
    peak = np.abs(xs).max()
    print(
        f"sticky reads with radius {radius:.3f}, 400 updates: max |X(t)| "
        f"bounded {np.abs(signal).max():.2f}, unbounded {np.abs(free).max():.3g} "
        f"(inputs within ±{peak:.2f})"
    )
    np.testing.assert_allclose(to_numpy(state["max_abs"]), [peak], rtol=1e-6)
    assert np.abs(free).max() > 1e6
    # Bounded, and not by emptying the memory: the signal keeps the inputs'
    # scale (an all-zero memory would pass a one-sided bound).
    assert np.all(np.isfinite(signal))
    assert 0.2 * peak < np.abs(signal).max() < 10 * peak
