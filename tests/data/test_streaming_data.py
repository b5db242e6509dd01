"""Tests of keras_infformer.data.StreamingDataset (NumPy only, any backend)."""

import numpy as np
import pytest

from keras_infformer.data import StreamingDataset

PAD = 0


def _random_documents(seed, num_documents, max_length=90):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length, size=num_documents)
    # Token ids >= 1 so that padding (0) is recognisable.
    return [rng.integers(1, 1000, size=n).astype(np.int64) for n in lengths]


def _collect(dataset):
    steps = [dataset[s] for s in range(len(dataset))]
    tokens = np.stack([x["token_ids"] for x, _, _ in steps], axis=1)
    resets = np.stack([x["reset"] for x, _, _ in steps], axis=1)
    targets = np.stack([y for _, y, _ in steps], axis=1)
    weights = np.stack([w for _, _, w in steps], axis=1)
    B, T, S = tokens.shape
    return (
        tokens.reshape(B, T * S),
        targets.reshape(B, T * S),
        weights.reshape(B, T * S),
        resets,
    )


def _expected_row(documents, doc_ids, segment_length, total_length):
    """Independent reconstruction of one stream, with its labels."""
    tokens, targets, weights, starts = [], [], [], []
    for i in doc_ids:
        doc = list(documents[i])
        padded = -(-len(doc) // segment_length) * segment_length
        starts.append(len(tokens))
        tokens += doc + [PAD] * (padded - len(doc))
        targets += doc[1:] + [PAD] * (padded - len(doc) + 1)
        weights += [1.0] * (len(doc) - 1) + [0.0] * (padded - len(doc) + 1)
    extra = total_length - len(tokens)
    return (
        np.array(tokens + [PAD] * extra),
        np.array(targets + [PAD] * extra),
        np.array(weights + [0.0] * extra),
        starts,
    )


@pytest.mark.parametrize(
    "seed,num_documents,batch_size,segment_length",
    [(0, 25, 4, 16), (1, 3, 3, 7), (2, 10, 1, 32), (3, 40, 5, 1)],
)
def test_rows_targets_and_resets(seed, num_documents, batch_size, segment_length):
    documents = _random_documents(seed, num_documents)
    dataset = StreamingDataset(documents, batch_size, segment_length)
    assert dataset.batch_size == batch_size
    assert dataset.segment_length == segment_length
    assert len(dataset) == dataset.num_steps
    tokens, targets, weights, resets = _collect(dataset)
    total = len(dataset) * segment_length

    # Every document is used exactly once, in its given order per row.
    assigned = sorted(i for row in dataset.stream_documents for i in row)
    assert assigned == list(range(num_documents))
    for row in dataset.stream_documents:
        assert row == sorted(row)

    lengths = []
    for b, doc_ids in enumerate(dataset.stream_documents):
        exp_tokens, exp_targets, exp_weights, starts = _expected_row(
            documents, doc_ids, segment_length, total
        )
        # Row continuity: row b over all steps is its documents, padded.
        np.testing.assert_array_equal(tokens[b], exp_tokens)
        np.testing.assert_array_equal(targets[b], exp_targets)
        np.testing.assert_array_equal(weights[b], exp_weights)
        # Resets exactly at the segments where a document starts.
        expected_resets = np.zeros(len(dataset), dtype=bool)
        expected_resets[[s // segment_length for s in starts]] = True
        np.testing.assert_array_equal(resets[b], expected_resets)
        lengths.append(sum(-(-len(documents[i]) // segment_length) for i in doc_ids))
    # The longest stream sets the length; nothing is dropped.
    assert len(dataset) == max(lengths)
    # Step 0 resets every row.
    assert resets[:, 0].all()


def test_targets_never_cross_documents():
    # Each document uses its own token range, so a crossing target would show.
    lengths = [5, 16, 17, 3, 40, 1, 33]
    documents = [np.arange(100 * k + 1, 100 * k + 1 + n) for k, n in enumerate(lengths)]
    dataset = StreamingDataset(documents, batch_size=3, segment_length=8)
    for s in range(len(dataset)):
        x, y, w = dataset[s]
        weighted = w > 0
        # Within a document, target = next token = input + 1.
        np.testing.assert_array_equal(y[weighted], x["token_ids"][weighted] + 1)
        assert (y[weighted] // 100 == x["token_ids"][weighted] // 100).all()
        # The last token of every document has weight 0.
        ends = np.isin(x["token_ids"], [d[-1] for d in documents])
        assert (w[ends] == 0).all()
        assert (w[x["token_ids"] == PAD] == 0).all()
    total_weight = sum(dataset[s][2].sum() for s in range(len(dataset)))
    assert total_weight == sum(len(d) - 1 for d in documents)


def test_batch_format_and_no_partial_batch():
    documents = _random_documents(5, 13)
    dataset = StreamingDataset(documents, batch_size=4, segment_length=10)
    for s in range(len(dataset)):
        x, y, w = dataset[s]
        assert set(x) == {"token_ids", "reset"}
        assert x["token_ids"].shape == (4, 10)
        assert x["token_ids"].dtype == np.int32
        assert x["reset"].shape == (4,)
        assert x["reset"].dtype == bool
        assert y.shape == (4, 10) and y.dtype == np.int32
        assert w.shape == (4, 10) and w.dtype == np.float32
    # Negative indices and the end of iteration.
    np.testing.assert_array_equal(
        dataset.get_batch(-1)[0]["token_ids"],
        dataset.get_batch(len(dataset) - 1)[0]["token_ids"],
    )
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert sum(1 for _ in dataset) == len(dataset)


def test_greedy_packing_and_pad_id():
    documents = [np.arange(1, 40), np.arange(100, 110), np.arange(200, 270)]
    dataset = StreamingDataset(documents, batch_size=2, segment_length=16, pad_id=7)
    # 3, 1 and 5 segments: the third document goes to the shorter row 1.
    assert dataset.stream_documents == [[0], [1, 2]]
    assert len(dataset) == 6
    x, y, w = dataset.get_batch(5)
    assert (x["token_ids"][0] == 7).all() and (w[0] == 0).all()
    assert not x["reset"][0]
    x, y, w = dataset.get_batch(1)
    np.testing.assert_array_equal(x["reset"], [False, True])


def test_positions_locate_every_token_in_its_document():
    rng = np.random.default_rng(3)
    lengths = [39, 10, 70, 1, 33, 16]
    documents = [rng.integers(1, 50, n) for n in lengths]
    dataset = StreamingDataset(documents, batch_size=3, segment_length=16)
    seen = {i: [] for i in range(len(documents))}
    for step in range(len(dataset)):
        x, _, _ = dataset.get_batch(step)
        document, offset = dataset.positions(step)
        assert document.shape == offset.shape == (3, 16)
        # Padding is -1 in both; every real token is its document's token.
        np.testing.assert_array_equal(document < 0, offset < 0)
        for b, i in zip(*np.nonzero(document >= 0)):
            d, o = document[b, i], offset[b, i]
            assert x["token_ids"][b, i] == documents[d][o]
            seen[d].append(o)
    for d, n in enumerate(lengths):
        assert sorted(seen[d]) == list(range(n))
    # Any order; a bad index is refused as by get_batch.
    dataset.positions(len(dataset) - 1)
    with pytest.raises(IndexError):
        dataset.positions(len(dataset))


def test_from_array():
    tokens = np.arange(1, 104)  # 103 tokens
    dataset = StreamingDataset.from_array(tokens, batch_size=4, segment_length=8)
    assert dataset.batch_size == 4
    rows, targets, weights, resets = _collect(dataset)
    parts = np.array_split(tokens, 4)
    assert len(dataset) == -(-len(parts[0]) // 8)
    for b, part in enumerate(parts):
        np.testing.assert_array_equal(rows[b, : len(part)], part)
        assert (rows[b, len(part) :] == 0).all()
        np.testing.assert_array_equal(targets[b, : len(part) - 1], part[1:])
        assert weights[b].sum() == len(part) - 1
    # Reset only at step 0.
    assert resets[:, 0].all() and not resets[:, 1:].any()
    # Concatenating the rows gives back the stream: nothing is dropped.
    np.testing.assert_array_equal(
        np.concatenate([rows[b, : len(p)] for b, p in enumerate(parts)]),
        tokens,
    )


def test_pydataset_kwargs_are_passed():
    dataset = StreamingDataset([np.arange(1, 50)], 1, 8, workers=2, use_multiprocessing=False)
    assert dataset.workers == 2
    assert dataset.use_multiprocessing is False
    default = StreamingDataset([np.arange(1, 50)], 1, 8)
    assert default.workers == 1 and default.use_multiprocessing is False


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(batch_size=0), ValueError, "batch_size=0"),
        (dict(batch_size=-2), ValueError, "batch_size=-2"),
        (dict(batch_size=2.0), TypeError, "batch_size"),
        (dict(segment_length=0), ValueError, "segment_length=0"),
        (dict(segment_length="8"), TypeError, "segment_length"),
        (dict(documents=[]), ValueError, "documents"),
        (dict(documents=[np.array([1.0, 2.0])]), TypeError, r"documents\[0\]"),
        (dict(documents=[np.array([1, 2]), np.array([3, -1])]), ValueError, r"documents\[1\].*-1"),
        (dict(documents=[np.array([1, 2]), np.array([], int)]), ValueError, r"documents\[1\]"),
        (dict(documents=[np.ones((2, 2), int)]), ValueError, "shape"),
        (dict(documents=np.arange(10)), TypeError, "from_array"),
        (dict(pad_id=-1), ValueError, "pad_id=-1"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    arguments = dict(documents=[np.arange(1, 10)], batch_size=2, segment_length=4)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        StreamingDataset(**arguments)


def test_from_array_invalid_arguments():
    with pytest.raises(ValueError, match="batch_size=5"):
        StreamingDataset.from_array(np.arange(3), 5, 4)
    with pytest.raises(ValueError, match="batch_size=0"):
        StreamingDataset.from_array(np.arange(3), 0, 4)
    with pytest.raises(TypeError, match="tokens"):
        StreamingDataset.from_array(np.linspace(0, 1, 10), 2, 4)
    with pytest.raises(ValueError, match="tokens"):
        StreamingDataset.from_array(np.array([1, -3, 2]), 1, 4)


def test_fit_consumes_the_batches():
    # A tiny stateless model: checks that the (dict, targets, sample_weight)
    # batches feed `model.fit` on the active backend.
    import keras

    token_ids = keras.Input((8,), batch_size=2, dtype="int32", name="token_ids")
    reset = keras.Input((), batch_size=2, dtype="bool", name="reset")
    hidden = keras.layers.Embedding(50, 4)(token_ids)
    scale = keras.ops.cast(reset, "float32")[:, None, None]
    logits = keras.layers.Dense(50)(hidden * (1.0 + 0.0 * scale))
    model = keras.Model({"token_ids": token_ids, "reset": reset}, logits)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    dataset = StreamingDataset(
        [np.arange(1, 30), np.arange(30, 49), np.arange(1, 12)],
        batch_size=2,
        segment_length=8,
    )
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# -- issue 12: malformed documents, resets at step 0, reads in stream order ----


@pytest.mark.parametrize(
    "documents,index",
    [
        ([[1, 2, [3]]], 0),
        ([[1, 2], [[3, 4], [5]]], 1),
        ([np.arange(1, 5), [7, [8, 9]], [1]], 1),
    ],
)
def test_ragged_documents_are_a_clear_error(documents, index):
    """Defect 9: a ragged nested document gave a raw NumPy error."""
    with pytest.raises(ValueError, match=rf"`documents\[{index}\]` must be a flat 1-D.*nested"):
        StreamingDataset(documents, batch_size=1, segment_length=4)


@pytest.mark.parametrize(
    "documents,match",
    [
        ([[1, 27.7]], r"documents\[0\].*float64.*27\.7"),
        ([np.arange(1, 5), np.array([3.0, 4.0])], r"documents\[1\].*integral"),
        ([[1, 2], [1.5, np.nan]], r"documents\[1\].*1\.5"),
        ([[True, False]], r"documents\[0\].*bool"),
        ({"a": [1, 2]}, "ordered sequence"),
    ],
)
def test_non_integer_token_ids_are_rejected(documents, match):
    """Float ids are never truncated: any float dtype is a TypeError, even
    integral values (3.0), as the docstring says."""
    with pytest.raises(TypeError, match=match):
        StreamingDataset(documents, batch_size=1, segment_length=4)
    with pytest.raises(TypeError, match="tokens"):
        StreamingDataset.from_array(np.array([1.0, 27.7]), 1, 4)


def test_every_row_resets_at_step_0_even_without_a_document():
    """Defect 9: one document with batch_size=4 did not reset rows 1-3."""
    dataset = StreamingDataset([np.arange(1, 10)], batch_size=4, segment_length=4)
    tokens, targets, weights, resets = _collect(dataset)
    np.testing.assert_array_equal(resets[:, 0], [True] * 4)
    assert not resets[:, 1:].any()
    # The empty rows are padding of weight 0.
    assert (tokens[1:] == PAD).all() and (weights[1:] == 0).all()
    two = StreamingDataset([np.arange(1, 30), np.arange(1, 3)], batch_size=3, segment_length=8)
    np.testing.assert_array_equal(two.get_batch(0)[0]["reset"], [True] * 3)


def _steps_dataset(num_steps=6, batch_size=2, segment_length=4, **kwargs):
    tokens = np.arange(1, num_steps * segment_length * batch_size + 1)
    dataset = StreamingDataset.from_array(tokens, batch_size, segment_length, **kwargs)
    assert len(dataset) == num_steps
    return dataset


def test_direct_reads_out_of_order_raise():
    """Defect 10: the dataset itself notices reads out of stream order."""
    dataset = _steps_dataset()
    with pytest.raises(ValueError, match=r"step 3 .*shuffle=False"):
        dataset[3]
    dataset[0], dataset[1]
    with pytest.raises(ValueError, match=r"step 3 .*passes.*at steps 1"):
        dataset[3]
    with pytest.raises(ValueError, match=r"step 1 .*shuffle=False"):
        dataset[1]  # Twice the same step in one pass.
    with pytest.raises(ValueError, match="shuffle=False"):
        dataset[-1]
    dataset[2], dataset[3]  # The pass goes on after the refused reads.
    # Out of range and wrong types keep their own errors.
    with pytest.raises(IndexError):
        dataset[6]
    with pytest.raises(TypeError):
        dataset[1.0]
    # Looking at any step: get_batch, or check_order=False.
    np.testing.assert_array_equal(
        dataset.get_batch(5)[0]["token_ids"],
        _steps_dataset(check_order=False)[5][0]["token_ids"],
    )
    with pytest.raises(TypeError, match="check_order"):
        _steps_dataset(check_order="no")


def test_in_order_reading_patterns_are_accepted():
    dataset = _steps_dataset()
    # Keras' TF adapter peeks at steps 0 and 1 for the tensor spec, then
    # reads the epoch from step 0; every epoch starts again at step 0.
    for step in [0, 1] + list(range(6)) * 3:
        dataset[step]
    # A pass interleaved with others: training reads 0-2, evaluation of the
    # same dataset reads everything, a predict reads 0-1, training goes on.
    for step in [0, 1, 2, *range(6), 0, 1, 3, 4, 2, 5]:
        dataset[step]
    # steps_per_epoch shorter than the dataset: passes continue across
    # epochs, with a whole validation pass in between.
    fresh = _steps_dataset()
    for step in [0, 1, *range(6), 2, 3, *range(6), 4, 5]:
        fresh[step]
    # Iteration is in order too.
    assert sum(1 for _ in fresh) == 6


def test_workers_tolerate_reordering_within_the_window():
    """Worker threads may call __getitem__ slightly out of order; the
    window is workers + max_queue_size."""
    dataset = _steps_dataset(num_steps=40, workers=2, max_queue_size=2)
    assert dataset._order_tolerance() == 4
    for step in [1, 0, 3, 2, 4, 6, 5, 8, 7, 9] + list(range(10, 40)):
        dataset[step]
    with pytest.raises(ValueError, match=r"within 4 steps"):
        dataset[20]


def _tiny_stream_model(batch_size=2, segment_length=4, vocabulary=200):
    import keras

    token_ids = keras.Input(
        (segment_length,),
        batch_size=batch_size,
        dtype="int32",
        name="token_ids",
    )
    reset = keras.Input((), batch_size=batch_size, dtype="bool", name="reset")
    hidden = keras.layers.Embedding(vocabulary, 4)(token_ids)
    scale = keras.ops.cast(reset, "float32")[:, None, None]
    logits = keras.layers.Dense(vocabulary)(hidden * (1.0 + 0.0 * scale))
    model = keras.Model({"token_ids": token_ids, "reset": reset}, logits)
    model.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _order_errors():
    """On TensorFlow the PyDataset is read inside tf.data, which re-raises
    the ValueError as an OpError with the same message."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return (ValueError, tf.errors.OpError)
    return ValueError


def test_plain_keras_fit_with_shuffle_raises():
    """Defect 10: plain keras.Model.fit shuffled a StreamingDataset silently."""
    model = _tiny_stream_model()
    dataset = _steps_dataset(num_steps=12)
    with pytest.raises(_order_errors(), match="shuffle=False"):
        model.fit(dataset, epochs=2, shuffle=True, verbose=0)
    # Keras' default is shuffle=True for a PyDataset.
    with pytest.raises(_order_errors(), match="shuffle=False"):
        model.fit(_steps_dataset(num_steps=12), epochs=1, verbose=0)


def test_plain_keras_fit_without_shuffle_trains():
    model = _tiny_stream_model()
    dataset = _steps_dataset(num_steps=6)
    history = model.fit(dataset, epochs=2, shuffle=False, validation_data=dataset, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert np.isfinite(history.history["val_loss"]).all()
    # Validation on the same dataset in the middle of its passes.
    history = model.fit(
        dataset,
        epochs=3,
        steps_per_epoch=2,
        shuffle=False,
        validation_data=dataset,
        verbose=0,
    )
    assert len(history.history["val_loss"]) == 3
    model.evaluate(dataset, verbose=0)
    assert model.predict(dataset, verbose=0).shape == (12, 4, 200)


def test_plain_keras_fit_with_worker_threads():
    model = _tiny_stream_model()
    threaded = _steps_dataset(num_steps=6, workers=2)
    history = model.fit(threaded, epochs=2, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # A shuffled read of a dataset well longer than the window still fails.
    long = _steps_dataset(num_steps=60, workers=2, max_queue_size=2)
    with pytest.raises(_order_errors(), match="shuffle=False"):
        model.fit(long, epochs=1, shuffle=True, verbose=0)


def test_pickles_for_worker_processes():
    """Worker processes started with "spawn" receive a pickled copy: the
    order check's lock is rebuilt, with its own passes."""
    import pickle

    dataset = _steps_dataset()
    dataset[0], dataset[1]
    copy = pickle.loads(pickle.dumps(dataset))
    copy[0], copy[1], copy[2]
    with pytest.raises(ValueError, match="shuffle=False"):
        copy[4]
    np.testing.assert_array_equal(
        copy.get_batch(5)[0]["token_ids"], dataset.get_batch(5)[0]["token_ids"]
    )


def test_a_single_string_is_refused_by_the_preprocessor():
    """Issue 23 item 15: a str was read as a list of one-byte documents."""
    from keras_infformer.models import InfiniteFormerCausalLMPreprocessor

    preprocessor = InfiniteFormerCausalLMPreprocessor()
    with pytest.raises(TypeError, match=r"list of strings.*'hello world'"):
        preprocessor.streaming_dataset("hello world", batch_size=1, segment_length=4)
    with pytest.raises(TypeError, match="list of strings"):
        preprocessor.tokenize_documents("hello world")


def test_empty_texts_keep_the_callers_document_indices():
    """Issue 23 item 16: empty texts were dropped and `positions()` counted
    documents in the filtered list."""
    from keras_infformer.models import InfiniteFormerCausalLMPreprocessor

    texts = ["", "first text", "", "", "the second", "x", ""]
    preprocessor = InfiniteFormerCausalLMPreprocessor()  # Byte ids.
    dataset = preprocessor.streaming_dataset(texts, batch_size=2, segment_length=4)
    assert sorted(i for row in dataset.stream_documents for i in row) == [1, 4, 5]
    seen = set()
    for index in range(len(dataset)):
        inputs, _, _ = dataset.get_batch(index)
        document, offset = dataset.positions(index)
        for b, i in zip(*np.nonzero(document >= 0)):
            text = texts[document[b, i]].encode()
            assert inputs["token_ids"][b, i] == text[offset[b, i]]
            seen.add((int(document[b, i]), int(offset[b, i])))
    assert seen == {(d, o) for d in (1, 4, 5) for o in range(len(texts[d]))}


def test_a_stream_too_large_to_hold_is_refused_before_allocating():
    # Found by the fuzz test: segment_length 2**40 asked numpy for 4 TiB.
    tokens = np.arange(1, 6, dtype=np.int32)
    with pytest.raises(ValueError, match=r"segment_length=1099511627776"):
        StreamingDataset.from_array(tokens, 1, 2**40, num_shards=1)
    with pytest.raises(ValueError, match=r"batch_size=1048576.*segment_length=4096"):
        StreamingDataset([tokens], 2**20, 4096, num_shards=1)
    # A small stream still builds.
    assert len(StreamingDataset.from_array(tokens, 1, 8, num_shards=1)) == 1
