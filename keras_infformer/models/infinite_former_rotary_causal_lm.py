"""Llama, Gemma and Qwen3 from keras-hub with a continuous long-term memory."""

import os

import keras
import keras_hub

from keras_infformer import compat
from keras_infformer.models.pretrained_memory_causal_lm import PretrainedMemoryCausalLM
from keras_infformer.models.rotary_wiring import GemmaWiring, LlamaWiring, Qwen3Wiring

# Each family's backbone under a name of our own, as
# `InfiniteFormerGPT2Backbone`: keras-hub's `CausalLM.from_preset(preset)`
# picks a registered task whose `backbone_cls` is the preset's backbone
# class, so with keras-hub's class as ours a plain preset could load as our
# model. These build exactly the family's backbone (nothing overridden);
# our models take any backbone of the family.


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerLlamaBackbone(keras_hub.models.LlamaBackbone):
    """A `keras_hub.models.LlamaBackbone` under a name of its own (the
    `backbone_cls` of `InfiniteFormerLlamaCausalLM`)."""


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerGemmaBackbone(keras_hub.models.GemmaBackbone):
    """A `keras_hub.models.GemmaBackbone` under a name of its own (the
    `backbone_cls` of `InfiniteFormerGemmaCausalLM`)."""


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerQwen3Backbone(keras_hub.models.Qwen3Backbone):
    """A `keras_hub.models.Qwen3Backbone` under a name of its own (the
    `backbone_cls` of `InfiniteFormerQwen3CausalLM`)."""


# The family's built-in presets are listed by our backbone classes too.
compat.share_builtin_presets(InfiniteFormerLlamaBackbone, keras_hub.models.LlamaBackbone)
compat.share_builtin_presets(InfiniteFormerGemmaBackbone, keras_hub.models.GemmaBackbone)
compat.share_builtin_presets(InfiniteFormerQwen3Backbone, keras_hub.models.Qwen3Backbone)


class _RotaryFamilyCausalLM(PretrainedMemoryCausalLM):
    """Shared `from_preset` of the Llama, Gemma and Qwen3 memory models."""

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """This model from a keras-hub preset of its family (a name or a
        folder): the backbone, its weights and, where the preset has a
        tokenizer, the family's causal LM preprocessor; or the whole model
        from a preset saved with `save_to_preset` (its `task.json` names
        this class). Memory settings are keyword arguments.

        (keras-hub's own `CausalLM.from_preset` of a plain preset of the
        family gives keras-hub's task: this class is only chosen here.)
        """
        family = cls.wiring_cls.family
        family_backbone = getattr(keras_hub.models, cls.wiring_cls.backbone_class_name)
        loader = compat.preset_loader(preset)
        backbone_cls = loader.check_backbone_class()
        if not issubclass(backbone_cls, family_backbone):
            raise ValueError(
                f"{cls.__name__}.from_preset() needs a {family} preset (a "
                f"{family_backbone.__name__}). Received: preset={preset!r}, "
                f"whose backbone is a {backbone_cls.__name__}"
            )
        # A folder saved from a bare backbone has no tokenizer: no text
        # preprocessing then (token ids in, token ids out).
        if (
            "preprocessor" not in kwargs
            and isinstance(preset, str)
            and os.path.isdir(preset)
            and not os.path.exists(os.path.join(preset, compat.preset_tokenizer_file()))
        ):
            kwargs["preprocessor"] = None
        return loader.load_task(cls, load_weights, True, **kwargs)


_ARGS = """
    Args:
        backbone: a `keras_hub.models.{backbone}`.
        preprocessor: optional `keras_hub.models.{preprocessor}` (text in
            `generate()`, strings out).
        segment_length: int. Tokens per segment (each one forward pass of
            the pretrained network, rotary positions restarting at 0; no
            learned position table bounds it). Defaults to `512`.
        batch_size: int. Parallel streams of `fit`. Defaults to `1`.
        num_basis, basis_widths, relative_basis_widths, ridge_penalty, tau, num_samples,
        sticky_memories, sticky_mode, num_bins, sticky_uniform_share,
        sigma_0, kl_weight, finetune: see
            `keras_infformer.models.PretrainedMemoryCausalLM` (paper values
            by default: N = M = 512, widths (0.005, 0.01) at N = 512 and
            scaled with N, ridge 0.5, τ 0.5,
            sticky, KL 1e-6). `finetune="memory"` freezes the backbone.
        **kwargs: passed to `keras_hub.models.CausalLM` (e.g. `name`).
"""


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerLlamaCausalLM(_RotaryFamilyCausalLM):
    """A pretrained keras-hub Llama with a continuous long-term memory.

        The ∞-former's fine-tuning setting (paper §5.2) on a
        `keras_hub.models.LlamaBackbone`: every layer keeps its RMS-normed
        input of the previous segment; at the next segment a
        `keras_infformer.layers.ContinuousMemoryAttention` absorbs it into a
        `ContinuousLTM` and reads it with the layer's own projected query heads
        (all `num_query_heads`, without rotary positions: the memory is a
        continuous signal over [0, 1], not token positions; memory keys and
        values per query head from the memory's own projections). The read is
        added to Llama's attention output. Llama's grouped-query causal
        attention over the segment is the short-term part. Every backbone layer
        object is used as it is; the memories' output projections start at
        zero, so before fine-tuning the logits equal
        `keras_hub.models.LlamaCausalLM`'s on each segment alone. See
        `keras_infformer.models.rotary_wiring.LlamaWiring`.
    {args}
        Examples:

        ```python
        import keras_hub
        import numpy as np
        import keras_infformer

        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=300, num_layers=2, num_query_heads=4,
            num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
        )
        model = keras_infformer.models.InfiniteFormerLlamaCausalLM.from_backbone(
            backbone, segment_length=16, num_basis=32
        )
        # A prompt of 40 tokens: two whole segments go into the memory.
        prompt = np.random.randint(1, 300, (1, 40)).astype("int32")
        output = model.generate(
            {"token_ids": prompt, "padding_mask": np.ones_like(prompt, bool)},
            max_length=48, stop_token_ids=None,
        )
        ```

        References:
         - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
         - [Touvron et al., 2023](https://arxiv.org/abs/2307.09288)
    """

    backbone_cls = InfiniteFormerLlamaBackbone
    preprocessor_cls = keras_hub.models.LlamaCausalLMPreprocessor
    wiring_cls = LlamaWiring


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerGemmaCausalLM(_RotaryFamilyCausalLM):
    """A pretrained keras-hub Gemma (or Gemma 2) with a continuous memory.

        As `InfiniteFormerLlamaCausalLM`, on a `keras_hub.models.GemmaBackbone`:
        each layer's normed input (Gemma's `x * (1 + w)` RMS norm, the layer's
        own) of earlier segments is absorbed into a continuous memory, read
        with the layer's `query_dense` heads without rotary positions, and
        added to Gemma's attention output (before Gemma 2's post-attention
        norm). The embedding scale `sqrt(hidden_dim)`, the approximate-GELU
        gate, attention and final logit soft-capping and Gemma 2's sliding
        windows are Gemma's own. Before fine-tuning the logits equal
        `keras_hub.models.GemmaCausalLM`'s on each segment alone. See
        `keras_infformer.models.rotary_wiring.GemmaWiring`.
    {args}
        Examples:

        ```python
        import keras_hub
        import numpy as np
        import keras_infformer

        backbone = keras_hub.models.GemmaBackbone(
            vocabulary_size=300, num_layers=2, num_query_heads=4,
            num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
            head_dim=8,
        )
        model = keras_infformer.models.InfiniteFormerGemmaCausalLM.from_backbone(
            backbone, segment_length=16, num_basis=32
        )
        # The pure step over an explicit state (what serving runs).
        state = model.get_initial_state(2)
        tokens = np.random.randint(1, 300, (2, 16)).astype("int32")
        logits, state = model.step(tokens, np.array([True, True]), state)
        ```

        References:
         - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
         - [Gemma Team, 2024](https://arxiv.org/abs/2403.08295)
    """

    backbone_cls = InfiniteFormerGemmaBackbone
    preprocessor_cls = keras_hub.models.GemmaCausalLMPreprocessor
    wiring_cls = GemmaWiring


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerQwen3CausalLM(_RotaryFamilyCausalLM):
    """A pretrained keras-hub Qwen3 with a continuous long-term memory.

        As `InfiniteFormerLlamaCausalLM`, on a `keras_hub.models.Qwen3Backbone`
        (Llama's layer plus per-head RMS norms of the projected queries and
        keys): the memory reads with the layer's *normed* query heads, without
        rotary positions. Before fine-tuning the logits equal
        `keras_hub.models.Qwen3CausalLM`'s on each segment alone. See
        `keras_infformer.models.rotary_wiring.Qwen3Wiring`.
    {args}
        Examples:

        ```python
        import keras
        import keras_hub
        import keras_infformer

        backbone = keras_hub.models.Qwen3Backbone(
            vocabulary_size=300, num_layers=2, num_query_heads=4,
            num_key_value_heads=2, head_dim=8, hidden_dim=32,
            intermediate_dim=64,
        )
        # Train the memories first, the frozen backbone's weights later.
        model = keras_infformer.models.InfiniteFormerQwen3CausalLM.from_backbone(
            backbone, segment_length=16, finetune="memory"
        )
        model.set_finetune("all")
        model.compile(optimizer=keras.optimizers.Adam(1e-5))
        ```

        References:
         - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
         - [Qwen Team, 2025](https://arxiv.org/abs/2505.09388)
    """

    backbone_cls = InfiniteFormerQwen3Backbone
    preprocessor_cls = keras_hub.models.Qwen3CausalLMPreprocessor
    wiring_cls = Qwen3Wiring


for _cls, _backbone, _preprocessor in (
    (InfiniteFormerLlamaCausalLM, "LlamaBackbone", "LlamaCausalLMPreprocessor"),
    (InfiniteFormerGemmaCausalLM, "GemmaBackbone", "GemmaCausalLMPreprocessor"),
    (InfiniteFormerQwen3CausalLM, "Qwen3Backbone", "Qwen3CausalLMPreprocessor"),
):
    _cls.__doc__ = _cls.__doc__.replace(
        "{args}", _ARGS.format(backbone=_backbone, preprocessor=_preprocessor)
    )
