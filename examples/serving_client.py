"""Stream a long token sequence through an exported ∞-former, as a client would.

The exported model (`keras_infformer.export_for_serving`) is a pure function:
every request carries the memory of its stream(s) and the response carries
the new memory, which the client sends back with the next segment. This
script does exactly that with TensorFlow alone (no Keras, no keras_infformer)
and prints the latency of each segment.

    python examples/serving_client.py --export-dir saved_models/lm

The same round trip through TensorFlow Serving:

    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_name=lm --model_base_path=$PWD/saved_models/lm \\
        --xla_cpu_compilation_enabled=true

(the last flag lets a CPU server run an export made with `jit_compile=True`,
the default from JAX.)

REST (`POST http://localhost:8501/v1/models/lm:predict`), first the empty
state for a batch of B streams:

    {"signature_name": "initial_state", "inputs": {"batch_size": B}}
    -> {"outputs": {"layer_0_stm": [B x memory_length x hidden_dim], ...}}

then one request per segment of S tokens, inputs by name, the state being
the previous response's outputs (minus "logits"):

    {"signature_name": "serving_default",
     "inputs": {"token_ids": [[...S ints...], ...B rows],
                "reset": [true, ...B bools],      # rows that start a document
                "layer_0_stm": [...], "layer_0_stm_mask": [...],
                "layer_0_ltm_coefficients": [...], "layer_0_ltm_filled": [...],
                "layer_0_ltm_max_abs": [...],
                ...every state name of every layer...}}
    -> {"outputs": {"logits": [B x S x vocabulary_size], "layer_0_stm": ...}}

gRPC (`PredictionService/Predict`, port 8500): a `PredictRequest` with
`model_spec.name = "lm"`, `model_spec.signature_name = "serving_default"`
and one `inputs[name]` TensorProto per input above (int32 `token_ids`
`(B, S)`, bool `reset` `(B,)`, float32 state tensors); the
`PredictResponse.outputs` map holds `logits` and the new state. The names,
dtypes and shapes are listed by `saved_model_cli show --all --dir
saved_models/lm/1`.
"""

import argparse
import os
import re
import time

import numpy as np
import tensorflow as tf


def latest_version(export_dir):
    """`export_dir` itself if it is a SavedModel, else its highest version."""
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = [n for n in os.listdir(export_dir) if re.fullmatch(r"[0-9]+", n)]
    if not versions:
        raise SystemExit(f"No SavedModel version found under {export_dir!r}")
    return os.path.join(export_dir, max(versions, key=int))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--export-dir", required=True,
        help="the model base path (with version folders) or one version",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="parallel streams")
    parser.add_argument("--num-segments", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    path = latest_version(args.export_dir)
    served = tf.saved_model.load(path)
    serve = served.signatures["serving_default"]
    inputs = serve.structured_input_signature[1]
    segment_length = inputs["token_ids"].shape[1]
    vocabulary_size = serve.structured_outputs["logits"].shape[-1]
    print(
        f"Loaded {path}: segment_length={segment_length}, "
        f"vocabulary_size={vocabulary_size}, "
        f"{len(inputs) - 2} state tensors"
    )

    # One long sequence per stream, cut into segments.
    rng = np.random.default_rng(args.seed)
    stream = rng.integers(
        0, vocabulary_size, (args.batch_size, args.num_segments * segment_length)
    ).astype("int32")

    state = served.signatures["initial_state"](batch_size=tf.constant(args.batch_size))
    latencies = []
    for i in range(args.num_segments):
        token_ids = stream[:, i * segment_length : (i + 1) * segment_length]
        reset = np.full((args.batch_size,), i == 0)  # A new document at the start.
        start = time.perf_counter()
        outputs = serve(token_ids=tf.constant(token_ids), reset=tf.constant(reset), **state)
        logits = outputs.pop("logits").numpy()
        state = outputs  # The new memory goes back with the next segment.
        latencies.append(time.perf_counter() - start)
        # Next-token accuracy within the segment (chance level on random data).
        hits = (logits[:, :-1].argmax(-1) == token_ids[:, 1:]).mean()
        print(
            f"segment {i:4d}: {1000 * latencies[-1]:8.2f} ms "
            f"(next-token accuracy {hits:.3f})"
        )
    steady = latencies[1:] or latencies
    tokens = args.batch_size * segment_length
    print(
        f"median {1000 * np.median(steady):.2f} ms per segment after the first "
        f"({tokens / np.median(steady):.0f} tokens/s); first {1000 * latencies[0]:.2f} ms"
    )


if __name__ == "__main__":
    main()
