"""Llama, Gemma and Qwen3 with the memory: does fine-tuning recall a far key?

For each family, a tiny random keras-hub backbone (vocabulary 64, 2
layers, 4 query heads over 2 key/value heads, width 32) is fine-tuned
twice on the same batches, every weight trained: as our memory model
(segment 8, N = 16, uniform memories) and as keras-hub's own causal LM
(no memory). Each example is two segments: segment 0 is one key token
(one of 8) repeated; segment 1 is random filler ending with a query token
whose target is the key (the only weighted position). Segment 1 sees
segment 0 only through the memory: without it the answer is at best a
guess among 8 keys (log 8 = 2.08 nats). After `--steps` steps the answer
loss is measured on `--eval-rows` fresh examples, for `--seeds` seeds.

    KERAS_BACKEND=jax python benchmarks/pretrained_far_key.py

Writes benchmarks/results/pretrained_far_key.json (or `--out`).
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results", "pretrained_far_key.json")
FAMILIES = ("llama", "gemma", "qwen3")
KEYS = 8
QUERY = 5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--segment", type=int, default=8)
    p.add_argument("--vocabulary-size", type=int, default=64)
    p.add_argument("--num-basis", type=int, default=16)
    p.add_argument("--eval-rows", type=int, default=256)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    return p.parse_args(argv)


def recall_batch(rng, rows, args):
    import numpy as np

    keys = rng.integers(10, 10 + KEYS, size=rows)
    first = np.repeat(keys[:, None], args.segment, axis=1).astype("int32")
    second = rng.integers(30, args.vocabulary_size, size=(rows, args.segment)).astype("int32")
    second[:, -1] = QUERY
    targets = np.zeros((rows, args.segment), "int32")
    targets[:, -1] = keys
    weights = np.zeros((rows, args.segment), "float32")
    weights[:, -1] = 1.0
    return first, second, targets, weights, keys


def answer_loss(logits, keys):
    import numpy as np

    logits = np.asarray(logits, np.float64)[:, -1]
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(len(keys)), keys].mean())


def run(family, seed, args):
    import keras
    import keras_hub
    import numpy as np

    import keras_infformer as kif

    common = dict(
        vocabulary_size=args.vocabulary_size,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
    )
    backbone_cls, task_cls, model_cls = {
        "llama": (
            keras_hub.models.LlamaBackbone,
            keras_hub.models.LlamaCausalLM,
            kif.models.InfiniteFormerLlamaCausalLM,
        ),
        "gemma": (
            keras_hub.models.GemmaBackbone,
            keras_hub.models.GemmaCausalLM,
            kif.models.InfiniteFormerGemmaCausalLM,
        ),
        "qwen3": (
            keras_hub.models.Qwen3Backbone,
            keras_hub.models.Qwen3CausalLM,
            kif.models.InfiniteFormerQwen3CausalLM,
        ),
    }[family]
    if family != "llama":
        common["head_dim"] = 8
    keras.utils.set_random_seed(seed)
    backbone = backbone_cls(**common)
    plain_backbone = backbone_cls.from_config(backbone.get_config())
    plain_backbone.set_weights(backbone.get_weights())
    model = model_cls.from_backbone(
        backbone,
        segment_length=args.segment,
        batch_size=args.rows,
        num_basis=args.num_basis,
        num_bins=16,
        sticky_memories=False,
    )
    plain = task_cls(plain_backbone, preprocessor=None)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate))
    plain.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(seed)
    reset = np.ones((args.rows,), bool)
    start = time.perf_counter()
    for _ in range(args.steps):
        first, second, targets, weights, _ = recall_batch(rng, args.rows, args)
        model({"token_ids": first, "reset": reset})  # Into the memory.
        model.train_on_batch({"token_ids": second, "reset": ~reset}, targets, sample_weight=weights)
        plain.train_on_batch(
            {"token_ids": second, "padding_mask": np.ones_like(second)},
            targets,
            sample_weight=weights,
        )
    seconds = time.perf_counter() - start
    first, second, _, _, keys = recall_batch(
        np.random.default_rng(seed + 1000), args.eval_rows, args
    )
    state = model.get_initial_state(args.eval_rows)
    _, state = model.step(first, None, state)
    with_memory, _ = model.step(second, None, state)
    without = plain({"token_ids": second, "padding_mask": np.ones_like(second)})
    return {
        "memory": answer_loss(keras.ops.convert_to_numpy(with_memory), keys),
        "no_memory": answer_loss(keras.ops.convert_to_numpy(without), keys),
        "train_seconds": seconds,
    }


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.path.insert(0, REPO_ROOT)
    import keras

    results = {}
    for family in args.families:
        runs = {}
        for seed in args.seeds:
            runs[str(seed)] = run(family, seed, args)
            print(
                f"{family} seed {seed}: answer loss memory "
                f"{runs[str(seed)]['memory']:.3f}, no memory "
                f"{runs[str(seed)]['no_memory']:.3f}",
                flush=True,
            )
        results[family] = {
            "seeds": runs,
            "median_memory": statistics.median(r["memory"] for r in runs.values()),
            "median_no_memory": statistics.median(r["no_memory"] for r in runs.values()),
        }
    record = {
        "task": "key token repeated over segment 0; query at the end of segment 1",
        "floor_without_memory_nats": float(__import__("math").log(KEYS)),
        "backend": keras.backend.backend(),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "families": results,
    }
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(record, f, indent=2)
        print("wrote", args.out)
    return record


if __name__ == "__main__":
    main()
