"""Which distribution engine is active, and which rows a process feeds.

Part of `keras_infformer.distribution` (see its docstring): the number of
batch shards (devices) and processes, this process's rows of a global
batch, and the rows of memory a layer keeps per replica.
"""

import keras

# -- which engine is active --------------------------------------------------


def replica_strategy():
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
    strategy = replica_strategy() or multi_worker_strategy()
    if strategy is not None:
        return int(strategy.num_replicas_in_sync)
    current = _keras_distribution()
    if current is not None:
        mesh = current.device_mesh
        axis = list(mesh.axis_names).index(current.batch_dim_name)
        return int(mesh.shape[axis])
    return 1


# -- several processes ----------------------------------------------------------


class ProcessJob:
    """The multi-worker strategy (TF) this process joined, once seen active.

    A process belongs to one job, and Keras calls `fit` outside the
    strategy's scope, so the strategy seen when the model was built stands
    for the job afterwards.
    """

    def __init__(self):
        self.strategy = None


# This process's job.
JOB = ProcessJob()


def multi_worker_strategy():
    """The TF strategy spanning several worker processes that this process
    joined: the active one, else the one seen when the model was built."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return JOB.strategy
    strategy = replica_strategy()
    if strategy is None:
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None
    if _tf_worker_count(strategy) < 2:
        return None
    JOB.strategy = strategy
    return strategy


def _tf_worker_count(strategy):
    spec = strategy.cluster_resolver.cluster_spec().as_dict()
    return sum(len(spec.get(job, ())) for job in ("chief", "worker"))


def tf_worker_index(strategy):
    # tf.distribute orders the workers chief first, then "worker" by index.
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + len(spec.get("chief", ()))


def is_jax_multi_process():
    if keras.backend.backend() != "jax":
        return False
    import jax

    return jax.process_count() > 1


def _process_index_and_count():
    strategy = multi_worker_strategy()
    if strategy is not None:
        return tf_worker_index(strategy), _tf_worker_count(strategy)
    if is_jax_multi_process():
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
    multi_worker_strategy()


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
    strategy = multi_worker_strategy()
    num_shards = check_batch_shards(batch_size, what="The global batch size")
    if strategy is not None:
        local = len(strategy.extended.worker_devices)
        per_replica = batch_size // num_shards
        start = tf_worker_index(strategy) * local * per_replica
        return start, start + local * per_replica
    if not is_jax_multi_process():
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
    if replica_strategy() is not None:
        return batch_size // num_shards
    return batch_size
