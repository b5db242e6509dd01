"""Does the long-term memory really help? A synthetic far-recall task.

Each document is, in segments of `L` tokens:

    key segment | filler segment 1 | ... | filler segment F | [query] * L

The key is one of `num_keys` tokens. Two kinds of recall (`--key`):

- `single` (default), precise recall, "passkey" style: the key is ONE
  token at a random position of the first segment, whose other positions
  are filler. The memory must keep one token's worth of signal, blurred
  by every later update, against the filler around it.
- `segment`, gist recall: the key is repeated over the whole first
  segment, so the LTM's signal over that region is the key's
  representation (the continuous memory's strength).

The filler tokens come from a disjoint range and carry no information about
the key; every position of the final segment holds the query token and
its target is the key. Only those positions carry loss weight (and are
scored), so a model that cannot see the key is at chance, 1 / num_keys.

The filler is longer than a Transformer-XL block can see: a stack of
`num_layers` blocks with a short-term memory of `memory_length = L`
reaches `num_layers` segments back, so with `F >= num_layers` segments of
filler the key is out of reach for the baseline (use_long_term_memory=
False, same size otherwise), whatever it learns. The ∞-former keeps it in
its continuous long-term memory.

Systems (`--systems`), built from the same seed (their common sublayers
start from the same weights) and trained on the same batches:
`infformer` (uniform memory updates), `infformer_sticky` (sticky
memories, the deterministic quantile sampler), `xl` (Transformer-XL, no
long-term memory).

The batch rows are staggered (row b starts b segments into a document),
so every step has answers to learn from. Both models are trained side by
side on the same batches with `train_on_batch`, alternating within each
step, and the per-step wall time of each is recorded. Accuracy is then
measured on fresh documents, streamed with `predict_on_batch`.

Usage:

    KERAS_BACKEND=jax python benchmarks/recall_task.py            # ~minutes
    python benchmarks/recall_task.py --key segment --out benchmarks/results/recall_segment.json
    python benchmarks/recall_task.py --backend torch --steps 300

Writes benchmarks/results/recall.json (or `--out`) and prints a table.
"""

import argparse
import json
import os
import platform
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results", "recall.json")
SYSTEMS = ("infformer", "infformer_sticky", "xl")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--backend",
        choices=("jax", "tensorflow", "torch"),
        default=None,
        help="Keras backend (default: $KERAS_BACKEND, else jax)",
    )
    p.add_argument(
        "--key",
        choices=("single", "segment"),
        default="single",
        help="one key token at a random position of the first "
        "segment (precise recall), or the key over the whole segment (gist)",
    )
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--steps", type=int, default=3000, help="training steps (segments)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--num-keys", type=int, default=8)
    p.add_argument("--filler-segments", type=int, default=6)
    p.add_argument("--filler-vocabulary", type=int, default=24)
    p.add_argument("--segment-length", type=int, default=8)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--hidden-dim", type=int, default=32)
    p.add_argument("--num-heads", type=int, default=2)
    p.add_argument("--num-basis", type=int, default=32)
    p.add_argument("--basis-widths", type=float, nargs="+", default=[0.05, 0.1])
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--tau", type=float, default=0.75)
    p.add_argument(
        "--density-mode",
        choices=("affine", "content"),
        default="affine",
        help="how the memories' queries place their density",
    )
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument(
        "--eval-documents", type=int, default=16, help="evaluation documents per batch row"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    return p.parse_args(argv)


# -- data ----------------------------------------------------------------------


class RecallTask:
    """Token layout and document generator of the recall task.

    Token ids: 0 padding (unused), keys 1..K, the query K + 1, filler
    K + 2 .. K + 1 + filler_vocabulary.
    """

    def __init__(
        self, num_keys, filler_segments, segment_length, filler_vocabulary, key_mode="single"
    ):
        if key_mode not in ("single", "segment"):
            raise ValueError(
                f"`key_mode` must be 'single' or 'segment'. Received: key_mode={key_mode!r}"
            )
        self.key_mode = key_mode
        self.num_keys = num_keys
        self.filler_segments = filler_segments
        self.segment_length = segment_length
        self.query = num_keys + 1
        self.filler_low = num_keys + 2
        self.vocabulary_size = self.filler_low + filler_vocabulary
        self.document_segments = filler_segments + 2

    def document(self, rng, key=None):
        """(tokens, targets, weights) of one document, each (T,)."""
        import numpy as np

        L = self.segment_length
        key = int(rng.integers(1, self.num_keys + 1)) if key is None else key
        if self.key_mode == "segment":
            key_segment = np.full(L, key)
        else:  # One key token at a random position, filler around it.
            key_segment = rng.integers(self.filler_low, self.vocabulary_size, size=L)
            key_segment[rng.integers(0, L)] = key
        filler = rng.integers(self.filler_low, self.vocabulary_size, size=self.filler_segments * L)
        tokens = np.concatenate([key_segment, filler, np.full(L, self.query)]).astype("int32")
        targets = np.zeros_like(tokens)
        weights = np.zeros(tokens.shape, "float32")
        targets[-L:] = key
        weights[-L:] = 1.0
        return tokens, targets, weights

    def batches(self, rng, batch_size, num_steps, stagger=True):
        """Yields `num_steps` batches `(inputs, targets, weights)`.

        Row b is a stream of documents, shifted by b segments (its first
        document is cut at the start: it has no answer then, so no loss).
        """
        import numpy as np

        L, D = self.segment_length, self.document_segments
        streams = []
        for b in range(batch_size):
            offset = (b % D) if stagger else 0
            need = num_steps + offset
            parts = [self.document(rng) for _ in range(-(-need // D) + 1)]
            tokens, targets, weights = (np.concatenate(x) for x in zip(*parts))
            if offset:
                weights[: D * L] = 0.0  # The cut document lost its key.
            resets = np.zeros(len(parts) * D, bool)
            resets[::D] = True
            s = offset * L
            streams.append((tokens[s:], targets[s:], weights[s:], resets[offset:]))
            if offset:
                # The cut document starts the row: its first segment resets.
                streams[-1][3][0] = True
        for step in range(num_steps):
            cut = slice(step * L, (step + 1) * L)
            yield (
                {
                    "token_ids": np.stack([s[0][cut] for s in streams]),
                    "reset": np.array([s[3][step] for s in streams]),
                },
                np.stack([s[1][cut] for s in streams]),
                np.stack([s[2][cut] for s in streams]),
            )


# -- models --------------------------------------------------------------------


def build_models(args, task):
    import keras

    from keras_infformer.models import InfiniteFormerLM

    common = dict(
        vocabulary_size=task.vocabulary_size,
        segment_length=args.segment_length,
        batch_size=args.batch_size,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        num_heads=args.num_heads,
        intermediate_dim=2 * args.hidden_dim,
        memory_length=args.segment_length,
        dropout=0.0,
    )
    models = {}
    for name in args.systems:
        keras.utils.set_random_seed(args.seed)  # The same draw for every system.
        model = InfiniteFormerLM(
            use_long_term_memory=name != "xl",
            num_basis=args.num_basis,
            basis_widths=tuple(args.basis_widths),
            num_samples=args.num_samples,
            tau=args.tau,
            density_mode=args.density_mode,
            sticky_memories=name == "infformer_sticky",
            name=name,
            **common,
        )
        # Warm-up then cosine decay: at a constant rate the answer accuracy
        # swings by +-0.2 between evaluations late in training.
        warmup = max(1, args.steps // 20)
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, args.steps - warmup),
            alpha=0.05,
            warmup_target=args.learning_rate,
            warmup_steps=warmup,
        )
        model.compile(
            optimizer=keras.optimizers.Adam(schedule, global_clipnorm=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        models[name] = model
    return models


def evaluate(model, task, args, rng):
    """Answer accuracy on fresh, staggered documents (argmax over all ids)."""
    import numpy as np

    model.reset_state()
    steps = args.eval_documents * task.document_segments
    correct = total = 0.0
    for inputs, targets, weights in task.batches(rng, args.batch_size, steps):
        logits = np.asarray(model.predict_on_batch(inputs), np.float32)
        hit = (logits.argmax(-1) == targets).astype(np.float32)
        correct += float((hit * weights).sum())
        total += float(weights.sum())
    return correct / max(total, 1.0), int(total)


def main(argv=None):
    args = parse_args(argv)
    backend = args.backend or os.environ.get("KERAS_BACKEND") or "jax"
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, REPO_ROOT)
    import keras
    import numpy as np

    if args.filler_segments < args.num_layers:
        print(
            f"warning: filler_segments={args.filler_segments} < num_layers="
            f"{args.num_layers}: the baseline can reach the key",
            file=sys.stderr,
        )
    task = RecallTask(
        args.num_keys,
        args.filler_segments,
        args.segment_length,
        args.filler_vocabulary,
        args.key,
    )
    models = build_models(args, task)
    names = list(models)
    times = {n: [] for n in names}
    losses = {n: [] for n in names}
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    for step, (x, y, w) in enumerate(task.batches(rng, args.batch_size, args.steps)):
        order = names if step % 2 == 0 else names[::-1]
        for name in order:
            t0 = time.perf_counter()
            loss = models[name].train_on_batch(x, y, sample_weight=w)
            loss = float(np.asarray(loss if np.ndim(loss) == 0 else loss[0]))
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss)
        if (step + 1) % 500 == 0:
            print(
                f"step {step + 1}: "
                + ", ".join(f"{n} loss {np.mean(losses[n][-500:]):.3f}" for n in names),
                flush=True,
            )
    train_seconds = time.perf_counter() - start

    results = {}
    for i, name in enumerate(names):
        accuracy, count = evaluate(
            models[name], task, args, np.random.default_rng(args.seed + 1000)
        )
        warm = times[name][10:] or times[name]
        results[name] = {
            "accuracy": accuracy,
            "answers_scored": count,
            "final_train_loss": float(np.mean(losses[name][-50:])),
            "median_step_ms": 1000 * float(np.median(warm)),
            "mean_step_ms": 1000 * float(np.mean(warm)),
            "first_step_s": float(times[name][0]),
            "trainable_parameters": int(
                sum(np.prod(v.shape) for v in models[name].trainable_weights)
            ),
        }
    chance = 1.0 / args.num_keys
    record = {
        "task": "far recall: "
        + (
            "one key token at a random position of the first segment (precise)"
            if args.key == "single"
            else "the key over the whole first segment (gist)"
        )
        + ", filler beyond the STM, query segment",
        "chance_accuracy": chance,
        "steps": args.steps,
        "train_wall_seconds": train_seconds,
        "config": vars(args) | {"backend": backend},
        "vocabulary_size": task.vocabulary_size,
        "tokens_between_key_and_query": args.filler_segments * args.segment_length,
        "transformer_xl_reach_tokens": args.num_layers * args.segment_length + args.segment_length,
        "results": results,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "keras": keras.__version__,
        },
        "loss_note": "final_train_loss: Keras' sample-weighted loss of a "
        "batch, averaged over all its positions (positions without an answer "
        "weigh 0 but count in the mean), mean of the last 50 steps",
        "timing_note": "train_on_batch per step, both models alternating "
        "within each step on the same batch; first 10 steps (compilation) "
        "excluded from median/mean",
    }

    print()
    print(f"backend {backend}, {args.steps} steps, batch {args.batch_size}, chance {chance:.3f}")
    print(f"{'model':<18}{'accuracy':>10}{'loss':>8}{'step ms':>10}{'params':>9}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['accuracy']:>10.3f}{r['final_train_loss']:>8.3f}"
            f"{r['median_step_ms']:>10.2f}{r['trainable_parameters']:>9}"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.out}")
    return record


if __name__ == "__main__":
    main()
