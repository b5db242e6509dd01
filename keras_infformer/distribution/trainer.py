"""Keras' TensorFlow trainer under a multi-worker strategy: the stream,
the step's logs and the mean over the global batch.

Part of `keras_infformer.distribution` (see its docstring).
"""

import keras
import numpy as np
from keras import ops

from keras_infformer import compat
from keras_infformer.distribution.topology import multi_worker_strategy


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
    strategy = multi_worker_strategy()
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
    if multi_worker_strategy() is None:
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
    if multi_worker_strategy() is None or not isinstance(logs, dict):
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
