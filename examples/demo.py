"""The main job (`make demo`): what the memory does, then the product, end to end.

1. Far recall (`benchmarks/recall_task.py`): a key, then more filler than a
   Transformer-XL can reach, then a query whose answer is the key. The
   ∞-former and the Transformer-XL baseline train side by side on the same
   batches; the baseline stays at chance, the ∞-former recalls.
2. The sorting task (`examples/sorting_task.py`): a small ∞-former and the
   Transformer-XL of the same trainable size, same data and steps, their
   accuracies side by side (TensorBoard logs under `logs/`).
3. Exports the sorting ∞-former for TensorFlow Serving with
   `export_for_serving` to `saved_models/sorting_infformer/<version>/`.
4. Reloads that export in a fresh process that imports TensorFlow only and
   sorts one fresh sequence through it, as a serving client would: the
   sequence a segment per `serving_default` request, the answer generated
   one token per `decode_step` request.

Sized to finish in under 10 minutes on 2 CPU cores; the flags of
`sorting_task.py` are accepted to change step 2 (e.g. `--lengths 2048`).
"""

import os
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import sorting_task  # noqa: E402

import keras_infformer  # noqa: E402

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import recall_task  # noqa: E402

from keras_infformer.data import sorting  # noqa: E402

DEMO_DEFAULTS = [
    "--models",
    "infformer",
    "xl",
    "--lengths",
    "1024",
    "--train-sequences",
    "6400",
    "--epochs",
    "1",
    "--eval-sequences",
    "256",
    "--learning-rate",
    "3e-3",
    "--logdir",
    os.path.join(ROOT, "logs", "demo"),
    "--verbose",
    "2",
]


def recall_summary(recall):
    """One line: the far-recall accuracies of a `recall_task.main()` record."""
    accuracy = {name: r["accuracy"] for name, r in recall["results"].items()}
    return (
        f"One key token lies {recall['tokens_between_key_and_query']}+ tokens back; a "
        f"Transformer-XL of this depth sees {recall['transformer_xl_reach_tokens']}. "
        f"Recall accuracy: ∞-former {accuracy['infformer']:.3f}, with sticky memories "
        f"{accuracy['infformer_sticky']:.3f}, Transformer-XL {accuracy['xl']:.3f} "
        f"(chance {recall['chance_accuracy']:.3f})."
    )


def main():
    start = time.perf_counter()
    args = sorting_task.parse_args(DEMO_DEFAULTS + sys.argv[1:])
    length = args.lengths[0]

    print("=== 1. Far recall: can the model answer with a key it saw beyond its short-term reach?")
    recall = recall_task.main(["--out", ""])
    print(recall_summary(recall))

    print(
        f"\n=== 2. Sorting task, T={length} tokens, segment {args.segment_length}, "
        f"short-term memory {args.memory_length}, N={args.num_basis} basis functions."
    )
    results, trained = {}, {}
    for kind in args.models:
        print(f"\n=== Training {kind}")
        trained[kind], results[kind] = sorting_task.run_one(kind, length, args)
    print("\n| model | parameters | accuracy | train s |\n|---|---|---|---|")
    for kind, r in results.items():
        print(f"| {kind} | {r['parameters']:,} | {r['accuracy']:.3f} | {r['train_seconds']:.0f} |")
    print(f"(chance level: {1 / sorting.NUM_SYMBOLS:.3f}; same steps and data for both)")

    export_dir = os.path.join(ROOT, "saved_models", "sorting_infformer")
    path = keras_infformer.export_for_serving(trained["infformer"], export_dir)
    print(f"\n=== 3. Exported the ∞-former for TF Serving to {path}")

    tokens, order = sorting.generate_sequences(1, length, seed=2026)
    sequence_file = os.path.join(ROOT, "logs", "demo", "demo_sequence.npz")
    os.makedirs(os.path.dirname(sequence_file), exist_ok=True)
    np.savez(sequence_file, tokens=tokens[0], order=order[0], segment_length=args.segment_length)
    print(
        "\n=== 4. Sorting one fresh sequence with the export, in a TensorFlow-only "
        "process (the answer generated through `decode_step`):"
    )
    subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "sort_with_saved_model.py"),
            "--export-dir",
            path,
            "--sequence",
            sequence_file,
        ],
        check=True,
    )
    print(f"\nDemo wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
