"""The keras-hub model family: generation equals teacher forcing, samplers,
stop tokens, state continuation, text in and out, loss over real tokens."""

import keras
import numpy as np
import pytest
from conftest import to_numpy

import keras_infformer as kif

VOCAB, SEGMENT, BATCH = 40, 6, 2
MAX_LENGTH = 3 * SEGMENT + 5 + 8
CONFIGS = {
    "plain": dict(),
    "sticky": dict(sticky_memories=True),
    # The density placed by content; the memory's output awake so it shows.
    "content": dict(density_mode="content", zero_memory_output=False),
    "compressive": dict(
        use_long_term_memory=False,
        compressed_memory_length=3,
        compression_rate=2,
        memory_length=SEGMENT,
    ),
}


def _model(kind, **kwargs):
    keras.utils.set_random_seed(3)
    settings = dict(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=BATCH,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        num_basis=16,
        num_samples=16,
        memory_length=SEGMENT + 2,
        dropout=0.0,
    )
    settings.update(CONFIGS[kind])
    settings.update(kwargs)
    model = kif.InfiniteFormerLM(**settings)
    model.compile(sampler="greedy")
    return model


@pytest.fixture(scope="module")
def models():
    return {kind: _model(kind) for kind in CONFIGS}


def _teacher_forced_logits(model, token_ids):
    """Logits of streaming `token_ids` (B, T) segment by segment."""
    rows, total = token_ids.shape
    pad = (-total) % SEGMENT
    padded = np.concatenate([token_ids, np.zeros((rows, pad), "int32")], axis=1)
    state = model.get_initial_state(rows)
    logits = []
    for start in range(0, padded.shape[1], SEGMENT):
        out, state = model.step(padded[:, start : start + SEGMENT], np.zeros(rows, bool), state)
        logits.append(to_numpy(out))
    return np.concatenate(logits, axis=1)[:, :total]


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = np.zeros((len(lengths), MAX_LENGTH), "int32")
    mask = np.zeros_like(token_ids, dtype=bool)
    for row, n in enumerate(lengths):
        token_ids[row, :n] = rng.integers(1, VOCAB, size=n)
        mask[row, :n] = True
    return {"token_ids": token_ids, "padding_mask": mask}


def _assert_generation_is_teacher_forced(model, prompts, outputs, logits):
    tokens = outputs["token_ids"]
    lengths = prompts["padding_mask"].sum(axis=1)
    # Prompts are kept as they were.
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(tokens[row, :n], prompts["token_ids"][row, :n])
    expected = _teacher_forced_logits(model, tokens)
    for row, n in enumerate(lengths):
        got, want = logits[row, n - 1 :], expected[row, n - 1 :]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        assert np.abs(want).max() > 1e-3
    if type(model.sampler).__name__ == "GreedySampler":
        _assert_greedy(prompts, outputs, logits)


_LENGTHS = {
    "1": (1,),
    "L-1": (SEGMENT - 1,),
    "L": (SEGMENT,),
    "3L+5": (3 * SEGMENT + 5,),
    "mixed": (1, SEGMENT - 1, SEGMENT, 3 * SEGMENT + 5),
    # The shortest prompt a whole number of segments (issue 23 item 23).
    "2L": (2 * SEGMENT,),
    "L,2L+3": (SEGMENT, 2 * SEGMENT + 3),
}


# Every prompt length with sticky memories (the most state to carry); the
# mixed batch and the longest prompt for the other memories.
@pytest.mark.parametrize(
    "kind, lengths",
    [("sticky", v) for v in _LENGTHS.values()]
    + [(k, _LENGTHS[n]) for k in ("plain", "compressive") for n in ("3L+5", "mixed")]
    + [("content", _LENGTHS["mixed"])],
    ids=[f"sticky-{n}" for n in _LENGTHS]
    + [f"{k}-{n}" for k in ("plain", "compressive") for n in ("3L+5", "mixed")]
    + ["content-mixed"],
)
def test_generated_logits_equal_teacher_forcing(models, kind, lengths):
    model = models[kind]
    # Every case as a batch of four rows (lengths cycled), so that one
    # compiled `generate` serves them all (a new batch size recompiles).
    rows = max(len(v) for v in _LENGTHS.values())
    prompts = _prompts([lengths[i % len(lengths)] for i in range(rows)])
    memory_before = {k: to_numpy(v) for k, v in model.get_state().items()}
    outputs, logits = model.generate(prompts, stop_token_ids=None, return_logits=True)
    _assert_generation_is_teacher_forced(model, prompts, outputs, logits)
    # Generation never touches the training memory.
    for name, value in model.get_state().items():
        np.testing.assert_array_equal(to_numpy(value), memory_before[name])


@pytest.mark.parametrize("sampler", ["top_k", "top_p", "random"])
def test_every_sampler_decodes_through_the_memory(models, sampler):
    model = models["sticky"]
    model.compile(sampler=sampler)
    try:
        prompts = _prompts((SEGMENT + 2, 2 * SEGMENT + 1), seed=1)
        outputs, logits = model.generate(prompts, stop_token_ids=None, return_logits=True)
        _assert_generation_is_teacher_forced(model, prompts, outputs, logits)
    finally:
        model.compile(sampler="greedy")


def test_beam_search_is_refused(models):
    model = _model("plain")
    model.compile(sampler="beam")
    with pytest.raises(ValueError, match="greedy"):
        model.generate(_prompts((3,)), stop_token_ids=None)


def _assert_greedy(prompts, outputs, logits):
    """Each generated token is the argmax of the previous position's logits."""
    lengths = prompts["padding_mask"].sum(axis=1)
    tokens, mask = outputs["token_ids"], outputs["padding_mask"]
    for row, n in enumerate(lengths):
        reached = int(mask[row].sum())
        assert reached > n or tokens.shape[1] == n  # (No room: nothing new.)
        np.testing.assert_array_equal(
            tokens[row, n:reached], logits[row, n - 1 : reached - 1].argmax(-1)
        )


@pytest.mark.parametrize("max_length", [3, 4, SEGMENT - 1, SEGMENT])
def test_max_length_shorter_than_a_segment(models, max_length):
    """Issue 23 item 1: JAX could not trace the whole-segment read when
    `max_length` < `segment_length` (also `max_length` = the prompt)."""
    model = models["plain"]
    prompts = np.array([[5, 7, 9], [11, 2, 30]], "int32")
    outputs, logits = model.generate(
        prompts, max_length=max_length, stop_token_ids=None, return_logits=True
    )
    assert outputs["token_ids"].shape == (2, max_length)
    assert outputs["padding_mask"].all()
    padded = {
        "token_ids": outputs["token_ids"],
        "padding_mask": np.arange(max_length)[None, :] < 3 + np.zeros((2, 1), int),
    }
    _assert_generation_is_teacher_forced(model, padded, outputs, logits)
    if max_length > 3:
        _assert_greedy(padded, outputs, logits)


def test_a_stop_token_equal_to_the_padding_id_reads_the_whole_prompt(models):
    """Issue 23 item 2: prompts are padded with 0; a stop check that looked
    at positions not yet written stopped every row after one token."""
    model = models["plain"]
    prompts = _prompts((5, 2 * SEGMENT + 1), seed=7)
    free, free_state = model.generate(prompts, stop_token_ids=None, return_state=True)
    stopped, state, logits = model.generate(
        prompts, stop_token_ids=(0,), return_state=True, return_logits=True
    )
    _assert_greedy(prompts, stopped, logits)
    lengths = prompts["padding_mask"].sum(axis=1)
    for row, n in enumerate(lengths):
        generated = list(free["token_ids"][row, n:])
        end = n + (generated.index(0) + 1 if 0 in generated else len(generated))
        assert stopped["padding_mask"][row].sum() == end
        np.testing.assert_array_equal(stopped["token_ids"][row, :end], free["token_ids"][row, :end])
    if not any(0 in list(free["token_ids"][r, n:]) for r, n in enumerate(lengths)):
        # No row stopped: the same state as without stop tokens.
        np.testing.assert_array_equal(to_numpy(state["position"]), to_numpy(free_state["position"]))


def test_a_stop_token_inside_the_prompt_does_not_stop_the_row(models):
    """Issue 23 item 23: only generated tokens end a row."""
    model = models["plain"]
    prompts = _prompts((SEGMENT + 1, 3), seed=8)
    stop = int(prompts["token_ids"][0, 2])
    free = model.generate(prompts, stop_token_ids=None)
    stopped, logits = model.generate(prompts, stop_token_ids=(stop,), return_logits=True)
    _assert_greedy(prompts, stopped, logits)
    for row, n in enumerate(prompts["padding_mask"].sum(axis=1)):
        generated = list(free["token_ids"][row, n:])
        end = n + (generated.index(stop) + 1 if stop in generated else len(generated))
        # Generation runs until the last row stops: each row holds exactly
        # its tokens up to its own first generated stop token.
        assert stopped["padding_mask"][row].sum() == end
        np.testing.assert_array_equal(stopped["token_ids"][row, :end], free["token_ids"][row, :end])


@pytest.mark.parametrize("position", [float(SEGMENT), 2.5, -1.0, 7.0])
def test_a_state_position_out_of_its_segment_is_refused(models, position):
    """Issue 23 item 3: generate(state=) checks `position` as decode_step does."""
    model = models["plain"]
    state = dict(model.decode_state(batch_size=1))
    state["position"] = np.full((1,), position, "float32")
    with pytest.raises(ValueError, match=r"position.*segment_length") as error:
        model.generate(np.array([[1, 2]]), state=state, stop_token_ids=None)
    assert repr(position) in str(error.value) or str(position) in str(error.value)


def test_stop_tokens_end_rows(models):
    model = models["plain"]
    prompts = _prompts((SEGMENT + 1,), seed=2)
    free = model.generate(prompts, stop_token_ids=None)
    start = SEGMENT + 1
    stop = int(free["token_ids"][0, start + 2])
    first = start + list(free["token_ids"][0, start:]).index(stop)
    stopped = model.generate(prompts, stop_token_ids=(stop,))
    np.testing.assert_array_equal(
        stopped["token_ids"][0, : first + 1], free["token_ids"][0, : first + 1]
    )
    assert stopped["padding_mask"][0, : first + 1].all()
    assert not stopped["padding_mask"][0, first + 1 :].any()


def test_continuing_from_a_returned_state_equals_one_long_generation(models):
    model = models["sticky"]
    first = _prompts((SEGMENT + 3,), seed=4)
    out1, state = model.generate(
        {k: v[:, : 2 * SEGMENT + 1] for k, v in first.items()},
        stop_token_ids=None,
        return_state=True,
    )
    second = np.random.default_rng(5).integers(1, VOCAB, size=(1, 4)).astype("int32")
    out2, logits2 = model.generate(
        second,
        max_length=4 + SEGMENT + 2,
        stop_token_ids=None,
        state=state,
        return_logits=True,
    )
    # The same tokens streamed from the start give the same logits.
    whole = np.concatenate([out1["token_ids"], out2["token_ids"]], axis=1)
    expected = _teacher_forced_logits(model, whole)[:, out1["token_ids"].shape[1] :]
    np.testing.assert_allclose(logits2[:, 3:], expected[:, 3:], atol=1e-4, rtol=1e-4)


def test_bad_generation_input_is_refused_and_memory_untouched(models):
    model = models["plain"]
    before = {k: to_numpy(v) for k, v in model.get_state().items()}
    empty = _prompts((3,))
    empty["padding_mask"][:] = False
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(empty, stop_token_ids=None)
    with pytest.raises(ValueError, match="vocabulary_size"):
        model.generate(np.array([[1, VOCAB + 3]]), stop_token_ids=None)
    with pytest.raises(ValueError, match="max_length"):
        model.generate(np.array([[1, 2, 3, 4]]), max_length=2, stop_token_ids=None)
    with pytest.raises(ValueError):
        model.compile(sampler="no_such_sampler")
    # Issue 23 item 21: errors of ours, not IndexError / AxisError / a
    # broadcast error.
    for stop in [(), (VOCAB,), (-1,), ("a",), 2.5]:
        with pytest.raises(ValueError, match=r"stop_token_ids=") as error:
            model.generate(np.array([[1, 2]]), stop_token_ids=stop)
        assert repr(stop) in str(error.value)
    with pytest.raises(ValueError, match=r"at least one prompt.*\(0, "):
        model.generate(np.zeros((0, 3), "int32"), stop_token_ids=None)  # Item 22.
    prompts = _prompts((3,))
    wrong_mask = dict(prompts, padding_mask=prompts["padding_mask"][:, :5])
    with pytest.raises(ValueError, match=r"padding_mask.*shape=\(1, 5\)"):
        model.generate(wrong_mask, stop_token_ids=None)
    with pytest.raises(ValueError, match=r"token_ids.*shape=\(1, 2, 3\)"):
        model.generate(
            {"token_ids": np.ones((1, 2, 3), "int32"), "padding_mask": np.ones((1, 2, 3), bool)},
            stop_token_ids=None,
        )
    for name, value in model.get_state().items():
        np.testing.assert_array_equal(to_numpy(value), before[name])


def test_one_prompt_as_a_1d_dict_equals_a_batch_of_one(models):
    """Issue 23 item 21: a 1-D {"token_ids", "padding_mask"} raised a NumPy
    AxisError; it is one prompt, as a 1-D array of ids is."""
    model = models["plain"]
    prompts = _prompts((4,), seed=9)
    batched = model.generate(prompts, stop_token_ids=None)
    single = model.generate({k: v[0] for k, v in prompts.items()}, stop_token_ids=None)
    np.testing.assert_array_equal(single["token_ids"], batched["token_ids"])
    np.testing.assert_array_equal(single["padding_mask"], batched["padding_mask"])


def test_text_in_text_out_with_a_byte_tokenizer(tmp_path):
    preprocessor = kif.InfiniteFormerCausalLMPreprocessor()
    text = "Mémoire infinie: any UTF-8 text round-trips. ✓"
    ids = preprocessor.tokenize_documents([text])[0]
    assert preprocessor.generate_postprocess(
        {"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)), bool)}
    ) == [text]
    backbone = kif.InfiniteFormerBackbone(
        vocabulary_size=256,
        segment_length=8,
        batch_size=2,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        num_basis=16,
        num_samples=16,
        dropout=0.0,
    )
    model = kif.InfiniteFormerCausalLM(backbone, preprocessor)
    model.compile(sampler="greedy")
    generated = model.generate(["Hello", "A longer prompt, read by segments"], max_length=48)
    assert generated[0].startswith("Hello") and len(generated) == 2
    assert generated[1].startswith("A longer prompt, read by segments")
    # A directory of texts becomes streams; targets never cross files.
    for name, body in [("a.txt", "first file " * 5), ("sub/b.txt", "second " * 9)]:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(body, encoding="utf-8")
    stream = preprocessor.streaming_dataset(directory=str(tmp_path), batch_size=2, segment_length=8)
    assert stream.num_documents == 2
    lengths = sorted(
        len(d) for d in preprocessor.tokenize_documents(["first file " * 5, "second " * 9])
    )
    weights = np.concatenate([stream.get_batch(i)[2] for i in range(len(stream))], axis=1)
    assert sorted(int(w.sum()) + 1 for w in weights) == lengths


def test_compile_defaults_average_over_real_tokens():
    """`evaluate` with the default loss equals the masked mean in NumPy on
    a stream whose rows are mostly padding."""
    model = kif.InfiniteFormerLM(
        vocabulary_size=VOCAB,
        segment_length=SEGMENT,
        batch_size=4,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        num_basis=16,
        num_samples=16,
        dropout=0.0,
        kl_weight=0.0,
    )
    model.compile()
    rng = np.random.default_rng(6)
    documents = [rng.integers(1, VOCAB, size=n) for n in (4 * SEGMENT, 3)]
    stream = kif.data.StreamingDataset(documents, batch_size=4, segment_length=SEGMENT)
    results = model.evaluate(stream, return_dict=True, verbose=0)
    state = model.get_initial_state(4)
    total, count, batch_means = 0.0, 0.0, []
    for index in range(len(stream)):
        inputs, targets, weights = stream.get_batch(index)
        logits, state = model.step(inputs["token_ids"], inputs["reset"], state)
        z = to_numpy(logits).astype(np.float64)
        log_probs = (
            z
            - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - z.max(-1, keepdims=True)
        )
        nats = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
        total += (nats * weights).sum()
        count += weights.sum()
        batch_means.append((nats * weights).sum() / weights.sum())
    expected = total / count
    np.testing.assert_allclose(results["bits_per_token"], expected / np.log(2), rtol=1e-4)
    np.testing.assert_allclose(results["perplexity"], np.exp(expected), rtol=1e-4)
    # The loss: each batch's mean over its real tokens, averaged over batches
    # (Keras' plain reduction would divide by every position, padding too).
    np.testing.assert_allclose(results["loss"], np.mean(batch_means), rtol=1e-4)


def test_a_loaded_model_is_compiled_and_trains_on(tmp_path):
    """Keras skips an overridden compile() on loading; the family compiles
    itself from the saved config, with the optimizer's state."""
    import warnings

    from keras_infformer.data import StreamingDataset
    from keras_infformer.models import InfiniteFormerLM

    model = InfiniteFormerLM(
        vocabulary_size=32,
        segment_length=8,
        batch_size=2,
        num_layers=1,
        hidden_dim=16,
        num_heads=2,
        num_basis=8,
        num_samples=8,
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    tokens = np.random.default_rng(0).integers(1, 32, 120)
    dataset = StreamingDataset.from_array(tokens, batch_size=2, segment_length=8)
    model.fit(dataset, epochs=1, verbose=0)
    path = tmp_path / "lm.keras"
    # The README's sequence: changing the sampler after training keeps the
    # optimizer and its state (issue 23 item 7).
    optimizer = model.optimizer
    model.compile(sampler="greedy")
    assert model.optimizer is optimizer
    assert int(model.optimizer.iterations) == len(dataset)
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # No "compile() was not called".
        loaded = keras.saving.load_model(path)
    assert type(loaded.sampler).__name__ == "GreedySampler"
    assert loaded.compiled
    assert isinstance(loaded.optimizer, keras.optimizers.Adam)
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 3e-3, rtol=1e-6)
    assert int(loaded.optimizer.iterations) == len(dataset)
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(restored)
        )
    history = loaded.fit(dataset, epochs=1, verbose=0)
    assert int(loaded.optimizer.iterations) == 2 * len(dataset)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("sampler", ["greedy", "top_p"])
def test_the_sampler_survives_a_keras_round_trip(models, sampler, tmp_path):
    """Issue 23 item 5: compile_from_config used the default sampler."""
    import keras_hub

    model = models["plain"]
    if sampler == "top_p":
        sampler = keras_hub.samplers.TopPSampler(p=0.37, k=5)
    model.compile(sampler=sampler)
    try:
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded.sampler) is type(model.sampler)
        assert loaded.sampler.get_config() == model.sampler.get_config()
        if type(model.sampler).__name__ == "GreedySampler":
            prompts = _prompts((3, SEGMENT + 2), seed=11)
            np.testing.assert_array_equal(
                loaded.generate(prompts, stop_token_ids=None)["token_ids"],
                model.generate(prompts, stop_token_ids=None)["token_ids"],
            )
    finally:
        model.compile(sampler="greedy")


def test_fitting_texts_says_what_to_do_and_the_preprocessor_has_a_sequence_length():
    """Issue 23 item 9: `fit(list_of_strings)` (the keras-hub habit) failed
    with Keras' "Unrecognized data type" printing the whole corpus."""
    preprocessor = kif.InfiniteFormerCausalLMPreprocessor(sequence_length=8)
    assert preprocessor.sequence_length == 8
    model = kif.InfiniteFormerCausalLM(
        kif.InfiniteFormerBackbone(
            vocabulary_size=256,
            segment_length=8,
            batch_size=2,
            num_layers=1,
            hidden_dim=8,
            num_heads=2,
            num_basis=8,
            num_samples=8,
        ),
        preprocessor,
    )
    before = [to_numpy(w) for w in model.weights]
    texts = ["a long corpus " * 200, "of two documents"]
    for method, data in [("fit", texts), ("evaluate", texts), ("predict", texts[0])]:
        with pytest.raises(
            ValueError, match=r"streaming_dataset\(texts, batch_size=2, segment_length=8\)"
        ) as error:
            getattr(model, method)(data)
        assert len(str(error.value)) < 600  # Not the corpus.
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), b)
    # `sequence_length` is the default segment length of the stream and of
    # `call`, and survives get_config.
    stream = preprocessor.streaming_dataset(texts, batch_size=2)
    assert stream.segment_length == 8
    inputs, targets, weights = preprocessor(["abc"])
    assert inputs["token_ids"].shape == (1, 8) and targets.shape == (1, 8)
    np.testing.assert_array_equal(inputs["token_ids"][0, :3], list(b"abc"))
    restored = kif.InfiniteFormerCausalLMPreprocessor.from_config(preprocessor.get_config())
    assert restored.sequence_length == 8
    with pytest.raises(ValueError, match="sequence_length=0"):
        kif.InfiniteFormerCausalLMPreprocessor(sequence_length=0)


# -- a user's functional model made a causal LM (issue 23 item 8) -------------------

FUNCTIONAL_BATCH = 4


def functional_network(seed=3):
    """A functional model of the README's kind: embedding, a memory block,
    a dense head; inputs {"token_ids", "reset"}, logits out."""
    keras.utils.set_random_seed(seed)
    token_ids = keras.Input(
        (SEGMENT,), batch_size=FUNCTIONAL_BATCH, dtype="int32", name="token_ids"
    )
    reset = keras.Input((), batch_size=FUNCTIONAL_BATCH, dtype="bool", name="reset")
    x = keras.layers.Embedding(VOCAB, 16)(token_ids)
    x = kif.InfiniteFormerDecoder(
        32,
        2,
        memory_length=SEGMENT,
        num_basis=16,
        num_samples=16,
        dropout=0.0,
        sticky_memories=True,
        name="block",
    )(x, reset=reset)
    logits = keras.layers.Dense(VOCAB, name="head")(x)
    return keras.Model({"token_ids": token_ids, "reset": reset}, logits)


@pytest.fixture(scope="module")
def functional():
    model = kif.models.FunctionalMemoryLM(functional_network())
    model.compile(sampler="greedy")
    return model


def _stateful_logits(model, token_ids):
    """The wrapped model's own stateful path, segment by segment (rows =
    its batch size): the reference, independent of `step`/`decode`."""
    rows, total = token_ids.shape
    pad = (-total) % SEGMENT
    padded = np.concatenate([token_ids, np.zeros((rows, pad), "int32")], axis=1)
    model.reset_state()
    logits = []
    for start in range(0, padded.shape[1], SEGMENT):
        out = model.backbone(
            {"token_ids": padded[:, start : start + SEGMENT], "reset": np.full((rows,), start == 0)}
        )
        logits.append(to_numpy(out))
    model.reset_state()
    return np.concatenate(logits, axis=1)[:, :total]


def test_a_functional_model_of_memory_layers_generates(functional):
    """Issue 23 item 8: a functional model built from the memory layers got
    neither generate() nor an export; FunctionalMemoryLM derives the
    contract. Its logits equal the wrapped model's own stateful streaming,
    for prompts of 1, L - 1, L and 2L + 3 tokens in one batch."""
    model = functional
    assert list(model.state_spec())[:2] == ["block_stm", "block_stm_mask"]
    assert (model.segment_length, model.batch_size, model.vocabulary_size) == (
        SEGMENT,
        FUNCTIONAL_BATCH,
        VOCAB,
    )
    lengths = (1, SEGMENT - 1, SEGMENT, 2 * SEGMENT + 3)
    prompts = _prompts(lengths, seed=12)
    memory_before = {k: to_numpy(v) for k, v in model.get_state().items()}
    outputs, logits = model.generate(prompts, stop_token_ids=None, return_logits=True)
    for name, value in model.get_state().items():
        np.testing.assert_array_equal(to_numpy(value), memory_before[name])
    expected = _stateful_logits(model, outputs["token_ids"])
    for row, n in enumerate(lengths):
        np.testing.assert_array_equal(outputs["token_ids"][row, :n], prompts["token_ids"][row, :n])
        np.testing.assert_allclose(
            logits[row, n - 1 :], expected[row, n - 1 :], atol=1e-4, rtol=1e-4
        )
    _assert_greedy(prompts, outputs, logits)
    # Fewer rows than the wrapped batch: padded, the same logits.
    two, two_logits = model.generate(
        {k: v[2:] for k, v in prompts.items()}, stop_token_ids=None, return_logits=True
    )
    np.testing.assert_array_equal(two["token_ids"], outputs["token_ids"][2:])
    np.testing.assert_allclose(two_logits, logits[2:], atol=1e-5)


def test_a_functional_memory_lm_trains_saves_and_refuses_what_it_cannot_run(functional, tmp_path):
    model = kif.models.FunctionalMemoryLM(functional_network(seed=4))
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    rng = np.random.default_rng(14)
    stream = kif.data.StreamingDataset(
        [rng.integers(1, VOCAB, n) for n in (40, 25, 31, 17, 22)],
        batch_size=FUNCTIONAL_BATCH,
        segment_length=SEGMENT,
    )
    history = model.fit(stream, epochs=2, callbacks=[kif.ResetMemory()], verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    model.compile(sampler="greedy")
    path = tmp_path / "functional.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is kif.models.FunctionalMemoryLM
    for name, value in model.get_state().items():
        np.testing.assert_array_equal(to_numpy(loaded.get_state()[name]), to_numpy(value))
    prompts = _prompts((3, SEGMENT + 2), seed=15)
    np.testing.assert_array_equal(
        loaded.generate(prompts, stop_token_ids=None)["token_ids"],
        model.generate(prompts, stop_token_ids=None)["token_ids"],
    )
    with pytest.raises(ValueError, match=r"at most that many rows.*\(5, "):
        model.step(np.ones((5, SEGMENT), "int32"), None, model.get_initial_state(5))
    token_ids = keras.Input((SEGMENT,), batch_size=2, dtype="int32", name="token_ids")
    reset = keras.Input((), batch_size=2, dtype="bool", name="reset")
    plain = keras.Model(
        {"token_ids": token_ids, "reset": reset},
        keras.layers.Embedding(VOCAB, VOCAB)(token_ids),
    )
    with pytest.raises(ValueError, match="no stateful memory layer"):
        kif.models.FunctionalMemoryLM(plain)
    with pytest.raises(TypeError, match="functional keras.Model"):
        kif.models.FunctionalMemoryLM(keras.layers.Dense(3))
