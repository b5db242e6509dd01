"""keras-infformer: the ∞-former (Infinite Memory Transformer) for Keras 3."""

from keras_infformer import basis
from keras_infformer import data
from keras_infformer import distribution
from keras_infformer import layers
from keras_infformer import metrics
from keras_infformer import models
from keras_infformer.layers import CompressiveMemory
from keras_infformer.layers import ContinuousLTM
from keras_infformer.layers import ContinuousMemoryAttention
from keras_infformer.layers import GaussianAttention
from keras_infformer.layers import InfiniteFormerDecoder
from keras_infformer.layers import MemoryLayer
from keras_infformer.layers import StickyMemorySampler
from keras_infformer import callbacks
from keras_infformer.export import export_for_serving
from keras_infformer.memory import ResetMemory
from keras_infformer.memory import reset_memory
from keras_infformer.models import InfiniteFormerBackbone
from keras_infformer.models import InfiniteFormerCausalLM
from keras_infformer.models import InfiniteFormerCausalLMPreprocessor
from keras_infformer.models import InfiniteFormerGemmaCausalLM
from keras_infformer.models import InfiniteFormerGPT2CausalLM
from keras_infformer.models import InfiniteFormerLlamaCausalLM
from keras_infformer.models import InfiniteFormerQwen3CausalLM
from keras_infformer.models import InfiniteFormerLM

__version__ = "0.1.0"
