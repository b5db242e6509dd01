"""Memory variables: created, read and written row by row on every engine.

A memory variable holds one slice per batch row. Under a `tf.distribute`
strategy it is per-replica (replica `k` keeps the `k`-th block of rows);
with several processes each keeps its block of the global rows.
`read_memory` / `assign_memory` read and write every row (gathering the
replicas' and processes' parts), and the layers use them in `get_state`
and in `save_own_variables` / `load_own_variables`, so that `model.save()`
keeps the memory of every row.
"""

import keras
import numpy as np
from keras import ops

from keras_infformer import compat
from keras_infformer.distribution.topology import (
    is_jax_multi_process,
    multi_worker_strategy,
    replica_strategy,
    tf_worker_index,
)

# Marks a variable made by `add_memory_variable`.
_MEMORY_ATTRIBUTE = "_keras_infformer_memory"

# -- creating, reading and writing memory --------------------------------------


def add_memory_variable(layer, shape, name, initializer="zeros", autocast=False):
    """Create a memory variable of `layer` (float32, non-trainable).

    Behaves as `layer.add_weight(...)` (same name and path, tracked by the
    layer, saved with it), except under a `tf.distribute` strategy with
    several replicas, where the variable is per-replica. Its rows must
    already be the per-replica count (`per_replica_batch`).

    Args:
        layer: the `keras.layers.Layer` that owns the memory.
        shape: tuple. `(rows, ...)`.
        name: str. The variable name (a state name registered with
            `register_memory_state`, for `layout_map` to find it).
        initializer: initializer. Defaults to `"zeros"`.
        autocast: bool. Defaults to `False`: memory is read in float32
            whatever the dtype policy.
    """
    shape = tuple(int(s) for s in shape)
    if replica_strategy() is None:
        variable = layer.add_weight(
            shape=shape,
            initializer=initializer,
            dtype="float32",
            trainable=False,
            autocast=autocast,
            name=name,
        )
    else:
        # TF only: each replica keeps its own rows. `add_weight` takes no
        # `synchronization`, and the default (on write, mirrored) would copy
        # replica 0's rows to every replica; on_read with only_first_replica
        # is the per-replica state tf.distribute has for this.
        with keras.name_scope(layer.name, caller=layer):
            variable = keras.Variable(
                initializer=keras.initializers.get(initializer),
                shape=shape,
                dtype="float32",
                trainable=False,
                autocast=autocast,
                name=name,
                synchronization="on_read",
                aggregation="only_first_replica",
            )
        compat.track_variable(layer, variable)
    setattr(variable, _MEMORY_ATTRIBUTE, True)
    return variable


def is_memory_variable(variable):
    """Whether `variable` was made by `add_memory_variable`."""
    return bool(getattr(variable, _MEMORY_ATTRIBUTE, False))


def replica_parts(variable):
    """The per-replica TF variables of a per-replica memory, else None."""
    if keras.backend.backend() != "tensorflow" or not is_memory_variable(variable):
        return None
    import tensorflow as tf

    value = variable.value
    if not isinstance(value, tf.distribute.DistributedValues):
        return None
    parts = list(value.values)
    return parts if len(parts) > 1 else None


def read_memory(variable):
    """Every row of a memory variable, as a tensor (a copy).

    On TensorFlow under a strategy the replicas' parts are concatenated in
    replica order (replica `k` holds the `k`-th block of rows); elsewhere
    this is `ops.copy(variable.value)` (JAX gathers a sharded array when
    it is converted to NumPy).
    """
    if _is_cross_process(variable):
        return _gather_processes(variable)
    parts = replica_parts(variable)
    if parts is None:
        return ops.copy(variable.value)
    return ops.concatenate([ops.copy(p.read_value()) for p in parts], axis=0)


def local_memory(variable):
    """The rows of a memory variable that this process holds (NumPy).

    With several processes, its block of the global rows (`process_rows`);
    otherwise every row. Reads no other process (not a collective).
    """
    strategy = multi_worker_strategy() if is_memory_variable(variable) else None
    if strategy is not None:
        parts = list(variable.value.values)
        return np.concatenate([np.asarray(p.read_value()) for p in parts], axis=0)
    value = variable.value
    if is_jax_multi_process() and not value.is_fully_addressable:
        shards = sorted(value.addressable_shards, key=lambda s: s.index[0].start or 0)
        blocks, seen = [], set()
        for shard in shards:  # Replicas of one block (a model axis) once.
            if shard.index[0].start not in seen:
                seen.add(shard.index[0].start)
                blocks.append(np.asarray(shard.data))
        return np.concatenate(blocks, axis=0)
    return np.asarray(ops.convert_to_numpy(read_memory(variable)))


def _is_cross_process(variable):
    """Whether the rows of a memory variable live in several processes."""
    if not is_memory_variable(variable):
        return False
    if multi_worker_strategy() is not None:
        return True
    if is_jax_multi_process():
        return not variable.value.is_fully_addressable
    return False


def _gather_processes(variable):
    """Every row of a memory variable spread over processes (collective:
    every process must call it, in the same order)."""
    strategy = multi_worker_strategy()
    if strategy is None:
        # JAX only: a global array, of which this process holds its rows.
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(variable.value, tiled=True))
    # TF only: an all-gather over the workers of the per-replica parts.
    parts = list(variable.value.values)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: parts[context.replica_id_in_sync_group % len(parts)].read_value()
    )
    return np.asarray(strategy.gather(per_replica, axis=0))


def assign_memory(variable, value):
    """Write every row of a memory variable (the inverse of `read_memory`)."""
    parts = replica_parts(variable)
    strategy = multi_worker_strategy() if is_memory_variable(variable) else None
    if parts is None and strategy is None:
        # JAX with several processes too: assigning every row to a sharded
        # variable puts each process's rows on its own devices.
        variable.assign(value)
        return
    if parts is None:
        parts = list(variable.value.values)
    value = np.asarray(ops.convert_to_numpy(value), dtype="float32")
    rows = int(parts[0].shape[0])
    # The replicas of this process hold one block of the global rows.
    first = 0
    replicas = len(parts)
    if strategy is not None:
        first = tf_worker_index(strategy) * len(parts)
        replicas = strategy.num_replicas_in_sync
    if value.shape[0] != rows * replicas:
        raise ValueError(
            f"Memory variable '{variable.path}' holds {rows * replicas} rows "
            f"over {replicas} replicas. Received: value.shape={value.shape}"
        )
    for k, part in enumerate(parts):
        start = (first + k) * rows
        part.assign(value[start : start + rows])


def save_own_variables(layer, store):
    """`Layer.save_own_variables`, with every row of the memory variables."""
    for i, v in enumerate(compat.own_variables(layer)):
        if replica_parts(v) is not None or _is_cross_process(v):
            store[f"{i}"] = ops.convert_to_numpy(read_memory(v))
        else:
            store[f"{i}"] = v


def load_own_variables(layer, store):
    """`Layer.load_own_variables`, splitting the memory rows over replicas."""
    compat.check_load_own_variables(layer, store)
    for i, v in enumerate(compat.own_variables(layer)):
        if is_memory_variable(v):
            assign_memory(v, np.asarray(store[f"{i}"]))
        else:
            v.assign(store[f"{i}"])
