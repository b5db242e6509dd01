"""The memory settings are declared once (layers/memory_settings.py)."""

import inspect

import keras_hub
import pytest

import keras_infformer as kif
from keras_infformer.layers import memory_settings
from keras_infformer.models.pretrained_memory_causal_lm import PretrainedMemoryCausalLM

TINY_BACKBONE = dict(
    vocabulary_size=11,
    segment_length=4,
    batch_size=1,
    num_layers=1,
    hidden_dim=8,
    num_heads=2,
    num_basis=8,
    num_samples=8,
)

TINY_DECODER = dict(intermediate_dim=8, num_heads=2, memory_length=4, num_basis=8, num_samples=8)


def _tiny_gpt2():
    return keras_hub.models.GPT2Backbone(
        vocabulary_size=11,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )


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
        **TINY_BACKBONE, sticky_memories=True, sticky_uniform_share=0.25
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
    # Checked once for every owner (memory_settings), named with the value.
    with pytest.raises(ValueError, match=r"density_mode.*'gaussian'"):
        kif.ContinuousMemoryAttention(
            num_heads=2, key_dim=4, num_basis=8, num_samples=8, density_mode="gaussian"
        )
    with pytest.raises(ValueError, match=r"density_mode.*'Content'"):
        kif.InfiniteFormerDecoder(**TINY_DECODER, density_mode="Content")
    # Unused by a Transformer-XL block: not checked.
    kif.InfiniteFormerDecoder(
        intermediate_dim=8,
        num_heads=2,
        memory_length=4,
        use_long_term_memory=False,
        tau=1.0,
    )


@pytest.mark.parametrize(
    "cls, declarations",
    [
        (
            kif.InfiniteFormerDecoder,
            (memory_settings.LONG_TERM_MEMORY, memory_settings.COMPRESSIVE_MEMORY),
        ),
        (kif.ContinuousMemoryAttention, (memory_settings.LONG_TERM_MEMORY,)),
        (
            kif.InfiniteFormerBackbone,
            (memory_settings.LONG_TERM_MEMORY, memory_settings.COMPRESSIVE_MEMORY),
        ),
        (PretrainedMemoryCausalLM, (memory_settings.PRETRAINED_LONG_TERM_MEMORY,)),
    ],
)
def test_the_settings_are_keyword_arguments_in_declaration_order(cls, declarations):
    """Declared once, the settings still show in the signature (help(),
    Keras' argument binding): keyword-only, in order, before **kwargs."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())
    names = [name for declaration in declarations for name in declaration]
    settings = [p for p in parameters if p.name in names]
    assert [p.name for p in settings] == names
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in settings)
    assert parameters[-1].kind is inspect.Parameter.VAR_KEYWORD


def test_a_misspelt_setting_is_refused_by_name():
    """Keras' functional models drop unknown keywords silently; ours name them."""
    # Keras refuses unknown keywords (a ValueError for layers, TypeError for models).
    with pytest.raises((TypeError, ValueError), match="num_basiss"):
        kif.InfiniteFormerDecoder(intermediate_dim=8, num_heads=2, memory_length=4, num_basiss=8)
    with pytest.raises((TypeError, ValueError), match="sticky_memory"):
        kif.ContinuousMemoryAttention(num_heads=2, key_dim=4, sticky_memory=True)
    with pytest.raises((TypeError, ValueError), match="taus"):
        kif.InfiniteFormerBackbone(**TINY_BACKBONE, taus=0.5)


def test_given_settings_reach_the_config_and_the_defaults_fill_the_rest():
    layer = kif.ContinuousMemoryAttention(
        num_heads=2, key_dim=4, num_basis=8, num_samples=8, tau=0.5
    )
    config = layer.get_config()
    # The default widths are resolved against num_basis (4 centres per width).
    expected = dict(
        memory_settings.LONG_TERM_MEMORY,
        num_basis=8,
        num_samples=8,
        tau=0.5,
        basis_widths=(2.56 / 4, 12.8 / 4),
    )
    assert {name: config[name] for name in expected} == expected
    assert kif.ContinuousMemoryAttention.from_config(config).get_config() == config


def test_a_misspelt_model_setting_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="taus=0.5"):
        kif.InfiniteFormerLM(**TINY_BACKBONE, taus=0.5)
    backbone = kif.InfiniteFormerBackbone(**TINY_BACKBONE)
    with pytest.raises(TypeError, match="sampler"):
        kif.InfiniteFormerCausalLM(backbone, sampler="greedy")
    gpt2 = _tiny_gpt2()
    with pytest.raises(TypeError, match="num_basiss"):
        kif.models.InfiniteFormerGPT2CausalLM.from_backbone(gpt2, segment_length=4, num_basiss=8)


def test_default_widths_scale_with_num_basis_in_every_owner():
    """DESIGN §6, "resolution is relative": the default widths are a fixed
    share of the centre spacing, so the paper's at N = 512 and as many
    centre spacings at any other N; the layers inside use them."""
    for num_basis, decoder_widths, pretrained_widths in (
        (512, (0.01, 0.05), (0.005, 0.01)),
        (32, (0.16, 0.8), (0.08, 0.16)),
    ):
        settings = dict(num_basis=num_basis, num_samples=num_basis)
        layer = kif.ContinuousMemoryAttention(num_heads=2, key_dim=4, **settings)
        decoder = kif.InfiniteFormerDecoder(**dict(TINY_DECODER, **settings))
        backbone = kif.InfiniteFormerBackbone(**dict(TINY_BACKBONE, **settings))
        for owner in (layer, decoder, backbone):
            assert owner.basis_widths == pytest.approx(decoder_widths, rel=1e-12)
            assert owner.get_config()["basis_widths"] == owner.basis_widths
        gpt2 = kif.models.InfiniteFormerGPT2CausalLM.from_backbone(
            _tiny_gpt2(), segment_length=4, num_basis=num_basis
        )
        assert gpt2.basis_widths == pytest.approx(pretrained_widths, rel=1e-12)
        # What the memories inside fit and read with.
        for memory_layer in gpt2.memory_layers:
            assert memory_layer._ltm.basis_widths == gpt2.basis_widths
            assert memory_layer._attention.basis_widths == gpt2.basis_widths


def test_given_widths_win_and_survive_a_round_trip():
    layer = kif.ContinuousMemoryAttention(
        num_heads=2, key_dim=4, num_basis=8, num_samples=8, basis_widths=(0.05, 0.1)
    )
    assert layer.basis_widths == (0.05, 0.1)
    twin = kif.ContinuousMemoryAttention.from_config(layer.get_config())
    assert twin.basis_widths == (0.05, 0.1)
    relative = kif.ContinuousMemoryAttention(
        num_heads=2, key_dim=4, num_basis=8, num_samples=8, relative_basis_widths=(1.0, 2.0)
    )
    assert relative.basis_widths == (0.25, 0.5)
    assert relative.get_config()["relative_basis_widths"] == (1.0, 2.0)


def test_bad_relative_widths_fail_at_construction_named_with_the_value():
    with pytest.raises(ValueError, match=r"relative_basis_widths.*-1\.0"):
        kif.InfiniteFormerDecoder(**TINY_DECODER, relative_basis_widths=(-1.0, 2.0))
    with pytest.raises(TypeError, match=r"relative_basis_widths=0\.5"):
        kif.InfiniteFormerBackbone(**TINY_BACKBONE, relative_basis_widths=0.5)
    with pytest.raises(ValueError, match=r"num_basis.*9"):
        kif.ContinuousMemoryAttention(num_heads=2, key_dim=4, num_basis=9, num_samples=8)
