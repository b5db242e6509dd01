"""JAX: `LayoutMap` rules that shard every memory variable on the batch axis.

Part of `keras_infformer.distribution` (see its docstring).
"""

import re

import keras

from keras_infformer.memory.registry import DECLARED_STATES

# -- JAX: layouts ----------------------------------------------------------------


def _default_batch_dim(mesh, batch_dim_name):
    if batch_dim_name is None:
        batch_dim_name = "batch" if "batch" in mesh.axis_names else mesh.axis_names[0]
    if batch_dim_name not in mesh.axis_names:
        raise ValueError(
            f"`batch_dim_name` must be an axis of the mesh "
            f"{tuple(mesh.axis_names)}. Received: batch_dim_name={batch_dim_name!r}"
        )
    return batch_dim_name


def layout_map(mesh, base=None, batch_dim_name=None):
    """`LayoutMap` rules that shard every memory variable on the batch axis.

    For `keras.distribution.ModelParallel` (JAX): each memory variable gets
    the layout `(batch_dim_name, None, ...)`, so each device keeps only the
    memory of its own rows, as the data; the memory never travels between
    devices. Rules for the model's weights (replicated when no rule
    matches) can be passed in `base`, or added to the returned map; a
    user rule must not also match a memory variable (`LayoutMap` refuses a
    path that matches two rules).

    Memory variables are found by path: a path ending in a state name that
    a memory layer declared (`DECLARED_STATES`, e.g.
    `decoder_layer_0/stm`, `continuous_ltm/coefficients`); no weight of the
    package ends so. The rules are looked up when a variable is created, so
    they cover layers built after this call (the usual order: set the
    distribution, then build the model); they are not listed when the map
    is iterated.

    Args:
        mesh: `keras.distribution.DeviceMesh`.
        base: optional `keras.distribution.LayoutMap` (or dict of regex ->
            layout) of the user's own rules, copied first.
        batch_dim_name: str. The mesh axis of the batch. Defaults to
            `"batch"` when the mesh has such an axis, else its first axis.
            Pass the same name as `batch_dim_name` to `ModelParallel`.

    Returns:
        A new `keras.distribution.LayoutMap`.

    Examples:

    ```python
    devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices),), ["batch"], devices)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=keras_infformer.distribution.layout_map(mesh),
            batch_dim_name="batch",
        )
    )
    ```
    """
    batch_dim_name = _default_batch_dim(mesh, batch_dim_name)
    result = _MemoryLayoutMap(mesh, batch_dim_name)
    if base is not None:
        for key in base:
            result[key] = base[key]
    return result


class _MemoryLayoutMap(keras.distribution.LayoutMap):
    """A `LayoutMap` whose memory rules follow the registered state names.

    The user's rules are stored as usual; the memory rules are derived at
    lookup time from `DECLARED_STATES`, which a layer fills when it
    is built, just before its variables are created and looked up.
    """

    def __init__(self, device_mesh, batch_dim_name):
        super().__init__(device_mesh)
        self.batch_dim_name = batch_dim_name

    def __getitem__(self, key):
        user = super().__getitem__(key)
        if key in list(self):  # An exact user rule wins, as in LayoutMap.
            return user
        ranks = [
            rank
            for rank, pattern in DECLARED_STATES.path_patterns().items()
            if re.fullmatch(pattern, key)
        ]
        if not ranks:
            return user
        if user is not None or len(ranks) > 1:
            raise ValueError(
                f"Path '{key}' matches a memory rule of "
                "keras_infformer.distribution.layout_map() and another rule. "
                "A user rule must not match a memory variable."
            )
        axes = (self.batch_dim_name,) + (None,) * (ranks[0] - 1)
        # The mesh is given explicitly: a TensorLayout without one is only
        # completed by a LayoutMap whose mesh is set.
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def data_parallel(devices=None, base=None, batch_dim_name="batch"):
    """A `ModelParallel` distribution: data and memory split on the batch.

    Over a 1-D mesh of `devices` (default: all of them), the batch of every
    step and the memory of every stateful layer are both split into
    contiguous blocks of rows, one per device; weights are replicated (or
    laid out by the rules in `base`). Pass it to
    `keras.distribution.set_distribution()` before building the model.

    Args:
        devices: optional list of device names
            (`keras.distribution.list_devices()`).
        base: optional `LayoutMap` of rules for the weights.
        batch_dim_name: str. Name of the mesh axis. Defaults to `"batch"`.

    Returns:
        A `keras.distribution.ModelParallel`.
    """
    if devices is None:
        devices = keras.distribution.list_devices()
    mesh = keras.distribution.DeviceMesh((len(devices),), [batch_dim_name], devices)
    result = keras.distribution.ModelParallel(
        layout_map=layout_map(mesh, base=base, batch_dim_name=batch_dim_name),
        batch_dim_name=batch_dim_name,
    )
    # With several processes a StreamingDataset reads its own rows already
    # (Keras' auto-sharding takes tf.data datasets only, and by batch).
    result.auto_shard_dataset = False
    return result
