"""Gradient norms of the real-text benchmark's systems: does the global clip
treat the ∞-former and Transformer-XL alike?

`benchmarks/text_lm.py` clips the gradient of all trainable weights together
(`global_clipnorm`). If the memory's own weights carried a large share of
the ∞-former's gradient norm, the clip would shrink the step of the weights
it shares with Transformer-XL more than Transformer-XL's. This script builds
the benchmark's systems exactly as it does (same draw, same optimizer and
schedule, same batches in the same alternating order) and records, at every
step, the norm of the gradient of the shared weights and of the memory's
weights (those of the ∞-former whose path Transformer-XL lacks), before any
clip. The summary gives, per system and window of steps, how often the clip
acts and by how much it scales the step.

PyTorch only: the gradients are read in `optimizer.apply`, which runs
eagerly there (the compiled JAX and TensorFlow steps hand it tracers).

    python benchmarks/text_lm_gradient_norms.py              # 400 steps, seed 0
    python benchmarks/text_lm_gradient_norms.py --record-steps 200 --seed 1

Any other flag goes to `text_lm.py`'s parser (corpus, sizes, `--clipnorm`,
`--quick`, ...). Writes benchmarks/results/text_lm_gradient_norms.json.
"""

import argparse
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results", "text_lm_gradient_norms.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags are text_lm.py's (its --steps sets the schedule's length).",
    )
    p.add_argument("--record-steps", type=int, default=400, help="training steps recorded")
    p.add_argument("--early-steps", type=int, default=100, help="the summary's first window")
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    args, rest = p.parse_known_args(argv)
    if "--systems" not in rest:
        rest += ["--systems", "infformer", "xl"]
    args.bench = _text_lm().parse_args(rest + ["--parts", "1"])
    if "xl" not in args.bench.systems:
        raise ValueError(
            "--systems must include 'xl' (the memory's weights are the ones "
            f"Transformer-XL lacks); received {args.bench.systems}"
        )
    if not 0 < args.early_steps < args.record_steps:
        raise ValueError(
            f"--early-steps must lie in (0, --record-steps = {args.record_steps}); "
            f"received {args.early_steps}"
        )
    return args


def _text_lm():
    import text_lm

    return text_lm


def record_gradient_norms(model, memory_paths, sink):
    """Wrap `model.optimizer.apply` to append `{shared, memory, total}` norms
    of each step's unclipped gradient to `sink`."""
    from keras import ops

    optimizer = model.optimizer
    apply = optimizer.apply

    def recording_apply(grads, trainable_variables=None):
        variables = model.trainable_weights if trainable_variables is None else trainable_variables
        squares = {"shared": 0.0, "memory": 0.0}
        for gradient, variable in zip(grads, variables):
            if gradient is not None:
                group = "memory" if variable.path in memory_paths else "shared"
                squares[group] += float(ops.sum(ops.square(ops.cast(gradient, "float32"))))
        sink.append(
            {k: math.sqrt(v) for k, v in squares.items()}
            | {"total": math.sqrt(sum(squares.values()))}
        )
        return apply(grads, trainable_variables)

    optimizer.apply = recording_apply


def summarise(steps, clipnorm, windows):
    """Per window: how often the clip acts and how it scales the step."""
    out = {}
    for lo, hi in windows:
        part = steps[lo:hi]
        if not part:
            continue
        totals = [s["total"] for s in part]
        squared = sum(t * t for t in totals)
        out[f"{lo}-{hi}"] = {
            "steps": len(part),
            "clipped_fraction": sum(t > clipnorm for t in totals) / len(part),
            "mean_step_scale": sum(min(1.0, clipnorm / t) if t > 0 else 1.0 for t in totals)
            / len(part),
            "median_total_norm": _common.median(totals),
            "memory_share_of_squared_norm": (
                sum(s["memory"] ** 2 for s in part) / squared if squared else 0.0
            ),
        }
    return out


def main(argv=None):
    args = parse_args(argv)
    bench = args.bench
    # PyTorch runs `optimizer.apply` eagerly: the gradients can be read there.
    _common.select_backend("torch", bench.torch_threads)
    text_lm = _text_lm()
    from keras_infformer.data import StreamingDataset

    start = time.perf_counter()
    documents, vocabulary_size = text_lm.load_corpus(bench)
    train_ids, _, _ = text_lm.split(documents, bench)
    train_set = StreamingDataset(
        [documents[i] for i in train_ids], bench.batch_size, bench.segment_length
    )
    systems = text_lm.build_systems(bench, vocabulary_size)
    xl_paths = {v.path for v in systems["xl"].trainable_weights}
    norms = {name: [] for name in systems}
    memory = {}
    for name, model in systems.items():
        memory[name] = sorted(v.path for v in model.trainable_weights if v.path not in xl_paths)
        record_gradient_norms(model, set(memory[name]), norms[name])

    names = list(systems)
    report = max(1, args.record_steps // 10)
    for step in range(args.record_steps):
        x, y, w = train_set.get_batch(step % len(train_set))
        # The benchmark's order: the systems alternate within each step.
        for name in names if step % 2 == 0 else names[::-1]:
            systems[name].train_on_batch(x, y, sample_weight=w)
        if (step + 1) % report == 0:
            print(
                f"step {step + 1}/{args.record_steps}: "
                + ", ".join(
                    f"{n} |g| {norms[n][-1]['total']:.3f} (memory {norms[n][-1]['memory']:.3f})"
                    for n in names
                ),
                flush=True,
            )

    clipnorm = bench.clipnorm or 1.0
    windows = [(0, args.early_steps), (args.early_steps, args.record_steps)]
    summary = {n: summarise(norms[n], clipnorm, windows) for n in names}
    for n in names:
        for window, s in summary[n].items():
            print(
                f"{n:18s} steps {window:>9s}: clip acts on {s['clipped_fraction']:.1%}, "
                f"mean step scale {s['mean_step_scale']:.3f}, memory share of |g|^2 "
                f"{s['memory_share_of_squared_norm']:.4f}"
            )
    record = {
        "benchmark": "text_lm_gradient_norms",
        "what": "per-step gradient norms (shared weights / the memory's own weights, "
        "unclipped) of text_lm.py's systems on its batches, and how often a global "
        "clip at `clipnorm` would act",
        "clipnorm": clipnorm,
        "record_steps": args.record_steps,
        "settings": {k: v for k, v in vars(bench).items()},
        "memory_weights": memory,
        "summary": summary,
        "norms": norms,
        "wall_seconds": time.perf_counter() - start,
        "environment": _common.environment(),
    }
    if args.out:
        _common.write_json(args.out, record)
        print("wrote", args.out)
    return record


if __name__ == "__main__":
    main()
