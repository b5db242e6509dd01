"""The ∞-former's synthetic sorting task (arXiv 2109.00301, §5.1).

A sequence of `sequence_length` tokens over 20 symbols is drawn from a
distribution that drifts linearly from `p_start` to `p_end`; the model reads
it, then a separator, and must output the 20 symbols in decreasing order of
their frequency in the sequence. Everything here is vectorised NumPy.
"""

import keras
import numpy as np

from keras_infformer.data.streaming import _check_positive_int, check_step_index

NUM_SYMBOLS = 20
SEPARATOR_ID = 20
PAD_ID = 21
VOCABULARY_SIZE = 22
# Integer weights of the per-example distributions: uniform in 1..9.
_MIN_WEIGHT = 1
_MAX_WEIGHT = 9
_MAX_TOTAL_WEIGHT = NUM_SYMBOLS * _MAX_WEIGHT
# Tokens generated per chunk (bounds the memory of the sampler).
_CHUNK_TOKENS = 1 << 22


def _check_seed(seed):
    if seed is not None and (
        isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer))
    ):
        raise TypeError(
            "`seed` must be an integer or None. Received: "
            f"seed={seed!r} (of type {type(seed).__name__})"
        )
    if seed is not None and seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed}")
    return seed


def frequency_order(tokens):
    """The 20 symbols sorted by decreasing frequency in `tokens`.

    Ties in frequency go to the symbol whose first occurrence is earlier;
    symbols absent from the sequence come last, in increasing index order.

    Args:
        tokens: integer array of shape `(T,)` or `(n, T)` with values in
            `[0, NUM_SYMBOLS)`.

    Returns:
        int32 array of shape `(NUM_SYMBOLS,)` or `(n, NUM_SYMBOLS)`.

    Example:

    ```python
    from keras_infformer.data.sorting import frequency_order
    frequency_order([3, 1, 1, 3, 5])
    # array([ 3,  1,  5,  0,  2,  4,  6, ...])  (3 and 1 tie; 3 came first)
    ```
    """
    tokens = np.asarray(tokens)
    if tokens.ndim not in (1, 2):
        raise ValueError(
            f"`tokens` must have shape (T,) or (n, T). Received: tokens with shape {tokens.shape}"
        )
    if tokens.dtype.kind not in "iu":
        raise TypeError(
            f"`tokens` must hold integer symbols. Received: tokens with dtype {tokens.dtype}"
        )
    single = tokens.ndim == 1
    tokens = tokens.reshape(-1, tokens.shape[-1])
    n, length = tokens.shape
    if tokens.size and (tokens.min() < 0 or tokens.max() >= NUM_SYMBOLS):
        raise ValueError(
            f"`tokens` must hold symbols in [0, {NUM_SYMBOLS}). Received: "
            f"values in [{tokens.min()}, {tokens.max()}]"
        )
    counts = np.zeros((n, NUM_SYMBOLS), dtype=np.int64)
    first = np.full((n, NUM_SYMBOLS), length, dtype=np.int64)
    for symbol in range(NUM_SYMBOLS):
        mask = tokens == symbol
        counts[:, symbol] = np.count_nonzero(mask, axis=1)
        first[:, symbol] = np.where(counts[:, symbol] > 0, mask.argmax(axis=1), length)
    index = np.broadcast_to(np.arange(NUM_SYMBOLS), (n, NUM_SYMBOLS))
    # lexsort: the last key is the primary one.
    order = np.lexsort((index, first, -counts), axis=-1).astype(np.int32)
    return order[0] if single else order


def _sample_distributions(rng, num_sequences):
    weights = rng.integers(_MIN_WEIGHT, _MAX_WEIGHT + 1, size=(num_sequences, 2, NUM_SYMBOLS))
    return weights


def generate_sequences(num_sequences, sequence_length, seed=None, return_distributions=False):
    """Draws sorting-task sequences and their frequency-order targets.

    Per sequence, two distributions `p_start` and `p_end` over the 20
    symbols are drawn with integer weights uniform in 1..9, normalised.
    Token `j` (0-based) of a length-`T` sequence is drawn from
    `(1 - r) * p_start + r * p_end`, `r = (j + 1) / T`. The target is
    `frequency_order(tokens)`.

    Sampling is exact and vectorised: the mixture is drawn as "pick `p_end`
    with probability `r`, else `p_start`", and a draw from a distribution
    with integer weights `w` (total `W`) is a uniform integer in `[0, W)`
    looked up in the table that repeats symbol `k` `w[k]` times. Work is
    done in chunks of sequences, so memory stays bounded.

    Args:
        num_sequences: int. The number of sequences `n`.
        sequence_length: int. The number of tokens `T` per sequence.
        seed: int or None. Seed of `np.random.default_rng`.
        return_distributions: bool. Also return `p_start` and `p_end`.

    Returns:
        `(tokens, targets)`: int32 arrays of shapes `(n, T)` and
        `(n, NUM_SYMBOLS)`; with `return_distributions=True`,
        `(tokens, targets, p_start, p_end)` where the distributions are
        float64 arrays of shape `(n, NUM_SYMBOLS)`.
    """
    n = _check_positive_int("num_sequences", num_sequences)
    length = _check_positive_int("sequence_length", sequence_length)
    rng = np.random.default_rng(_check_seed(seed))

    weights = _sample_distributions(rng, n)  # (n, 2, 20)
    totals = weights.sum(axis=-1)  # (n, 2)
    # table[i, c, m] = the symbol at slot m of distribution c of sequence i.
    cumulative = np.cumsum(weights, axis=-1)
    slots = np.arange(_MAX_TOTAL_WEIGHT)
    table = (cumulative[:, :, None, :] <= slots[:, None]).sum(axis=-1)
    table = np.minimum(table, NUM_SYMBOLS - 1).astype(np.int8)
    table = table.reshape(n, 2 * _MAX_TOTAL_WEIGHT)

    r = np.arange(1, length + 1, dtype=np.float64) / length
    tokens = np.empty((n, length), dtype=np.int32)
    rows_per_chunk = max(1, _CHUNK_TOKENS // length)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        rows = stop - start
        component = (rng.random((rows, length)) < r).astype(np.int64)
        total = np.take_along_axis(totals[start:stop], component, axis=1)
        slot = rng.integers(0, total)
        flat = component * _MAX_TOTAL_WEIGHT + slot
        tokens[start:stop] = np.take_along_axis(table[start:stop], flat, axis=1)
    targets = np.empty((n, NUM_SYMBOLS), dtype=np.int32)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        targets[start:stop] = frequency_order(tokens[start:stop])
    if return_distributions:
        p = weights / totals[..., None]
        return tokens, targets, p[:, 0], p[:, 1]
    return tokens, targets


def sorting_examples(num_sequences, sequence_length, segment_length, seed=None):
    """Builds the model-ready segmented streams of the sorting task.

    Per sequence, the input stream is `[tokens (T), SEPARATOR_ID,
    target (20)]` and the target stream is the input shifted by one
    (teacher forcing). Only the 20 positions whose target is a sorted
    symbol (the separator and `target[0..18]` in the input) carry sample
    weight 1. The stream is left-padded with `PAD_ID` (sample weight 0) to
    a multiple of `segment_length`, so the separator and the answer always
    sit at the end of the final segment: input positions
    `segment_length - 21 .. segment_length - 1` of the last segment hold
    the separator and the 20 sorted symbols, and the weighted positions are
    `answer_positions(segment_length)`.

    Args:
        num_sequences: int. The number of sequences `n`.
        sequence_length: int. The number of tokens `T` per sequence.
        segment_length: int. Tokens per segment `S`; at least
            `NUM_SYMBOLS + 1` (21), so that the whole answer lies in the
            final segment.
        seed: int or None. Seed of `np.random.default_rng`.

    Returns:
        A dict with `"inputs"` and `"targets"` (int32), `"sample_weight"`
        (float32), each of shape `(n, num_segments, S)` with
        `num_segments = ceil((T + 21) / S)`, and `"order"`, the int32
        `(n, 20)` frequency order of each sequence.
    """
    n = _check_positive_int("num_sequences", num_sequences)
    length = _check_positive_int("sequence_length", sequence_length)
    S = _check_positive_int("segment_length", segment_length)
    if S < NUM_SYMBOLS + 1:
        raise ValueError(
            f"`segment_length` must be at least {NUM_SYMBOLS + 1} so that "
            "the separator and the sorted answer fit in the final segment. "
            f"Received: segment_length={S}"
        )
    tokens, order = generate_sequences(n, length, seed=seed)
    stream_length = length + 1 + NUM_SYMBOLS
    num_segments = -(-stream_length // S)
    padded = num_segments * S
    offset = padded - stream_length  # left padding

    # One extra PAD column at the end so the shift is a plain slice.
    stream = np.full((n, padded + 1), PAD_ID, dtype=np.int32)
    stream[:, offset : offset + length] = tokens
    stream[:, offset + length] = SEPARATOR_ID
    stream[:, offset + length + 1 : padded] = order
    inputs = stream[:, :padded]
    targets = stream[:, 1:]
    sample_weight = np.zeros((n, padded), dtype=np.float32)
    sample_weight[:, padded - NUM_SYMBOLS - 1 : padded - 1] = 1.0
    shape = (n, num_segments, S)
    return {
        "inputs": np.ascontiguousarray(inputs).reshape(shape),
        "targets": np.ascontiguousarray(targets).reshape(shape),
        "sample_weight": sample_weight.reshape(shape),
        "order": order,
    }


def answer_positions(segment_length):
    """The slice of the final segment whose targets are the sorted symbols.

    `logits[:, answer_positions(S)]` on the final segment of a sequence
    gives the teacher-forced predictions of the 20 sorted symbols, in order.
    """
    S = _check_positive_int("segment_length", segment_length)
    if S < NUM_SYMBOLS + 1:
        raise ValueError(
            f"`segment_length` must be at least {NUM_SYMBOLS + 1}. Received: segment_length={S}"
        )
    return slice(S - NUM_SYMBOLS - 1, S - 1)


def sorting_accuracy(predicted_order, true_order):
    """Share of the 20 ranked positions predicted right, mean over sequences.

    Args:
        predicted_order: integer array `(n, 20)` (or `(20,)`).
        true_order: integer array of the same shape.

    Returns:
        Python float in [0, 1].
    """
    predicted_order = np.asarray(predicted_order)
    true_order = np.asarray(true_order)
    if predicted_order.shape != true_order.shape:
        raise ValueError(
            "`predicted_order` and `true_order` must have the same shape. "
            f"Received: predicted_order.shape={predicted_order.shape}, "
            f"true_order.shape={true_order.shape}"
        )
    if true_order.size == 0 or true_order.shape[-1] != NUM_SYMBOLS:
        raise ValueError(
            f"The orders must have a last axis of {NUM_SYMBOLS}. Received: shape {true_order.shape}"
        )
    return float(np.mean(predicted_order == true_order))


class SortingDataset(keras.utils.PyDataset):
    """The sorting task as an ordered stream of fixed-size segment batches.

    All sequences are generated once in `__init__` (see `sorting_examples`);
    `__getitem__` only slices. Batch row `b` of group `g` holds sequence
    `g * batch_size + b`; the steps walk through the groups one after the
    other and, within a group, through the segments of its sequences in
    order, so row `b` is always the continuation of row `b` of the previous
    step. `reset` is True on the first segment of every sequence. Only the
    final segment of a sequence carries non-zero sample weights (the 20
    answer positions), like the paper, which back-propagates only the final
    chunk of each sequence.

    When `num_sequences` is not a multiple of `batch_size`, the last
    `num_sequences % batch_size` sequences are dropped (no partial batches:
    the stateful model has a fixed batch size).

    The steps carry the memory, so they must be read in order: use
    `model.fit(dataset, shuffle=False)`.

    Args:
        num_sequences: int. The number of sequences to generate; at least
            `batch_size`.
        sequence_length: int. Tokens per sequence (the paper: 4k, 8k, 16k).
        batch_size: int. The number of rows of a batch.
        segment_length: int. Tokens per segment, at least 21.
        seed: int or None. Seed of `np.random.default_rng`.
        **kwargs: passed to `keras.utils.PyDataset` (`workers`,
            `use_multiprocessing`, `max_queue_size`).

    Attributes:
        num_steps: int. `num_groups * num_segments` (`len(dataset)`).
        num_groups: int. The number of groups of `batch_size` sequences.
        num_segments: int. Segments per sequence.
        order: int32 array `(num_groups * batch_size, 20)`. The true sorted
            symbols of the kept sequences.

    Examples:

    ```python
    from keras_infformer.data.sorting import SortingDataset
    from keras_infformer.data.sorting import answer_positions

    dataset = SortingDataset(
        num_sequences=16, sequence_length=4096, batch_size=8,
        segment_length=1024, seed=0,
    )
    len(dataset)  # 2 groups * 5 segments = 10
    inputs, targets, sample_weight = dataset[4]  # final segment of group 0
    inputs["token_ids"].shape  # (8, 1024)
    targets[:, answer_positions(1024)]  # == dataset.order[:8]
    # model.fit(dataset, shuffle=False)
    ```
    """

    def __init__(
        self,
        num_sequences,
        sequence_length,
        batch_size,
        segment_length,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_sequences = _check_positive_int("num_sequences", num_sequences)
        self.sequence_length = _check_positive_int("sequence_length", sequence_length)
        self.batch_size = _check_positive_int("batch_size", batch_size)
        self.segment_length = _check_positive_int("segment_length", segment_length)
        self.seed = _check_seed(seed)
        if self.num_sequences < self.batch_size:
            raise ValueError(
                "`num_sequences` must be at least `batch_size` (no partial "
                f"batches). Received: num_sequences={self.num_sequences}, "
                f"batch_size={self.batch_size}"
            )
        examples = sorting_examples(
            self.num_sequences,
            self.sequence_length,
            self.segment_length,
            seed=self.seed,
        )
        B = self.batch_size
        self.num_groups = self.num_sequences // B
        kept = self.num_groups * B
        self.num_segments = examples["inputs"].shape[1]
        self.num_steps = self.num_groups * self.num_segments
        S = self.segment_length

        def to_steps(array):
            # (kept, segments, S) -> (groups * segments, B, S), step-major.
            array = array[:kept].reshape(self.num_groups, B, self.num_segments, S)
            array = array.transpose(0, 2, 1, 3)
            return np.ascontiguousarray(array).reshape(self.num_steps, B, S)

        self._token_ids = to_steps(examples["inputs"])
        self._targets = to_steps(examples["targets"])
        self._sample_weight = to_steps(examples["sample_weight"])
        self.order = examples["order"][:kept]

    def __len__(self):
        return self.num_steps

    def __getitem__(self, index):
        index = check_step_index(index, self.num_steps)
        reset = np.full((self.batch_size,), index % self.num_segments == 0, dtype=bool)
        inputs = {"token_ids": self._token_ids[index].copy(), "reset": reset}
        return (
            inputs,
            self._targets[index].copy(),
            self._sample_weight[index].copy(),
        )

    def group_and_segment(self, index):
        """`(group, segment)` of step `index`."""
        return divmod(int(index), self.num_segments)
