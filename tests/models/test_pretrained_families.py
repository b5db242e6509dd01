"""Llama, Gemma and Qwen3 from keras-hub with a continuous memory (issue 25).

One battery, parametrised over the three families (as keras-hub's
`run_task_test`), on tiny random backbones: vocabulary 300, 2 layers,
4 query heads over 2 key/value heads, width 32. The Gemma backbone is
Gemma 2-shaped (post-attention and post-feed-forward norms, attention and
final logit soft-caps, a sliding window shorter than the segment) so that
every optional path of the wiring runs. The references are keras-hub's own
`LlamaCausalLM` / `GemmaCausalLM` / `Qwen3CausalLM` over the same backbone
object and keras-hub's decoder layers called one by one; for generation,
teacher-forced streaming through `step`.
"""

import sys

import keras
import keras_hub
import numpy as np
import pytest
import repo_paths

import keras_infformer
from keras_infformer.models import (
    InfiniteFormerGemmaCausalLM,
    InfiniteFormerLlamaCausalLM,
    InfiniteFormerQwen3CausalLM,
    rotary_wiring,
)

BACKEND = keras.backend.backend()
sys.path.insert(0, repo_paths.EXAMPLES)
SEGMENT = 8
BATCH = 2
VOCABULARY = 300
COMMON = dict(
    vocabulary_size=VOCABULARY,
    num_layers=2,
    num_query_heads=4,
    num_key_value_heads=2,
    hidden_dim=32,
    intermediate_dim=64,
)


def to_numpy(x):
    return np.array(keras.ops.convert_to_numpy(x))


class Family:
    """What the battery needs to know of one keras-hub family."""

    def __init__(self, name, model_cls, task_cls, make, block_call, norm_name, scale):
        self.name = name
        self.model_cls = model_cls
        self.task_cls = task_cls
        self.make = make
        self.block_call = block_call  # keras-hub's block over a padded segment
        self.norm_name = norm_name  # the block's pre-attention norm
        self.scale = scale  # keras-hub's embedding scale

    def __repr__(self):
        return self.name


FAMILIES = {
    "llama": Family(
        "llama",
        InfiniteFormerLlamaCausalLM,
        keras_hub.models.LlamaCausalLM,
        lambda **kw: keras_hub.models.LlamaBackbone(**dict(COMMON, **kw)),
        lambda block, x, mask: block(x, decoder_padding_mask=mask),
        "_self_attention_layernorm",
        1.0,
    ),
    "gemma": Family(
        "gemma",
        InfiniteFormerGemmaCausalLM,
        keras_hub.models.GemmaCausalLM,
        lambda **kw: keras_hub.models.GemmaBackbone(
            **dict(
                COMMON,
                head_dim=8,
                use_post_ffw_norm=True,
                use_post_attention_norm=True,
                attention_logit_soft_cap=50.0,
                final_logit_soft_cap=30.0,
                use_sliding_window_attention=True,
                sliding_window_size=5,
                **kw,
            )
        ),
        lambda block, x, mask: block(x, padding_mask=mask),
        "pre_attention_norm",
        float(np.sqrt(32.0)),
    ),
    "qwen3": Family(
        "qwen3",
        InfiniteFormerQwen3CausalLM,
        keras_hub.models.Qwen3CausalLM,
        lambda **kw: keras_hub.models.Qwen3Backbone(**dict(COMMON, head_dim=8, **kw)),
        lambda block, x, mask: block(x, decoder_padding_mask=mask),
        "_self_attention_layernorm",
        1.0,
    ),
}
NAMES = list(FAMILIES)


def _backbone(family, seed=5, **kwargs):
    """A random backbone whose norm scales are random too (a wrong norm
    formula would show)."""
    keras.utils.set_random_seed(seed)
    backbone = family.make(**kwargs)
    rng = np.random.default_rng(seed)
    for weight in backbone.weights:
        if "norm" in weight.path:
            weight.assign(rng.normal(0.3, 0.3, weight.shape).astype("float32"))
    return backbone


def _model(family, backbone, **kwargs):
    settings = dict(segment_length=SEGMENT, batch_size=BATCH, num_basis=16, num_bins=16)
    settings.update(kwargs)
    return family.model_cls.from_backbone(backbone, **settings)


def _wake(model, seed=0):
    """Non-zero memory output projections, so that the memory shows."""
    rng = np.random.default_rng(seed)
    for layer in model.memory_layers:
        kernel = layer._attention._output_dense.kernel
        kernel.assign(rng.normal(0.0, 0.5, kernel.shape).astype("float32"))


def _tokens(rng, rows, length):
    return rng.integers(1, VOCABULARY, size=(rows, length)).astype("int32")


def _reference_logits(reference, segment):
    return to_numpy(reference({"token_ids": segment, "padding_mask": np.ones_like(segment)}))


@pytest.fixture(scope="module")
def fresh():
    """Per family: a model at its zero start and keras-hub's task over the
    same backbone."""
    made = {}

    def get(name):
        if name not in made:
            family = FAMILIES[name]
            backbone = _backbone(family)
            made[name] = (_model(family, backbone), family.task_cls(backbone, preprocessor=None))
        return made[name]

    return get


@pytest.fixture(scope="module")
def awake():
    """Per family: a model whose (sticky) memories show in the logits."""
    made = {}

    def get(name):
        if name not in made:
            family = FAMILIES[name]
            model = _model(family, _backbone(family, seed=6))
            _wake(model)
            model.compile(sampler="greedy")
            made[name] = model
        return made[name]

    return get


# -- the zero start ------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_zero_start_equals_keras_hub_segment_by_segment(fresh, name):
    model, reference = fresh(name)
    rng = np.random.default_rng(0)
    model.reset_state()
    state = model.get_initial_state(BATCH)
    for index in range(3):
        segment = _tokens(rng, BATCH, SEGMENT)
        expected = _reference_logits(reference, segment)
        stateful = to_numpy(model({"token_ids": segment, "reset": np.full((BATCH,), index == 0)}))
        pure, state = model.step(segment, None, state)
        print(
            f"{name} segment {index}: max |diff| stateful "
            f"{np.abs(stateful - expected).max():.2e}, step "
            f"{np.abs(to_numpy(pure) - expected).max():.2e}"
        )
        assert np.abs(stateful - expected).max() <= 1e-5
        assert np.abs(to_numpy(pure) - expected).max() <= 1e-5
    model.reset_state()
    # The memory did fill: the zero start is the output projection alone.
    assert np.abs(to_numpy(state["layer_0_ltm_coefficients"])).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_memory_reads_only_earlier_segments(awake, name):
    model = awake(name)
    reference = FAMILIES[name].task_cls(model.backbone, preprocessor=None)
    rng = np.random.default_rng(1)
    segments = [_tokens(rng, BATCH, SEGMENT) for _ in range(2)]
    state = model.get_initial_state(BATCH)
    outputs = []
    for segment in segments:
        logits, state = model.step(segment, None, state)
        outputs.append(to_numpy(logits))
    # An empty memory reads as zeros; the second segment reads the first.
    np.testing.assert_allclose(outputs[0], _reference_logits(reference, segments[0]), atol=1e-5)
    assert np.abs(outputs[1] - _reference_logits(reference, segments[1])).max() > 1e-2


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_keeps_each_layers_normed_input(fresh, name):
    """Reference: keras-hub's own decoder layers called one by one (at the
    zero start the memory adds nothing, so the residual stream is the
    pretrained one), and each layer's pre-attention norm of it."""
    family = FAMILIES[name]
    model, _ = fresh(name)
    backbone = model.backbone
    segment = _tokens(np.random.default_rng(13), BATCH, SEGMENT)
    _, state = model.step(segment, None, model.get_initial_state(BATCH))
    x = to_numpy(backbone.token_embedding(segment)) * family.scale
    padding = np.ones((BATCH, SEGMENT), "int32")
    for index, block in enumerate(backbone.transformer_layers):
        normed = to_numpy(getattr(block, family.norm_name)(x))
        np.testing.assert_allclose(
            to_numpy(state[f"layer_{index}_pending"]),
            normed,
            atol=1e-5,
            err_msg=f"layer {index}",
        )
        assert np.abs(normed - x).max() > 1e-2  # The two differ.
        x = to_numpy(family.block_call(block, x, padding))


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_weight_is_reused_not_copied(fresh, name):
    model, _ = fresh(name)
    backbone_ids = {id(w) for w in model.backbone.weights}
    model_ids = {id(w) for w in model.weights}
    assert backbone_ids <= model_ids
    memory_ids = {id(w) for layer in model.memory_layers for w in layer.weights}
    assert model_ids == backbone_ids | memory_ids


@pytest.mark.parametrize("name", NAMES)
def test_the_memory_reads_with_every_query_head(fresh, name):
    """Grouped-query attention: the memory has one head per *query* head
    of the layer (4 here, over 2 key/value heads), of the layer's head
    size."""
    model, _ = fresh(name)
    wiring = model._wiring
    assert (wiring.num_heads, wiring.num_key_value_heads) == (4, 2)
    for layer in model.memory_layers:
        assert layer.num_heads == 4 and layer.key_dim == wiring.head_dim == 8


# -- generation --------------------------------------------------------------------------


def _teacher_forced_logits(model, token_ids):
    rows, total = token_ids.shape
    pad = (-total) % SEGMENT
    padded = np.concatenate([token_ids, np.zeros((rows, pad), "int32")], axis=1)
    state = model.get_initial_state(rows)
    logits = []
    for start in range(0, padded.shape[1], SEGMENT):
        out, state = model.step(padded[:, start : start + SEGMENT], None, state)
        logits.append(to_numpy(out))
    return np.concatenate(logits, axis=1)[:, :total]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation_equals_teacher_forcing(awake, name):
    model = awake(name)
    rng = np.random.default_rng(5)
    lengths = (1, SEGMENT, 2 * SEGMENT + 3)
    total = 3 * SEGMENT + 4
    token_ids = np.zeros((len(lengths), total), "int32")
    mask = np.zeros_like(token_ids, dtype=bool)
    for row, n in enumerate(lengths):
        token_ids[row, :n] = rng.integers(1, VOCABULARY, size=n)
        mask[row, :n] = True
    outputs, logits = model.generate(
        {"token_ids": token_ids, "padding_mask": mask},
        stop_token_ids=None,
        return_logits=True,
    )
    tokens = to_numpy(outputs["token_ids"])
    logits = to_numpy(logits)
    expected = _teacher_forced_logits(model, tokens)
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(tokens[row, :n], token_ids[row, :n])
        np.testing.assert_allclose(
            logits[row, n - 1 :], expected[row, n - 1 :], atol=1e-4, rtol=1e-4
        )
        # Greedy: each new token is the argmax of the previous position.
        np.testing.assert_array_equal(tokens[row, n:], logits[row, n - 1 : -1].argmax(-1))


# -- fine-tuning ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_memory_only_finetuning_changes_no_backbone_weight(name):
    """Full fine-tuning ("all") trains in benchmarks/pretrained_far_key.py;
    here the frozen backbone and what "all" makes trainable."""
    family = FAMILIES[name]
    model = _model(family, _backbone(family, seed=7), finetune="memory")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [to_numpy(w) for w in model.backbone.weights]
    memory_before = [to_numpy(w) for w in model.memory_layers[0].trainable_weights]
    rng = np.random.default_rng(2)
    for index in range(2):
        loss = model.train_on_batch(
            {"token_ids": _tokens(rng, BATCH, SEGMENT), "reset": np.full((BATCH,), index == 0)},
            _tokens(rng, BATCH, SEGMENT),
        )
        assert np.isfinite(loss).all()
    for old, new in zip(before, model.backbone.weights):
        np.testing.assert_array_equal(old, to_numpy(new))
    assert any(
        np.abs(old - to_numpy(new)).max() > 0
        for old, new in zip(memory_before, model.memory_layers[0].trainable_weights)
    )
    memory_ids = {id(w) for layer in model.memory_layers for w in layer.trainable_weights}
    assert {id(w) for w in model.trainable_weights} == memory_ids
    model.set_finetune("all")
    backbone_ids = {id(w) for w in model.backbone.trainable_weights}
    assert len(backbone_ids) == len(model.backbone.weights)
    assert {id(w) for w in model.trainable_weights} == memory_ids | backbone_ids


# -- saving, presets, export -----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_presets_plain_and_ours(awake, name, tmp_path):
    """A plain keras-hub preset of the family loads into ours (keras-hub's
    loading, weights as saved) and stays keras-hub's for `CausalLM`; ours
    saved as a preset loads as ours; another family's preset is refused."""
    family = FAMILIES[name]
    plain = family.task_cls(_backbone(family, seed=10), preprocessor=None)
    plain_preset = str(tmp_path / "plain")
    plain.save_to_preset(plain_preset)
    model = family.model_cls.from_preset(
        plain_preset, segment_length=SEGMENT, batch_size=BATCH, num_basis=16, num_bins=16
    )
    assert model.preprocessor is None and model.num_basis == 16
    for a, b in zip(plain.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert type(keras_hub.models.CausalLM.from_preset(plain_preset)) is family.task_cls

    ours = awake(name)
    ours_preset = str(tmp_path / "ours")
    ours.save_to_preset(ours_preset)
    loaded = family.model_cls.from_preset(ours_preset)
    assert type(loaded) is family.model_cls
    assert loaded.segment_length == SEGMENT and loaded.num_basis == 16
    for a, b in zip(ours.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b), err_msg=a.path)

    other = FAMILIES[NAMES[(NAMES.index(name) + 1) % len(NAMES)]]
    other_preset = _other_preset(other, tmp_path)
    with pytest.raises(ValueError, match=f"needs a {family.model_cls.wiring_cls.family} preset"):
        family.model_cls.from_preset(other_preset)


MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "Ġa n", "e r"]


def _qwen3_tokenizer():
    # A byte-level BPE (Qwen3's kind): printable bytes stand for themselves,
    # the others for code points from 256 up (space is "Ġ").
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    shifted = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(shifted)) for b in range(256)]
    merged = ["".join(merge.split(" ")) for merge in MERGES]
    vocabulary = {token: i for i, token in enumerate(symbols + merged)}
    for special in ("<|im_end|>", "<|endoftext|>"):
        vocabulary[special] = len(vocabulary)
    return keras_hub.models.Qwen3Tokenizer(vocabulary=vocabulary, merges=MERGES)


def test_a_qwen3_preset_with_a_tokenizer_loads_its_preprocessor(tmp_path):
    """keras-hub's preset loading brings the family's preprocessor along,
    and the model reads what it tokenizes (text generation through a
    preprocessor is the base class's, tested with GPT-2's in test_gpt2)."""
    preset = str(tmp_path / "qwen3_with_tokenizer")
    _backbone(FAMILIES["qwen3"], seed=9).save_to_preset(preset)
    keras_hub.models.Qwen3CausalLMPreprocessor(
        _qwen3_tokenizer(), sequence_length=16
    ).save_to_preset(preset)
    model = InfiniteFormerQwen3CausalLM.from_preset(
        preset, segment_length=SEGMENT, batch_size=1, num_basis=16, num_bins=16
    )
    assert isinstance(model.preprocessor, keras_hub.models.Qwen3CausalLMPreprocessor)
    tokenizer = model.preprocessor.tokenizer
    ids = np.asarray(to_numpy(tokenizer("the cat in the")), "int32")
    assert "the cat in the" in str(tokenizer.detokenize(ids))  # str, bytes or tensor
    segment = np.resize(ids, (1, SEGMENT)).astype("int32")
    logits, _ = model.step(segment, None, model.get_initial_state(1))
    assert to_numpy(logits).shape == (1, SEGMENT, VOCABULARY)


def _other_preset(family, tmp_path):
    preset = str(tmp_path / f"other_{family.name}")
    _backbone(family, seed=11).save_to_preset(preset)
    return preset


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the served graph is traced by TensorFlow from any backend; tested "
    "once here, under TF (as tests/models/test_gpt2.py does)",
)
# Gemma (sliding window under a traced cache index, soft-caps, post-norms)
# and Qwen3 (Llama's layer plus the q-norm) cover Llama's path too; each
# export costs ~17 s of tracing.
@pytest.mark.parametrize("name", ["gemma", "qwen3"])
def test_export_and_tensorflow_reload_equal_the_keras_model(awake, name, tmp_path):
    import serving_client
    import tensorflow as tf

    model = awake(name)
    path = keras_infformer.export_for_serving(model, str(tmp_path / "served"))
    served = tf.saved_model.load(path)
    state = served.signatures["initial_state"](batch_size=tf.constant(BATCH))
    keras_state = model.get_initial_state(BATCH)
    rng = np.random.default_rng(7)
    for index in range(2):
        segment = _tokens(rng, BATCH, SEGMENT)
        reset = np.full((BATCH,), index == 0)
        outputs = dict(
            served.signatures["serving_default"](
                token_ids=tf.constant(segment), reset=tf.constant(reset), **state
            )
        )
        logits = outputs.pop("logits").numpy()
        state = outputs
        expected, keras_state = model.step(segment, reset, keras_state)
        np.testing.assert_allclose(logits, to_numpy(expected), atol=1e-5)
    # Generation through `decode_step` equals in-process generate().
    prompt = _tokens(rng, BATCH, SEGMENT + 3)
    new_tokens = SEGMENT
    want, want_logits = model.generate(
        prompt,
        max_length=prompt.shape[1] + new_tokens,
        stop_token_ids=None,
        return_logits=True,
    )
    tokens, logits, _ = serving_client.generate(served, prompt, new_tokens)
    np.testing.assert_array_equal(tokens, to_numpy(want["token_ids"]))
    np.testing.assert_allclose(logits, to_numpy(want_logits)[:, :-1], atol=1e-5, rtol=0)


# -- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_bad_settings_and_other_backbones_are_refused(fresh, name):
    family = FAMILIES[name]
    model, _ = fresh(name)
    backbone = model.backbone
    # Rotary positions have no table: no maximum, but a positive length.
    assert model._wiring.max_length is None
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"segment_length={bad}"):
            _model(family, backbone, segment_length=bad)
    with pytest.raises(TypeError, match="segment_length=2.5"):
        _model(family, backbone, segment_length=2.5)
    other = FAMILIES[NAMES[(NAMES.index(name) + 1) % len(NAMES)]]
    other_backbone = other.make()
    with pytest.raises(TypeError, match=rf"`backbone`.*{type(other_backbone).__name__}"):
        family.model_cls.from_backbone(other_backbone)
    gpt2 = keras_hub.models.GPT2Backbone(
        vocabulary_size=50,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    with pytest.raises(TypeError, match=r"`backbone`.*GPT2Backbone"):
        family.model_cls.from_backbone(gpt2)
    with pytest.raises(ValueError, match=r"finetune='lora'"):
        _model(family, backbone, finetune="lora")
    too_long = _tokens(np.random.default_rng(8), BATCH, SEGMENT + 1)
    with pytest.raises(ValueError, match=r"`token_ids`"):
        model({"token_ids": too_long, "reset": np.zeros((BATCH,), bool)})


def test_a_moved_keras_hub_attribute_fails_loudly():
    """The wirings name private keras-hub attributes (Llama's and Qwen3's
    layers have no public ones); all go through `keras_hub_part`, which
    must say which attribute and which keras-hub version it expects."""

    class Block:
        pass

    with pytest.raises(RuntimeError, match=r"Block\._query_dense.*keras-hub 0\.32\.0"):
        rotary_wiring.keras_hub_part(Block(), "_query_dense")
    # With the installed keras-hub every part is found, for every family.
    for family in FAMILIES.values():
        wiring = family.model_cls.wiring_cls(_backbone(family))
        for parts in wiring._parts:
            for role in ("attention_norm", "attention", "query", "ffn_norm", "gate", "up", "down"):
                assert isinstance(parts[role], keras.layers.Layer), (family, role)


# -- the memory does something: a far key ----------------------------------------------------


KEYS = np.arange(10, 18)
QUERY = 5


def _recall_batch(rng, rows, vocabulary):
    """Segment 0: a key repeated; segment 1: filler, then the query token,
    whose target is the key (the only weighted position)."""
    keys = rng.choice(KEYS, size=rows)
    first = np.repeat(keys[:, None], SEGMENT, axis=1).astype("int32")
    second = rng.integers(30, vocabulary, size=(rows, SEGMENT)).astype("int32")
    second[:, -1] = QUERY
    targets = np.zeros((rows, SEGMENT), "int32")
    targets[:, -1] = keys
    weights = np.zeros((rows, SEGMENT), "float32")
    weights[:, -1] = 1.0
    return first, second, targets, weights


def _answer_loss(logits, keys):
    logits = logits[:, -1].astype("float64")
    logits -= logits.max(axis=-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(keys)), keys].mean())


def test_qwen3_with_memory_beats_the_same_backbone_without_on_a_far_key():
    """One family here (runtime; Qwen3 has the longest memory-query path,
    q-norm included); all three, longer: benchmarks/pretrained_far_key.py.
    Both fine-tune every weight on the same batches; keras-hub's own
    `Qwen3CausalLM` is the model without memory."""
    rows, steps, vocabulary = 16, 40, 64
    keras.utils.set_random_seed(8)
    backbone = keras_hub.models.Qwen3Backbone(
        **dict(COMMON, head_dim=8, vocabulary_size=vocabulary)
    )
    plain_backbone = keras_hub.models.Qwen3Backbone.from_config(backbone.get_config())
    plain_backbone.set_weights(backbone.get_weights())
    model = _model(FAMILIES["qwen3"], backbone, batch_size=rows, sticky_memories=False)
    plain = keras_hub.models.Qwen3CausalLM(plain_backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    plain.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(4)
    reset = np.ones((rows,), bool)
    for _ in range(steps):
        first, second, targets, weights = _recall_batch(rng, rows, vocabulary)
        # Into the memory (compiled: cheaper than 40 eager calls on JAX).
        model.predict_on_batch({"token_ids": first, "reset": reset})
        model.train_on_batch({"token_ids": second, "reset": ~reset}, targets, sample_weight=weights)
        plain.train_on_batch(
            {"token_ids": second, "padding_mask": np.ones_like(second)},
            targets,
            sample_weight=weights,
        )
    # Held-out rows, through the compiled stateful path (no new shapes).
    eval_rng = np.random.default_rng(99)
    with_memory, without, keys = [], [], []
    for _ in range(4):
        first, second, targets, _ = _recall_batch(eval_rng, rows, vocabulary)
        model.predict_on_batch({"token_ids": first, "reset": reset})
        with_memory.append(to_numpy(model.predict_on_batch({"token_ids": second, "reset": ~reset})))
        without.append(
            to_numpy(
                plain.predict_on_batch({"token_ids": second, "padding_mask": np.ones_like(second)})
            )
        )
        keys.append(targets[:, -1])
    keys = np.concatenate(keys)
    loss_memory = _answer_loss(np.concatenate(with_memory), keys)
    loss_plain = _answer_loss(np.concatenate(without), keys)
    # Without memory the key is a guess among 8 (log 8 = 2.08 at best).
    print(f"far-key loss: memory {loss_memory:.3f}, no memory {loss_plain:.3f}")
    assert loss_memory < loss_plain - 0.8, (loss_memory, loss_plain)
