"""Sort one sequence with an exported sorting model, using TensorFlow only.

This is what a TF Serving client does, in-process: it keeps the memory of its
stream itself and sends it with every request. The sequence is read a
segment per `serving_default` request; then the last segment, up to the
separator, and each predicted symbol go one token per `decode_step` request
(greedy decoding over the 20 symbols), the way
`InfiniteFormerCausalLM.generate()` decodes.

    python examples/sort_with_saved_model.py --export-dir saved_models/sorting_infformer/1 \\
        --sequence sequence.npz
"""

import argparse
import sys
import time

import numpy as np
import tensorflow as tf

NUM_SYMBOLS, SEPARATOR_ID, PAD_ID = 20, 20, 21


def sort_sequence(export_dir, tokens, segment_length):
    """The predicted order of the 20 symbols, and the seconds of each
    `decode_step` request."""
    served = tf.saved_model.load(export_dir)
    signatures = served.signatures
    state = signatures["initial_state"](batch_size=tf.constant(1, tf.int32))
    stream_length = len(tokens) + 1 + NUM_SYMBOLS
    num_segments = -(-stream_length // segment_length)
    stream = np.full(num_segments * segment_length, PAD_ID, np.int32)
    offset = len(stream) - stream_length  # Left padding, as in training.
    stream[offset : offset + len(tokens)] = tokens
    stream[offset + len(tokens)] = SEPARATOR_ID
    segments = stream.reshape(num_segments, segment_length)
    for s in range(num_segments - 1):
        outputs = signatures["serving_default"](
            token_ids=tf.constant(segments[s][None]), reset=tf.constant([s == 0]), **state
        )
        outputs.pop("logits")
        state = outputs
    state = signatures["decode_state"](**state)

    separator = segment_length - NUM_SYMBOLS - 1  # Its position in the last segment.
    feed = list(segments[-1][: separator + 1])  # The last segment's prompt part.
    predicted, seconds = [], []
    while len(predicted) < NUM_SYMBOLS:
        start = time.perf_counter()
        outputs = signatures["decode_step"](
            token_ids=tf.constant([[feed.pop(0)]], tf.int32), **state
        )
        logits = outputs.pop("logits").numpy()[0, :NUM_SYMBOLS]
        seconds.append(time.perf_counter() - start)
        state = outputs
        if not feed:  # The prompt is read: this logit predicts the next symbol.
            predicted.append(int(np.argmax(logits)))
            feed.append(predicted[-1])
    return np.asarray(predicted), seconds


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export-dir", required=True, help="A version folder of the export.")
    parser.add_argument(
        "--sequence",
        required=True,
        help=".npz with 'tokens' (T,), 'order' (20,), 'segment_length'.",
    )
    args = parser.parse_args(argv)
    data = np.load(args.sequence)
    tokens, order = data["tokens"], data["order"]
    predicted, seconds = sort_sequence(args.export_dir, tokens, int(data["segment_length"]))
    counts = np.bincount(tokens, minlength=NUM_SYMBOLS)
    print(
        f"Loaded {args.export_dir} with TensorFlow {tf.__version__} only "
        f"(keras_infformer imported: {'keras_infformer' in sys.modules})."
    )
    print(f"Input: {len(tokens)} symbols; counts by symbol: {counts.tolist()}")
    tenth = len(tokens) // 10
    first_mode = np.bincount(tokens[:tenth], minlength=20).argmax()
    last_mode = np.bincount(tokens[-tenth:], minlength=20).argmax()
    print(f"  first 10%: most frequent {first_mode}, last 10%: most frequent {last_mode}")
    print(f"True order:      {order.tolist()}")
    print(f"Predicted order: {predicted.tolist()}")
    print(f"Positions right: {int((predicted == order).sum())} / {NUM_SYMBOLS}")
    print(
        f"decode_step: {len(seconds)} requests, median "
        f"{1000 * np.median(seconds[1:] or seconds):.2f} ms each"
    )


if __name__ == "__main__":
    main()
