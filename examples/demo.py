"""The main job (`make demo`): the ∞-former on the sorting task, end to end.

1. Trains a small ∞-former and the Transformer-XL baseline of the same size
   on the sorting task (`examples/sorting_task.py`) with the same budget, and
   prints their accuracies side by side (TensorBoard logs under `logs/`).
2. Exports the ∞-former for TensorFlow Serving with `export_for_serving` to
   `saved_models/sorting_infformer/<version>/`.
3. Reloads that export in a fresh process that imports TensorFlow only and
   sorts one fresh sequence through it, as a serving client would.

Sized to finish in under 10 minutes on 2 CPU cores (400 training steps per
model); the flags of
`sorting_task.py` are accepted to change it (e.g. `--lengths 2048`).
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

import keras_infformer  # noqa: E402
import sorting_task  # noqa: E402
from keras_infformer.data import sorting  # noqa: E402

DEMO_DEFAULTS = [
    "--models", "infformer", "xl",
    "--lengths", "1024",
    "--train-sequences", "6400",
    "--epochs", "1",
    "--eval-sequences", "256",
    "--learning-rate", "3e-3",
    "--logdir", os.path.join(ROOT, "logs", "demo"),
    "--verbose", "2",
]


def main():
    start = time.perf_counter()
    args = sorting_task.parse_args(DEMO_DEFAULTS + sys.argv[1:])
    length = args.lengths[0]
    print(f"Sorting task, T={length} tokens, segment {args.segment_length}, "
          f"short-term memory {args.memory_length}, N={args.num_basis} basis functions.")
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
    print(f"\nExported the ∞-former for TF Serving to {path}")

    tokens, order = sorting.generate_sequences(1, length, seed=2026)
    sequence_file = os.path.join(ROOT, "logs", "demo", "demo_sequence.npz")
    os.makedirs(os.path.dirname(sequence_file), exist_ok=True)
    np.savez(sequence_file, tokens=tokens[0], order=order[0],
             segment_length=args.segment_length)
    print("Sorting one fresh sequence with the export, in a TensorFlow-only process:")
    subprocess.run(
        [sys.executable, os.path.join(HERE, "sort_with_saved_model.py"),
         "--export-dir", path, "--sequence", sequence_file],
        check=True,
    )
    print(f"\nDemo wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
