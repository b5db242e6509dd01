"""SavedModel size and served per-segment latency of a small ∞-former LM.

Exports a small LM (hidden 64, 2 layers, segment 64, N 64) with
`keras_infformer.export_for_serving` under the current Keras backend
(TensorFlow or JAX), loads it back with `tf.saved_model.load`, and times the
`serving_default` signature streaming segments (state round-trip, as a TF
Serving client does) at batch 1 and 8, and the `decode_step` signature
decoding one token per request (the generation path) at batch 1 and 8.
Prints a table and merges the results
into benchmarks/results/export_latency.json under the backend's name.

    KERAS_BACKEND=tensorflow python benchmarks/export_latency.py
    KERAS_BACKEND=jax python benchmarks/export_latency.py
"""

import argparse
import json
import os
import platform
import tempfile
import time

import keras
import numpy as np

import keras_infformer

CONFIG = dict(
    vocabulary_size=256,
    segment_length=64,
    batch_size=8,
    num_layers=2,
    hidden_dim=64,
    num_heads=4,
    num_basis=64,
    num_samples=64,
    dropout=0.0,
)
RESULTS = os.path.join(os.path.dirname(__file__), "results", "export_latency.json")


def folder_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def latency_summary(seconds, tokens_per_request, **fields):
    """Median, p90, mean and min in ms, and tokens/s at the median."""
    times = np.array(seconds) * 1000.0
    median = float(np.median(times))
    return dict(
        fields,
        median_ms=round(median, 3),
        p90_ms=round(float(np.percentile(times, 90)), 3),
        mean_ms=round(float(times.mean()), 3),
        min_ms=round(float(times.min()), 3),
        tokens_per_s=round(tokens_per_request / median * 1000.0, 1),
    )


def time_stream(served, batch, segments, warmup):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    serve = served.signatures["serving_default"]
    length, vocabulary = CONFIG["segment_length"], CONFIG["vocabulary_size"]
    state = served.signatures["initial_state"](batch_size=tf.constant(batch))
    times = []
    for i in range(warmup + segments):
        token_ids = tf.constant(rng.integers(0, vocabulary, (batch, length)).astype("int32"))
        reset = tf.constant(np.full((batch,), i == 0))
        start = time.perf_counter()
        outputs = dict(serve(token_ids=token_ids, reset=reset, **state))
        outputs.pop("logits").numpy()  # Wait for the result, as a client does.
        state = outputs
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return latency_summary(times, batch * length, batch_size=batch, segments_timed=segments)


def time_decode(served, batch, tokens, warmup):
    """Median latency of `decode_step` requests, one token per row each
    (greedy: the next request carries the argmax), state round-tripped."""
    import tensorflow as tf

    signatures = served.signatures
    state = signatures["decode_state"](**signatures["initial_state"](batch_size=tf.constant(batch)))
    token_ids = np.zeros((batch, 1), "int32")
    times = []
    for i in range(warmup + tokens):
        start = time.perf_counter()
        outputs = dict(signatures["decode_step"](token_ids=tf.constant(token_ids), **state))
        token_ids = outputs.pop("logits").numpy().argmax(-1)[:, None].astype("int32")
        state = outputs
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return latency_summary(times, batch, batch_size=batch, tokens_timed=tokens)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segments", type=int, default=50, help="timed segments per batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()

    import tensorflow as tf

    backend = keras.backend.backend()
    keras.utils.set_random_seed(0)
    model = keras_infformer.models.InfiniteFormerLM(**CONFIG)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = keras_infformer.export_for_serving(model, os.path.join(tmp, "lm"))
        export_s = time.perf_counter() - start
        size = {
            "total_bytes": folder_bytes(path),
            "saved_model_pb_bytes": os.path.getsize(os.path.join(path, "saved_model.pb")),
            "variables_bytes": folder_bytes(os.path.join(path, "variables")),
            "trainable_float32_bytes": 4
            * int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        }
        start = time.perf_counter()
        served = tf.saved_model.load(path)
        load_s = time.perf_counter() - start
        latency = [time_stream(served, b, args.segments, args.warmup) for b in (1, 8)]
        # Whole segments pass a segment boundary every `segment_length`
        # tokens: time two segments' worth of single tokens.
        decode = [time_decode(served, b, 2 * CONFIG["segment_length"], args.warmup) for b in (1, 8)]

    result = {
        "backend": backend,
        "config": CONFIG,
        "export_s": round(export_s, 2),
        "load_s": round(load_s, 2),
        "size": size,
        "latency": latency,
        "decode_step_latency": decode,
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }

    print(f"backend {backend}: export {export_s:.1f} s, load {load_s:.1f} s")
    print(
        f"SavedModel {size['total_bytes'] / 1e6:.2f} MB "
        f"(saved_model.pb {size['saved_model_pb_bytes'] / 1e6:.2f} MB, variables "
        f"{size['variables_bytes'] / 1e6:.2f} MB; trainable weights "
        f"{size['trainable_float32_bytes'] / 1e6:.2f} MB as float32)"
    )
    print(f"{'batch':>5} | {'median ms':>9} | {'p90 ms':>8} | {'mean ms':>8} | {'tokens/s':>9}")
    for row in latency:
        print(
            f"{row['batch_size']:>5} | {row['median_ms']:>9.2f} | {row['p90_ms']:>8.2f} "
            f"| {row['mean_ms']:>8.2f} | {row['tokens_per_s']:>9.0f}"
        )

    print("decode_step (one token per row per request):")
    for row in decode:
        print(
            f"{row['batch_size']:>5} | {row['median_ms']:>9.2f} | {row['p90_ms']:>8.2f} "
            f"| {'':>8} | {row['tokens_per_s']:>9.0f}"
        )

    results = {}
    if os.path.exists(args.output):
        with open(args.output) as f:
            results = json.load(f)
    results[backend] = result
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
