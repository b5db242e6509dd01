"""Every public layer through the shared battery (tests/layer_test_case.py)."""

import numpy as np
import pytest
from layer_test_case import run_layer_test

import keras_infformer as kif

B, L, D = 2, 8, 16


def _x(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_continuous_ltm(tmp_path):
    run_layer_test(
        kif.ContinuousLTM,
        dict(num_basis=16, num_samples=16),
        {"inputs": _x(B, L, D)},
        expected_output_shape=(B, 16, D),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=3,
        tmp_path=tmp_path,
        run_training_check=False,
    )


def test_gaussian_attention(tmp_path):
    run_layer_test(
        kif.GaussianAttention,
        dict(num_heads=2, key_dim=4),
        {"query": _x(B, L, D), "coefficients": _x(B, 16, D, seed=1)},
        expected_output_shape=(B, L, D),
        expected_num_trainable_weights=6,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
    )


def test_sticky_memory_sampler(tmp_path):
    mu = np.random.default_rng(0).uniform(size=(B, 2, L)).astype("float32")
    sigma_sq = np.full((B, 2, L), 0.01, "float32")
    run_layer_test(
        kif.StickyMemorySampler,
        dict(num_samples=16, num_bins=32),
        {"mu": mu, "sigma_sq": sigma_sq},
        expected_output_shape=(B, 16),
        expected_num_trainable_weights=0,
        expected_num_non_trainable_weights=0,
        tmp_path=tmp_path,
        run_training_check=False,
    )


@pytest.mark.parametrize(
    "settings, non_trainable",
    [
        (dict(), 5),
        (dict(sticky_memories=True), 6),
        (dict(use_long_term_memory=False, compressed_memory_length=4), 4),
    ],
    ids=["uniform", "sticky", "compressive"],
)
def test_infinite_former_decoder(tmp_path, settings, non_trainable):
    kwargs = dict(
        intermediate_dim=32,
        num_heads=2,
        memory_length=L,
        num_basis=16,
        num_samples=16,
        dropout=0.0,
        **settings,
    )
    trainable = 17 if settings.get("use_long_term_memory", True) else 12 + 2
    run_layer_test(
        kif.InfiniteFormerDecoder,
        kwargs,
        {"inputs": _x(B, L, D)},
        expected_output_shape=(B, L, D),
        expected_num_trainable_weights=trainable,
        expected_num_non_trainable_weights=non_trainable,
        tmp_path=tmp_path,
    )


def test_compressive_memory(tmp_path):
    run_layer_test(
        kif.layers.CompressiveMemory,
        dict(memory_length=4, compression_rate=4),
        {"inputs": _x(B, L, D)},
        expected_output_shape=((B, 4, D), (B, 4)),
        expected_num_trainable_weights=2,
        expected_num_non_trainable_weights=2,
        tmp_path=tmp_path,
    )


def test_continuous_memory_attention(tmp_path):
    run_layer_test(
        kif.ContinuousMemoryAttention,
        dict(num_heads=2, key_dim=4, num_basis=16, num_samples=16, sticky_memories=True),
        {"inputs": _x(B, L, D), "query": _x(B, L, D, seed=1)},
        expected_output_shape=(B, L, D),
        expected_num_trainable_weights=6,
        expected_num_non_trainable_weights=6,
        tmp_path=tmp_path,
    )
