"""Guards that keep bad input away from a streaming model's weights and memory.

A model with memory (`InfiniteFormerLM`) carries every batch row into the
next batch, so one bad batch does not just fail: on JAX, an out-of-range
token id inside a compiled step gathers NaN and the NaN spreads into the
weights (through the update) and into the memory (for every later batch).
Inside a compiled step (`jit_compile=True` on JAX and TensorFlow) nothing can
be checked by value and nothing can raise a Python error. So this module
checks the data *on the host, before each step*, and makes sure that an error
leaves the model as it was:

- `check_data(model, x, ...)`: called by `fit` / `evaluate` / `predict`
  before the trainer starts. Arrays (NumPy or backend tensors, in the input
  dict) are checked whole. A `keras.utils.PyDataset`, a `tf.data.Dataset`
  and a Python generator are checked on their first batch at once (peeked
  without consuming it) and then wrapped so that *every* batch is checked on
  the host before its step runs (`BatchChecker`): token ids an integer dtype,
  in `[0, vocabulary_size)`; shape `(batch_size, segment_length)`; `reset`
  flags one per row, bool or 0/1; targets (`y`, or a batch's second
  element), when given, integer ids in `[0, vocabulary_size)` shaped as the
  token ids (`check_targets`). A refused batch raises a `ValueError`
  (a `TypeError` for a wrong dtype) that names the batch, the value and the
  vocabulary size, before that batch's step: the weights and the memory are
  those left by the previous step. (On a JAX accelerator Keras fetches one
  batch ahead, so the error can come one step earlier; nothing bad is
  written either way.) A `torch.utils.data.DataLoader` or a grain dataset is
  not wrapped: its batches are checked in `model.call` when they are
  concrete (eager PyTorch), and reach the in-graph guards otherwise.
- `check_batch(model, x)`: the same for `train_on_batch` / `test_on_batch`
  / `predict_on_batch` (exactly `batch_size` rows).
- `refusals_as_errors()`: TensorFlow runs the checks of a `tf.data`
  dataset and of a generator inside its data pipeline, which reports them as
  `tf.errors.InvalidArgumentError`; this turns them back into the
  `ValueError` / `TypeError` above, on every backend.
- `guard_step_function(model, attribute)`: Keras' JAX trainer detaches
  every variable from the model before the first step of `fit` / `evaluate`
  / `predict` and reattaches them only after a step succeeds, so an error in
  the first step (any error: bad data, a failed compilation, a
  `KeyboardInterrupt`) left a model without variables
  (`TypeError: 'NoneType' object is not callable` at the next use). The
  guarded step function puts back the values it was given (the state before
  the failing step) when it raises. A no-op on TensorFlow and PyTorch, whose
  trainers do not detach variables.
- `clip_traced_token_ids(token_ids, vocabulary_size)`: the last line of
  defence, for JAX code that calls the model inside its own `jax.jit`
  (no host check is possible there): JAX gathers out-of-range indices as
  NaN, so a traced JAX `token_ids` is clipped into `[0, vocabulary_size)`:
  an out-of-range id then reads the embedding of id 0 or of the last id.
  The logits, the loss and the memory stay finite, but such an id is *not*
  reported: validate ids before a jitted call of your own. (TensorFlow
  raises `InvalidArgumentError` for such an id on CPU; PyTorch raises.)

`validate_inputs(...)` holds the checks of one input dict, shared by the
model's `call` / `step` and the per-batch checks.
"""

import contextlib
import re
import sys
import types

import keras
import numpy as np
from keras import ops

from keras_infformer import compat, distribution, memory, utils, validation

# -- the checks of one batch ------------------------------------------------------


def check_token_dtype(token_ids, name="token_ids"):
    """Raise a TypeError unless `token_ids` has an integer dtype.

    Float ids (e.g. `27.7`) would be truncated silently by the model's
    int32 input; booleans are not ids either.
    """
    dtype = getattr(token_ids, "dtype", None)
    if dtype is None:
        dtype = np.asarray(token_ids).dtype
    dtype = keras.backend.standardize_dtype(dtype)
    if "int" not in dtype:
        raise TypeError(
            f"`{name}` must hold integer token ids (an int32 or int64 "
            f"tensor); other values would be truncated or misread. Received: "
            f"{name}.dtype={dtype}"
        )


def check_token_ids(token_ids, vocabulary_size, segment_length, batch_size=None):
    """Validate token ids: integer dtype, shape, and (when concrete) range.

    Args:
        token_ids: a tensor or array `(batch_size, segment_length)`.
        vocabulary_size: int. Ids must lie in `[0, vocabulary_size)`.
        segment_length: int. The static second axis.
        batch_size: optional int. The first axis, when it must be that.

    Raises:
        TypeError: for a non-integer dtype.
        ValueError: for a wrong shape or an id out of range (naming the id,
            its row and position, and the vocabulary size).
    """
    if not hasattr(token_ids, "shape"):
        token_ids = np.asarray(token_ids)
    check_token_dtype(token_ids)
    shape = tuple(token_ids.shape)
    if (
        len(shape) != 2
        or shape[1] != segment_length
        or (batch_size is not None and shape[0] is not None and shape[0] != batch_size)
    ):
        expected = (batch_size or "batch_size", segment_length)
        raise ValueError(
            f"`token_ids` must have shape {expected}. Received: token_ids.shape={shape}"
        )
    tokens = utils.concrete_value(token_ids)
    if tokens is not None:
        validation.check_values("token_ids", tokens, vocabulary_size)


def check_targets(targets, vocabulary_size, token_ids=None, name="y", values=True):
    """Validate next-token targets: integer ids in `[0, vocabulary_size)`,
    shaped as `token_ids` (when given); `values=False`: dtype and shape
    only (a tf.data pipeline checks the values in its graph).

    Keras would take float targets, or ids out of the vocabulary, without
    a word on JAX (such positions cost 0 and the weights are still updated),
    and fail with a backend error on TensorFlow and PyTorch.

    Raises:
        ValueError: naming `name` and the value received.
    """
    if targets is None:
        return
    if not hasattr(targets, "shape"):
        try:
            targets = np.asarray(targets)
        except (ValueError, TypeError):
            raise ValueError(
                f"`{name}` (the next-token targets) must be an integer array. "
                f"Received: {name} of type {type(targets).__name__}"
            ) from None
    dtype = keras.backend.standardize_dtype(targets.dtype)
    if "int" not in dtype:
        raise ValueError(
            f"`{name}` (the next-token targets) must hold integer token ids "
            f"in [0, vocabulary_size={vocabulary_size}). Received: "
            f"{name}.dtype={dtype}"
        )
    if token_ids is not None and hasattr(token_ids, "shape"):
        want, got = tuple(token_ids.shape), tuple(targets.shape)
        if len(want) == 2 and (
            len(got) != 2
            or any(w is not None and g is not None and w != g for w, g in zip(want, got))
        ):
            raise ValueError(
                f"`{name}` (the next-token targets) must have the shape of "
                f"`token_ids`, {want}. Received: {name}.shape={got}"
            )
    if not values:
        return
    values = utils.concrete_value(targets)
    if values is not None:
        validation.check_values("targets", values, vocabulary_size, name=name)


def _targets_of(element):
    """The targets of a batch element `(x, y[, sample_weight])`, or `None`."""
    if isinstance(element, (tuple, list)) and len(element) > 1:
        return element[1]
    return None


def validate_inputs(model, token_ids, reset, batch_size=None):
    """The checks of one input dict of `model` (its `call` and `step`).

    `model` has `vocabulary_size` and `segment_length`; `batch_size` is the
    number of rows the ids must have (`None`: any).
    """
    check_token_ids(token_ids, model.vocabulary_size, model.segment_length, batch_size)
    memory.check_reset(reset, tuple(token_ids.shape)[0])


def check_call_inputs(model, inputs):
    """The checks of `model.call(inputs)`; returns the inputs to use.

    `token_ids` must have the model's fixed batch size (inside a
    `tf.distribute` replica: the replica's part of it). Traced JAX ids are
    clipped (see `clip_traced_token_ids`).
    """
    if not isinstance(inputs, dict) or "token_ids" not in inputs:
        return inputs
    token_ids = inputs["token_ids"]
    if not hasattr(token_ids, "shape"):
        token_ids = np.asarray(token_ids)
    batch_size = model.batch_size
    local = distribution.per_replica_batch(model.batch_size)
    if len(token_ids.shape) and token_ids.shape[0] == local:
        batch_size = local
    validate_inputs(model, token_ids, inputs.get("reset"), batch_size)
    token_ids = clip_traced_token_ids(inputs["token_ids"], model.vocabulary_size)
    return dict(inputs, token_ids=token_ids)


class BatchChecker:
    """Host-side checks of the batches a stream yields.

    Holds plain numbers only (no model), so a `PyDataset` wrapped with it
    still pickles for worker processes. Call it on one element as Keras
    reads it (`inputs`, `(inputs, targets)` or `(inputs, targets,
    sample_weight)`, `inputs` a dict with `token_ids` and `reset`) and the
    step index; it returns the element unchanged or raises.

    Args:
        vocabulary_size: int.
        segment_length: int.
        batch_size: int. The model's fixed batch size.
        argument: str. The name of the data in messages (`x`,
            `validation_data`).
    """

    def __init__(self, vocabulary_size, segment_length, batch_size, argument="x"):
        self.vocabulary_size = int(vocabulary_size)
        self.segment_length = int(segment_length)
        self.batch_size = int(batch_size)
        self.argument = argument

    @classmethod
    def for_model(cls, model, argument="x"):
        # With several processes each feeds its own block of the rows.
        start, stop = distribution.process_rows(model.batch_size)
        return cls(model.vocabulary_size, model.segment_length, stop - start, argument)

    def prefix(self, index=None):
        which = "a batch" if index is None else f"batch {index}"
        return f"Refused {which} of `{self.argument}` before its step ran: "

    def __call__(self, element, index=None):
        inputs = _inputs_of(element)
        if inputs is None:
            return element
        try:
            self.check_inputs(inputs)
            check_targets(_targets_of(element), self.vocabulary_size, inputs["token_ids"])
        except (ValueError, TypeError) as error:
            raise type(error)(self.prefix(index) + str(error)) from None
        return element

    def check_inputs(self, inputs, rows=None):
        """Check one input dict; `rows`: the number of rows (default the
        model's batch size; arrays given whole have a multiple of it)."""
        token_ids = inputs["token_ids"]
        if not hasattr(token_ids, "shape"):
            token_ids = np.asarray(token_ids)
        shape = tuple(token_ids.shape)
        rows = self.batch_size if rows is None else rows
        if len(shape) == 2 and shape[0] is not None and shape[0] != rows:
            raise ValueError(
                f"This model is stateful with a fixed batch size of "
                f"{self.batch_size} (one memory per row), but `{self.argument}` "
                f"holds batches of another size. Received: "
                f"token_ids.shape={shape}"
            )
        check_token_ids(token_ids, self.vocabulary_size, self.segment_length, rows)
        reset = inputs.get("reset")
        if reset is not None:
            memory.check_reset(reset, rows)

    def tf_dataset(self, dataset):
        """`dataset` (a `tf.data.Dataset`) with every batch checked in its
        pipeline; a refused batch fails with `InvalidArgumentError`, which
        `refusals_as_errors()` turns into a ValueError. The dtype and the
        static shapes are checked at once (TypeError / ValueError)."""
        import tensorflow as tf

        checker = self

        def check(*element):
            structure = element[0] if len(element) == 1 else element
            inputs = _inputs_of(structure)
            if inputs is None:
                return structure
            token_ids = inputs["token_ids"]
            try:
                check_token_dtype(token_ids)
            except TypeError as error:
                raise TypeError(checker.prefix() + str(error)) from None
            prefix = checker.prefix()
            rows = tf.shape(token_ids)[0]
            checks = [
                tf.debugging.Assert(
                    tf.logical_and(
                        tf.equal(tf.rank(token_ids), 2),
                        tf.equal(tf.shape(token_ids)[-1], checker.segment_length),
                    ),
                    [
                        prefix + "`token_ids` must have shape "
                        f"({checker.batch_size}, {checker.segment_length}). "
                        "Received: token_ids.shape=",
                        tf.shape(token_ids),
                    ],
                ),
                tf.debugging.Assert(
                    tf.equal(rows, checker.batch_size),
                    [
                        prefix + "This model is stateful with a fixed batch size "
                        f"of {checker.batch_size} (one memory per row), but "
                        f"`{checker.argument}` holds batches of another size. "
                        "Received: token_ids.shape=",
                        tf.shape(token_ids),
                    ],
                ),
                validation.tf_assert(
                    "token_ids", token_ids, checker.vocabulary_size, prefix=prefix
                ),
            ]
            reset = inputs.get("reset")
            if reset is not None:
                flags = tf.cast(reset, tf.float32) if reset.dtype != tf.bool else None
                checks.append(
                    tf.debugging.Assert(
                        tf.equal(tf.size(reset), rows),
                        [
                            prefix + "`reset` must have one flag per row. Received: reset.shape=",
                            tf.shape(reset),
                        ],
                    )
                )
                if flags is not None:
                    checks.append(validation.tf_assert("reset", flags, prefix=prefix))
            targets = _targets_of(structure)
            if targets is not None:
                try:
                    check_targets(targets, checker.vocabulary_size, token_ids, values=False)
                except ValueError as error:
                    raise ValueError(checker.prefix() + str(error)) from None
                checks.append(
                    validation.tf_assert("targets", targets, checker.vocabulary_size, prefix=prefix)
                )
            with tf.control_dependencies(checks):
                inputs = dict(inputs, token_ids=tf.identity(token_ids))
            if isinstance(structure, dict):
                return inputs
            return (inputs,) + tuple(structure[1:])

        return dataset.map(check)


def _inputs_of(element):
    """The input dict of a batch element, or `None` when it has none."""
    if isinstance(element, (tuple, list)):
        element = element[0] if element else None
    if isinstance(element, dict) and "token_ids" in element:
        return element
    return None


class CheckedPyDataset(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` whose every batch is checked on the host.

    Delegates to the wrapped dataset (its length, its batches, its epoch
    hooks, its workers and queue settings) and passes each batch through a
    `BatchChecker` as it is read, so a bad batch fails before its step.

    Args:
        dataset: the `keras.utils.PyDataset` to read.
        checker: a `BatchChecker`.
    """

    def __init__(self, dataset, checker):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset
        self.checker = checker

    def __len__(self):
        return len(self.dataset)

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __getitem__(self, index):
        return self.checker(self.dataset[index], index)

    def on_epoch_begin(self):
        self.dataset.on_epoch_begin()

    def on_epoch_end(self):
        self.dataset.on_epoch_end()


def _checked_generator(first, rest, checker):
    """`first` (already checked), then every element of `rest`, checked."""
    yield first
    for index, element in enumerate(rest, start=1):
        yield checker(element, index)


def _is_tf_dataset(x):
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(x, tf.data.Dataset)


# -- fit / evaluate / predict ------------------------------------------------------


def check_batch_size_argument(model, batch_size):
    if batch_size is not None and batch_size != model.batch_size:
        raise ValueError(
            f"This model is stateful with a fixed batch size of "
            f"{model.batch_size} (one memory per row). Received: "
            f"batch_size={batch_size}"
        )


def check_data(model, x, batch_size=None, argument="x"):
    """Check the data given to `fit` / `evaluate` / `predict` before any step.

    Every kind of data Keras accepts is covered: arrays in the input dict
    (NumPy or backend tensors) are checked whole; a `keras.utils.PyDataset`,
    a `tf.data.Dataset` and a Python generator are checked on their first
    batch now (without consuming it) and returned wrapped so that each later
    batch is checked before its step (see the module docstring). Other data
    is returned as it is.

    Args:
        model: the model (`vocabulary_size`, `segment_length`, `batch_size`).
        x: the data.
        batch_size: the `batch_size` argument given to Keras.
        argument: str. The name of the data in messages.

    Returns:
        `(x, batch_size)`: the data to give Keras (maybe wrapped) and the
        batch size to pass on (the model's, for arrays).

    Raises:
        ValueError, TypeError: the data would fail (or silently corrupt the
            model) at a step.
    """
    check_batch_size_argument(model, batch_size)
    check_not_text(model, x, argument)
    checker = BatchChecker.for_model(model, argument)
    if isinstance(x, keras.utils.PyDataset):
        if x.num_batches == 0:
            return x, batch_size
        # `get_batch` (StreamingDataset) reads without counting a read.
        first = x.get_batch(0) if callable(getattr(x, "get_batch", None)) else x[0]
        checker(first, 0)
        return distribution.distribute_stream(CheckedPyDataset(x, checker)), batch_size
    if _is_tf_dataset(x):
        try:  # Peeked through a new iterator: nothing is consumed.
            first = next(iter(x.take(1).as_numpy_iterator()), None)
        except (TypeError, ValueError):  # Elements NumPy cannot hold.
            first = None
        if first is not None:
            checker(first, 0)
        return checker.tf_dataset(x), batch_size
    if isinstance(x, types.GeneratorType):
        try:
            first = next(x)
        except StopIteration:
            return (item for item in ()), batch_size
        checker(first, 0)
        return _checked_generator(first, x, checker), batch_size
    if isinstance(x, dict) and "token_ids" in x:
        token_ids = x["token_ids"]
        if isinstance(token_ids, (list, tuple)):
            token_ids = np.asarray(token_ids)
            x = dict(x, token_ids=token_ids)
        if not hasattr(token_ids, "shape"):
            return x, batch_size
        rows = tuple(token_ids.shape)[0] if len(token_ids.shape) else None
        try:
            checker.check_inputs(x, rows=rows)
        except (ValueError, TypeError) as error:
            raise type(error)(f"In `{argument}`: {error}") from None
        if rows is not None and rows % model.batch_size:
            raise ValueError(
                f"This model is stateful with a fixed batch size of "
                f"{model.batch_size} (one memory per row): the number of "
                "rows of array data must be a multiple of it (no partial "
                f"last batch). Received: token_ids.shape={tuple(token_ids.shape)}"
            )
        return x, model.batch_size
    return x, batch_size


def check_not_text(model, x, argument="x"):
    """Raise a clear ValueError for texts (a str or a list of str) given to
    `fit` / `evaluate` / `predict`: a memory model reads streams of
    segments, in order, which texts become through the preprocessor."""
    texts = None
    if isinstance(x, str):
        texts = [x]
    elif isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x):
        texts = list(x)
    if texts is None:
        return
    sample = texts[0][:40]
    raise ValueError(
        f"`{argument}` holds text ({len(texts)} string(s), e.g. {sample!r}...). "
        f"{type(model).__name__} keeps a memory per batch row and trains on "
        "streams of segments read in order, not on independent strings: "
        "turn the texts into a stream first, e.g. "
        f"`stream = model.preprocessor.streaming_dataset(texts, "
        f"batch_size={model.batch_size}, segment_length={model.segment_length})` "
        "then pass `stream` instead (for `fit`, with "
        "`keras_infformer.ResetMemory()` among the callbacks)."
    )


def check_validation_data(model, validation_data, batch_size=None):
    """`check_data` for `fit(validation_data=...)`: a dataset or generator,
    or a tuple `(x, y[, sample_weight])`. Returns the data to pass on."""
    if validation_data is None:
        return None
    if isinstance(validation_data, (tuple, list)) and validation_data:
        checked, _ = check_data(model, validation_data[0], batch_size, "validation_data")
        if len(validation_data) > 1 and isinstance(validation_data[0], dict):
            check_targets(
                validation_data[1],
                model.vocabulary_size,
                validation_data[0].get("token_ids"),
                "validation_data[1]",
            )
        return type(validation_data)((checked,) + tuple(validation_data[1:]))
    checked, _ = check_data(model, validation_data, batch_size, "validation_data")
    return checked


def check_fit_arguments(model, x, batch_size, args, kwargs):
    """`check_data` on `x` and on `validation_data` (positional or keyword)
    of `fit(x, y, batch_size, *args, **kwargs)`. Returns
    `(x, batch_size, args, kwargs)` to pass on."""
    x, batch_size = check_data(model, x, batch_size)
    # keras.Model.fit(x, y, batch_size, epochs, verbose, callbacks,
    # validation_split, validation_data, ...): validation_data is args[4].
    if len(args) > 4:
        args = list(args)
        args[4] = check_validation_data(model, args[4], kwargs.get("validation_batch_size"))
        args = tuple(args)
    elif kwargs.get("validation_data") is not None:
        kwargs = dict(kwargs)
        kwargs["validation_data"] = check_validation_data(
            model, kwargs["validation_data"], kwargs.get("validation_batch_size")
        )
    return x, batch_size, args, kwargs


def check_batch(model, x, argument="x", y=None):
    """Check the one batch given to `train_on_batch` / `test_on_batch` /
    `predict_on_batch`: exactly the model's batch size (and its targets
    `y`, when given)."""
    inputs = _inputs_of(x)
    if inputs is None:
        return
    checker = BatchChecker.for_model(model, argument)
    try:
        checker.check_inputs(inputs)
    except (ValueError, TypeError) as error:
        raise type(error)(f"In `{argument}`: {error}") from None
    check_targets(y, model.vocabulary_size, inputs["token_ids"])


# -- errors raised inside TensorFlow's data pipeline --------------------------------

_PYTHON_REFUSAL = re.compile(r"\b(ValueError|TypeError): (Refused [^\n]*)")
_GRAPH_REFUSAL = re.compile(r"assertion failed: \[(Refused [^\]]*)\] \[([^\]]*)\]")


def refusal_in(error):
    """The ValueError / TypeError that `error` (raised by TensorFlow's data
    pipeline) reports from a `BatchChecker`, or `None`."""
    if isinstance(error, (ValueError, TypeError)):
        return None
    text = str(error)
    match = _PYTHON_REFUSAL.search(text)
    if match:
        kind = TypeError if match.group(1) == "TypeError" else ValueError
        return kind(match.group(2))
    match = _GRAPH_REFUSAL.search(text)
    if match:
        message, values = match.group(1), match.group(2).split()
        if message.endswith("shape="):  # tf.shape() prints as [3 8].
            shape = ", ".join(values) + ("," if len(values) == 1 else "")
            return ValueError(f"{message}({shape})")
        if message.endswith("="):
            return ValueError(f"{message}[{', '.join(values)}]")
        return ValueError(f"{message} {' '.join(values)}.")
    return None


@contextlib.contextmanager
def refusals_as_errors():
    """Re-raise a batch refused inside TensorFlow's data pipeline (an
    `InvalidArgumentError` or similar) as the `ValueError` / `TypeError` of
    the check, chained to the original."""
    try:
        yield
    except Exception as error:
        refusal = refusal_in(error)
        if refusal is None:
            raise
        raise refusal from error


# -- JAX: keep the variables when a step fails -------------------------------------


def guard_step_function(model, attribute):
    """Wrap `model.<attribute>` (JAX `train_function` / `test_function` /
    `predict_function`) so that when it raises, the variables hold the
    values they had before the failing step.

    Keras' JAX trainer detaches the model's variables before the first step
    of `fit` / `evaluate` / `predict` (to save memory) and reattaches them
    from the result of the last step that succeeded; when the *first* step
    raises there is no such result, and the model is left without variables.
    The step function receives the whole state as its first argument, so the
    wrapper puts that back (`compat.restore_jax_step_state`). A no-op on
    other backends, for a function not made yet, or one already wrapped.
    Call it right after Keras' `make_*_function`.
    """
    if keras.backend.backend() != "jax" or attribute not in compat.JAX_STEP_STATE:
        return

    def wrap(function):
        def guarded(state, iterator):
            try:
                return function(state, iterator)
            except BaseException:
                compat.restore_jax_step_state(model, attribute, state)
                raise

        return guarded

    compat.wrap_step_function(model, attribute, wrap)


# -- inside compiled functions ---------------------------------------------------------


def clip_traced_token_ids(token_ids, vocabulary_size):
    """Traced JAX `token_ids` clipped into `[0, vocabulary_size)`; else as is.

    For JAX code that calls the model inside its own `jax.jit`, where no
    value can be checked: JAX gathers an out-of-range index as NaN (its
    `"fill"` mode), which would spread through the logits, the loss, the
    weights and the memory. Clipped, such an id reads the embedding of id 0
    or of id `vocabulary_size - 1`: everything stays finite, but the id is
    not reported. `fit` / `evaluate` / `predict` check every batch on the
    host first, so their steps never meet one. Concrete values are checked
    (and refused) by `validate_inputs` instead; TensorFlow raises on such an
    id on CPU and PyTorch raises, so neither is clipped.
    """
    if keras.backend.backend() != "jax":
        return token_ids
    import jax

    if not isinstance(token_ids, jax.core.Tracer):
        return token_ids
    return ops.clip(token_ids, 0, vocabulary_size - 1)
