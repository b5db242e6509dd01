"""Speed of the sorting-task generator (`keras_infformer.data.sorting`).

Times `generate_sequences(n, T)` (default 1,000 sequences of 16,384
tokens, the size the sorting issue names) side by side with its floor: NumPy
drawing the same number of uniform integers (`rng.integers`), the one draw
per token the generator cannot avoid. The two alternate over rounds; the
medians and the median of the per-round ratios are printed and written to
benchmarks/results/sorting_generation.json.

    python benchmarks/sorting_generation.py [--short|--tiny]
"""

import argparse
import statistics
import time

import _common

SIZES = {
    "full": dict(num_sequences=1000, sequence_length=16_384, rounds=5),
    "short": dict(num_sequences=1000, sequence_length=16_384, rounds=3),
    "tiny": dict(num_sequences=10, sequence_length=1024, rounds=2),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    args = parser.parse_args(argv)
    _common.select_backend(args.backend)
    import numpy as np

    from keras_infformer.data import sorting

    mode = "tiny" if args.tiny else "short" if args.short else "full"
    size = SIZES[mode]
    n, length = size["num_sequences"], size["sequence_length"]
    rng = np.random.default_rng(args.seed)
    generator_s, floor_s, ratios = [], [], []
    for round_index in range(size["rounds"]):
        start = time.perf_counter()
        tokens, targets = sorting.generate_sequences(n, length, seed=args.seed + round_index)
        generator_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        rng.integers(0, 180, size=(n, length), dtype=np.int32)
        floor_s.append(time.perf_counter() - start)
        ratios.append(generator_s[-1] / floor_s[-1])
    result = {
        "benchmark": "sorting_generation",
        "mode": mode,
        "num_sequences": n,
        "sequence_length": length,
        "tokens_shape": list(tokens.shape),
        "targets_shape": list(targets.shape),
        "rounds": size["rounds"],
        "generator_s": statistics.median(generator_s),
        "floor_s": statistics.median(floor_s),
        "ratio_to_floor": statistics.median(ratios),
        "tokens_per_s": n * length / statistics.median(generator_s),
        "environment": _common.environment(),
    }
    _common.print_table(
        [result],
        [
            "num_sequences",
            "sequence_length",
            "generator_s",
            "floor_s",
            "ratio_to_floor",
            "tokens_per_s",
        ],
        title="sorting-task generator vs one NumPy integer draw per token",
    )
    _common.write_json(_common.output_path(args, "sorting_generation"), result)
    return result


if __name__ == "__main__":
    main()
