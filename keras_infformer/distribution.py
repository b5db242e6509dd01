"""Stateful memory under Keras' own distribution engines.

Every memory variable (of a `keras_infformer.MemoryLayer`: the package's
`InfiniteFormerDecoder`, `ContinuousLTM`, `CompressiveMemory`, or one of
yours) holds one slice per batch row, so on
several devices it must be split on the batch axis exactly like the data,
with each device keeping only its rows. Nothing here moves data itself; the
work is done by the engines Keras already has:

- JAX, `keras.distribution`: `layout_map(mesh)` returns `LayoutMap` rules
  that give every memory variable the layout `("batch", None, ...)`, to be
  used in `keras.distribution.ModelParallel` (with `batch_dim_name` the same
  mesh axis), alone or merged with the user's own rules for the weights.
  `data_parallel()` builds that distribution over a 1-D mesh in one call.
  Plain `keras.distribution.DataParallel` is also correct, but it replicates
  the memory on every device and all-gathers it at every step.
- TensorFlow, `tf.distribute` (e.g. `MirroredStrategy`): a model built
  inside `strategy.scope()` sizes its memory to the per-replica batch
  (global batch / `num_replicas_in_sync`) and keeps it in per-replica
  variables (`synchronization="on_read"`), so replica `k` holds the rows of
  the `k`-th slice of every global batch.

Either way the rows of a global batch are split into `num_shards` contiguous
blocks of `batch_size / num_shards` rows: row `i` is always on shard
`i // (batch_size / num_shards)`, which is why the batch size must be a
multiple of the number of devices (a clear `ValueError` otherwise).

`read_memory` / `assign_memory` read and write every row of a memory
variable (on TensorFlow, all replicas' parts); the layers use them in
`get_state`, and in `save_own_variables` / `load_own_variables`, so that
`model.save()`, `save_weights()` and `ModelCheckpoint` keep the memory of
every row, not replica 0's only.

Several processes (one per host: JAX multi-process after
`keras.distribution.initialize()`, TensorFlow's `MultiWorkerMirroredStrategy`):
each process feeds and keeps the rows on its own devices, a contiguous block
of the global batch (`process_rows`; `StreamingDataset` reads only that
block). `read_memory` then gathers every process's rows (a collective: every
process calls it, as `get_state` and saving do) and `assign_memory` keeps
each process's block of the rows it is given, so a checkpoint written by
any number of processes loads on any other. `distribute_stream` and
`step_logs` adapt a stream and a step's logs to Keras' TensorFlow trainer
under a multi-worker strategy.

PyTorch has no multi-device engine in Keras 3: there the helpers reduce to
the single-device behaviour.
"""

import re

import keras
import numpy as np
from keras import ops

from keras_infformer import compat

_MEMORY_ATTRIBUTE = "_keras_infformer_memory"

# The state names of every memory layer built so far, with their rank,
# filled by `MemoryLayer.build` from the layer's own `state_spec()`: the
# layout rules follow what the layers declare, and cannot drift from it.
_MEMORY_STATE_RANKS = {}


def register_memory_state(spec, layer=None):
    """Record the names and ranks of a memory layer's state.

    Called by `keras_infformer.memory.MemoryLayer.build` before it creates
    its variables (named as the state), so that `layout_map()` rules, made
    before or after, shard them on the batch axis. A name must keep one rank
    across layers (layouts are found by path, and a layout has a rank).
    """
    for name, tensor in spec.items():
        rank = len(tensor.shape)
        known = _MEMORY_STATE_RANKS.setdefault(name, rank)
        if known != rank:
            owner = f" of layer '{layer.name}'" if layer is not None else ""
            raise ValueError(
                f"The memory state '{name}'{owner} has rank {rank}, but another "
                f"memory layer declared '{name}' with rank {known}. Memory "
                "variables are laid out by name, so one name needs one rank: "
                "rename this state."
            )


def memory_state_ranks():
    """`{name: rank}` of every memory state declared by a built layer."""
    return dict(_MEMORY_STATE_RANKS)


def memory_path_patterns():
    """`{rank: regex}` matching the paths of the memory variables.

    Each regex matches (`re.fullmatch`, as `LayoutMap` does) a path whose
    last component is a state name of that rank declared by a memory layer
    (`memory_state_ranks()`).
    """
    by_rank = {}
    for name, rank in sorted(_MEMORY_STATE_RANKS.items()):
        by_rank.setdefault(rank, []).append(re.escape(name))
    return {
        rank: r"(?:.*/)?(?:" + "|".join(names) + r")" for rank, names in sorted(by_rank.items())
    }


# -- which engine is active --------------------------------------------------


def _tf_strategy():
    """The active `tf.distribute` strategy with several replicas, or None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    strategy = tf.distribute.get_strategy()
    return strategy if strategy.num_replicas_in_sync > 1 else None


def _keras_distribution():
    """The active `keras.distribution` with a batch axis (JAX), or None."""
    try:
        current = keras.distribution.distribution()
    except Exception:  # No distribution API on this backend.
        return None
    if current is None or getattr(current, "batch_dim_name", None) is None:
        return None
    return current


def num_batch_shards():
    """Over how many devices the active engine splits the batch axis.

    `num_replicas_in_sync` of an active `tf.distribute` strategy (TF), the
    size of the batch axis of the mesh of the active `keras.distribution`
    (JAX), else 1.
    """
    strategy = _tf_strategy() or _tf_multi_worker()
    if strategy is not None:
        return int(strategy.num_replicas_in_sync)
    current = _keras_distribution()
    if current is not None:
        mesh = current.device_mesh
        axis = list(mesh.axis_names).index(current.batch_dim_name)
        return int(mesh.shape[axis])
    return 1


# -- several processes ----------------------------------------------------------


# The multi-worker strategy this process joined (TF), once seen active: a
# process belongs to one job, and Keras calls `fit` outside the scope.
_MULTI_WORKER = []


def _tf_multi_worker():
    """The TF strategy spanning several worker processes that this process
    joined: the active one, else the one seen when the model was built."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return _MULTI_WORKER[0] if _MULTI_WORKER else None
    strategy = _tf_strategy()
    if strategy is None:
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None
    if _tf_worker_count(strategy) < 2:
        return None
    _MULTI_WORKER[:] = [strategy]
    return strategy


def _tf_worker_count(strategy):
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker"))


def _tf_worker_index(strategy):
    # tf.distribute orders the workers chief first, then "worker" by index.
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + len(spec.get("chief", ()))


def _jax_multi_process():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


def _process_index_and_count():
    strategy = _tf_multi_worker()
    if strategy is not None:
        return _tf_worker_index(strategy), _tf_worker_count(strategy)
    if _jax_multi_process():
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def num_processes():
    """How many processes train together (1 without a multi-process engine).

    JAX: `jax.process_count()` (after `keras.distribution.initialize()`).
    TensorFlow: the workers of an active `MultiWorkerMirroredStrategy`.
    """
    return _process_index_and_count()[1]


def process_index():
    """The index of this process among `num_processes()` (0 is the chief)."""
    return _process_index_and_count()[0]


def remember_multi_worker_strategy():
    """Record the active `MultiWorkerMirroredStrategy` (TF), if any.

    Called by every memory layer at creation (inside the strategy's scope):
    `fit` and the dataset come outside that scope, and still need to know
    the process's rows and the workers.
    """
    _tf_multi_worker()


def process_rows(batch_size):
    """`(start, stop)`: the rows of a global batch this process feeds.

    With several processes each feeds (and keeps the memory of) the rows that
    live on its own devices, a contiguous block of the global batch: under a
    `MultiWorkerMirroredStrategy` the block of its replicas (worker `w` of
    `P`, one replica each: rows `w * B / P` to `(w + 1) * B / P`); under a
    JAX `keras.distribution` the rows its devices hold in the batch layout.
    With one process: `(0, batch_size)`.

    Raises:
        ValueError: the global batch does not split evenly over the
            devices, or (JAX) this process's devices hold rows that are not
            one contiguous block (a mesh whose batch axis interleaves the
            processes).
    """
    strategy = _tf_multi_worker()
    num_shards = check_batch_shards(batch_size, what="The global batch size")
    if strategy is not None:
        local = len(strategy.extended.worker_devices)
        per_replica = batch_size // num_shards
        start = _tf_worker_index(strategy) * local * per_replica
        return start, start + local * per_replica
    if not _jax_multi_process():
        return 0, batch_size
    current = _keras_distribution()
    if current is None:
        raise ValueError(
            "Several JAX processes are running but no keras.distribution is "
            "set: set one (e.g. `keras_infformer.distribution.data_parallel()`) "
            "so that each process feeds the rows its devices hold."
        )
    sharding = current.get_data_layout((batch_size,)).backend_layout
    rows = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(batch_size)[index[0]])
    start, stop = min(rows), max(rows) + 1
    if len(rows) != stop - start:
        raise ValueError(
            "The devices of this process hold rows of the batch that are not "
            f"one contiguous block (rows {sorted(rows)} of {batch_size}): order "
            "the devices of the mesh's batch axis by process."
        )
    return start, stop


def check_batch_shards(batch_size, num_shards=None, what="The batch size"):
    """Raise a ValueError unless `batch_size` splits into equal shards.

    Args:
        batch_size: int. The global batch size (rows of memory).
        num_shards: int or None. Defaults to `num_batch_shards()`.
        what: str. What is checked, for the message.

    Returns:
        The number of shards.
    """
    if num_shards is None:
        num_shards = num_batch_shards()
    if batch_size % num_shards:
        raise ValueError(
            f"{what} must be a multiple of the number of devices the batch is "
            f"split over ({num_shards}): every device keeps the memory of its "
            "own rows, so each must get the same number of rows. Received: "
            f"batch_size={batch_size}. Use a batch size divisible by "
            f"{num_shards}, or fewer devices."
        )
    return num_shards


def per_replica_batch(batch_size, layer=None):
    """Rows of memory a stateful layer keeps for a global `batch_size`.

    Inside a `tf.distribute` strategy with several replicas each replica
    runs on `batch_size / num_replicas_in_sync` rows and keeps only those;
    everywhere else (one device, or JAX, whose arrays are global and
    sharded) it is `batch_size`. Raises a ValueError when the batch does not
    split evenly over the devices (naming `layer` when given).
    """
    what = "The batch size"
    if layer is not None:
        what = f"The batch size of the stateful layer '{layer.name}'"
    num_shards = check_batch_shards(batch_size, what=what)
    if _tf_strategy() is not None:
        return batch_size // num_shards
    return batch_size


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
    if _tf_strategy() is None:
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


def _replica_parts(variable):
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
    parts = _replica_parts(variable)
    if parts is None:
        return ops.copy(variable.value)
    return ops.concatenate([ops.copy(p.read_value()) for p in parts], axis=0)


def local_memory(variable):
    """The rows of a memory variable that this process holds (NumPy).

    With several processes, its block of the global rows (`process_rows`);
    otherwise every row. Reads no other process (not a collective).
    """
    strategy = _tf_multi_worker() if is_memory_variable(variable) else None
    if strategy is not None:
        parts = list(variable.value.values)
        return np.concatenate([np.asarray(p.read_value()) for p in parts], axis=0)
    value = variable.value
    if _jax_multi_process() and not value.is_fully_addressable:
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
    if _tf_multi_worker() is not None:
        return True
    if _jax_multi_process():
        return not variable.value.is_fully_addressable
    return False


def _gather_processes(variable):
    """Every row of a memory variable spread over processes (collective:
    every process must call it, in the same order)."""
    strategy = _tf_multi_worker()
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
    parts = _replica_parts(variable)
    strategy = _tf_multi_worker() if is_memory_variable(variable) else None
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
        first = _tf_worker_index(strategy) * len(parts)
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
        if _replica_parts(v) is not None or _is_cross_process(v):
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


def distribute_stream(dataset):
    """A process's stream as TensorFlow's multi-worker input, else as is.

    Under a `MultiWorkerMirroredStrategy` Keras would hand a `PyDataset` to
    `experimental_distribute_dataset`, which takes every `P`-th batch on each
    worker (and splits it again): a stream's steps must all reach its
    worker, in order. Each worker's dataset (a `StreamingDataset` already
    holds the worker's rows only) becomes its own input pipeline
    (`distribute_datasets_from_function`), read in order. Anything else is
    returned unchanged.
    """
    strategy = _tf_multi_worker()
    if strategy is None or not isinstance(dataset, keras.utils.PyDataset):
        return dataset
    if len(strategy.extended.worker_devices) != 1:
        raise ValueError(
            "A stream dataset under MultiWorkerMirroredStrategy needs one "
            "device per worker process (run one process per device). "
            f"Received: {len(strategy.extended.worker_devices)} devices in this "
            "worker."
        )
    import tensorflow as tf

    num_steps = len(dataset)
    first = dataset.get_batch(0) if hasattr(dataset, "get_batch") else dataset[0]
    signature = tf.nest.map_structure(
        lambda a: tf.TensorSpec(np.shape(a), tf.as_dtype(np.asarray(a).dtype)), first
    )

    def steps():
        for index in range(num_steps):
            yield dataset[index]

    def pipeline(context):
        del context  # One pipeline per worker: its rows, every step.
        stream = tf.data.Dataset.from_generator(steps, output_signature=signature)
        return stream.apply(tf.data.experimental.assert_cardinality(num_steps))

    return strategy.distribute_datasets_from_function(pipeline)


def global_mean_parts(total, count):
    """`(total, count)` of one replica's share of a mean over the global batch.

    Keras' TensorFlow trainer sums the replicas' gradients and expects each
    replica's loss to be its share of the whole (its own losses reduce to
    their mean divided by the number of replicas, which is only the global
    mean when every replica counts the same). A mean over weighted tokens,
    whose weights differ between replicas, needs the weight sum of every
    replica: inside a `tf.distribute` replica with several replicas this
    all-reduces `count`, so `total / count` is the replica's share and the
    shares add up to the global mean. Done under a multi-worker strategy
    (one replica per process, collective all-reduce). Unchanged elsewhere:
    one device, JAX (global arrays), and a single-process
    `MirroredStrategy`, where this all-reduce (a `merge_call` between the
    replica threads) was measured to change the training run from its
    second step on (weights 0.12 apart after two SGD steps); there each
    replica keeps Keras' own mean over its tokens (see docs/distribution.md).
    """
    if _tf_multi_worker() is None:
        return total, count
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return total, count
    return total, context.all_reduce("sum", count)


def step_logs(logs):
    """A train/test step's logs as Keras' TF trainer can reduce them.

    Under a `MultiWorkerMirroredStrategy` Keras 3 reduces every step output
    with `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar
    metrics (tensorflow/tensorflow#72388); as shape `(1,)` they reduce to the
    mean over the workers, equal rows each. Unchanged elsewhere.
    """
    if _tf_multi_worker() is None or not isinstance(logs, dict):
        return logs
    return {k: ops.reshape(v, (1,)) if len(ops.shape(v)) == 0 else v for k, v in logs.items()}


def first_replica_batch(model, iterator):
    """The first batch of a TF epoch iterator as replica 0 receives it.

    For `StreamingCausalLM.symbolic_build_batch` (TensorFlow with a
    strategy only, else `None`): Keras builds the model symbolically from
    the first distributed batch averaged over the replicas, which
    tf.distribute cannot do for the bool `reset` input; replica 0's part has
    the same shapes and dtypes, which is all the build reads.
    """
    if keras.backend.backend() != "tensorflow":
        return None
    strategy = compat.tf_distribute_strategy(model)
    if strategy is None:
        return None
    import tensorflow as tf

    for _, _, it in iterator:
        batch = next(it)
        break
    else:
        return None

    def first(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(x)[0]
        return x

    return tf.nest.map_structure(first, batch)


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
    a memory layer declared (`memory_state_ranks()`, e.g.
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
    lookup time from `memory_path_patterns()`, which a layer fills when it
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
            rank for rank, pattern in memory_path_patterns().items() if re.fullmatch(pattern, key)
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
