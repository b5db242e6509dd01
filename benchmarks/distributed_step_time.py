"""Training step time of a small ∞-former LM on 1, 2 and 4 simulated devices.

JAX only. Each configuration runs in its own process, with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` set before JAX starts
(host CPU devices that share this machine's cores):

- `single`: one device, no distribution;
- `layout_map`: `ModelParallel` with `keras_infformer.distribution.layout_map`
  (data and memory split on the batch axis, each device keeps its rows);
- `data_parallel`: plain `keras.distribution.DataParallel` (data split,
  memory replicated on every device and gathered at each step).

The time of a step is the wall time of a `model.fit` epoch over a
`StreamingDataset` divided by its number of steps (after one epoch that
compiles), median over repeats; every configuration runs once per round,
in alternating order, and the table gives the median over rounds. The
collectives of the compiled training step are counted in XLA's optimised
HLO (`--xla_dump_to`). Simulated devices are threads of the same CPU: on a
machine with few cores this measures the overhead of the distributed
program (collectives, partitioning), not a speed-up.

    python benchmarks/distributed_step_time.py            # writes results/distributed.json
    python benchmarks/distributed_step_time.py --short
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _common  # noqa: E402

CONFIG = dict(
    vocabulary_size=256,
    segment_length=32,
    batch_size=8,
    num_layers=2,
    hidden_dim=64,
    num_heads=4,
    num_basis=64,
    num_samples=64,
    dropout=0.0,
)
CASES = [
    (1, "single"),
    (2, "layout_map"),
    (2, "data_parallel"),
    (4, "layout_map"),
    (4, "data_parallel"),
]


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def count_collectives(dump_dir):
    """Collective ops in the optimised HLO of the compiled training step."""
    names = [
        n
        for n in os.listdir(dump_dir)
        if "train_step" in n and n.endswith("after_optimizations.txt")
    ]
    if not names:
        return None
    with open(os.path.join(dump_dir, sorted(names)[-1])) as f:
        text = f.read()
    return {op: text.count(f" {op}(") + text.count(f" {op}-start(") for op in COLLECTIVES}


def child(args):
    """One configuration, in this (fresh) process; prints a JSON line."""
    dump_dir = tempfile.mkdtemp()
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={args.devices}"
        + f" --xla_dump_to={dump_dir} --xla_dump_hlo_as_text"
        + " --xla_dump_hlo_module_re=.*train_step.*"
    ).strip()
    _common.select_backend("jax")

    import keras
    import numpy as np

    import keras_infformer
    from keras_infformer.data import StreamingDataset

    devices = keras.distribution.list_devices()[: args.devices]
    if args.mode == "layout_map":
        keras.distribution.set_distribution(keras_infformer.distribution.data_parallel(devices))
    elif args.mode == "data_parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))

    keras.utils.set_random_seed(args.seed)
    model = keras_infformer.InfiniteFormerLM(**CONFIG)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batch, length = CONFIG["batch_size"], CONFIG["segment_length"]
    rng = np.random.default_rng(args.seed)
    tokens = rng.integers(1, CONFIG["vocabulary_size"], batch * length * args.steps + batch)
    dataset = StreamingDataset.from_array(tokens, batch, length)
    steps = len(dataset)
    model.fit(dataset, epochs=1, shuffle=False, verbose=0)  # Compiles.
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    stm = model.decoder_blocks[0]._state_variables["stm"].value
    print(
        json.dumps(
            {
                "devices": args.devices,
                "mode": args.mode,
                "steps_per_epoch": steps,
                "step_ms_median": 1000 * float(np.median(times)),
                "step_ms_all": [1000 * t for t in times],
                "memory_sharding": str(getattr(stm.sharding, "spec", stm.sharding)),
                "memory_shard_rows": int(stm.addressable_shards[0].data.shape[0]),
                "train_step_collectives": count_collectives(dump_dir),
            }
        )
    )
    shutil.rmtree(dump_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _common.add_common_arguments(parser, default_backend="jax")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="single", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 4 if args.tiny else 8 if args.short else 16
    if args.repeats is None:
        args.repeats = 1 if args.tiny else 3 if args.short else 5
    if args.rounds is None:
        args.rounds = 1 if args.tiny else 2 if args.short else 3
    if args.child:
        return child(args)
    if args.backend not in (None, "jax"):
        parser.error("simulated devices are a JAX (XLA host platform) feature")
    _common.select_backend("jax")

    runs = {case: [] for case in CASES}
    for r in range(args.rounds):
        for devices, mode in CASES if r % 2 == 0 else CASES[::-1]:
            env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
            proc = subprocess.run(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--child",
                    "--devices",
                    str(devices),
                    "--mode",
                    mode,
                    "--steps",
                    str(args.steps),
                    "--repeats",
                    str(args.repeats),
                    "--seed",
                    str(args.seed),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode:
                sys.exit(f"{devices} devices / {mode} failed:\n{proc.stderr[-3000:]}")
            runs[(devices, mode)].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for case in CASES:
        row = dict(runs[case][0])
        row["step_ms_per_round"] = [run["step_ms_median"] for run in runs[case]]
        row["step_ms_median"] = _common.median(row["step_ms_per_round"])
        # The least disturbed round (others share the machine's cores).
        row["step_ms_min"] = min(row["step_ms_per_round"])
        row.pop("step_ms_all")
        collectives = row["train_step_collectives"] or {}
        row["all_gather"] = collectives.get("all-gather")
        row["all_reduce"] = collectives.get("all-reduce")
        rows.append(row)
    for row in rows:
        row["median_vs_single"] = row["step_ms_median"] / rows[0]["step_ms_median"]
        row["min_vs_single"] = row["step_ms_min"] / rows[0]["step_ms_min"]
    _common.print_table(
        rows,
        [
            "devices",
            "mode",
            "step_ms_median",
            "median_vs_single",
            "step_ms_min",
            "min_vs_single",
            "memory_shard_rows",
            "all_gather",
            "all_reduce",
        ],
        title="Training step time, simulated host devices (JAX)",
    )
    _common.write_json(
        _common.output_path(args, "distributed"),
        {
            "benchmark": "distributed_step_time",
            "config": CONFIG,
            "steps_per_epoch": args.steps,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "note": (
                "Simulated devices share the machine's CPU cores: this shows "
                "the overhead of the distributed program, not a speed-up."
            ),
            "environment": _common.environment(),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
