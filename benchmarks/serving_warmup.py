"""First-request latency of an exported model, with and without the warm-up.

Exports the small LM of `export_latency.py` (hidden 64, 2 layers, segment
64, N 64) with `keras_infformer.export_for_serving`, once served as one
XLA-compiled step (`jit_compile=True`, the default from JAX) and once as
plain TensorFlow ops (`jit_compile=False`), then, in fresh TensorFlow-only
processes (Keras and JAX blocked from importing in the client modes), loads
the SavedModel and plays a client's generation at batch 1: `initial_state`,
one `serving_default` segment, `decode_state`, then `--tokens` `decode_step`
requests. Timed: the first `serving_default` and the first `decode_step`
request after loading, and the median of the later `decode_step` requests
(warm, per token). Three ways to start:

- `cold`: nothing before the client's first request (the first request
  builds the graph and compiles the step);
- `warmup_file`: the export's `assets.extra/tf_serving_warmup_requests`
  replayed first, as TF Serving does when it loads a version (this mode
  imports `keras_infformer.export` to decode the file);
- `client_warm_up`: `examples/serving_client.warm_up`, what
  `serving_client.load` runs after loading (one request per signature).

Each way runs in `--repeats` fresh processes (median reported). Prints a
table and writes benchmarks/results/serving_warmup.json.

    KERAS_BACKEND=tensorflow python benchmarks/serving_warmup.py
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

import keras_infformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "serving_warmup.json")
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
MODES = ("cold", "warmup_file", "client_warm_up")

# The client process: TensorFlow only (plus the package's decoder of the
# warm-up file in `warmup_file` mode). Prints one JSON line.
_CHILD = r"""
import json, sys, time
request = json.loads(sys.argv[1])
if request["mode"] != "warmup_file":
    for name in ("keras", "keras_infformer", "keras_hub", "jax", "jaxlib", "tf_keras"):
        sys.modules[name] = None  # A TensorFlow-only client.
import numpy as np
import tensorflow as tf
sys.path.insert(0, request["examples"])
import serving_client

start = time.perf_counter()
warm_up_s = None
served = tf.saved_model.load(request["path"])
load_s = time.perf_counter() - start
if request["mode"] == "client_warm_up":
    warm_up_s = serving_client.warm_up(served, (1,))  # What serving_client.load runs.
elif request["mode"] == "warmup_file":
    from keras_infformer.export import read_warmup_requests
    start = time.perf_counter()
    for _, signature, inputs in read_warmup_requests(request["path"]):
        outputs = served.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        [v.numpy() for v in outputs.values()]
    warm_up_s = time.perf_counter() - start

signatures = served.signatures
state = signatures["initial_state"](batch_size=tf.constant(1))
rng = np.random.default_rng(0)
length, vocabulary = request["segment_length"], request["vocabulary_size"]
start = time.perf_counter()
outputs = dict(signatures["serving_default"](
    token_ids=tf.constant(rng.integers(0, vocabulary, (1, length)).astype("int32")),
    reset=tf.constant([True]), **state))
outputs.pop("logits").numpy()
first_segment_s = time.perf_counter() - start
state = signatures["decode_state"](**outputs)
token = np.zeros((1, 1), "int32")
times = []
for _ in range(request["tokens"] + 1):
    start = time.perf_counter()
    outputs = dict(signatures["decode_step"](token_ids=tf.constant(token), **state))
    token = outputs.pop("logits").numpy().argmax(-1)[:, None].astype("int32")
    times.append(time.perf_counter() - start)
    state = outputs
print(json.dumps(dict(
    load_s=load_s, warm_up_s=warm_up_s, first_serving_default_s=first_segment_s,
    first_decode_step_s=times[0], warm_decode_step_s=float(np.median(times[1:])),
)))
"""


def run_client(path, mode, tokens):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in sys.path if p])
    request = dict(
        path=path,
        mode=mode,
        tokens=tokens,
        examples=os.path.join(ROOT, "examples"),
        segment_length=CONFIG["segment_length"],
        vocabulary_size=CONFIG["vocabulary_size"],
    )
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(request)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"client ({mode}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def summarise(runs):
    """Median over the fresh processes of each field, in ms."""
    out = {}
    for field in ("first_serving_default_s", "first_decode_step_s", "warm_decode_step_s"):
        out[field[:-2] + "_ms"] = round(1000 * float(np.median([r[field] for r in runs])), 3)
    warm_ups = [r["warm_up_s"] for r in runs if r["warm_up_s"] is not None]
    if warm_ups:
        out["warm_up_ms"] = round(1000 * float(np.median(warm_ups)), 1)
    out["load_ms"] = round(1000 * float(np.median([r["load_s"] for r in runs])), 1)
    # Per process: first decode_step over that process's warm median.
    ratios = [r["first_decode_step_s"] / r["warm_decode_step_s"] for r in runs]
    out["first_over_warm_decode_step"] = round(float(np.median(ratios)), 2)
    out["first_over_warm_each_run"] = [round(x, 2) for x in ratios]
    out["runs"] = len(runs)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per mode")
    parser.add_argument("--tokens", type=int, default=64, help="decode_step requests timed warm")
    parser.add_argument("--output", default=RESULTS)
    args = parser.parse_args()
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise SystemExit("Run with KERAS_BACKEND=tensorflow (or jax): the export needs it.")

    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras_infformer.models.InfiniteFormerLM(**CONFIG)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for jit_compile in (True, False):
            label = "xla" if jit_compile else "plain_tf"
            path = keras_infformer.export_for_serving(
                model, os.path.join(tmp, label), jit_compile=jit_compile
            )
            runs = {mode: [] for mode in MODES}
            for _ in range(args.repeats):  # Interleaved: the load drifts less.
                for mode in MODES:
                    runs[mode].append(run_client(path, mode, args.tokens))
            results[label] = {mode: summarise(r) for mode, r in runs.items()}

    result = {
        "what": (
            "latency of the first requests after loading an export (batch 1, "
            "TensorFlow-only client processes), cold and warmed up"
        ),
        "config": CONFIG,
        "tokens_timed": args.tokens,
        "target": "first decode_step <= 2 x a warm one",
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "device": "CPU",
        },
    }
    print(
        f"{'export':9s} {'start':15s} {'1st segment':>12s} {'1st decode':>11s} "
        f"{'warm decode':>12s} {'ratio':>6s} {'warm-up':>8s}"
    )
    for label, modes in results.items():
        for mode, r in modes.items():
            print(
                f"{label:9s} {mode:15s} {r['first_serving_default_ms']:10.1f}ms "
                f"{r['first_decode_step_ms']:9.1f}ms {r['warm_decode_step_ms']:10.2f}ms "
                f"{r['first_over_warm_decode_step']:6.2f} "
                f"{r.get('warm_up_ms', float('nan')):7.0f}ms"
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
