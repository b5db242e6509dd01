"""Whole models: a keras-hub style backbone and causal LM, and their builder."""

from keras_infformer.models.infinite_former_backbone import InfiniteFormerBackbone
from keras_infformer.models.infinite_former_causal_lm import InfiniteFormerCausalLM
from keras_infformer.models.infinite_former_causal_lm_preprocessor import (
    InfiniteFormerCausalLMPreprocessor,
)
from keras_infformer.models.infinite_former_lm import InfiniteFormerLM

__all__ = [
    "InfiniteFormerBackbone",
    "InfiniteFormerCausalLM",
    "InfiniteFormerCausalLMPreprocessor",
    "InfiniteFormerLM",
]
