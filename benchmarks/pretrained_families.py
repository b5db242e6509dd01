"""Llama, Gemma and Qwen3 with the continuous memory: zero start and step time.

For each family, a random keras-hub backbone at a small shape (default: 4
layers, width 256, 8 query heads over 2 key/value heads, head size 32,
intermediate 512, vocabulary 2048; nothing downloaded), segments of 128
tokens, batch 2:

- zero start: the largest absolute logit difference between the memory
  model and keras-hub's own causal LM (`LlamaCausalLM`, `GemmaCausalLM`,
  `Qwen3CausalLM`) over the same backbone object, segment by segment over
  `--segments` segments (the memory fills from the second on);
- fine-tuning step time, side by side in one run: keras-hub's task (no
  memory), the memory model with every weight trained (`memory_all`) and
  with the backbone frozen (`memory_only`). Each step is one compiled
  `train_on_batch` (Adam, sparse cross-entropy); the warm-up steps compile
  and are not timed; the systems alternate within each round; the median
  per system and the median of the paired ratios to keras-hub's task are
  reported.

The JSON at `--out` keeps one entry per backend (a run on another backend
is merged in).

    KERAS_BACKEND=jax python benchmarks/pretrained_families.py
    KERAS_BACKEND=torch python benchmarks/pretrained_families.py --tiny --rounds 0
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results", "pretrained_families.json")
FAMILIES = ("llama", "gemma", "qwen3")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--num-query-heads", type=int, default=8)
    p.add_argument("--num-key-value-heads", type=int, default=2)
    p.add_argument("--intermediate-dim", type=int, default=512)
    p.add_argument("--vocabulary-size", type=int, default=2048)
    p.add_argument("--segment", type=int, default=128)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--num-basis", type=int, default=128)
    p.add_argument("--segments", type=int, default=3, help="zero-start segments")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--tiny", action="store_true", help="the test suite's shape (2 layers, width 32, 4/2 heads)"
    )
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    args = p.parse_args(argv)
    if args.tiny:
        args.num_layers, args.hidden_dim = 2, 32
        args.num_query_heads, args.num_key_value_heads = 4, 2
        args.intermediate_dim, args.vocabulary_size = 64, 300
        args.segment, args.num_basis = 8, 16
    return args


def make_backbone(family, args):
    import keras_hub

    common = dict(
        vocabulary_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_query_heads=args.num_query_heads,
        num_key_value_heads=args.num_key_value_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
    )
    head_dim = args.hidden_dim // args.num_query_heads
    if family == "llama":
        return keras_hub.models.LlamaBackbone(**common)
    if family == "gemma":
        return keras_hub.models.GemmaBackbone(head_dim=head_dim, **common)
    return keras_hub.models.Qwen3Backbone(head_dim=head_dim, **common)


def classes(family):
    import keras_hub

    import keras_infformer as kif

    return {
        "llama": (kif.models.InfiniteFormerLlamaCausalLM, keras_hub.models.LlamaCausalLM),
        "gemma": (kif.models.InfiniteFormerGemmaCausalLM, keras_hub.models.GemmaCausalLM),
        "qwen3": (kif.models.InfiniteFormerQwen3CausalLM, keras_hub.models.Qwen3CausalLM),
    }[family]


def zero_start(family, args):
    """Largest |logit difference| to keras-hub's task, per segment."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    backbone = make_backbone(family, args)
    model_cls, task_cls = classes(family)
    model = model_cls.from_backbone(
        backbone,
        segment_length=args.segment,
        batch_size=args.batch,
        num_basis=args.num_basis,
    )
    reference = task_cls(backbone, preprocessor=None)
    rng = np.random.default_rng(0)
    state = model.get_initial_state(args.batch)
    diffs = []
    for _ in range(args.segments):
        ids = rng.integers(0, args.vocabulary_size, (args.batch, args.segment)).astype("int32")
        ours, state = model.step(ids, None, state)
        theirs = reference({"token_ids": ids, "padding_mask": np.ones_like(ids)})
        diffs.append(
            float(
                np.abs(keras.ops.convert_to_numpy(ours) - keras.ops.convert_to_numpy(theirs)).max()
            )
        )
    return diffs


def step_times(family, args):
    import keras
    import numpy as np

    model_cls, task_cls = classes(family)

    def loss():
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    keras.utils.set_random_seed(0)
    systems = {"keras_hub": task_cls(make_backbone(family, args), preprocessor=None)}
    systems["keras_hub"].compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss())
    for name, finetune in (("memory_all", "all"), ("memory_only", "memory")):
        model = model_cls.from_backbone(
            make_backbone(family, args),
            segment_length=args.segment,
            batch_size=args.batch,
            num_basis=args.num_basis,
            finetune=finetune,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss(), weighted_metrics=[])
        systems[name] = model
    rng = np.random.default_rng(0)

    def step(name, index):
        ids = rng.integers(0, args.vocabulary_size, (args.batch, args.segment + 1))
        x, y = ids[:, :-1].astype("int32"), ids[:, 1:].astype("int32")
        if name == "keras_hub":
            inputs = {"token_ids": x, "padding_mask": np.ones_like(x)}
        else:
            inputs = {"token_ids": x, "reset": np.full((args.batch,), index == 0)}
        start = time.perf_counter()
        value = systems[name].train_on_batch(inputs, y)
        float(np.asarray(value).reshape(-1)[0])  # Waits for it.
        return time.perf_counter() - start

    warmup = {}
    for name in systems:
        start = time.perf_counter()
        for index in range(args.warmup):
            step(name, index)
        warmup[name] = time.perf_counter() - start
    times = {name: [] for name in systems}
    for round_index in range(args.rounds):
        for name in systems:
            times[name].append(step(name, args.warmup + round_index))
    if not args.rounds:
        return None
    return {
        "median_seconds": {n: statistics.median(t) for n, t in times.items()},
        "ratio_to_keras_hub": {
            n: statistics.median(a / b for a, b in zip(times[n], times["keras_hub"]))
            for n in systems
            if n != "keras_hub"
        },
        "seconds": times,
        "warmup_seconds": warmup,
    }


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, REPO_ROOT)
    import keras

    backend = keras.backend.backend()
    record = {}
    for family in args.families:
        diffs = zero_start(family, args)
        print(f"{family}: zero-start max |logit diff| per segment {diffs}", flush=True)
        timing = step_times(family, args)
        if timing:
            print(
                f"{family}: median step {timing['median_seconds']}, "
                f"ratio {timing['ratio_to_keras_hub']}",
                flush=True,
            )
        record[family] = {"zero_start_max_abs_diff": diffs, "finetune_step": timing}
    entry = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "families": record,
    }
    if args.out:
        results = {}
        if os.path.exists(args.out):
            with open(args.out) as f:
                results = json.load(f)
        results[backend] = entry
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print("wrote", args.out)
    return entry


if __name__ == "__main__":
    main()
