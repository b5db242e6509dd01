"""Memory state: names, checks, reset flags, rows and decode positions.

The state of a model is a flat dict of named tensors; nested states (blocks
of a model, memories inside a block) are named with `state_name()` and
converted with `flatten_state()` / `unflatten_state()`.
"""

import keras
import numpy as np
from keras import ops

from keras_infformer import utils, validation

# -- state names ----------------------------------------------------------------


def state_name(*parts):
    """The flat name of a piece of nested state: the parts joined by `_`.

    Example: `state_name("layer", 0, "ltm", "coefficients")` is
    `"layer_0_ltm_coefficients"`, the name under which `InfiniteFormerLM`
    exposes (and serves) that tensor.
    """
    return "_".join(str(part) for part in parts)


def flatten_state(nested):
    """`{"layer_0": {"stm": x, "ltm": {"filled": y}}}` -> `{"layer_0_stm": x,
    "layer_0_ltm_filled": y}` (names by `state_name`, order kept)."""
    flat = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            for name, leaf in flatten_state(value).items():
                flat[state_name(key, name)] = leaf
        else:
            flat[key] = value
    return flat


def unflatten_state(flat, structure, what="state"):
    """The inverse of `flatten_state`, given the nested `structure`.

    Flat names are ambiguous (parts may hold `_`), so the structure (e.g. a
    nested `state_spec`) says where each name belongs. Raises a ValueError
    naming every missing and unknown key.
    """
    check_state_keys(flat, flatten_state(structure), what)

    def build(node, prefix):
        out = {}
        for key, value in node.items():
            name = key if prefix is None else state_name(prefix, key)
            out[key] = build(value, name) if isinstance(value, dict) else flat[name]
        return out

    return build(structure, None)


def check_state_keys(state, spec, what="state"):
    """Raise a ValueError unless `state` is a dict with exactly `spec`'s keys."""
    if not isinstance(state, dict):
        raise ValueError(
            f"`{what}` must be a dict with keys {list(spec)}. Received: {what}={state!r}"
        )
    missing = [k for k in spec if k not in state]
    unknown = sorted(k for k in state if k not in spec)
    if missing or unknown:
        raise ValueError(
            f"`{what}` must hold exactly the keys {list(spec)}. Missing: "
            f"{missing}; unknown: {unknown}."
        )


def check_state(state, spec, what="state", reset=None, float_only=False):
    """Validate a state dict against a spec before it is used or written.

    Checks the keys (naming the missing and unknown ones), every shape
    against the spec (`None` dims are free), with `float_only` that every
    tensor holds floats (a TypeError for bool, integer or complex values,
    which a float32 memory would silently truncate), and, when the values
    are concrete, that they are finite, except in the rows flagged in
    `reset` (those are replaced by the empty state, whatever they hold).
    """
    check_state_keys(state, spec, what)
    keep = None
    if reset is not None:
        flags = utils.concrete_value(reset)
        keep = None if flags is None else ~flags.astype(bool)
    for name, expected in spec.items():
        value = state[name]
        if not hasattr(value, "shape"):
            value = np.asarray(value)
        got = tuple(value.shape)
        want = tuple(expected.shape)
        if len(got) != len(want) or any(
            w is not None and g is not None and w != g for w, g in zip(want, got)
        ):
            raise ValueError(
                f"`{what}['{name}']` must have shape {want}. Received: {what}['{name}'].shape={got}"
            )
        if float_only:
            check_float_dtype(value, f"{what}['{name}']")
        concrete = utils.concrete_value(value)
        if concrete is None or concrete.dtype.kind not in "fc":
            continue
        rows = concrete if keep is None or len(keep) != len(concrete) else concrete[keep]
        utils.check_finite(rows, f"{what}['{name}']")


def check_float_dtype(value, name):
    """Raise a TypeError unless `value` holds real floating-point numbers."""
    dtype = keras.backend.standardize_dtype(value.dtype)
    if "float" not in dtype:
        raise TypeError(
            f"`{name}` must hold real floating-point values (the memory is "
            f"float32). Received: {name}.dtype={dtype}"
        )


# -- reset flags -----------------------------------------------------------------


def check_reset(reset, batch_size=None):
    """Validate the per-row reset flags; returns them (not yet cast).

    One rule on every path: bool, or 0/1 integers or floats, shape
    `(batch_size,)`. Any other value (e.g. 2 or 0.5) is a ValueError when the
    flags are concrete; traced flags are checked for shape and dtype only.
    """
    if reset is None:
        return None
    if not hasattr(reset, "shape"):
        reset = np.asarray(reset)
    shape = tuple(reset.shape)
    if len(shape) != 1 or (
        batch_size is not None and shape[0] is not None and shape[0] != batch_size
    ):
        raise ValueError(
            f"`reset` must have shape ({batch_size},), one flag per row. "
            f"Received: reset.shape={shape}"
        )
    dtype = keras.backend.standardize_dtype(reset.dtype)
    if dtype == "bool":
        return reset
    if not ("int" in dtype or "float" in dtype):
        raise ValueError(
            f"`reset` must hold booleans (or 0/1 numbers). Received: reset.dtype={dtype}"
        )
    flags = utils.concrete_value(reset)
    if flags is not None:
        validation.check_values("reset", flags)
    return reset


def select_rows(rows, new, old):
    """`new` in the rows flagged by the bool vector `rows`, else `old`.

    `new` may be a single row (e.g. the empty state), broadcast to all.

    A selection, never `flag * new + (1 - flag) * old`: a NaN or Inf in the
    row not taken must not leak into the result (`NaN * 0 = NaN`).
    """
    rows = ops.reshape(rows, (-1,) + (1,) * (len(old.shape) - 1))
    return ops.where(rows, new, old)


def decode_position(position, segment_length, state, begin, advance, end, partial):
    """One position of token-by-token decoding, equal to a step over whole
    segments: the start and the end of a segment in one place.

    Args:
        position: scalar int tensor, the position in the segment.
        segment_length: int.
        state: dict, the decoding state before this position.
        begin: `state -> state` (same keys): what a step does at the start
            of a segment, run at position 0.
        advance: `state -> (outputs, new_state)`: this position.
        end: `new_state -> new_state`: what a step does at the end of a
            segment, run after its last position; then the entries named
            in `partial` (the partial segment) are zeroed.

    Returns `(outputs, new_state)`.
    """
    begun = ops.cond(ops.equal(position, 0), lambda: begin(state), lambda: state)
    outputs, new_state = advance(begun)

    def finish():
        ended = end(dict(new_state))
        for name in partial:
            ended[name] = ops.zeros_like(new_state[name])
        return ended

    new_state = ops.cond(ops.equal(position, segment_length - 1), finish, lambda: new_state)
    return outputs, new_state
