"""ContinuousMemoryAttention: causal by construction, against NumPy float64."""

import keras
import numpy as np
import pytest
from conftest import Reference, to_numpy

import keras_infformer as kif

B, L, E, HEADS, KEY_DIM, N, M = 2, 8, 12, 2, 4, 16, 16
TAU, PENALTY, WIDTHS = 0.75, 1.0, (0.01, 0.05)


def _layer(**kwargs):
    settings = dict(
        num_heads=HEADS,
        key_dim=KEY_DIM,
        num_basis=N,
        num_samples=M,
        tau=TAU,
        ridge_penalty=PENALTY,
        basis_widths=WIDTHS,
        # The paper's initialisation, so that what is read shows.
        zero_output=False,
    )
    settings.update(kwargs)
    return kif.ContinuousMemoryAttention(**settings)


def _segments(seed, count):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(B, L, E)).astype("float32") for _ in range(count)]


def _reference_read(w, query, coefficients, centers, widths):
    """Gaussian attention (own query projection) in float64, one row."""
    q = np.einsum("qd,dhk->qhk", query, w["query"])
    k = np.einsum("ne,ehk->nhk", coefficients, w["key"])
    v = np.einsum("ne,ehk->nhk", coefficients, w["value"])
    scores = np.einsum("nhk,qhk->hqn", k, q) / np.sqrt(KEY_DIM)
    mu = 1.0 / (1.0 + np.exp(-(scores @ w["mu"])))
    sigma_sq = np.maximum(np.logaddexp(0.0, scores @ w["sigma"]), 1e-6)
    r = Reference.expectation(mu, sigma_sq, centers, widths)  # (h, q, N)
    z = np.einsum("hqn,nhk->qhk", r, v)
    return np.einsum("qhk,hko->qo", z, w["output"])


def _reference_stream(w, segments):
    """Per segment: absorb the previous one (ridge fit, §2/§4), then read."""
    centers, widths = Reference.basis(N, WIDTHS)
    outputs = []
    for row in range(B):
        coefficients, pending, max_abs, row_out = None, None, 0.0, []
        for x in segments:
            if pending is not None:
                if coefficients is None:
                    positions = (np.arange(L) + 0.5) / L
                    targets = pending
                else:
                    reads = Reference.signal(coefficients, np.arange(1, M + 1) / M, centers, widths)
                    reads = np.clip(reads, -2 * max_abs, 2 * max_abs)
                    positions = np.concatenate(
                        [TAU * np.arange(1, M + 1) / M, TAU + (1 - TAU) * np.arange(1, L + 1) / L]
                    )
                    targets = np.concatenate([reads, pending])
                coefficients = Reference.ridge_fit(
                    positions, targets, centers, widths, PENALTY, False
                )
                max_abs = max(max_abs, np.abs(pending).max())
            if coefficients is None:
                row_out.append(np.zeros((L, E)))
            else:
                row_out.append(_reference_read(w, x[row], coefficients, centers, widths))
            pending = x[row].astype(np.float64)
        outputs.append(row_out)
    return [np.stack([outputs[b][s] for b in range(B)]) for s in range(len(segments))]


def _weights(layer):
    by_path = {v.path.split("/", 1)[1]: to_numpy(v).astype(np.float64) for v in layer.weights}
    return {
        "query": by_path["attention/query/kernel"],
        "key": by_path["attention/key/kernel"],
        "value": by_path["attention/value/kernel"],
        "output": by_path["attention/output/kernel"],
        "mu": by_path["attention/mu_kernel"],
        "sigma": by_path["attention/sigma_kernel"],
    }


def test_streaming_equals_numpy_reference():
    layer = _layer()
    segments = _segments(0, 4)
    got = [to_numpy(layer(x, query=x)) for x in segments]
    expected = _reference_stream(_weights(layer), segments)
    assert np.abs(got[0]).max() == 0.0  # An empty memory reads as zeros.
    for s in range(1, len(segments)):
        np.testing.assert_allclose(got[s], expected[s], atol=2e-5, rtol=1e-4)
        assert np.abs(expected[s]).max() > 1e-3


@pytest.mark.parametrize("sticky", [False, True])
def test_a_segment_never_reads_itself(sticky):
    """Changing a token (its stored vector, not its query) changes nothing
    in its own segment, and the next segment's reads do change."""
    segments = _segments(1, 3)
    changed = [s.copy() for s in segments]
    changed[1][:, L - 1] += 3.0  # The last token of segment 1.
    runs = []
    for stream in (segments, changed):
        keras.utils.set_random_seed(7)
        layer = _layer(sticky_memories=sticky)
        # Queries fixed; only what is remembered changes.
        runs.append([to_numpy(layer(x, query=q)) for x, q in zip(stream, segments)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert np.abs(runs[0][2] - runs[1][2]).max() > 1e-4


def test_stateful_equals_explicit_state_and_reset_empties():
    segments = _segments(2, 3)
    layer = _layer(sticky_memories=True)
    stateful = [to_numpy(layer(x, query=x)) for x in segments]
    state = layer.get_initial_state(B)
    explicit = []
    for x in segments:
        out, state = layer(x, query=x, state=state)
        explicit.append(to_numpy(out))
    for a, b in zip(stateful, explicit):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # A reset row reads an empty memory, the other row keeps its past.
    out = to_numpy(layer(segments[0], query=segments[0], reset=np.array([True, False])))
    assert np.abs(out[0]).max() == 0.0 and np.abs(out[1]).max() > 0.0


def test_zero_output_starts_at_zero_and_trains():
    # The default: a read added to a block starts at zero.
    layer = kif.ContinuousMemoryAttention(
        num_heads=HEADS, key_dim=KEY_DIM, num_basis=N, num_samples=M
    )
    assert layer.zero_output
    segments = _segments(3, 3)
    for x in segments:
        out = to_numpy(layer(x, query=x))
    assert np.abs(out).max() == 0.0
    kernel = [v for v in layer.trainable_weights if v.path.endswith("output/kernel")][0]
    assert np.all(to_numpy(kernel) == 0.0)


def test_needs_a_query_and_matching_shapes():
    layer = _layer()
    x = _segments(4, 1)[0]
    with pytest.raises(ValueError, match="query"):
        layer(x)
    layer(x, query=x)
    with pytest.raises(ValueError, match="inputs"):
        layer(x[:, :4], query=x[:, :4])
