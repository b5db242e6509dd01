"""Loss and metrics over real tokens only, against NumPy on padded streams."""

import keras
import numpy as np
import pytest
from conftest import to_numpy

import keras_infformer as kif


def _padded_batch(rng):
    """8 rows of 6 positions, 6 rows pure padding, like a stream's tail."""
    vocabulary = 5
    logits = rng.normal(size=(8, 6, vocabulary)).astype("float32") * 3
    targets = rng.integers(0, vocabulary, size=(8, 6))
    weights = np.zeros((8, 6), "float32")
    weights[:2] = 1.0
    weights[1, 4:] = 0.0  # A row that ends mid-segment.
    return logits, targets, weights


def _reference_nats(logits, targets, weights):
    z = logits.astype(np.float64)
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nats = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    return (nats * weights).sum() / weights.sum()


def test_loss_is_mean_over_real_tokens(rng):
    logits, targets, weights = _padded_batch(rng)
    expected = _reference_nats(logits, targets, weights)
    loss = kif.metrics.masked_token_loss()
    got = float(to_numpy(loss(targets, logits, sample_weight=weights)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Keras' default reduction divides by every position: far too low.
    plain = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(to_numpy(plain(targets, logits, sample_weight=weights))) < 0.5 * expected


def test_bits_and_perplexity_over_real_tokens(rng):
    logits, targets, weights = _padded_batch(rng)
    nats = _reference_nats(logits, targets, weights)
    bits, perplexity = kif.metrics.BitsPerToken(), kif.metrics.language_model_metrics()[1]
    # Two updates (halves of the batch) accumulate like one.
    for part in (slice(0, 4), slice(4, 8)):
        bits.update_state(targets[part], logits[part], weights[part])
        perplexity.update_state(targets[part], logits[part], weights[part])
    np.testing.assert_allclose(float(bits.result()), nats / np.log(2), rtol=1e-5)
    np.testing.assert_allclose(float(perplexity.result()), np.exp(nats), rtol=1e-5)


def test_bits_per_byte_with_token_lengths(rng):
    logits, targets, weights = _padded_batch(rng)
    lengths = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    metric = kif.metrics.BitsPerToken(token_lengths=lengths)
    metric.update_state(targets, logits, weights)
    z = logits.astype(np.float64)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nats = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    expected = (nats * weights).sum() / np.log(2) / (lengths[targets] * weights).sum()
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)
    config = metric.get_config()
    assert kif.metrics.BitsPerToken.from_config(config).token_lengths == list(lengths)


def test_bad_token_lengths():
    with pytest.raises(ValueError, match="token_lengths"):
        kif.metrics.BitsPerToken(token_lengths=[1.0, 0.0])


def test_token_lengths_shorter_than_the_vocabulary_are_refused(rng):
    """Issue 23 item 17: a short table reported 0.0 bits, no error."""
    logits, targets, weights = _padded_batch(rng)
    vocabulary = logits.shape[-1]
    metric = kif.metrics.BitsPerToken(token_lengths=[1.0] * (vocabulary - 2))
    with pytest.raises(
        ValueError, match=rf"vocabulary_size={vocabulary}.*{vocabulary - 2} token_lengths"
    ):
        metric.update_state(targets, logits, weights)
    assert float(metric.total_units.value) == 0.0 and float(metric.total_nats.value) == 0.0


def test_reset_state_forgets_every_earlier_batch(rng):
    """Issue 23 item 23: after `reset_state` a metric reports the next
    batch alone (NumPy reference), for both weighted metrics of ours."""
    first, second = _padded_batch(rng), _padded_batch(rng)
    logits, targets, weights = second
    lengths = np.arange(1.0, 6.0)
    for metric in (kif.metrics.BitsPerToken(), kif.metrics.BitsPerToken(token_lengths=lengths)):
        metric.update_state(first[1], first[0], first[2])
        metric.reset_state()
        metric.update_state(targets, logits, weights)
        nats = _reference_nats(logits, targets, weights) * weights.sum()
        units = (
            weights.sum() if metric.token_lengths is None else (lengths[targets] * weights).sum()
        )
        np.testing.assert_allclose(float(metric.result()), nats / units / np.log(2), rtol=1e-5)
