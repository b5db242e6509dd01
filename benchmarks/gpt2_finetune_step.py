"""A GPT-2 fine-tuning step with and without the continuous memory.

Side by side at GPT-2 small's shape (12 layers, width 768, 12 heads,
vocabulary 50257, 1024 positions; random weights, nothing downloaded),
segments of 512 tokens, batch 1:

- `gpt2`: keras-hub's `GPT2CausalLM` over the backbone (no memory);
- `memory_all`: `InfiniteFormerGPT2CausalLM` (paper settings: N = M = 512,
  sticky memories), every weight trained;
- `memory_only`: the same with `finetune="memory"` (backbone frozen).

Each step is one compiled `train_on_batch` (Adam, sparse cross-entropy over
logits) on the next segment of a random stream, so the memory steps absorb
the previous segment as in real fine-tuning. The first steps compile and
are not timed; then the systems alternate within each round, and the
median per system and the median of the paired ratios are reported.
Prints a table and writes JSON.

    KERAS_BACKEND=jax python benchmarks/gpt2_finetune_step.py
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=12)
    parser.add_argument("--hidden-dim", type=int, default=768)
    parser.add_argument("--num-heads", type=int, default=12)
    parser.add_argument("--vocabulary-size", type=int, default=50257)
    parser.add_argument("--segment", type=int, default=512)
    parser.add_argument("--num-basis", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--rounds", type=int, default=9, help="interleaved rounds (paired ratios vary ±0.1 here)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sticky", type=int, default=1, help="sticky memories (1/0)")
    parser.add_argument(
        "--density-mode",
        default="affine",
        choices=["affine", "content"],
        help="how the memories place their Gaussian (the paper's: affine)",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=["memory_all", "memory_only"],
        choices=["memory_all", "memory_only"],
        help="memory systems timed beside GPT-2",
    )
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny sizes")
    parser.add_argument("--no-plot", action="store_true", help="accepted; nothing is plotted")
    default_out = os.path.join(os.path.dirname(__file__), "results", "gpt2_finetune_step.json")
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    if args.tiny:
        args.num_layers, args.hidden_dim, args.num_heads = 2, 32, 2
        args.vocabulary_size, args.segment, args.num_basis = 300, 16, 16
        args.rounds, args.warmup = 2, 1

    import keras
    import keras_hub
    import numpy as np

    import keras_infformer as kif

    keras.utils.set_random_seed(0)
    backbone_settings = dict(
        vocabulary_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=4 * args.hidden_dim,
        max_sequence_length=max(1024, args.segment),
        dropout=0.1,
    )

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    systems = {}
    gpt2 = keras_hub.models.GPT2CausalLM(
        keras_hub.models.GPT2Backbone(**backbone_settings), preprocessor=None
    )
    gpt2.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss())
    systems["gpt2"] = gpt2
    for name, finetune in (("memory_all", "all"), ("memory_only", "memory")):
        if name not in args.systems:
            continue
        model = kif.models.InfiniteFormerGPT2CausalLM.from_backbone(
            keras_hub.models.GPT2Backbone(**backbone_settings),
            segment_length=args.segment,
            batch_size=args.batch,
            num_basis=args.num_basis,
            sticky_memories=bool(args.sticky),
            density_mode=args.density_mode,
            finetune=finetune,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss(), weighted_metrics=[])
        systems[name] = model

    rng = np.random.default_rng(0)

    def batch(name, index):
        ids = rng.integers(0, args.vocabulary_size, (args.batch, args.segment + 1))
        ids = ids.astype("int32")
        x, y = ids[:, :-1], ids[:, 1:]
        if name == "gpt2":
            return {"token_ids": x, "padding_mask": np.ones_like(x)}, y
        return {"token_ids": x, "reset": np.full((args.batch,), index == 0)}, y

    def step(name, index):
        x, y = batch(name, index)
        start = time.perf_counter()
        loss_value = systems[name].train_on_batch(x, y)
        loss_value = float(np.asarray(loss_value).reshape(-1)[0])  # Waits for it.
        return time.perf_counter() - start, loss_value

    compile_seconds = {}
    for name in systems:
        start = time.perf_counter()
        for index in range(args.warmup):
            step(name, index)
        compile_seconds[name] = time.perf_counter() - start
        print(
            f"{name:12s} warm-up ({args.warmup} steps, compiling): {compile_seconds[name]:.1f} s",
            flush=True,
        )

    times = {name: [] for name in systems}
    losses = {name: [] for name in systems}
    for round_index in range(args.rounds):
        for name in systems:
            seconds, loss_value = step(name, args.warmup + round_index)
            times[name].append(seconds)
            losses[name].append(loss_value)
        print(
            f"round {round_index}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in systems),
            flush=True,
        )

    results = {
        name: {
            "median_seconds": statistics.median(times[name]),
            "seconds": times[name],
            "tokens_per_second": args.batch * args.segment / statistics.median(times[name]),
            "losses": losses[name],
            "warmup_seconds": compile_seconds[name],
        }
        for name in systems
    }
    ratios = {
        name: statistics.median(a / b for a, b in zip(times[name], times["gpt2"]))
        for name in systems
        if name != "gpt2"
    }
    print(f"\n{'system':12s} {'median step':>12s} {'tokens/s':>10s} {'x GPT-2':>8s}")
    for name in systems:
        ratio = ratios.get(name, 1.0)
        print(
            f"{name:12s} {results[name]['median_seconds']:11.3f}s "
            f"{results[name]['tokens_per_second']:10.1f} {ratio:8.2f}"
        )
    record = {
        "backend": keras.backend.backend(),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "settings": {
            **backbone_settings,
            "segment_length": args.segment,
            "batch_size": args.batch,
            "num_basis": args.num_basis,
            "sticky_memories": bool(args.sticky),
            "density_mode": args.density_mode,
            "rounds": args.rounds,
            "warmup_steps": args.warmup,
            "optimizer": "Adam(1e-4)",
            "weights": "random",
        },
        "results": results,
        "step_time_ratio_to_gpt2": ratios,
        "environment": _common.environment(),
    }
    if args.tiny and os.path.abspath(args.out) == os.path.abspath(default_out):
        return record  # A smoke test never overwrites the committed result.
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print("wrote", args.out)
    return record


if __name__ == "__main__":
    main()
