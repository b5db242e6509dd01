"""Train one ∞-former LM with several processes: run this once per host.

Each process owns the memory of its own streams (its block of the global
batch) and feeds only their data; the weights are kept in sync by the
engine's gradient all-reduce, and the memory never travels.

    # host 0 (the coordinator), then host 1, ...:
    python examples/multi_process_train.py --backend jax \\
        --process-id 0 --num-processes 2 --coordinator 10.0.0.1:1234
    python examples/multi_process_train.py --backend jax \\
        --process-id 1 --num-processes 2 --coordinator 10.0.0.1:1234

`--backend jax`: `keras.distribution.initialize()` (over `jax.distributed`)
and `keras_infformer.distribution.data_parallel()`. `--backend tensorflow`:
`MultiWorkerMirroredStrategy` with a `TF_CONFIG` made from the arguments;
worker `i` listens on `--worker-addresses`' `i`-th address (default: the
coordinator's host, port + i). `--num-processes 1` trains in this process
alone, on the same global batch: the reference a multi-process run must
reproduce.

Written to `--out` (every process writes its own `result_<id>.json`; the
chief also the gathered memory `state.npz` and the checkpoint `model.keras`):
per-step losses, step times, this process's rows. `--restore PATH` then
loads a `.keras` checkpoint written with any process count, checks that every
process holds its own rows of it, and writes the gathered state as
`restored_state.npz`. If another process dies, this one stops with an error
naming the cause within `--timeout` seconds of the last completed step (exit
status 2) instead of waiting forever (`--startup-timeout` for the first
step, which compiles; one process alone has no peer to wait for and no
watchdog).
"""

import argparse
import json
import os
import sys
import threading
import time

VOCAB = 32
SEGMENT = 8
CONFIG = dict(
    vocabulary_size=VOCAB,
    segment_length=SEGMENT,
    num_layers=1,
    hidden_dim=16,
    num_heads=2,
    intermediate_dim=32,
    num_basis=16,
    num_samples=16,
    num_bins=16,
    sticky_memories=True,
    compressed_memory_length=4,
    compression_rate=4,
    dropout=0.0,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("jax", "tensorflow"), default="jax")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--num-processes", type=int, default=1)
    parser.add_argument("--coordinator", default="127.0.0.1:12345", help="host:port of process 0")
    parser.add_argument(
        "--worker-addresses",
        default=None,
        help="TensorFlow: comma-separated host:port of every worker",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="global batch")
    parser.add_argument("--documents", type=int, default=12)
    parser.add_argument("--hidden-dim", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="multi_process_out")
    parser.add_argument("--restore", default=None, help="a .keras checkpoint to load")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds without a finished step before giving up (several processes only)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=600.0,
        help="seconds allowed for the first step, which compiles",
    )
    parser.add_argument(
        "--die-at-step", type=int, default=None, help="(testing) exit abruptly before this step"
    )
    return parser.parse_args(argv)


def setup_engine(args):
    """Join the job (before any model exists) and return the strategy (TF)."""
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    if args.num_processes == 1:
        return None
    if args.backend == "tensorflow":
        host, port = args.coordinator.rsplit(":", 1)
        workers = (
            args.worker_addresses.split(",")
            if args.worker_addresses
            else [f"{host}:{int(port) + i}" for i in range(args.num_processes)]
        )
        os.environ["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": args.process_id},
            }
        )
        import tensorflow as tf

        # A collective that waits longer than this fails instead of hanging.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=args.timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    import jax

    # Collectives between the processes' CPU devices go through gloo (the
    # accelerators' own collectives are unaffected).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    import keras

    keras.distribution.initialize(
        job_addresses=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    import keras_infformer

    keras.distribution.set_distribution(keras_infformer.distribution.data_parallel())
    return None


def make_documents(count):
    import numpy as np

    rng = np.random.default_rng(7)
    lengths = rng.integers(SEGMENT, 4 * SEGMENT, size=count)
    return [rng.integers(1, VOCAB, size=n) for n in lengths]


def build(batch_size, hidden_dim=16):
    import keras

    from keras_infformer.models import InfiniteFormerLM

    # The same seed in every process: the same initial weights.
    keras.utils.set_random_seed(0)
    config = dict(CONFIG, hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim)
    model = InfiniteFormerLM(batch_size=batch_size, **config)
    # The default loss: the mean over real tokens (padding has weight 0).
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


class Watchdog:
    """Stops the process with a clear error when no step finishes in time.

    A process whose peer died waits in the next collective; the engines'
    own failure detection can take minutes or never fire. Exit status 2.
    Started once the imports and the model are done; until the first step
    has finished (its compilation included) the allowance is
    `startup_timeout`, then `timeout` from each step to the next.

    Args:
        timeout: float. Seconds allowed from one finished step to the next.
        process_id: int. Named in the error.
        startup_timeout: float. Seconds allowed for the first step.
        on_fail: called with `(process_id, reason)` (default: `fail`,
            which exits).
    """

    def __init__(self, timeout, process_id, startup_timeout=None, on_fail=None):
        self.timeout = float(timeout)
        self.process_id = process_id
        self.allowance = max(self.timeout, float(startup_timeout or 0.0))
        self.on_fail = on_fail or fail
        self.last = time.monotonic()
        self.where = "starting (the first step compiles)"
        self._done = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def tick(self, where):
        self.last = time.monotonic()
        self.where = where
        self.allowance = self.timeout

    def stop(self):
        self._done.set()

    def _watch(self):
        while not self._done.wait(min(1.0, self.timeout / 4)):
            waited = time.monotonic() - self.last
            if waited > self.allowance:
                self._done.set()
                self.on_fail(
                    self.process_id,
                    f"no progress for {waited:.0f} s after {self.where}: "
                    "another process of the job has probably died or hangs",
                )


class _NoWatchdog:
    """One process has no peer to wait for: nothing to watch."""

    def tick(self, where):
        pass

    def stop(self):
        pass


def start_watchdog(args):
    """A `Watchdog` for a job of several processes, else a stand-in."""
    if args.num_processes <= 1:
        return _NoWatchdog()
    return Watchdog(args.timeout, args.process_id, args.startup_timeout)


def fail(process_id, reason):
    print(f"[process {process_id}] ERROR: training stopped: {reason}", file=sys.stderr, flush=True)
    os._exit(2)


def main(argv=None):
    args = parse_args(argv)
    strategy = setup_engine(args)

    import contextlib

    import keras
    import numpy as np

    import keras_infformer
    from keras_infformer.data import StreamingDataset

    def scope():
        return strategy.scope() if strategy is not None else contextlib.nullcontext()

    with scope():
        model = build(args.batch_size, args.hidden_dim)
    dataset = StreamingDataset(
        make_documents(args.documents), batch_size=args.batch_size, segment_length=SEGMENT
    )
    losses, times = [], []
    # Started after the imports and the build; the first step (which
    # compiles) has its own allowance.
    watchdog = start_watchdog(args)

    class Progress(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if args.die_at_step is not None and batch == args.die_at_step:
                os._exit(3)  # Testing: die as a killed process would.
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            losses.append(float(np.asarray(logs["loss"])))  # Waits for the step.
            times.append(time.perf_counter() - self._start)
            watchdog.tick(f"step {batch}")

    try:
        model.fit(
            dataset,
            epochs=args.epochs,
            verbose=0,
            callbacks=[keras_infformer.ResetMemory(), Progress()],
        )
        watchdog.tick("training")
        state = {k: np.asarray(v) for k, v in model.get_state().items()}
        watchdog.tick("gathering the memory")
        chief = keras_infformer.distribution.process_index() == 0
        os.makedirs(args.out, exist_ok=True)
        # Every process saves (the memory is gathered collectively); only
        # the chief's file is kept.
        path = os.path.join(args.out, "model.keras")
        if not chief:
            path = os.path.join(args.out, f"worker_{args.process_id}", "model.keras")
            os.makedirs(os.path.dirname(path), exist_ok=True)
        model.save(path)
        watchdog.tick("saving")
        result = {
            "process_index": keras_infformer.distribution.process_index(),
            "num_processes": keras_infformer.distribution.num_processes(),
            "rows": list(dataset.process_rows),
            "num_steps": len(dataset),
            "losses": losses,
            "step_times": times,
        }
        if chief:
            np.savez(os.path.join(args.out, "state.npz"), **state)
        if args.restore:
            with scope():
                restored = keras.saving.load_model(args.restore)
            saved = {k: np.asarray(v) for k, v in restored.get_state().items()}
            start, stop = dataset.process_rows
            result["restored_rows_match"] = _local_rows_match(restored, start, stop)
            if chief:
                np.savez(os.path.join(args.out, "restored_state.npz"), **saved)
            watchdog.tick("restoring")
    except Exception as error:  # The engines raise many kinds on a lost peer.
        import traceback

        traceback.print_exc()
        fail(args.process_id, f"{type(error).__name__}: {_cause(error)}")
    watchdog.stop()
    with open(os.path.join(args.out, f"result_{args.process_id}.json"), "w") as f:
        json.dump(result, f)
    print(
        f"[process {args.process_id}] losses {losses[0]:.4f} -> {losses[-1]:.4f}, "
        f"rows {dataset.process_rows}",
        flush=True,
    )


def _cause(error):
    """The informative line of an engine's error (TF's first line is often
    just "Graph execution error:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(
            word in line
            for word in (
                "unhealthy",
                "aborted",
                "reset by peer",
                "heartbeat",
                "Connection",
                "crashed",
            )
        ):
            return line
    return lines[0] if lines else ""


def _local_rows_match(model, start, stop):
    """Whether every memory variable of `model` holds, in this process, rows
    start:stop of the gathered memory."""
    import numpy as np

    from keras_infformer import compat, memory
    from keras_infformer.memory import MemoryLayer

    for layer in compat.flatten_layers(model, include_self=True):
        if not isinstance(layer, MemoryLayer) or not layer.stateful:
            continue
        gathered = layer.get_state()
        for name, variable in layer._state_variables.items():
            local = memory.local_memory(variable)
            if not np.array_equal(local, np.asarray(gathered[name])[start:stop]):
                return False
    return True


if __name__ == "__main__":
    main()
