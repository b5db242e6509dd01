"""One distributed-vs-single-device run, in its own process.

Used by tests/distribution/test_distribution.py (and runnable by hand): simulated devices
must be set up before the backend starts, so each run is a fresh process.

    python tests/distribution/distributed_fit_script.py --backend jax --devices 4 --out r.json

JAX: `--xla_force_host_platform_device_count` host CPU devices and a
`ModelParallel` distribution with `keras_infformer.distribution.layout_map`.
TensorFlow: that many logical CPU devices and a `MirroredStrategy`.

The same small InfiniteFormerLM (every kind of memory: short-term cache,
compressed memory, LTM coefficients, sticky density) is fitted on the same
StreamingDataset once on one device and once distributed, from the same
weights. Written to `--out` (JSON): per-step losses of both, the largest
difference of losses, memory and weights, how each memory variable is laid
out on the devices, a per-row reset check, and `.keras` save/load checks.
"""

import argparse
import json
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow"), required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=0.1)
    return parser.parse_args(argv)


def setup_backend(backend, devices):
    """Set the environment before the backend is imported."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if backend == "jax":
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={devices}".strip()
        )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if root not in sys.path:
        sys.path.insert(0, root)
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )


VOCAB = 32
SEGMENT = 8
CONFIG = dict(
    vocabulary_size=VOCAB,
    segment_length=SEGMENT,
    num_layers=1,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    memory_length=SEGMENT,
    num_basis=16,
    num_samples=16,
    num_bins=16,
    sticky_memories=True,
    compressed_memory_length=4,
    compression_rate=4,
    dropout=0.0,
)


def make_dataset(batch_size):
    import numpy as np

    from keras_infformer.data import StreamingDataset

    rng = np.random.default_rng(7)
    # Documents of uneven lengths: rows reset at different steps.
    lengths = rng.integers(SEGMENT, 4 * SEGMENT, size=2 * batch_size)
    documents = [rng.integers(1, VOCAB, size=n) for n in lengths]
    return StreamingDataset(documents, batch_size=batch_size, segment_length=SEGMENT)


def build(batch_size, weights=None, optimizer="sgd", learning_rate=0.1):
    import keras

    from keras_infformer.models import InfiniteFormerLM

    keras.utils.set_random_seed(0)
    model = InfiniteFormerLM(batch_size=batch_size, **CONFIG)
    if weights is not None:
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value)
    model.compile(
        optimizer=(
            keras.optimizers.SGD(learning_rate)
            if optimizer == "sgd"
            else keras.optimizers.Adam(learning_rate)
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # XLA on JAX; Keras turns it off under tf.distribute (and on a
        # CPU-only TF), where one XLA program cannot span the replicas.
        jit_compile="auto",
    )
    return model


def step_recorder():
    """A callback keeping the loss and time of every training step."""
    import keras

    class StepRecorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses, self.times = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter() - self._start)
            self.losses.append(float(logs["loss"]))

    return StepRecorder()


def fit(model, dataset, epochs):
    import keras_infformer

    recorder = step_recorder()
    model.fit(
        dataset,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[keras_infformer.ResetMemory(), recorder],
    )
    return recorder


def numpy_state(model):
    import numpy as np
    from keras import ops

    return {k: np.asarray(ops.convert_to_numpy(v)) for k, v in model.get_state().items()}


def max_diff(a, b):
    import numpy as np

    return max(
        float(np.max(np.abs(np.asarray(a[k], "float64") - np.asarray(b[k], "float64")))) for k in a
    )


def layouts(model, backend):
    """How each memory variable sits on the devices."""
    from keras_infformer import memory

    out = {}
    for variable in model.non_trainable_variables:
        if not memory.is_memory_variable(variable):
            continue
        if backend == "jax":
            value = variable.value
            out[variable.path] = {
                "shape": list(value.shape),
                "spec": [None if a is None else str(a) for a in value.sharding.spec],
                "num_shards": len(value.addressable_shards),
                "shard_shapes": sorted({tuple(s.data.shape) for s in value.addressable_shards}),
                "devices": sorted(str(s.device) for s in value.addressable_shards),
            }
        else:
            parts = memory.storage.replica_parts(variable)
            out[variable.path] = {
                "shape": list(variable.shape),
                "num_shards": 1 if parts is None else len(parts),
                "shard_shapes": sorted({tuple(p.shape) for p in (parts or [variable.value])}),
                "devices": sorted(p.device for p in (parts or [variable.value])),
                "synchronization": variable.synchronization,
            }
        out[variable.path]["shard_shapes"] = [list(s) for s in out[variable.path]["shard_shapes"]]
    return out


def reset_segments(batch_size):
    """Three segments; every row resets at the first, two rows at the last."""
    import numpy as np

    rng = np.random.default_rng(11)
    tokens = rng.integers(0, VOCAB, size=(3, batch_size, SEGMENT)).astype("int32")
    resets = np.zeros((3, batch_size), bool)
    resets[0] = True
    reset_rows = [1, batch_size - 2]
    resets[2, reset_rows] = True
    return tokens, resets, reset_rows


def predict_memory(model, tokens, resets):
    """Empty the memory, stream the segments by `predict`, return the memory."""
    num_steps, batch_size = resets.shape
    model.reset_state()
    model.predict(
        {
            "token_ids": tokens.reshape(num_steps * batch_size, SEGMENT),
            "reset": resets.reshape(num_steps * batch_size),
        },
        batch_size=batch_size,
        verbose=0,
    )
    return numpy_state(model)


def layer_model(batch_size):
    """The stateful layers on their own: ContinuousLTM and CompressiveMemory."""
    import keras

    from keras_infformer.layers import CompressiveMemory, ContinuousLTM

    keras.utils.set_random_seed(1)
    x = keras.Input((SEGMENT, 4), batch_size=batch_size, name="x")
    reset = keras.Input((), batch_size=batch_size, dtype="bool", name="reset")
    ltm = ContinuousLTM(num_basis=8, num_samples=8, name="ltm")
    cmem = CompressiveMemory(memory_length=4, compression_rate=4, name="cmem")
    coefficients = ltm(x, reset=reset)
    memory, _ = cmem(x, reset=reset)
    model = keras.Model({"x": x, "reset": reset}, [coefficients, memory])
    model.compile(jit_compile="auto")
    return model, (ltm, cmem)


def layer_memory(batch_size, weights=None):
    """Stream three blocks through the stateful layers by `predict`."""
    import numpy as np
    from keras import ops

    model, layers = layer_model(batch_size)
    if weights is not None:
        for variable, value in zip(model.trainable_variables, weights):
            variable.assign(value)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3 * batch_size, SEGMENT, 4)).astype("float32")
    reset = np.zeros((3, batch_size), bool)
    reset[0] = True
    reset[2, 1] = True
    model.predict({"x": x, "reset": reset.reshape(-1)}, batch_size=batch_size, verbose=0)
    state = {
        f"{layer.name}_{k}": np.asarray(ops.convert_to_numpy(v))
        for layer in layers
        for k, v in layer.get_state().items()
    }
    weights = [np.asarray(ops.convert_to_numpy(v)) for v in model.trainable_variables]
    return model, state, weights


def distributed_scope(backend, num_devices):
    """(scope, device names) of the distribution under test."""
    import keras

    from keras_infformer import distribution

    if backend == "jax":
        devices = keras.distribution.list_devices()[:num_devices]
        mesh = keras.distribution.DeviceMesh((len(devices),), ["batch"], devices)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(
                layout_map=distribution.layout_map(mesh), batch_dim_name="batch"
            )
        )
        return keras.distribution.distribution().scope(), devices
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:num_devices]
    return tf.distribute.MirroredStrategy(devices).scope(), devices


def error_of(fn):
    try:
        fn()
    except ValueError as e:
        return str(e)
    return None


def main(argv=None):
    args = parse_args(argv)
    setup_backend(args.backend, args.devices)

    import keras
    import numpy as np

    from keras_infformer.data import StreamingDataset

    batch = args.batch_size
    dataset = make_dataset(batch)
    tokens, resets, reset_rows = reset_segments(batch)
    result = {
        "backend": args.backend,
        "devices": args.devices,
        "batch_size": batch,
        "optimizer": args.optimizer,
        "learning_rate": args.learning_rate,
        "epochs": args.epochs,
    }

    def weights_of(model):
        return [np.asarray(keras.ops.convert_to_numpy(v)) for v in model.trainable_variables]

    # Single device.
    single = build(batch, optimizer=args.optimizer, learning_rate=args.learning_rate)
    initial = weights_of(single)
    single_steps = fit(single, dataset, args.epochs)
    single_state = numpy_state(single)
    single_weights = weights_of(single)

    _, single_layer_state, layer_weights = layer_memory(batch)

    # Distributed, from the same weights.
    scope, devices = distributed_scope(args.backend, args.devices)
    result["device_names"] = [str(d) for d in devices]
    with scope:
        layers_model, layer_state, _ = layer_memory(batch, layer_weights)
        result["layers_max_diff"] = max_diff(single_layer_state, layer_state)
        result["layers_layouts"] = layouts(layers_model, args.backend)

        multi = build(
            batch,
            weights=initial,
            optimizer=args.optimizer,
            learning_rate=args.learning_rate,
        )
        multi_steps = fit(multi, dataset, args.epochs)
        multi_state = numpy_state(multi)
        multi_weights = weights_of(multi)
        result["layouts"] = layouts(multi, args.backend)

        # Per-row reset under distribution (weights now fixed: predict).
        reset_state = predict_memory(multi, tokens, resets)

        # Saving keeps every row; loading into a distributed model splits it.
        path = os.path.join(tempfile.mkdtemp(), "lm.keras")
        multi.save(path)
        loaded = keras.models.load_model(path)
        result["loaded_distributed_max_diff"] = max_diff(reset_state, numpy_state(loaded))
        result["loaded_distributed_layouts"] = layouts(loaded, args.backend)

        # reset_state empties every row (all replicas); set_state writes
        # every row back.
        initial_state = {
            k: np.asarray(keras.ops.convert_to_numpy(v))
            for k, v in multi.get_initial_state(batch).items()
        }
        multi.reset_state()
        result["reset_state_max_diff"] = max_diff(initial_state, numpy_state(multi))
        multi.set_state(reset_state)
        result["set_state_max_diff"] = max_diff(reset_state, numpy_state(multi))

        # A batch that does not split over the devices is refused.
        result["dataset_error"] = error_of(
            lambda: StreamingDataset(
                [np.arange(1, 20)], batch_size=args.devices + 1, segment_length=SEGMENT
            )
        )
        result["model_error"] = error_of(lambda: build(args.devices + 1))

    if args.backend == "jax":
        keras.distribution.set_distribution(None)
    loaded = keras.models.load_model(path)
    result["loaded_single_max_diff"] = max_diff(reset_state, numpy_state(loaded))
    result["saved_state_shapes"] = {k: list(v.shape) for k, v in reset_state.items()}

    # The reset check's references, on one device with the same weights.
    for variable, value in zip(single.trainable_variables, multi_weights):
        variable.assign(value)
    expected = predict_memory(single, tokens, resets)
    fresh = predict_memory(single, tokens[2:], np.ones((1, batch), bool))
    kept = [r for r in range(batch) if r not in reset_rows]
    ltm_keys = [k for k in fresh if k.endswith("ltm_coefficients")]
    result["reset"] = {
        "reset_rows": reset_rows,
        "max_diff_vs_single": max_diff(reset_state, expected),
        # A reset row holds exactly what a fresh stream of its last segment
        # holds ...
        "max_diff_reset_rows_vs_fresh": max_diff(
            {k: v[reset_rows] for k, v in reset_state.items()},
            {k: v[reset_rows] for k, v in fresh.items()},
        ),
        # ... and the other rows still carry their past (a filled LTM).
        "min_diff_kept_rows_vs_fresh": min(
            max(float(np.max(np.abs(reset_state[k][r] - fresh[k][r]))) for k in ltm_keys)
            for r in kept
        ),
    }

    result["single_losses"] = single_steps.losses
    result["multi_losses"] = multi_steps.losses
    result["loss_max_diff"] = float(
        np.max(np.abs(np.subtract(single_steps.losses, multi_steps.losses)))
    )
    result["memory_max_diff"] = max_diff(single_state, multi_state)
    result["memory_max_diff_by_key"] = {
        k: max_diff({k: single_state[k]}, {k: multi_state[k]}) for k in single_state
    }
    result["memory_max_abs"] = {k: float(np.max(np.abs(v))) for k, v in single_state.items()}
    result["weights_max_diff"] = max(
        float(np.max(np.abs(a - b))) for a, b in zip(single_weights, multi_weights)
    )
    # Rough (the first steps compile); see benchmarks/distributed_step_time.py.
    result["single_step_s_median"] = float(np.median(single_steps.times))
    result["multi_step_s_median"] = float(np.median(multi_steps.times))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if "diff" in k and "by_key" not in k}))


if __name__ == "__main__":
    main()
