"""Sort one sequence with an exported sorting model, using TensorFlow only.

This is what a TF Serving client does, in-process: it keeps the memory of its
stream itself, sends it with every segment to the pure `serving_default`
signature and keeps the new state it gets back. The answer is decoded
greedily: the final segment is re-sent from the same state with one more
predicted symbol each time (the server holds nothing, so re-sending a
segment from a saved state is free of side effects).

    python examples/sort_with_saved_model.py --export-dir saved_models/sorting_infformer/1 \\
        --sequence sequence.npz
"""

import argparse
import sys

import numpy as np
import tensorflow as tf

NUM_SYMBOLS, SEPARATOR_ID, PAD_ID = 20, 20, 21


def sort_sequence(export_dir, tokens, segment_length):
    served = tf.saved_model.load(export_dir)
    step = served.signatures["serving_default"]
    state = served.signatures["initial_state"](batch_size=tf.constant(1, tf.int32))
    stream_length = len(tokens) + 1 + NUM_SYMBOLS
    num_segments = -(-stream_length // segment_length)
    stream = np.full(num_segments * segment_length, PAD_ID, np.int32)
    offset = len(stream) - stream_length  # Left padding, as in training.
    stream[offset : offset + len(tokens)] = tokens
    stream[offset + len(tokens)] = SEPARATOR_ID
    segments = stream.reshape(num_segments, segment_length)
    for s in range(num_segments - 1):
        outputs = step(
            token_ids=tf.constant(segments[s][None]), reset=tf.constant([s == 0]), **state
        )
        outputs.pop("logits")
        state = outputs
    final = segments[-1].copy()
    first = segment_length - NUM_SYMBOLS - 1  # Position of the separator.
    predicted = []
    for k in range(NUM_SYMBOLS):
        outputs = step(
            token_ids=tf.constant(final[None]),
            reset=tf.constant([num_segments == 1]),
            **state,
        )
        logits = outputs["logits"].numpy()[0, first + k, :NUM_SYMBOLS]
        symbol = int(np.argmax(logits))
        predicted.append(symbol)
        if k + 1 < NUM_SYMBOLS:
            final[first + 1 + k] = symbol
    return np.asarray(predicted)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export-dir", required=True, help="A version folder of the export.")
    parser.add_argument("--sequence", required=True,
                        help=".npz with 'tokens' (T,), 'order' (20,), 'segment_length'.")
    args = parser.parse_args(argv)
    data = np.load(args.sequence)
    tokens, order = data["tokens"], data["order"]
    predicted = sort_sequence(args.export_dir, tokens, int(data["segment_length"]))
    counts = np.bincount(tokens, minlength=NUM_SYMBOLS)
    print(f"Loaded {args.export_dir} with TensorFlow {tf.__version__} only "
          f"(keras_infformer imported: {'keras_infformer' in sys.modules}).")
    print(f"Input: {len(tokens)} symbols; counts by symbol: {counts.tolist()}")
    print(f"  first 10%: most frequent {np.bincount(tokens[: len(tokens) // 10], minlength=20).argmax()}, "
          f"last 10%: most frequent {np.bincount(tokens[-len(tokens) // 10:], minlength=20).argmax()}")
    print(f"True order:      {order.tolist()}")
    print(f"Predicted order: {predicted.tolist()}")
    print(f"Positions right: {int((predicted == order).sum())} / {NUM_SYMBOLS}")


if __name__ == "__main__":
    main()
