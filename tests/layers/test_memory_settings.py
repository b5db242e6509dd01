"""The memory settings are declared once (layers/memory_settings.py)."""

import inspect

import pytest

import keras_infformer as kif
from keras_infformer.layers import memory_settings
from keras_infformer.models.pretrained_memory_causal_lm import PretrainedMemoryCausalLM


def _defaults(cls):
    return {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
    }


@pytest.mark.parametrize(
    "cls, declared",
    [
        (kif.InfiniteFormerDecoder, memory_settings.LONG_TERM_MEMORY),
        (kif.ContinuousMemoryAttention, memory_settings.LONG_TERM_MEMORY),
        (kif.InfiniteFormerBackbone, memory_settings.LONG_TERM_MEMORY),
        (PretrainedMemoryCausalLM, memory_settings.PRETRAINED_LONG_TERM_MEMORY),
        (kif.InfiniteFormerDecoder, memory_settings.COMPRESSIVE_MEMORY),
        (kif.InfiniteFormerBackbone, memory_settings.COMPRESSIVE_MEMORY),
    ],
)
def test_signature_defaults_are_the_declared_ones(cls, declared):
    """The explicit keyword arguments (kept for documentation) default to
    the declaration's values."""
    defaults = _defaults(cls)
    assert {name: defaults[name] for name in declared} == declared


def test_every_setting_is_in_the_config_and_a_property():
    """Backbone config keys, the LM's settings and the causal LM's
    properties all follow from `InfiniteFormerBackbone.SETTINGS`."""
    backbone = kif.InfiniteFormerBackbone(
        vocabulary_size=11,
        segment_length=4,
        batch_size=1,
        num_layers=1,
        hidden_dim=8,
        num_heads=2,
        num_basis=8,
        num_samples=8,
        sticky_memories=True,
        sticky_uniform_share=0.25,
    )
    config = backbone.get_config()
    for name in kif.InfiniteFormerBackbone.SETTINGS:
        assert name in config
    model = kif.InfiniteFormerCausalLM(backbone)
    for name in kif.InfiniteFormerBackbone.SETTINGS:
        assert getattr(model, name) == config[name]
    assert model.sticky_uniform_share == 0.25
    assert model.decoder_blocks is backbone.decoder_blocks
    block = backbone.decoder_blocks[0]
    assert block.get_config()["sticky_uniform_share"] == 0.25


def test_bad_memory_settings_fail_at_construction():
    with pytest.raises(ValueError, match="sticky_uniform_share"):
        kif.ContinuousMemoryAttention(
            num_heads=2,
            key_dim=4,
            num_basis=8,
            num_samples=8,
            sticky_uniform_share=1.5,
        )
    with pytest.raises(ValueError, match="tau"):
        kif.InfiniteFormerDecoder(
            intermediate_dim=8,
            num_heads=2,
            memory_length=4,
            num_basis=8,
            num_samples=8,
            tau=1.0,
        )
    # Unused by a Transformer-XL block: not checked.
    kif.InfiniteFormerDecoder(
        intermediate_dim=8,
        num_heads=2,
        memory_length=4,
        use_long_term_memory=False,
        tau=1.0,
    )
