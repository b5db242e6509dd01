"""The value rules of a model's inputs, written once and checked two ways.

`RULES` is the table: for each kind of value (token ids, next-token
targets, reset flags) what it must hold, which values break that
(`bad(values, vocabulary_size)`, written with the operators NumPy arrays
and TensorFlow tensors share) and how an offending value is reported.
Two forms follow from each rule:

- `check_values(kind, values, ...)`: concrete values (NumPy), a
  `ValueError` naming the argument, the first bad value and where it is;
- `tf_assert(kind, values, ...)`: the same rule as a `tf.debugging.Assert`
  for TensorFlow graphs (a `tf.data` pipeline, the served signature). Its
  message is the rule's, with the first bad value appended;
  `keras_infformer.models.stream_guards.refusal_in` turns it back into the
  `ValueError`.

Shapes and dtypes are checked where the inputs are read
(`stream_guards`, `memory.check_reset`): they are static, not values.
"""

import collections

import numpy as np

Rule = collections.namedtuple("Rule", ["requirement", "bad", "received", "detail"])
Rule.__doc__ = """One value rule.

Args:
    requirement: str. What the values must hold, formatted with `name` and
        `vocabulary_size`.
    bad: `bad(values, vocabulary_size)`: the mask of the values that break
        the rule (NumPy arrays and TensorFlow tensors alike).
    received: str. How the first bad value is introduced (formatted as
        `requirement`); the value follows it (after a space unless this
        ends with `=`).
    detail: `detail(values, bad)`: what the NumPy form adds after the
        value (where it is, how many there are).
"""


def _out_of_vocabulary(values, vocabulary_size):
    return (values < 0) | (values >= vocabulary_size)


def _not_a_flag(values, vocabulary_size=None):
    return ~((values == 0) | (values == 1))


def _position(values, bad):
    row, position = (int(i) for i in np.argwhere(bad)[0])
    return f" (row {row}, position {position}; {int(bad.sum())} id(s) out of range in all)."


def _index(values, bad):
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    return f" at index {index} ({int(bad.sum())} target(s) out of range in all)."


def _example(values, bad):
    return f" (e.g. {values[bad][0]!r})"


RULES = {
    "token_ids": Rule(
        requirement="`{name}` must lie in [0, vocabulary_size={vocabulary_size})",
        bad=_out_of_vocabulary,
        received=". Received a token id",
        detail=_position,
    ),
    "targets": Rule(
        requirement=(
            "`{name}` (the next-token targets) must lie in [0, vocabulary_size={vocabulary_size})"
        ),
        bad=_out_of_vocabulary,
        received=". Received a target",
        detail=_index,
    ),
    "reset": Rule(
        requirement="`{name}` must hold booleans or the numbers 0 and 1",
        bad=_not_a_flag,
        received=" (1 = the row starts a new document). Received: {name}=",
        detail=_example,
    ),
}

# The argument each kind is called by default.
_NAMES = {"token_ids": "token_ids", "targets": "y", "reset": "reset"}


def _texts(kind, name, vocabulary_size):
    rule = RULES[kind]
    name = _NAMES[kind] if name is None else name
    fields = {"name": name, "vocabulary_size": vocabulary_size}
    return rule, rule.requirement.format(**fields) + rule.received.format(**fields)


def check_values(kind, values, vocabulary_size=None, name=None):
    """Raise a `ValueError` if concrete `values` break the rule `kind`.

    Args:
        kind: a key of `RULES`.
        values: a NumPy array (checked whole).
        vocabulary_size: int, for the token id and target rules.
        name: the argument's name in the message (default: the kind's).
    """
    values = np.asarray(values)
    if not values.size:
        return
    rule, message = _texts(kind, name, vocabulary_size)
    bad = np.asarray(rule.bad(values, vocabulary_size))
    if not bad.any():
        return
    if kind == "reset":
        value = values.tolist()
    else:
        value = values[tuple(np.argwhere(bad)[0])]
    separator = "" if message.endswith("=") else " "
    raise ValueError(f"{message}{separator}{value}{rule.detail(values, bad)}")


def tf_assert(kind, values, vocabulary_size=None, name=None, prefix=""):
    """The rule `kind` as a `tf.debugging.Assert` on the tensor `values`.

    The message is `prefix`, the rule's requirement, then the first bad
    value (reset flags: all of them). Runs in graphs and eagerly.
    """
    import tensorflow as tf

    rule, message = _texts(kind, name, vocabulary_size)
    bad = rule.bad(values, vocabulary_size)
    shown = values if kind == "reset" else tf.boolean_mask(values, bad)[:1]
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [prefix + message, shown])
