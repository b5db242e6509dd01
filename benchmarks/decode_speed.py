"""Compiled token-by-token decoding speed: the ∞-former vs Transformer-XL.

Both models come from the same code (`InfiniteFormerLM`, the baseline with
`use_long_term_memory=False`), same width, depth, heads, segment and
short-term window. `generate()` reads a prompt of two segments, then
decodes `--new-tokens` tokens (greedy, no stop token), so segment
boundaries (with their memory updates) fall inside the timed part. The
first call compiles and is not timed; the median of `--repeats` calls is.
Prints a table and writes JSON.

    KERAS_BACKEND=jax python benchmarks/decode_speed.py            # full: 5 repeats
    KERAS_BACKEND=jax python benchmarks/decode_speed.py --short    # `make bench`
    python benchmarks/decode_speed.py --tiny --out /tmp/d.json     # smoke test
"""

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

# Sizes per mode; any flag given on the command line wins.
MODES = {
    "full": dict(
        segment=64,
        hidden_dim=64,
        num_layers=2,
        num_basis=64,
        new_tokens=192,
        batches=[1, 8],
        repeats=5,
    ),
    "short": dict(
        segment=64,
        hidden_dim=64,
        num_layers=2,
        num_basis=64,
        new_tokens=192,
        batches=[1, 8],
        repeats=3,
    ),
    "tiny": dict(
        segment=8,
        hidden_dim=16,
        num_layers=1,
        num_basis=8,
        new_tokens=12,
        batches=[1, 2],
        repeats=1,
    ),
}


def measure(model, batch, prompt_length, new_tokens, repeats):
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, model.vocabulary_size, size=(batch, prompt_length))
    max_length = prompt_length + new_tokens
    model.generate(prompts.astype("int32"), max_length=max_length, stop_token_ids=None)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate(prompts.astype("int32"), max_length=max_length, stop_token_ids=None)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {"seconds": seconds, "tokens_per_second": batch * new_tokens / seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--segment", type=int, default=None)
    parser.add_argument("--hidden-dim", type=int, default=None)
    parser.add_argument("--num-layers", type=int, default=None)
    parser.add_argument("--num-basis", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    mode = "tiny" if args.tiny else "short" if args.short else "full"
    for key, value in MODES[mode].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    _common.select_backend(args.backend, args.torch_threads)

    import keras

    import keras_infformer as kif

    settings = dict(
        vocabulary_size=256,
        segment_length=args.segment,
        batch_size=1,
        num_layers=args.num_layers,
        hidden_dim=args.hidden_dim,
        num_heads=4,
        num_basis=args.num_basis,
        num_samples=args.num_basis,
        dropout=0.0,
    )
    systems = {
        "infformer": dict(),
        "infformer_sticky": dict(sticky_memories=True),
        "transformer_xl": dict(use_long_term_memory=False),
    }
    results = {}
    for batch in args.batches:
        for name, extra in systems.items():
            keras.utils.set_random_seed(args.seed)
            model = kif.InfiniteFormerLM(**settings, **extra)
            model.compile(sampler="greedy")
            results[f"{name}/batch_{batch}"] = measure(
                model, batch, 2 * args.segment, args.new_tokens, args.repeats
            )
            print(
                f"{name:18s} batch {batch}: "
                f"{results[f'{name}/batch_{batch}']['tokens_per_second']:9.1f} tokens/s"
            )
    ratios = {}
    for batch in args.batches:
        xl = results[f"transformer_xl/batch_{batch}"]["tokens_per_second"]
        for name in ("infformer", "infformer_sticky"):
            ratios[f"{name}/batch_{batch}"] = (
                results[f"{name}/batch_{batch}"]["tokens_per_second"] / xl
            )
            print(f"{name} / Transformer-XL, batch {batch}: {ratios[f'{name}/batch_{batch}']:.2f}")
    record = {
        "benchmark": "decode_speed",
        "mode": mode,
        "environment": _common.environment(),
        "backend": keras.backend.backend(),
        "machine": platform.processor() or platform.machine(),
        "settings": {
            **settings,
            "new_tokens": args.new_tokens,
            "prompt_length": 2 * args.segment,
            "repeats": args.repeats,
        },
        "results": results,
        "ratio_to_transformer_xl": ratios,
    }
    path = _common.output_path(args, "decode_speed")
    if path is None:
        return record
    _common.write_json(path, record)
    return record


if __name__ == "__main__":
    main()
