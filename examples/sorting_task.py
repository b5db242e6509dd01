"""The ∞-former's sorting task: ∞-former vs Transformer-XL vs Compressive.

Each sequence holds T symbols (20 kinds) drawn from a distribution that
drifts from p_start to p_end; after a separator the model must write the 20
symbols in decreasing order of frequency over the *whole* sequence (teacher
forcing; loss and accuracy on those 20 positions only). A model whose window
is shorter than T must remember the early part of the stream.

The three models share the block, width, depth, heads, segment length and
short-term window, and have the same number of trainable parameters (the
feed-forward width of xl and compressive is set to match the ∞-former's
count; --no-equal-size turns that off); they differ only in what holds the
older past:
  infformer    continuous long-term memory (N basis functions), optionally
               with sticky memories (--sticky)
  xl           nothing (Transformer-XL)
  compressive  a Compressive Transformer memory (rate --compression-rate)

As in the paper, each sequence is read segment by segment; only the final
segment (holding the answer) is back-propagated: earlier segments run
forward only and fill the memories. Accuracy is the share of the 20 ranked
positions predicted right on fresh sequences.

Examples:
    # The CPU-sized comparison (2 cores: tens of minutes).
    python examples/sorting_task.py --models all --lengths 1024 2048 4096 \\
        --results benchmarks/results/sorting.json
    # The paper's configuration (a GPU).
    python examples/sorting_task.py --paper --lengths 4096 8192 16384
"""

import argparse
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import keras_infformer  # noqa: E402
from keras_infformer.data import sorting  # noqa: E402

MODELS = ("infformer", "xl", "compressive")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["all"],
        help="Models to run: infformer, xl, compressive or all.",
    )
    parser.add_argument(
        "--lengths",
        nargs="+",
        type=int,
        default=[1024, 2048, 4096],
        help="Sequence lengths T (tokens before the separator).",
    )
    parser.add_argument(
        "--paper",
        action="store_true",
        help="The paper's configuration: 3 layers, d 300, 6 heads, "
        "segment/STM 1024, N 512, M 512, tau 0.75, dropout 0.1, "
        "Adam 2e-4, batch 8 (for a GPU).",
    )
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument(
        "--intermediate-dim",
        type=int,
        default=None,
        help="Feed-forward width of the ∞-former (default 4 x hidden).",
    )
    parser.add_argument(
        "--equal-size",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Widen or narrow the feed-forward of xl and "
        "compressive so that every model has the ∞-former's "
        "number of trainable parameters.",
    )
    parser.add_argument(
        "--segment-length", type=int, default=128, help="Tokens per segment (at least 21)."
    )
    parser.add_argument(
        "--memory-length",
        type=int,
        default=None,
        help="Short-term memory length (default: segment length).",
    )
    parser.add_argument(
        "--num-basis", type=int, default=64, help="Basis functions N of the long-term memory."
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="Samples M of the old signal per update (default N).",
    )
    parser.add_argument("--tau", type=float, default=0.75)
    parser.add_argument("--ridge-penalty", type=float, default=1.0)
    parser.add_argument("--basis-widths", type=float, nargs="+", default=[0.01, 0.05])
    parser.add_argument(
        "--sticky", action="store_true", help="Sticky memories for the infformer model."
    )
    parser.add_argument("--compression-rate", type=int, default=4)
    parser.add_argument(
        "--compressed-memory-length",
        type=int,
        default=None,
        help="Compressed slots (default: the number of basis "
        "functions, so both long-term memories hold N vectors).",
    )
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--clipnorm", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--train-sequences",
        type=int,
        default=1024,
        help="Training sequences per epoch (fresh each epoch).",
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--logdir", default="logs/sorting", help="TensorBoard logs (scalars and density images)."
    )
    parser.add_argument(
        "--results",
        default=None,
        help="Write the results JSON here (e.g. "
        "benchmarks/results/sorting.json); merges with what is there.",
    )
    parser.add_argument(
        "--save-model", default=None, help="Save the last trained ∞-former here (.keras)."
    )
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)
    if args.paper:
        args.num_layers, args.hidden_dim, args.num_heads = 3, 300, 6
        args.segment_length, args.memory_length = 1024, 1024
        args.num_basis, args.num_samples, args.tau = 512, 512, 0.75
        args.dropout, args.learning_rate, args.batch_size = 0.1, 2e-4, 8
    args.intermediate_dim = args.intermediate_dim or 4 * args.hidden_dim
    if "all" in args.models:
        args.models = list(MODELS)
    for name in args.models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {MODELS} or all")
    args.memory_length = args.memory_length or args.segment_length
    args.num_samples = args.num_samples or args.num_basis
    args.compressed_memory_length = args.compressed_memory_length or args.num_basis
    return args


def trainable_parameters(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _language_model(kind, args, intermediate_dim):
    common = dict(
        vocabulary_size=sorting.VOCABULARY_SIZE,
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.num_heads,
        intermediate_dim=intermediate_dim,
        memory_length=args.memory_length,
        dropout=args.dropout,
        name=kind,
    )
    if kind == "infformer":
        return keras_infformer.InfiniteFormerLM(
            use_long_term_memory=True,
            num_basis=args.num_basis,
            num_samples=args.num_samples,
            tau=args.tau,
            ridge_penalty=args.ridge_penalty,
            basis_widths=tuple(args.basis_widths),
            sticky_memories=args.sticky,
            **common,
        )
    if kind == "xl":
        return keras_infformer.InfiniteFormerLM(use_long_term_memory=False, **common)
    return keras_infformer.InfiniteFormerLM(
        use_long_term_memory=False,
        compressed_memory_length=args.compressed_memory_length,
        compression_rate=args.compression_rate,
        **common,
    )


def matched_intermediate_dim(kind, args):
    """Feed-forward width giving `kind` the ∞-former's trainable size.

    The count is linear in the width: each layer's two feed-forward kernels
    and first bias add 2 d + 1 per unit.
    """
    if kind == "infformer" or not args.equal_size:
        return args.intermediate_dim
    target = trainable_parameters(_language_model("infformer", args, args.intermediate_dim))
    own = trainable_parameters(_language_model(kind, args, args.intermediate_dim))
    per_unit = args.num_layers * (2 * args.hidden_dim + 1)
    return max(1, args.intermediate_dim + round((target - own) / per_unit))


def build_model(kind, args):
    """One of the three systems: same block, window and trainable size."""
    intermediate_dim = matched_intermediate_dim(kind, args)
    # Same initial draw whether or not the sizing above built models.
    keras.utils.set_random_seed(args.seed)
    model = _language_model(kind, args, intermediate_dim)
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate, clipnorm=args.clipnorm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=keras.backend.backend() != "torch",
    )
    return model


def _batches(examples, batch_size):
    """Groups of `batch_size` sequences, segments first: (segments, B, S)."""
    n = examples["inputs"].shape[0] // batch_size * batch_size
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        yield (
            examples["inputs"][rows].transpose(1, 0, 2),
            examples["targets"][rows].transpose(1, 0, 2),
            examples["sample_weight"][rows].transpose(1, 0, 2),
            examples["order"][rows],
        )


def read_prefix(model, inputs):
    """Run every segment but the last forward: the memories fill up."""
    batch = inputs.shape[1]
    for s in range(inputs.shape[0] - 1):
        reset = np.full((batch,), s == 0)
        model.predict_on_batch({"token_ids": inputs[s], "reset": reset})


def final_inputs(inputs):
    return {"token_ids": inputs[-1], "reset": np.full((inputs.shape[1],), inputs.shape[0] == 1)}


def train(model, args, length, callbacks):
    """Train on fresh sequences each epoch; returns the wall time."""
    steps_per_epoch = args.train_sequences // args.batch_size
    callbacks.on_train_begin()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        callbacks.on_epoch_begin(epoch)
        examples = sorting.sorting_examples(
            args.train_sequences,
            length,
            args.segment_length,
            seed=args.seed * 1000 + epoch,
        )
        progbar = keras.utils.Progbar(
            steps_per_epoch,
            verbose=args.verbose,
            stateful_metrics=["loss", "accuracy"],
        )
        for step, (inputs, targets, weights, _) in enumerate(_batches(examples, args.batch_size)):
            callbacks.on_train_batch_begin(step)
            read_prefix(model, inputs)
            logs = model.train_on_batch(
                final_inputs(inputs),
                targets[-1],
                sample_weight=weights[-1],
                return_dict=True,
            )
            logs = {k: float(v) for k, v in logs.items()}
            callbacks.on_train_batch_end(step, logs)
            progbar.update(step + 1, values=list(logs.items()))
        callbacks.on_epoch_end(epoch, logs)
    callbacks.on_train_end(logs)
    return time.perf_counter() - start


def evaluate(model, args, length, seed=12345):
    """Share of the 20 ranked positions predicted right on fresh sequences."""
    examples = sorting.sorting_examples(args.eval_sequences, length, args.segment_length, seed=seed)
    answer = sorting.answer_positions(args.segment_length)
    predicted, true = [], []
    for inputs, _, _, order in _batches(examples, args.batch_size):
        read_prefix(model, inputs)
        logits = model.predict_on_batch(final_inputs(inputs))
        predicted.append(np.argmax(np.asarray(logits)[:, answer], axis=-1))
        true.append(order)
    return sorting.sorting_accuracy(np.concatenate(predicted), np.concatenate(true))


def run_one(kind, length, args):
    keras.utils.set_random_seed(args.seed)
    model = build_model(kind, args)
    logdir = os.path.join(args.logdir, f"{kind}_T{length}")
    density_data = sorting.sorting_examples(args.batch_size, length, args.segment_length, seed=999)
    segments = {
        "token_ids": density_data["inputs"].transpose(1, 0, 2),
        "reset": np.arange(density_data["inputs"].shape[1])[:, None].repeat(args.batch_size, axis=1)
        == 0,
    }
    callback_list = [keras.callbacks.TensorBoard(logdir, update_freq="epoch")]
    if kind == "infformer":
        callback_list.append(keras_infformer.callbacks.AttentionDensityImages(logdir, segments))
    callbacks = keras.callbacks.CallbackList(callback_list, model=model)
    train_seconds = train(model, args, length, callbacks)
    accuracy = evaluate(model, args, length)
    return model, {
        "model": kind + ("_sticky" if kind == "infformer" and args.sticky else ""),
        "sequence_length": length,
        "accuracy": accuracy,
        "train_seconds": round(train_seconds, 1),
        "parameters": trainable_parameters(model),
        "intermediate_dim": model.intermediate_dim,
    }


def config_summary(args):
    keys = (
        "num_layers",
        "hidden_dim",
        "num_heads",
        "intermediate_dim",
        "equal_size",
        "segment_length",
        "memory_length",
        "num_basis",
        "num_samples",
        "tau",
        "ridge_penalty",
        "basis_widths",
        "sticky",
        "compression_rate",
        "compressed_memory_length",
        "dropout",
        "learning_rate",
        "clipnorm",
        "batch_size",
        "train_sequences",
        "epochs",
        "eval_sequences",
        "seed",
    )
    return {k: getattr(args, k) for k in keys}


def main(argv=None):
    args = parse_args(argv)
    print(f"Backend: {keras.backend.backend()}; config: {config_summary(args)}")
    results = []
    for length in args.lengths:
        for kind in args.models:
            print(f"\n=== {kind}, sequence length {length}")
            model, result = run_one(kind, length, args)
            results.append(result)
            print(
                f"{result['model']}: accuracy {result['accuracy']:.3f} "
                f"({result['train_seconds']:.0f} s training)"
            )
            if kind == "infformer" and args.save_model:
                model.save(args.save_model)
    print("\n| model | T | accuracy | train s |\n|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['sequence_length']} | {r['accuracy']:.3f} "
            f"| {r['train_seconds']:.0f} |"
        )
    if args.results:
        payload = {"runs": []}
        if os.path.exists(args.results):
            with open(args.results) as f:
                payload = json.load(f)
        done = {(r["model"], r["sequence_length"]) for r in results}
        payload["runs"] = [
            r for r in payload.get("runs", []) if (r["model"], r["sequence_length"]) not in done
        ] + [dict(r, config=config_summary(args), backend=keras.backend.backend()) for r in results]
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:
            json.dump(payload, f, indent=2)
        print(f"Results written to {args.results}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
