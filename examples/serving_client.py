"""Stream tokens through an exported ∞-former, or generate text with it, as a client would.

The exported model (`keras_infformer.export_for_serving`) is a pure function:
every request carries the memory of its stream(s) and the response carries
the new memory, which the client sends back with the next request. This
script does exactly that with TensorFlow alone (no Keras, no keras_infformer).

Stream random segments and print the latency of each:

    python examples/serving_client.py --export-dir saved_models/lm

On load the client sends one request per signature at its batch size (as TF
Serving replays the export's warm-up file), so its first request is as fast
as the next ones (`--no-warm-up` to see the cold first request).

Generate text (a byte-level model, e.g. from `examples/train_text.py`): the
prompt is read a segment per `serving_default` request, the rest of it and
then every new token one per `decode_step` request (greedy):

    python examples/serving_client.py --export-dir saved_models/text_lm \
        --prompt "The memory of a" --max-new-tokens 64

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


def warm_up(served, batch_sizes=(1,)):
    """Run one request per signature and batch size, as TF Serving does with
    the export's warm-up file, so that the next requests are warm.

    The first call of a loaded signature builds its graph and, for an export
    made with `jit_compile=True`, compiles the XLA step for that batch size
    (seconds); later calls at the same batch size take milliseconds.

    Args:
        served: the loaded SavedModel (`tf.saved_model.load`).
        batch_sizes: tuple of ints >= 1. The batch sizes to warm (an XLA
            step is compiled per batch size). Defaults to `(1,)`.

    Returns:
        The seconds the warm-up took.
    """
    if not isinstance(batch_sizes, (tuple, list)) or any(
        isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in batch_sizes
    ):
        raise ValueError(
            f"`batch_sizes` must be a tuple of ints >= 1. Received: batch_sizes={batch_sizes!r}"
        )
    signatures = served.signatures
    step = signatures["serving_default"]
    segment_length = step.structured_input_signature[1]["token_ids"].shape[1]
    start = time.perf_counter()
    for batch in batch_sizes:
        state = signatures["initial_state"](batch_size=tf.constant(batch))
        outputs = dict(
            step(
                token_ids=tf.zeros((batch, segment_length), tf.int32),
                reset=tf.ones((batch,), tf.bool),
                **state,
            )
        )
        outputs.pop("logits").numpy()
        if "decode_step" in signatures:
            state = signatures["decode_state"](**state)
            outputs = signatures["decode_step"](token_ids=tf.zeros((batch, 1), tf.int32), **state)
            outputs["logits"].numpy()
    return time.perf_counter() - start


def load(export_dir, warm_up_batch_sizes=(1,)):
    """Load an export's latest version (or the version given) and warm it up.

    Args:
        export_dir: str. The model base path (with version folders) or one
            version folder.
        warm_up_batch_sizes: tuple of ints >= 1. Batch sizes `warm_up` runs
            (`()`: none, the first request then pays the compilation).
            Defaults to `(1,)`.

    Returns:
        `(served, path)`: the loaded SavedModel and its version folder.
    """
    path = latest_version(export_dir)
    served = tf.saved_model.load(path)
    if warm_up_batch_sizes:
        warm_up(served, warm_up_batch_sizes)
    return served, path


def generate(served, prompt_ids, max_new_tokens, stop_token_id=None):
    """Greedy generation with the exported signatures, TensorFlow only.

    Reads the prompt as `InfiniteFormerCausalLM.generate` does (whole
    segments through `serving_default`, then one token per `decode_step`),
    so the logits equal the in-process model's.

    Args:
        served: the loaded SavedModel (`tf.saved_model.load`).
        prompt_ids: int array `(batch, prompt_length)`, prompts of equal
            length (at least one token).
        max_new_tokens: int >= 0. Tokens to add to each row.
        stop_token_id: optional int. A row stops once it produced it.

    Returns:
        `(token_ids (batch, prompt_length + max_new_tokens), logits (batch,
        prompt_length + max_new_tokens - 1, vocabulary_size), decode_seconds)`:
        `logits[:, t]` predicts token `t + 1` (rows stop when every row has
        produced `stop_token_id`), `decode_seconds` the wall time of each
        `decode_step` request.
    """
    signatures = served.signatures
    step = signatures["serving_default"]
    segment_length = step.structured_input_signature[1]["token_ids"].shape[1]
    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim != 2 or prompt_ids.dtype.kind not in "iu":
        raise ValueError(
            "`prompt_ids` must be an integer array (batch, prompt_length). "
            f"Received: prompt_ids of shape {prompt_ids.shape} and dtype {prompt_ids.dtype}"
        )
    prompt_ids = prompt_ids.astype("int32")
    batch, prompt_length = prompt_ids.shape
    if prompt_length < 1 or batch < 1:
        raise ValueError(
            "`prompt_ids` needs at least one row and one token. Received: "
            f"prompt_ids.shape={prompt_ids.shape}"
        )
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, np.integer))
        or max_new_tokens < 0
    ):
        raise ValueError(
            f"`max_new_tokens` must be an int >= 0. Received: max_new_tokens={max_new_tokens!r}"
        )
    vocabulary_size = signatures["decode_step"].structured_outputs["logits"].shape[-1]
    state = signatures["initial_state"](batch_size=tf.constant(batch))
    logits = []
    # Whole segments of the prompt, leaving at least its last token to decode.
    consumed = 0
    while consumed + segment_length <= prompt_length - 1:
        outputs = step(
            token_ids=tf.constant(prompt_ids[:, consumed : consumed + segment_length]),
            reset=tf.constant(np.full((batch,), consumed == 0)),
            **state,
        )
        logits.extend(np.moveaxis(outputs.pop("logits").numpy(), 1, 0))
        state = outputs
        consumed += segment_length
    state = signatures["decode_state"](**state)

    decode_step = signatures["decode_step"]
    tokens = list(prompt_ids.T)
    stopped = np.zeros((batch,), bool)
    seconds = []
    for index in range(consumed, prompt_length + max_new_tokens - 1):
        start = time.perf_counter()
        outputs = decode_step(token_ids=tf.constant(tokens[index][:, None]), **state)
        next_logits = outputs.pop("logits").numpy()
        seconds.append(time.perf_counter() - start)
        state = outputs
        logits.append(next_logits)
        if index + 1 < prompt_length:
            continue  # Still reading the prompt.
        next_token = next_logits.argmax(-1).astype("int32")
        tokens.append(next_token)
        if stop_token_id is not None:
            stopped |= next_token == stop_token_id
            if stopped.all():
                break
    if not logits:  # A 1-token prompt and no new token: nothing computed.
        return prompt_ids.copy(), np.zeros((batch, 0, vocabulary_size), "float32"), seconds
    return np.stack(tokens, axis=1), np.stack(logits, axis=1), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--export-dir",
        required=True,
        help="the model base path (with version folders) or one version",
    )
    parser.add_argument("--batch-size", type=int, default=1, help="parallel streams")
    parser.add_argument("--num-segments", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompt",
        default=None,
        help="generate from this text instead (a byte-level model: ids are UTF-8 bytes)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the warm-up requests at load (the first request then compiles)",
    )
    args = parser.parse_args()

    # Warm at the batch size this client sends, so its first request is fast.
    served, path = load(args.export_dir, () if args.no_warm_up else (args.batch_size,))
    if args.prompt is not None:
        if "decode_step" not in served.signatures:
            raise SystemExit(f"{path} has no decode_step signature (export it again).")
        prompt = np.frombuffer(args.prompt.encode("utf-8"), np.uint8).astype("int32")
        tokens, _, seconds = generate(served, prompt[None, :], args.max_new_tokens)
        text = bytes(tokens[0].astype("uint8").tolist()).decode("utf-8", "replace")
        print(f"Loaded {path}\n{text!r}")
        steady = seconds[1:] or seconds
        print(
            f"decode_step: median {1000 * np.median(steady):.2f} ms per token "
            f"after the first ({len(seconds)} requests; first {1000 * seconds[0]:.2f} ms)"
        )
        return
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
        print(f"segment {i:4d}: {1000 * latencies[-1]:8.2f} ms (next-token accuracy {hits:.3f})")
    steady = latencies[1:] or latencies
    tokens = args.batch_size * segment_length
    print(
        f"median {1000 * np.median(steady):.2f} ms per segment after the first "
        f"({tokens / np.median(steady):.0f} tokens/s); first {1000 * latencies[0]:.2f} ms"
    )


if __name__ == "__main__":
    main()
