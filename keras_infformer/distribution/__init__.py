"""Stateful memory under Keras' own distribution engines.

- `topology`: which engine is active, the batch shards, the processes and
  the rows each feeds.
- `trainer`: Keras' TensorFlow trainer under a multi-worker strategy.
- `layouts`: JAX `LayoutMap` rules for the memory variables.
- The memory variables themselves are `keras_infformer.memory.storage`'s.

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

`keras_infformer.memory.read_memory` / `assign_memory` read and write every row of a memory
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

from keras_infformer.distribution.layouts import data_parallel, layout_map
from keras_infformer.distribution.topology import (
    JOB,
    ProcessJob,
    check_batch_shards,
    is_jax_multi_process,
    multi_worker_strategy,
    num_batch_shards,
    num_processes,
    per_replica_batch,
    process_index,
    process_rows,
    remember_multi_worker_strategy,
    replica_strategy,
    tf_worker_index,
)
from keras_infformer.distribution.trainer import (
    distribute_stream,
    first_replica_batch,
    global_mean_parts,
    step_logs,
)
