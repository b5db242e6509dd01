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
def test_rows_targets_and_resets(
    seed, num_documents, batch_size, segment_length
):
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
        lengths.append(
            sum(-(-len(documents[i]) // segment_length) for i in doc_ids)
        )
    # The longest stream sets the length; nothing is dropped.
    assert len(dataset) == max(lengths)
    # Step 0 resets every row.
    assert resets[:, 0].all()


def test_targets_never_cross_documents():
    # Each document uses its own token range, so a crossing target would show.
    lengths = [5, 16, 17, 3, 40, 1, 33]
    documents = [
        np.arange(100 * k + 1, 100 * k + 1 + n) for k, n in enumerate(lengths)
    ]
    dataset = StreamingDataset(documents, batch_size=3, segment_length=8)
    for s in range(len(dataset)):
        x, y, w = dataset[s]
        weighted = w > 0
        # Within a document, target = next token = input + 1.
        np.testing.assert_array_equal(
            y[weighted], x["token_ids"][weighted] + 1
        )
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
        dataset[-1][0]["token_ids"], dataset[len(dataset) - 1][0]["token_ids"]
    )
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    assert sum(1 for _ in dataset) == len(dataset)


def test_greedy_packing_and_pad_id():
    documents = [np.arange(1, 40), np.arange(100, 110), np.arange(200, 270)]
    dataset = StreamingDataset(
        documents, batch_size=2, segment_length=16, pad_id=7
    )
    # 3, 1 and 5 segments: the third document goes to the shorter row 1.
    assert dataset.stream_documents == [[0], [1, 2]]
    assert len(dataset) == 6
    x, y, w = dataset[5]
    assert (x["token_ids"][0] == 7).all() and (w[0] == 0).all()
    assert not x["reset"][0]
    x, y, w = dataset[1]
    np.testing.assert_array_equal(x["reset"], [False, True])


def test_from_array():
    tokens = np.arange(1, 104)  # 103 tokens
    dataset = StreamingDataset.from_array(
        tokens, batch_size=4, segment_length=8
    )
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
    dataset = StreamingDataset(
        [np.arange(1, 50)], 1, 8, workers=2, use_multiprocessing=False
    )
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
        (dict(documents=[np.array([1, 2]), np.array([3, -1])]), ValueError,
         r"documents\[1\].*-1"),
        (dict(documents=[np.array([1, 2]), np.array([], int)]), ValueError,
         r"documents\[1\]"),
        (dict(documents=[np.ones((2, 2), int)]), ValueError, "shape"),
        (dict(documents=np.arange(10)), TypeError, "from_array"),
        (dict(pad_id=-1), ValueError, "pad_id=-1"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    arguments = dict(
        documents=[np.arange(1, 10)], batch_size=2, segment_length=4
    )
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

    token_ids = keras.Input(
        (8,), batch_size=2, dtype="int32", name="token_ids"
    )
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
