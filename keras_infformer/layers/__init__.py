"""Keras layers of the ∞-former."""

from keras_infformer.layers.continuous_ltm import ContinuousLTM
from keras_infformer.layers.gaussian_attention import GaussianAttention
from keras_infformer.layers.sticky_memory_sampler import StickyMemorySampler

__all__ = ["ContinuousLTM", "GaussianAttention", "StickyMemorySampler"]
from keras_infformer.layers.infinite_former_decoder import InfiniteFormerDecoder

__all__.append("InfiniteFormerDecoder")
from keras_infformer.layers.compressive_memory import CompressiveMemory

__all__.append("CompressiveMemory")
