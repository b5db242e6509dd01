"""keras-infformer: the ∞-former (Infinite Memory Transformer) for Keras 3."""

from keras_infformer import basis
from keras_infformer import layers
from keras_infformer.layers import ContinuousLTM
from keras_infformer.layers import GaussianAttention
from keras_infformer.layers import StickyMemorySampler

__version__ = "0.1.0"
