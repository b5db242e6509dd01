"""Train a byte-level ∞-former on a folder of text files, then generate.

Text files in; out: a model trained with `fit` (progress bar, TensorBoard
scalars and the long-term memory's attention densities as images), its bits
per byte on held-out files, a continuation of a prompt, and optionally a
TensorFlow Serving export whose `decode_step` generates too.

    python examples/train_text.py --corpus path/to/texts --logdir logs/text
    tensorboard --logdir logs/text

Every `.txt` file below `--corpus` is one document; a seeded share of the
files is held out (no file is in both). Without `--corpus` the script trains
on this repository's own documentation and Python sources, so it runs anywhere. The
defaults take a couple of minutes on 2 CPU cores; scale `--hidden-dim`,
`--num-layers`, `--segment-length` and `--epochs` up for real work.
"""

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_infformer as kif  # noqa: E402
from keras_infformer.data import text as text_utils  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=None, help="a folder of .txt files")
    parser.add_argument("--held-out", type=float, default=0.2, help="share of files held out")
    parser.add_argument("--max-files", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4, help="parallel streams")
    parser.add_argument("--segment-length", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-basis", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--prompt", default="The memory ")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--logdir", default=os.path.join(ROOT, "logs", "train_text"))
    parser.add_argument("--save", default=None, help="write the model to this .keras file")
    parser.add_argument("--export-dir", default=None, help="export for TF Serving here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="fit's verbosity")
    return parser.parse_args(argv)


def repository_corpus(folder):
    """This repository's Markdown and Python files, copied as .txt documents."""
    found = glob.glob(os.path.join(ROOT, "**", "*.md"), recursive=True)
    found += glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
    for path in sorted(found):
        if os.sep + "." in path[len(ROOT) :]:  # Skip hidden folders (.venv, .git).
            continue
        name = os.path.relpath(path, ROOT).replace(os.sep, "__")
        shutil.copyfile(path, os.path.join(folder, name + ".txt"))
    return folder


def main(argv=None):
    args = parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    scratch = None
    corpus = args.corpus
    if corpus is None:
        scratch = tempfile.mkdtemp(prefix="infformer-corpus-")
        corpus = repository_corpus(scratch)
        print("No --corpus given: training on this repository's documentation and sources.")
    if not os.path.isdir(corpus):
        raise SystemExit(
            f"--corpus {corpus!r} is not a folder. Pass a folder of .txt files "
            "(e.g. after `apt-get install linux-doc-6.1`, the .rst.txt files "
            "under /usr/share/doc/linux-doc-6.1/html/_sources/)."
        )
    texts = text_utils.read_text_files(corpus, max_files=args.max_files)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    if len(texts) < 2:
        raise SystemExit(f"{corpus!r} holds {len(texts)} .txt file(s); at least 2 are needed.")
    train_ids, held_ids = text_utils.split_documents(texts, args.held_out, seed=args.seed)
    train_texts = [texts[i] for i in train_ids]
    held_texts = [texts[i] for i in held_ids]
    print(
        f"{len(texts)} documents ({sum(len(t.encode()) for t in texts):,} bytes): "
        f"{len(train_texts)} for training, {len(held_texts)} held out."
    )

    preprocessor = kif.InfiniteFormerCausalLMPreprocessor()  # Bytes: 256 ids.
    backbone = kif.InfiniteFormerBackbone(
        vocabulary_size=preprocessor.vocabulary_size(),
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.num_heads,
        num_basis=args.num_basis,
        num_samples=args.num_basis,
        sticky_memories=True,
    )
    model = kif.InfiniteFormerCausalLM(backbone, preprocessor)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=1.0))
    train = preprocessor.streaming_dataset(
        train_texts, batch_size=args.batch_size, segment_length=args.segment_length
    )
    held_out = preprocessor.streaming_dataset(
        held_texts, batch_size=args.batch_size, segment_length=args.segment_length
    )
    print(
        f"Training stream: {len(train)} batches of {args.batch_size} x {args.segment_length} bytes."
    )

    # The densities drawn each epoch: the first held-out segments, in order.
    shown = [held_out[i][0] for i in range(min(4, len(held_out)))]
    densities = {
        "token_ids": np.stack([np.asarray(x["token_ids"]) for x in shown]),
        "reset": np.stack([np.asarray(x["reset"]) for x in shown]),
    }
    callbacks = [
        kif.ResetMemory(),
        keras.callbacks.TensorBoard(args.logdir),
        kif.callbacks.AttentionDensityImages(args.logdir, densities),
    ]
    model.fit(train, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose)

    model.reset_state()
    metrics = model.evaluate(held_out, return_dict=True, verbose=0)
    # A byte tokenizer: bits per token are bits per byte.
    print(
        f"Held-out: {metrics['bits_per_token']:.3f} bits per byte "
        f"(perplexity {metrics['perplexity']:.2f}, {len(held_texts)} documents)"
    )

    # Sampler only: the optimizer and its state are kept (resumable).
    model.compile(sampler="top_k")
    # Save first: nothing that comes after may lose the trained model.
    if args.save:
        model.save(args.save)
        print(f"Saved the model to {args.save}")
    if args.export_dir:
        path = kif.export_for_serving(model, args.export_dir)
        print(
            f"Exported for TF Serving to {path} (generate with "
            f"examples/serving_client.py --export-dir {args.export_dir} --prompt ...)"
        )

    keras.utils.set_random_seed(args.seed)
    continuation = model.generate(
        [args.prompt], max_length=len(args.prompt.encode()) + args.max_new_tokens
    )
    print(f"Generated from {args.prompt!r}:\n{continuation[0]!r}")
    print(f"Wall time: {time.perf_counter() - start:.0f} s")
    return dict(metrics=metrics, generated=continuation[0], model=model)


if __name__ == "__main__":
    main()
