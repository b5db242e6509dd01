"""Tests of keras_infformer.data.sorting (NumPy only, any backend)."""

import collections

import numpy as np
import pytest

from keras_infformer.data import SortingDataset, sorting
from keras_infformer.data.sorting import NUM_SYMBOLS, PAD_ID, SEPARATOR_ID


def _reference_order(sequence):
    """Independent frequency order: Counter + first occurrence, then index."""
    sequence = [int(t) for t in sequence]
    counts = collections.Counter(sequence)
    first = {}
    for position, symbol in enumerate(sequence):
        first.setdefault(symbol, position)
    present = sorted(counts, key=lambda k: (-counts[k], first[k]))
    absent = [k for k in range(NUM_SYMBOLS) if k not in counts]
    return present + absent


def test_constants():
    assert sorting.NUM_SYMBOLS == 20
    assert sorting.SEPARATOR_ID == 20
    assert sorting.PAD_ID == 21
    assert sorting.VOCABULARY_SIZE == 22


def test_frequency_order_hand_made():
    # 3 and 1 both appear twice: 3 occurs first. 5 once. The rest are absent
    # and come last by index.
    order = sorting.frequency_order(np.array([3, 1, 1, 3, 5]))
    expected = [3, 1, 5] + [k for k in range(20) if k not in (1, 3, 5)]
    np.testing.assert_array_equal(order, expected)
    assert order.dtype == np.int32

    # Frequency beats first occurrence; ties resolved by first occurrence.
    order = sorting.frequency_order([19, 0, 7, 7, 0, 7, 19, 2])
    assert list(order[:4]) == [7, 19, 0, 2]
    assert list(order[4:]) == [k for k in range(20) if k not in (0, 2, 7, 19)]

    # All symbols once: the order of appearance.
    permutation = np.random.default_rng(0).permutation(20)
    np.testing.assert_array_equal(sorting.frequency_order(permutation), permutation)

    # Batched input gives the per-row answer.
    batch = np.array([[3, 1, 1, 3, 5], [5, 5, 5, 1, 1]])
    orders = sorting.frequency_order(batch)
    assert orders.shape == (2, 20)
    for row, order in zip(batch, orders):
        assert list(order) == _reference_order(row)

    with pytest.raises(ValueError, match="20"):
        sorting.frequency_order([1, 20])
    with pytest.raises(TypeError, match="dtype"):
        sorting.frequency_order(np.array([1.0, 2.0]))


def test_generate_sequences_shapes_and_seeding():
    tokens, targets = sorting.generate_sequences(6, 500, seed=3)
    assert tokens.shape == (6, 500) and tokens.dtype == np.int32
    assert targets.shape == (6, 20) and targets.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < NUM_SYMBOLS
    for order in targets:
        assert sorted(order) == list(range(20))
    again, again_targets = sorting.generate_sequences(6, 500, seed=3)
    np.testing.assert_array_equal(tokens, again)
    np.testing.assert_array_equal(targets, again_targets)
    other, _ = sorting.generate_sequences(6, 500, seed=4)
    assert not np.array_equal(tokens, other)


def test_targets_are_the_frequency_order():
    tokens, targets = sorting.generate_sequences(20, 300, seed=11)
    for sequence, order in zip(tokens, targets):
        assert list(order) == _reference_order(sequence)
    # Short sequences exercise ties and absent symbols.
    tokens, targets = sorting.generate_sequences(50, 12, seed=12)
    for sequence, order in zip(tokens, targets):
        assert list(order) == _reference_order(sequence)


def test_distributions():
    _, _, p_start, p_end = sorting.generate_sequences(50, 10, seed=0, return_distributions=True)
    assert p_start.shape == p_end.shape == (50, 20)
    np.testing.assert_allclose(p_start.sum(-1), 1.0)
    np.testing.assert_allclose(p_end.sum(-1), 1.0)
    # Integer weights 1..9, normalised: every ratio to the minimum is k/m.
    weights = p_start / p_start.min(-1, keepdims=True)
    assert (p_start.max(-1) / p_start.min(-1) <= 9 + 1e-9).all()
    assert (weights >= 1 - 1e-9).all()


def test_distribution_drifts_from_start_to_end():
    length = 200_000
    tokens, _, p_start, p_end = sorting.generate_sequences(
        3, length, seed=5, return_distributions=True
    )
    tenth = length // 10
    for row in range(3):
        head = np.bincount(tokens[row, :tenth], minlength=20) / tenth
        tail = np.bincount(tokens[row, -tenth:], minlength=20) / tenth
        # Expected mixtures over the first and last tenth: r averages 0.05
        # and 0.95 there.
        head_expected = 0.95 * p_start[row] + 0.05 * p_end[row]
        tail_expected = 0.05 * p_start[row] + 0.95 * p_end[row]
        np.testing.assert_allclose(head, head_expected, atol=0.01)
        np.testing.assert_allclose(tail, tail_expected, atol=0.01)
        # Total variation distances.
        tv = lambda p, q: 0.5 * np.abs(p - q).sum()  # noqa: E731
        assert tv(head, p_start[row]) < 0.3 * tv(head, p_end[row])
        assert tv(tail, p_end[row]) < 0.3 * tv(tail, p_start[row])


def test_sorting_examples_layout():
    T, S = 100, 32
    examples = sorting.sorting_examples(5, T, S, seed=1)
    tokens, order = sorting.generate_sequences(5, T, seed=1)
    num_segments = -(-(T + 21) // S)
    for key in ("inputs", "targets", "sample_weight"):
        assert examples[key].shape == (5, num_segments, S)
    assert examples["inputs"].dtype == np.int32
    assert examples["targets"].dtype == np.int32
    assert examples["sample_weight"].dtype == np.float32
    np.testing.assert_array_equal(examples["order"], order)

    inputs = examples["inputs"].reshape(5, -1)
    targets = examples["targets"].reshape(5, -1)
    weights = examples["sample_weight"].reshape(5, -1)
    pad = num_segments * S - (T + 21)
    for i in range(5):
        expected = np.concatenate([np.full(pad, PAD_ID), tokens[i], [SEPARATOR_ID], order[i]])
        np.testing.assert_array_equal(inputs[i], expected)
        np.testing.assert_array_equal(targets[i, :-1], expected[1:])
        assert targets[i, -1] == PAD_ID
    # Exactly the 20 answer positions, all in the final segment, and their
    # targets are the sorted symbols in order.
    assert (weights.sum(-1) == 20).all()
    final = examples["sample_weight"][:, -1]
    assert (examples["sample_weight"][:, :-1] == 0).all()
    positions = sorting.answer_positions(S)
    assert (final[:, positions] == 1).all()
    assert final.sum() == 5 * 20
    np.testing.assert_array_equal(examples["targets"][:, -1, positions], order)
    assert (examples["inputs"][:, -1, positions.start] == SEPARATOR_ID).all()

    with pytest.raises(ValueError, match="segment_length=20"):
        sorting.sorting_examples(2, 50, 20)


def test_sorting_dataset():
    T, S, B = 150, 64, 3
    dataset = SortingDataset(
        num_sequences=7,
        sequence_length=T,
        batch_size=B,
        segment_length=S,
        seed=2,
    )
    examples = sorting.sorting_examples(7, T, S, seed=2)
    num_segments = -(-(T + 21) // S)
    assert dataset.num_segments == num_segments
    assert dataset.num_groups == 2  # the 7th sequence is dropped
    assert len(dataset) == 2 * num_segments == dataset.num_steps
    np.testing.assert_array_equal(dataset.order, examples["order"][:6])
    for step in range(len(dataset)):
        x, y, w = dataset[step]
        group, segment = divmod(step, num_segments)
        rows = slice(group * B, (group + 1) * B)
        assert x["token_ids"].shape == (B, S)
        assert x["token_ids"].dtype == np.int32
        assert x["reset"].shape == (B,) and x["reset"].dtype == bool
        assert y.dtype == np.int32 and w.dtype == np.float32
        np.testing.assert_array_equal(x["token_ids"], examples["inputs"][rows, segment])
        np.testing.assert_array_equal(y, examples["targets"][rows, segment])
        np.testing.assert_array_equal(w, examples["sample_weight"][rows, segment])
        assert (x["reset"] == (segment == 0)).all()
        if segment == num_segments - 1:
            np.testing.assert_array_equal(y[:, sorting.answer_positions(S)], dataset.order[rows])
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    with pytest.raises(ValueError, match="num_sequences=2"):
        SortingDataset(2, 100, 4, 32)
    with pytest.raises(ValueError, match="batch_size=0"):
        SortingDataset(2, 100, 0, 32)


def test_sorting_accuracy():
    true = np.tile(np.arange(20), (2, 1))
    assert sorting.sorting_accuracy(true, true) == 1.0
    predicted = true.copy()
    predicted[0, :5] = 19  # 5 wrong of 40 (predicted[0, 19] is already 19)
    assert sorting.sorting_accuracy(predicted, true) == pytest.approx(35 / 40)
    with pytest.raises(ValueError, match="shape"):
        sorting.sorting_accuracy(true[:, :5], true)


@pytest.mark.parametrize(
    "args,error",
    [
        ((0, 10), ValueError),
        ((2, 0), ValueError),
        ((2.5, 10), TypeError),
    ],
)
def test_generate_sequences_invalid(args, error):
    with pytest.raises(error):
        sorting.generate_sequences(*args)


def test_generation_at_the_issue_size_1000_by_16k():
    # Its speed is measured in benchmarks/sorting_generation.py.
    tokens, targets = sorting.generate_sequences(1000, 16_384, seed=0)
    assert tokens.shape == (1000, 16_384) and tokens.dtype == np.int32
    assert targets.shape == (1000, 20)
    assert tokens.min() >= 0 and tokens.max() < sorting.NUM_SYMBOLS
    # The last chunk's targets list its symbols by non-increasing count.
    counts = np.bincount(tokens[-1], minlength=20)
    assert sorted(targets[-1].tolist()) == list(range(20))
    assert np.all(np.diff(counts[targets[-1]]) <= 0)
