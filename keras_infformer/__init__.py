"""keras-infformer: the ∞-former (Infinite Memory Transformer) for Keras 3."""

from keras_infformer import basis, callbacks, data, distribution, layers, metrics, models
from keras_infformer.export import export_for_serving
from keras_infformer.layers import (
    CompressiveMemory,
    ContinuousLTM,
    ContinuousMemoryAttention,
    GaussianAttention,
    InfiniteFormerDecoder,
    MemoryLayer,
    StickyMemorySampler,
)
from keras_infformer.memory import ResetMemory, reset_memory
from keras_infformer.models import (
    InfiniteFormerBackbone,
    InfiniteFormerCausalLM,
    InfiniteFormerCausalLMPreprocessor,
    InfiniteFormerGemmaCausalLM,
    InfiniteFormerGPT2CausalLM,
    InfiniteFormerLlamaCausalLM,
    InfiniteFormerLM,
    InfiniteFormerQwen3CausalLM,
)

__version__ = "0.1.0"
