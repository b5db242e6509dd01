import keras
import keras_hub

from keras_infformer import compat
from keras_infformer.models.backbone_wiring import GPT2Wiring
from keras_infformer.models.pretrained_memory_causal_lm import PretrainedMemoryCausalLM


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerGPT2Backbone(keras_hub.models.GPT2Backbone):
    """A `keras_hub.models.GPT2Backbone` under a name of its own.

    The `backbone_cls` of `InfiniteFormerGPT2CausalLM`. keras-hub's
    `CausalLM.from_preset(preset)` picks, among the registered `CausalLM`
    subclasses, one whose `backbone_cls` is the preset's backbone class
    (from an unordered set when several match): with `GPT2Backbone` as our
    `backbone_cls`, importing this package made a plain GPT-2 preset load
    as our model at random. With this class, only keras-hub's
    `GPT2CausalLM` matches a GPT-2 preset. It builds exactly a GPT-2
    backbone (nothing is overridden); our model takes any `GPT2Backbone`.
    """


# Built-in GPT-2 presets listed by `InfiniteFormerGPT2CausalLM.presets` too.
compat.share_builtin_presets(InfiniteFormerGPT2Backbone, keras_hub.models.GPT2Backbone)


@keras.saving.register_keras_serializable(package="keras_infformer")
class InfiniteFormerGPT2CausalLM(PretrainedMemoryCausalLM):
    """A pretrained keras-hub GPT-2 with a continuous long-term memory.

    The ∞-former's GPT-2 fine-tuning setting (paper §5.2): every layer of a
    `keras_hub.models.GPT2Backbone` keeps its normalised input hidden
    states of the previous segment; at the next segment a
    `keras_infformer.layers.ContinuousMemoryAttention` absorbs them into a
    `ContinuousLTM` (N basis functions, sticky memories) and reads it with
    GPT-2's own projected queries; the read is added to GPT-2's attention
    output. GPT-2's causal attention over the current segment is the
    short-term part: each segment is one GPT-2 forward pass, positions
    restarting at 0. The memories' output projections start at zero, so
    before fine-tuning the logits equal `keras_hub.models.GPT2CausalLM`'s
    on each segment alone.

    Train with `fit` on a `keras_infformer.data.StreamingDataset` of
    `segment_length` tokens and `batch_size` rows (the memory carries each
    row across segments and is emptied where `reset` starts a document);
    `finetune="memory"` trains the memories only, `"all"` everything.
    `generate()` reads prompts through the memory (its logits equal
    teacher-forced streaming), and `keras_infformer.export_for_serving`
    serves the pure `step` (with the deterministic `sticky_mode`).
    `from_preset("gpt2_base_en", ...)` goes through keras-hub's preset
    loading (backbone and `GPT2CausalLMPreprocessor`); the memory settings
    are keyword arguments.

    Args:
        backbone: a `keras_hub.models.GPT2Backbone`.
        preprocessor: optional `keras_hub.models.GPT2CausalLMPreprocessor`
            (text in `generate()`, strings out).
        segment_length: int. Defaults to `min(512, max_sequence_length)`.
        batch_size: int. Parallel streams of `fit`. Defaults to `1`.
        num_basis, basis_widths, relative_basis_widths, ridge_penalty, tau, num_samples,
        sticky_memories, sticky_mode, num_bins, sigma_0, kl_weight,
        finetune: see `keras_infformer.models.PretrainedMemoryCausalLM`
            (paper values by default: N = M = 512, widths (0.005, 0.01)
            at N = 512 and scaled with N, ridge 0.5, τ 0.5, sticky, KL 1e-6).
        **kwargs: passed to `keras_hub.models.CausalLM` (e.g. `name`).

    Examples:

    ```python
    import keras_hub
    import numpy as np
    import keras_infformer

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=300, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=64,
    )
    model = keras_infformer.models.InfiniteFormerGPT2CausalLM.from_backbone(
        backbone, segment_length=16, batch_size=2, num_basis=32,
        finetune="memory",
    )
    documents = [np.random.randint(1, 300, 100) for _ in range(4)]
    stream = keras_infformer.data.StreamingDataset(
        documents, batch_size=2, segment_length=16
    )
    model.fit(stream, epochs=1)

    # With network access (not run here): GPT-2 small and its tokenizer.
    # model = keras_infformer.models.InfiniteFormerGPT2CausalLM.from_preset(
    #     "gpt2_base_en", segment_length=512, batch_size=8)
    ```

    References:
     - [Martins et al., 2022](https://arxiv.org/abs/2109.00301)
     - [Radford et al., 2019](https://cdn.openai.com/better-language-models/language_models_are_unsupervised_multitask_learners.pdf)
    """

    # Not `GPT2Backbone` itself: see `InfiniteFormerGPT2Backbone`.
    backbone_cls = InfiniteFormerGPT2Backbone
    preprocessor_cls = keras_hub.models.GPT2CausalLMPreprocessor
    wiring_cls = GPT2Wiring

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """This model from a keras-hub GPT-2 preset (a name such as
        `"gpt2_base_en"` or a folder): GPT-2's backbone, weights and
        preprocessor; or the whole model, from a preset saved with
        `save_to_preset` (its `task.json` names this class). Memory settings
        are keyword arguments.

        (keras-hub's `CausalLM.from_preset` of any GPT-2 preset gives
        `keras_hub.models.GPT2CausalLM`: this class is only chosen here.)
        """
        loader = compat.preset_loader(preset)
        backbone_cls = loader.check_backbone_class()
        if not issubclass(backbone_cls, keras_hub.models.GPT2Backbone):
            raise ValueError(
                f"{cls.__name__}.from_preset() needs a GPT-2 preset (a "
                f"GPT2Backbone). Received: preset={preset!r}, whose backbone "
                f"is a {backbone_cls.__name__}"
            )
        return loader.load_task(cls, load_weights, True, **kwargs)
