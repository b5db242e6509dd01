"""Small helpers shared by the layers: constants, input checks."""

import random as python_random
import zlib

import keras
import numpy as np
from keras import ops

from keras_infformer import compat


def constant(array, dtype="float32"):
    """A backend tensor for a NumPy constant, safe to reuse across traces."""
    if keras.backend.backend() == "tensorflow":
        # TF only: lift out of any graph being traced, so the constant is an
        # eager tensor that every later tf.function can capture.
        import tensorflow as tf

        with tf.init_scope():
            return tf.constant(np.asarray(array), dtype=dtype)
    # JAX and PyTorch: a NumPy array, which every keras.ops call converts
    # where it runs. A JAX tracer can then never leak from a layer built
    # inside a trace, and PyTorch's shape inference on the "meta" device
    # gets meta constants (a CPU tensor there fails the build). Use the
    # constant through keras.ops, not Python operators.
    return np.asarray(array, dtype=dtype)


def clone_initializer(initializer, salt=0):
    """A fresh copy of `initializer` for one sublayer.

    An unseeded Keras 3 initializer *instance* returns the same values at
    every call, so one instance shared by several sublayers makes their
    kernels equal (Q = K = V). The copy draws a new seed; an integer seed is
    offset by `salt`, so a seeded layer stays reproducible while its
    sublayers still differ. Strings and dicts are resolved first.
    """
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if isinstance(config.get("seed"), int):
        config["seed"] = config["seed"] + int(salt)
    return initializer.__class__.from_config(config)


def draw_seed(initializer=None):
    """The seed a layer derives its sublayers' seeds from.

    The integer seed of `initializer` when it has one; otherwise one draw
    from Python's global stream (the one `keras.utils.set_random_seed`
    seeds and unseeded Keras initializers draw from). A layer draws this
    once, at construction, whatever sublayers it will have: two models of
    the same seed then give their common sublayers the same weights, and a
    sublayer one of them lacks takes nothing from the other's draws.
    """
    if initializer is not None:
        seed = keras.initializers.get(initializer).get_config().get("seed")
        if isinstance(seed, int):
            return seed
    return python_random.randint(1, int(1e9))


def seeded_initializer(initializer, seed, name):
    """A copy of `initializer` seeded from (`seed`, the sublayer's `name`).

    The seed depends on the sublayer's own name only, not on how many
    sublayers drew before it (`draw_seed`). Initializers without a seed
    (zeros, ones) are returned as copies.
    """
    initializer = keras.initializers.get(initializer)
    config = initializer.get_config()
    if "seed" in config:
        config["seed"] = (int(seed) + zlib.crc32(name.encode("utf-8"))) % (2**31 - 1)
    return initializer.__class__.from_config(config)


def concrete_value(x):
    """`x` as a NumPy array when it holds data now, else `None` (traced)."""
    if x is None or isinstance(x, keras.KerasTensor):
        return None
    if isinstance(x, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(x)
    if compat.in_symbolic_scope():
        # Keras is only inferring shapes: PyTorch's fallback fills the
        # tensors with uninitialised memory, which is no data to check.
        return None
    backend = keras.backend.backend()
    # Backend-specific only to ask "is this a traced value?", which keras.ops
    # cannot answer; checks on data are skipped inside compiled functions.
    if backend == "tensorflow":
        import tensorflow as tf

        if not tf.executing_eagerly() or not hasattr(x, "numpy"):
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    elif backend == "torch":
        import torch

        if x.device.type == "meta" or torch.compiler.is_compiling():
            return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # Any other symbolic value: nothing to check now.
        return None


def check_finite(x, name):
    """Raise a ValueError if a concrete `x` holds NaN or Inf."""
    value = concrete_value(x)
    if value is None or value.dtype.kind in "iub":
        return
    finite = np.isfinite(value.astype(np.float32))
    if not finite.all():
        bad = value.reshape(-1)[np.argmin(finite.reshape(-1))]
        raise ValueError(
            f"`{name}` must hold only finite values. Received {name} with "
            f"{int((~finite).sum())} non-finite entries (e.g. {bad}) "
            f"of shape {tuple(value.shape)}."
        )


def static_dim(shape, axis):
    """The static size of `shape[axis]`, or `None` if unknown."""
    dim = shape[axis]
    return None if dim is None else int(dim)


def check_rank(x, rank, name):
    if len(x.shape) != rank:
        raise ValueError(f"`{name}` must have rank {rank}. Received: {name}.shape={tuple(x.shape)}")


def check_range(value, name, low, high, low_open=True, high_open=True):
    """Validate a float hyper-parameter lies in an interval."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a float. Received: {name}={value!r}")
    ok_low = v > low if low_open else v >= low
    ok_high = v < high if high_open else v <= high
    if not (np.isfinite(v) and ok_low and ok_high):
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        raise ValueError(f"`{name}` must be in {lb}{low}, {high}{hb}. Received: {name}={value!r}")
    return v


def check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}. Received: {name}={value!r}")
    return int(value)


# What Keras' functional models and keras-hub's tasks accept beyond their own
# arguments. Functional models drop any other keyword silently.
MODEL_KEYWORDS = ("name", "trainable", "compile")


def check_model_keywords(kwargs, owner, allowed=MODEL_KEYWORDS):
    """A TypeError naming every keyword of `kwargs` not in `allowed`.

    For the constructors of functional models, which Keras would let
    ignore a misspelt setting without a word.
    """
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"{owner} got unexpected keyword arguments: {unknown}. "
            f"Received: {{{', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}}}"
        )
