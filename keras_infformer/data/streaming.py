"""Stream segmentation: documents -> fixed-batch, row-continuous segments."""

import collections.abc
import heapq
import os
import threading

import keras
import numpy as np

from keras_infformer import distribution, utils

_INT32_MAX = np.iinfo(np.int32).max

# The order check remembers this many passes (the most recently read).
_MAX_PASSES = 8

# The most tokens a dataset's streams may hold (int32 positions).
_MAX_STREAM_TOKENS = 2**31 - 1


def check_step_index(index, num_steps):
    """A step index of a dataset of `num_steps` steps, negative ones counted
    from the end (as a sequence's); a TypeError or IndexError otherwise."""
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"Step index must be an integer. Received: {index!r}")
    index = int(index)
    if index < 0:
        index += num_steps
    if not 0 <= index < num_steps:
        raise IndexError(
            f"Step index out of range for a dataset of {num_steps} steps. Received: index={index}"
        )
    return index


def _check_positive_int(name, value):
    return utils.check_positive_int(value, name)


def _check_token_id(name, value):
    value = utils.check_positive_int(value, name, minimum=0)
    if value > _INT32_MAX:
        raise ValueError(
            f"`{name}` must be a non-negative int32 token id. Received: {name}={value}"
        )
    return value


def _as_token_array(tokens, name):
    """Validates one token stream and returns it as a 1-D int32 array."""
    try:
        array = np.asarray(tokens)
    except (ValueError, TypeError) as error:
        # A ragged nested list ([1, 2, [3]]): NumPy cannot make an array.
        raise ValueError(
            f"`{name}` must be a flat 1-D sequence of integer token ids. "
            f"Received: {name} with nested or ragged entries "
            f"({_short_repr(tokens)}), which NumPy cannot make into a 1-D "
            f"array: {error}"
        ) from None
    if array.ndim != 1:
        raise ValueError(
            f"`{name}` must be a 1-D array of token ids. Received: {name} with shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(
            f"`{name}` must contain at least one token. Received: an empty "
            f"{name} (shape {array.shape})"
        )
    if array.dtype.kind not in "iu":
        example = ""
        if array.dtype.kind == "f":
            fractional = array[np.isfinite(array) & (array != np.round(array))]
            if fractional.size:
                example = f" (e.g. the id {float(fractional[0])!r}, not an integer)"
            else:
                example = (
                    " (float ids are rejected even when their values are "
                    "integral: convert them with `.astype(int)` if intended)"
                )
        raise TypeError(
            f"`{name}` must hold integer token ids. Received: {name} with "
            f"dtype {array.dtype}{example}"
        )
    low, high = array.min(), array.max()
    if low < 0:
        raise ValueError(
            f"`{name}` must hold non-negative token ids. Received: {name} with a token id of {low}"
        )
    if high > _INT32_MAX:
        raise ValueError(
            f"`{name}` must hold token ids that fit in int32. Received: "
            f"{name} with a token id of {high}"
        )
    return array.astype(np.int32, copy=False)


def _short_repr(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StreamingDataset(keras.utils.PyDataset):
    """Lays documents into `batch_size` parallel streams of fixed segments.

    A recurrent-memory model (the ∞-former, Transformer-XL, ...) keeps one
    memory per batch row, so batch row `b` of step `s + 1` must continue
    exactly where batch row `b` of step `s` stopped. This dataset packs a list
    of documents into `batch_size` parallel token streams and cuts every
    stream into consecutive segments of `segment_length` tokens: step `s`,
    row `b` is the `s`-th segment of stream `b`.

    Packing. Every document is padded at its end with `pad_id` up to a
    multiple of `segment_length`, so that each document starts at a segment
    boundary and a per-row `reset` flag at the start of a segment can
    announce it (a boundary inside a segment could not be expressed by one
    flag per row). Documents are then assigned greedily in their given order,
    each to the stream that is currently shortest (counted in segments; ties
    go to the lowest row index); the documents of a stream keep their
    relative order. The streams that come out shorter than the longest one
    are padded at their end with whole padding segments (`pad_id` tokens,
    sample weight 0, `reset` False), so `len(dataset)` is the longest
    stream's segment count, every batch is full and no token is dropped.

    Targets. Within a document, the target of token `t` is token `t + 1`.
    The last token of a document has no target (its target is `pad_id` with
    sample weight 0); a target never crosses a document boundary. Padding
    tokens have sample weight 0 too.

    Each step returns `(inputs, targets, sample_weight)` with
    `inputs = {"token_ids": int32 (batch_size, segment_length),
    "reset": bool (batch_size,)}`, `targets` int32
    `(batch_size, segment_length)` and `sample_weight` float32
    `(batch_size, segment_length)`. `reset[b]` is True when the segment of
    row `b` begins with the first token of a document, and at step 0 for
    every row, including a row that holds no document (more rows than
    documents): such a row is all padding of weight 0, and its memory is
    cleared at step 0 like every other.

    Reading in order. The order of the steps carries the memory, so the
    dataset must be read in order: call `model.fit(dataset, shuffle=False)`
    (Keras' `fit` shuffles the batch order of a `PyDataset` by default;
    `InfiniteFormerLM` defaults to `shuffle=False` and refuses `True`) and
    do not wrap it in anything that reorders or drops batches. With
    `workers > 1` Keras still delivers the batches in order. The dataset
    checks this itself, whatever model reads it (`check_order=True`):
    indexing it (`dataset[i]`, as Keras does) must follow a pass, a run of
    reads `0, 1, 2, ...`. Step 0 may always be read and starts a new pass
    (a new epoch, `evaluate` or `predict`, Keras peeking at the first
    batches); any other step must be the next step of a pass already
    started. Several passes may be under way at once (a model evaluating
    the same dataset during training, `steps_per_epoch` shorter than the
    dataset), up to 8; the most recently read are remembered. Any other
    read raises a ValueError that explains `shuffle=False`, so a shuffled
    `fit` stops at its first out-of-order batch. When Keras reads through
    worker threads or processes (`workers > 1`), whose reads may arrive
    slightly out of order, a read is accepted within `workers +
    max_queue_size` steps of a pass (and a pass may start at any step up to
    that); shuffling is then still detected, except on a dataset not much
    longer than that window. `dataset.get_batch(i)` reads any step without
    the check (to look at the data); `check_order=False` turns it off.

    Several devices. Under `keras.distribution` (JAX) or a `tf.distribute`
    strategy each global batch is split on the batch axis into `num_shards`
    contiguous blocks of `batch_size // num_shards` rows, one per device, at
    every step alike: row `b` always lands on shard
    `b // (batch_size // num_shards)`, next to its memory (see
    `keras_infformer.distribution`). So `batch_size` must be a multiple of
    the number of devices; a ValueError says so at construction.

    Several processes. When several processes train together (JAX
    multi-process after `keras.distribution.initialize()`, or TensorFlow's
    `MultiWorkerMirroredStrategy`), each process feeds only the rows its own
    devices hold: process `p` of `P` (one device each) reads rows
    `p * batch_size / P` to `(p + 1) * batch_size / P` of every step, and
    keeps their memory. Every process is given the same documents and lays
    them out exactly as one process would (the same streams, the same
    `len(dataset)`), then keeps its block: a `P`-process run computes what
    one process computes on the whole batch. `batch_size` stays the global
    batch size (the model's); a step has `local_batch_size` rows.

    Args:
        documents: list of 1-D integer arrays (or lists). The token streams,
            of any positive length. Token ids must be non-negative and fit
            in int32, and of an integer dtype: floats are a TypeError, even
            integral ones (3.0), as nothing is truncated silently; a nested
            or ragged document is a ValueError naming its index.
        batch_size: int. The number of parallel streams (batch rows). Must
            match the fixed batch size of the stateful model.
        segment_length: int. The number of tokens per segment (per step).
        pad_id: int. The token id used for padding. Defaults to `0`.
        num_shards: int. The number of devices the batch is split over.
            Defaults to that of the distribution active at construction
            (`keras_infformer.distribution.num_batch_shards()`; 1 without
            one).
        num_processes: int. How many processes feed the global batch.
            Defaults to that of the engine active at construction
            (`keras_infformer.distribution.num_processes()`; 1 without one).
        process_index: int. Which of them this is (0 to `num_processes - 1`).
            Defaults to `keras_infformer.distribution.process_index()`. Give
            both or neither; given, process `p` reads the `p`-th of
            `num_processes` equal blocks of rows.
        check_order: bool. Whether indexing raises a ValueError on a read
            out of stream order (see "Reading in order"). Defaults to
            `True`.
        **kwargs: passed to `keras.utils.PyDataset` (`workers`,
            `use_multiprocessing`, `max_queue_size`). Defaults to a single
            worker in the main process.

    Attributes:
        num_steps: int. The number of steps (`len(dataset)`).
        batch_size: int. The number of rows of a global batch (all
            processes).
        local_batch_size: int. The number of rows of a step here (this
            process's block; `batch_size` with one process).
        process_rows: tuple `(start, stop)`. The global rows this process
            reads.
        num_processes: int. The number of processes feeding the batch.
        process_index: int. This process's index.
        segment_length: int. The number of tokens of a segment.
        pad_id: int. The padding token id.
        num_shards: int. The number of devices the batch is split over.
        num_documents: int. The number of documents.
        stream_documents: list of `batch_size` lists. The indices (into
            `documents`) of the documents of each stream (every global row),
            in stream order (`positions(index)` locates every token of a
            step).
        check_order: bool. Whether reads out of stream order raise.

    Examples:

    ```python
    import numpy as np
    from keras_infformer.data import StreamingDataset

    documents = [np.arange(1, 40), np.arange(100, 110), np.arange(200, 270)]
    dataset = StreamingDataset(documents, batch_size=2, segment_length=16)
    inputs, targets, sample_weight = dataset[0]
    inputs["token_ids"].shape  # (2, 16)
    inputs["reset"]  # array([ True,  True])
    len(dataset)  # 6
    dataset.stream_documents  # [[0], [1, 2]]: row 1 holds 1 + 5 segments,
    # row 0 holds 3 segments and 3 padding segments
    dataset.get_batch(4)  # Any step, to look at it.
    # dataset[4] here would raise: reads follow passes 0, 1, 2, ...

    # Memory models must see the steps in order.
    # model.fit(dataset, epochs=1, shuffle=False)

    # One long stream, Transformer-XL style: row b gets the b-th contiguous
    # 1/batch_size of the tokens.
    stream = StreamingDataset.from_array(
        np.arange(1, 1001), batch_size=4, segment_length=64
    )
    ```
    """

    def __init__(
        self,
        documents,
        batch_size,
        segment_length,
        pad_id=0,
        num_shards=None,
        num_processes=None,
        process_index=None,
        check_order=True,
        **kwargs,
    ):
        stream_documents = kwargs.pop("_stream_documents", None)
        super().__init__(**kwargs)
        if not isinstance(check_order, (bool, np.bool_)):
            raise TypeError(f"`check_order` must be a bool. Received: check_order={check_order!r}")
        self.check_order = bool(check_order)
        self._order_lock = threading.Lock()
        self._order_pid = os.getpid()
        self._passes = []
        self.batch_size = _check_positive_int("batch_size", batch_size)
        if num_shards is not None:
            num_shards = _check_positive_int("num_shards", num_shards)
        self.num_shards = distribution.check_batch_shards(
            self.batch_size, num_shards, "The `batch_size` of a StreamingDataset"
        )
        self.process_rows = self._process_rows(num_processes, process_index)
        self.local_batch_size = self.process_rows[1] - self.process_rows[0]
        self.segment_length = _check_positive_int("segment_length", segment_length)
        self.pad_id = _check_token_id("pad_id", pad_id)

        if isinstance(documents, np.ndarray) and documents.ndim == 1:
            raise TypeError(
                "`documents` must be a list of 1-D integer arrays (one per "
                "document). Received: a 1-D array of shape "
                f"{documents.shape}. To split one long stream into "
                "`batch_size` rows, use `StreamingDataset.from_array()`."
            )
        if (
            isinstance(
                documents,
                (str, bytes, collections.abc.Mapping, collections.abc.Set),
            )
            or not hasattr(documents, "__len__")
            or (isinstance(documents, np.ndarray) and documents.ndim == 0)
        ):
            raise TypeError(
                "`documents` must be a list of 1-D integer arrays (an ordered "
                "sequence). Received: documents of type "
                f"{type(documents).__name__}"
            )
        if len(documents) == 0:
            raise ValueError(
                "`documents` must contain at least one document. Received: documents=[] (empty)"
            )
        docs = [_as_token_array(doc, f"documents[{i}]") for i, doc in enumerate(documents)]
        self.num_documents = len(docs)
        S = self.segment_length
        doc_segments = [-(-len(doc) // S) for doc in docs]

        if stream_documents is None:
            stream_documents = self._assign_greedily(doc_segments)
        self.stream_documents = [list(row) for row in stream_documents]

        stream_segments = [sum(doc_segments[i] for i in row) for row in self.stream_documents]
        self.num_steps = max(stream_segments)

        # Built as (batch_size, num_steps * segment_length) streams, stored
        # as (num_steps, batch_size, segment_length): a step is one
        # contiguous slice.
        shape = (self.batch_size, self.num_steps * S)
        if shape[0] * shape[1] > _MAX_STREAM_TOKENS:
            # Refused before allocating: a huge segment or batch is almost all
            # padding, and numpy would fail with a bare MemoryError.
            raise ValueError(
                f"`batch_size` x padded stream length must be at most "
                f"{_MAX_STREAM_TOKENS:,} tokens; these documents need {self.num_steps} "
                f"segment(s) per row. Received: batch_size={self.batch_size}, "
                f"segment_length={S}"
            )
        tokens = np.full(shape, self.pad_id, dtype=np.int32)
        targets = np.full(shape, self.pad_id, dtype=np.int32)
        weights = np.zeros(shape, dtype=np.float32)
        resets = np.zeros((self.num_steps, self.batch_size), dtype=bool)
        # Every row starts a stream at step 0, a row without documents too:
        # whatever memory a stateful model held is cleared.
        resets[0] = True
        # Where each document starts in its row, for `positions()`.
        self._row_starts = []
        for row, doc_ids in enumerate(self.stream_documents):
            position = 0
            starts = []
            for i in doc_ids:
                doc = docs[i]
                n = len(doc)
                starts.append((position, i, n))
                resets[position // S, row] = True
                tokens[row, position : position + n] = doc
                targets[row, position : position + n - 1] = doc[1:]
                weights[row, position : position + n - 1] = 1.0
                position += doc_segments[i] * S
            self._row_starts.append(np.array(starts, np.int64).reshape(-1, 3))

        # This process keeps its own rows only.
        start, stop = self.process_rows
        self._row_starts = self._row_starts[start:stop]

        def to_steps(array):
            array = array.reshape(self.batch_size, self.num_steps, S)
            return np.ascontiguousarray(array.transpose(1, 0, 2)[:, start:stop])

        self._token_ids = to_steps(tokens)
        self._targets = to_steps(targets)
        self._sample_weight = to_steps(weights)
        self._reset = np.ascontiguousarray(resets[:, start:stop])

    def _process_rows(self, num_processes, process_index):
        """The block of global rows this process reads (see the class)."""
        if num_processes is None and process_index is None:
            self.num_processes = distribution.num_processes()
            self.process_index = distribution.process_index()
            if self.num_processes == 1:
                return 0, self.batch_size
            return distribution.process_rows(self.batch_size)
        if num_processes is None or process_index is None:
            raise ValueError(
                "Pass both `num_processes` and `process_index`, or neither. "
                f"Received: num_processes={num_processes!r}, "
                f"process_index={process_index!r}"
            )
        self.num_processes = _check_positive_int("num_processes", num_processes)
        if (
            isinstance(process_index, (bool, np.bool_))
            or not isinstance(process_index, (int, np.integer))
            or not 0 <= process_index < self.num_processes
        ):
            raise ValueError(
                "`process_index` must be an integer in [0, num_processes). "
                f"Received: process_index={process_index!r} with "
                f"num_processes={self.num_processes}"
            )
        self.process_index = int(process_index)
        if self.batch_size % self.num_processes:
            raise ValueError(
                "The `batch_size` of a StreamingDataset must be a multiple of "
                "the number of processes: each feeds an equal block of rows. "
                f"Received: batch_size={self.batch_size}, "
                f"num_processes={self.num_processes}"
            )
        rows = self.batch_size // self.num_processes
        return self.process_index * rows, (self.process_index + 1) * rows

    def _assign_greedily(self, doc_segments):
        """Each document, in order, to the currently shortest stream."""
        heap = [(0, row) for row in range(self.batch_size)]
        rows = [[] for _ in range(self.batch_size)]
        for i, n in enumerate(doc_segments):
            length, row = heapq.heappop(heap)
            rows[row].append(i)
            heapq.heappush(heap, (length + n, row))
        return rows

    @classmethod
    def from_array(cls, tokens, batch_size, segment_length, pad_id=0, **kwargs):
        """Splits one long token stream into `batch_size` contiguous rows.

        Like Transformer-XL's `batchify`, row `b` gets the `b`-th contiguous
        part of the stream (the parts differ in length by at most one token;
        nothing is dropped: the shorter rows end with padding of weight 0).
        Each row is one document: it resets only at step 0, and the last
        token of each row has no target (sample weight 0).

        Args:
            tokens: 1-D integer array. The token stream.
            batch_size: int. The number of rows.
            segment_length: int. The number of tokens per segment.
            pad_id: int. The padding token id. Defaults to `0`.
            **kwargs: `num_shards` (see the class), and the arguments of
                `keras.utils.PyDataset`.

        Returns:
            A `StreamingDataset`.
        """
        batch_size = _check_positive_int("batch_size", batch_size)
        tokens = _as_token_array(tokens, "tokens")
        if len(tokens) < batch_size:
            raise ValueError(
                "`tokens` must have at least `batch_size` tokens. Received: "
                f"{len(tokens)} tokens for batch_size={batch_size}"
            )
        parts = np.array_split(tokens, batch_size)
        return cls(
            parts,
            batch_size=batch_size,
            segment_length=segment_length,
            pad_id=pad_id,
            _stream_documents=[[b] for b in range(batch_size)],
            **kwargs,
        )

    def __len__(self):
        return self.num_steps

    def _check_index(self, index):
        return check_step_index(index, self.num_steps)

    def _order_tolerance(self):
        """How far a read may stray from a pass: 0 when one reader reads in
        order (no workers, or a single worker process); else the number of
        reads Keras' `OrderedEnqueuer` can have in flight."""
        workers = self.workers or 0
        if workers <= 1:
            return 0
        return workers + max(int(self.max_queue_size or 0), 0)

    def _check_order(self, index):
        tolerance = self._order_tolerance()
        if os.getpid() != self._order_pid:
            # A forked worker process: its own reads, its own passes (and
            # never a lock held by a thread of the parent at the fork).
            self._order_lock = threading.Lock()
            self._order_pid = os.getpid()
            self._passes = []
        with self._order_lock:
            passes = self._passes
            best = None
            for k, frontier in enumerate(passes):
                low = frontier + 1 if tolerance == 0 else frontier - tolerance
                if low <= index <= frontier + 1 + tolerance:
                    if best is None or abs(index - frontier - 1) < abs(index - passes[best] - 1):
                        best = k
            if best is not None:
                frontier = max(passes.pop(best), index)
            elif index <= tolerance:
                frontier = index  # A new pass.
            else:
                raise ValueError(self._order_message(index, tolerance))
            if not (tolerance == 0 and frontier == self.num_steps - 1):
                passes.append(frontier)  # Most recent last.
            del passes[:-_MAX_PASSES]

    def _order_message(self, index, tolerance):
        if self._passes:
            where = "the passes under way are at steps " + ", ".join(
                str(f) for f in sorted(self._passes)
            )
        else:
            where = "no pass is under way"
        if tolerance:
            rule = f"within {tolerance} steps (workers + max_queue_size) of a pass"
        else:
            rule = f"step {index - 1} just before it, in the same pass"
        return (
            "StreamingDataset read out of stream order: step "
            f"{index} was requested, but {where}. Row b of step s + 1 "
            "continues row b of step s (the memory of a stateful model "
            "carries it), so the steps must be read in order: a pass starts "
            f"at step 0 and step {index} needs {rule}. Keras' `fit` shuffles "
            "the batches of a PyDataset unless told not to: call "
            "`model.fit(dataset, shuffle=False)`, and do not reorder or "
            "subsample the steps. To look at one step, use "
            "`dataset.get_batch(index)`; to read in any order, pass "
            "`check_order=False`."
        )

    def _renumber_documents(self, ids):
        """Document `i` becomes `ids[i]` in `stream_documents` and
        `positions()` (for a caller whose list held documents that were
        not streamed, e.g. empty texts)."""
        ids = np.asarray(ids, np.int64)
        if ids.shape != (self.num_documents,):
            raise ValueError(
                f"`ids` must hold one index per document ({self.num_documents}). "
                f"Received: ids of shape {ids.shape}"
            )
        self.stream_documents = [[int(ids[i]) for i in row] for row in self.stream_documents]
        for starts in self._row_starts:
            if len(starts):
                starts[:, 1] = ids[starts[:, 1]]

    def get_batch(self, index):
        """Step `index` as `(inputs, targets, sample_weight)`, in any order.

        Like `dataset[index]` but without the stream-order check (and not
        counted in the passes it tracks): to look at the data.
        """
        return self._batch(self._check_index(index))

    def positions(self, index):
        """Which document, and where in it, each token of step `index` is.

        Returns `(document, offset)`, two int64 arrays of shape
        `(local_batch_size, segment_length)` (the rows this process reads):
        `document[b, i]` is the index (into
        `documents`) of the document token `i` of row `b` belongs to, and
        `offset[b, i]` its position in that document (0 for its first
        token); both are -1 on padding. The target of a token with a weight
        of 1 is the token at `offset + 1` of the same document, which is
        how per-position losses are attributed (e.g. bits per byte by
        position in the document). Reads any step, in any order.
        """
        index = self._check_index(index)
        S = self.segment_length
        where = index * S + np.arange(S)
        document = np.full((self.local_batch_size, S), -1, np.int64)
        offset = np.full((self.local_batch_size, S), -1, np.int64)
        for row, starts in enumerate(self._row_starts):
            if not len(starts):
                continue
            # The last document starting at or before each position.
            k = np.searchsorted(starts[:, 0], where, side="right") - 1
            inside = k >= 0
            k = np.maximum(k, 0)
            local = where - starts[k, 0]
            inside &= local < starts[k, 2]
            document[row] = np.where(inside, starts[k, 1], -1)
            offset[row] = np.where(inside, local, -1)
        return document, offset

    def _batch(self, index):
        inputs = {
            "token_ids": self._token_ids[index].copy(),
            "reset": self._reset[index].copy(),
        }
        return (
            inputs,
            self._targets[index].copy(),
            self._sample_weight[index].copy(),
        )

    def __getitem__(self, index):
        index = self._check_index(index)
        if self.check_order:
            self._check_order(index)
        return self._batch(index)

    def __getstate__(self):
        # Picklable for worker processes started with "spawn": a lock is not.
        state = dict(self.__dict__)
        state.pop("_order_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._order_lock = threading.Lock()
        self._order_pid = os.getpid()
        self._passes = []
