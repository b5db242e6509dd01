"""Whole models: a keras-hub style backbone and causal LM, and their builder."""

from keras_infformer.models.functional_memory_lm import FunctionalMemoryLM
from keras_infformer.models.infinite_former_backbone import InfiniteFormerBackbone
from keras_infformer.models.infinite_former_causal_lm import InfiniteFormerCausalLM
from keras_infformer.models.infinite_former_causal_lm_preprocessor import (
    InfiniteFormerCausalLMPreprocessor,
)
from keras_infformer.models.infinite_former_gpt2_causal_lm import (
    InfiniteFormerGPT2CausalLM,
)
from keras_infformer.models.infinite_former_lm import InfiniteFormerLM
from keras_infformer.models.infinite_former_rotary_causal_lm import (
    InfiniteFormerGemmaCausalLM,
    InfiniteFormerLlamaCausalLM,
    InfiniteFormerQwen3CausalLM,
)
from keras_infformer.models.pretrained_memory_causal_lm import PretrainedMemoryCausalLM
from keras_infformer.models.streaming_causal_lm import StreamingCausalLM

__all__ = [
    "FunctionalMemoryLM",
    "InfiniteFormerBackbone",
    "InfiniteFormerCausalLM",
    "InfiniteFormerCausalLMPreprocessor",
    "InfiniteFormerGemmaCausalLM",
    "InfiniteFormerGPT2CausalLM",
    "InfiniteFormerLlamaCausalLM",
    "InfiniteFormerQwen3CausalLM",
    "InfiniteFormerLM",
    "PretrainedMemoryCausalLM",
    "StreamingCausalLM",
]
