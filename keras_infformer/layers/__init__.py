"""Keras layers of the ∞-former."""

from keras_infformer.layers.compressive_memory import CompressiveMemory
from keras_infformer.layers.continuous_ltm import ContinuousLTM
from keras_infformer.layers.continuous_memory_attention import ContinuousMemoryAttention
from keras_infformer.layers.gaussian_attention import GaussianAttention
from keras_infformer.layers.infinite_former_decoder import InfiniteFormerDecoder
from keras_infformer.layers.sticky_memory_sampler import StickyMemorySampler
from keras_infformer.memory import MemoryLayer

__all__ = [
    "CompressiveMemory",
    "ContinuousLTM",
    "ContinuousMemoryAttention",
    "GaussianAttention",
    "InfiniteFormerDecoder",
    "MemoryLayer",
    "StickyMemorySampler",
]
