"""keras_infformer.validation: one table of value rules, a NumPy and a TF form."""

import numpy as np
import pytest

from keras_infformer import validation
from keras_infformer.models import stream_guards

CASES = [
    (
        "token_ids",
        np.array([[1, 2], [9, 3]], "int32"),
        5,
        None,
        "`token_ids` must lie in [0, vocabulary_size=5). Received a token id 9",
        " (row 1, position 0; 1 id(s) out of range in all).",
    ),
    (
        "targets",
        np.array([[1, -1], [7, 3]], "int32"),
        5,
        "y",
        "`y` (the next-token targets) must lie in [0, vocabulary_size=5). Received a target -1",
        " at index (0, 1) (2 target(s) out of range in all).",
    ),
    (
        "reset",
        np.array([0.0, 2.0], "float32"),
        None,
        None,
        "`reset` must hold booleans or the numbers 0 and 1 (1 = the row "
        "starts a new document). Received: reset=[0.0, 2.0]",
        " (e.g. np.float32(2.0))",
    ),
]


@pytest.mark.parametrize("kind, values, vocabulary_size, name, message, detail", CASES)
def test_numpy_form_names_the_argument_and_the_value(
    kind, values, vocabulary_size, name, message, detail
):
    with pytest.raises(ValueError) as info:
        validation.check_values(kind, values, vocabulary_size, name=name)
    assert str(info.value).startswith(message)
    if kind != "reset":  # (NumPy's scalar repr differs between versions.)
        assert str(info.value) == message + detail
    good = np.zeros_like(values)
    validation.check_values(kind, good, vocabulary_size, name=name)
    validation.check_values(kind, good[:0], vocabulary_size, name=name)


@pytest.mark.parametrize("kind, values, vocabulary_size, name, message, detail", CASES)
def test_tf_form_follows_the_same_rule(kind, values, vocabulary_size, name, message, detail):
    tf = pytest.importorskip("tensorflow")
    prefix = "Refused a batch of `x` before its step ran: "

    @tf.function(autograph=False)
    def checked(values):
        check = validation.tf_assert(kind, values, vocabulary_size, name=name, prefix=prefix)
        with tf.control_dependencies([check]):
            return tf.identity(values)

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        checked(tf.constant(values))
    refusal = stream_guards.refusal_in(info.value)
    assert isinstance(refusal, ValueError)
    if kind == "reset":  # TF prints floats its own way: [0 2].
        assert str(refusal) == prefix + message.replace("[0.0, 2.0]", "[0, 2]")
    else:
        assert str(refusal) == prefix + message + "."
    checked(tf.constant(np.zeros_like(values)))


def test_every_rule_has_both_forms_and_a_default_name():
    for kind, rule in validation.RULES.items():
        assert "{name}" in rule.requirement
        assert callable(rule.bad) and callable(rule.detail)
        assert kind in validation._NAMES
