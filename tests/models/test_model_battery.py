"""Every model family through the shared battery (tests/model_test_case.py).

Tiny random models of each family: the package's ∞-former (sticky
memories: the largest state), its Compressive Transformer baseline (the
short-term and compressed memories of Transformer-XL's kind), GPT-2,
Llama, Gemma and Qwen3 from keras-hub with memory, and a user's functional
model of memory layers (`FunctionalMemoryLM`, uniform memory). The
round trips of the pretrained families' own test files were folded in
here. The
pretrained families start with the memory's output at zero (exactly the
backbone); the battery wakes it so that the memory shows in the logits.
"""

import keras
import keras_hub
import numpy as np
import pytest
from model_test_case import run_memory_lm_test

import keras_infformer as kif
from keras_infformer.models import (
    InfiniteFormerGemmaCausalLM,
    InfiniteFormerGPT2CausalLM,
    InfiniteFormerLlamaCausalLM,
    InfiniteFormerQwen3CausalLM,
)

SEGMENT, BATCH, VOCABULARY = 8, 2, 64
MEMORY = dict(segment_length=SEGMENT, batch_size=BATCH, num_basis=16, num_bins=16)
ROTARY = dict(
    vocabulary_size=VOCABULARY,
    num_layers=1,
    num_query_heads=2,
    num_key_value_heads=1,
    hidden_dim=16,
    intermediate_dim=32,
)


def _own(**settings):
    backbone = kif.InfiniteFormerBackbone(
        vocabulary_size=VOCABULARY,
        segment_length=SEGMENT,
        batch_size=BATCH,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        dropout=0.0,
        **settings,
    )
    return kif.InfiniteFormerCausalLM(backbone)


def _pretrained(model_cls, backbone):
    model = model_cls.from_backbone(backbone, **MEMORY)
    rng = np.random.default_rng(0)
    for layer in model.memory_layers:  # Wake the zero-started memory output.
        kernel = layer._attention._output_dense.kernel
        kernel.assign(rng.normal(0.0, 0.5, kernel.shape).astype("float32"))
    return model


def _functional():
    token_ids = keras.Input((SEGMENT,), batch_size=BATCH, dtype="int32", name="token_ids")
    reset = keras.Input((), batch_size=BATCH, dtype="bool", name="reset")
    x = keras.layers.Embedding(VOCABULARY, 16)(token_ids)
    x = kif.InfiniteFormerDecoder(
        32,
        2,
        memory_length=SEGMENT,
        num_basis=16,
        num_samples=16,
        num_bins=16,
        zero_memory_output=False,
        dropout=0.0,
        name="block",
    )(x, reset=reset)
    logits = keras.layers.Dense(VOCABULARY, name="head")(x)
    return kif.models.FunctionalMemoryLM(
        keras.Model({"token_ids": token_ids, "reset": reset}, logits)
    )


FAMILIES = {
    "infinite_former_sticky": lambda: _own(zero_memory_output=False, sticky_memories=True),
    "compressive": lambda: _own(use_long_term_memory=False, compressed_memory_length=4),
    "gpt2": lambda: _pretrained(
        InfiniteFormerGPT2CausalLM,
        keras_hub.models.GPT2Backbone(
            vocabulary_size=VOCABULARY,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=SEGMENT,
            dropout=0.0,
        ),
    ),
    "llama": lambda: _pretrained(
        InfiniteFormerLlamaCausalLM, keras_hub.models.LlamaBackbone(**ROTARY)
    ),
    "gemma": lambda: _pretrained(
        InfiniteFormerGemmaCausalLM, keras_hub.models.GemmaBackbone(head_dim=8, **ROTARY)
    ),
    "qwen3": lambda: _pretrained(
        InfiniteFormerQwen3CausalLM, keras_hub.models.Qwen3Backbone(head_dim=8, **ROTARY)
    ),
    "functional": _functional,
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_family_battery(family, tmp_path):
    keras.utils.set_random_seed(7)
    run_memory_lm_test(FAMILIES[family](), tmp_path)
