"""Training step time of 1 vs 2 processes on this machine (both engines).

Runs `examples/multi_process_train.py` as separate processes on loopback
(one CPU device per process): `--num-processes 1` (the whole global batch
in one process) and `--num-processes 2` (half each, gradients all-reduced
between the processes), for JAX (`jax.distributed`, gloo) and TensorFlow
(`MultiWorkerMirroredStrategy`). Reports the median step time of process 0
after the first epoch (compilation excluded), and the largest loss
difference between the two runs.

    python benchmarks/multi_process_step_time.py [--hidden-dim 64] [--epochs 3]

On one machine the two processes share its cores: this measures what the
cross-process collectives cost, not a speed-up (that needs two hosts).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402

SCRIPT = os.path.join(_common.REPO_ROOT, "examples", "multi_process_train.py")


def free_port(count=2):
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue


def run(backend, num_processes, args, out):
    port = free_port(num_processes)
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                SCRIPT,
                "--backend",
                backend,
                "--process-id",
                str(rank),
                "--num-processes",
                str(num_processes),
                "--coordinator",
                f"127.0.0.1:{port}",
                "--out",
                out,
                "--epochs",
                str(args.epochs),
                "--documents",
                str(args.documents),
                "--batch-size",
                str(args.batch_size),
                "--hidden-dim",
                str(args.hidden_dim),
            ],
            env=env,
            cwd=_common.REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(num_processes)
    ]
    start = time.monotonic()
    for proc in procs:
        _, stderr = proc.communicate(timeout=1200)
        if proc.returncode:
            raise RuntimeError(f"{backend} x{num_processes} failed:\n{stderr[-2000:]}")
    with open(os.path.join(out, "result_0.json")) as f:
        result = json.load(f)
    result["wall_s"] = time.monotonic() - start
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backends", default="jax,tensorflow")
    parser.add_argument("--out", default=os.path.join(_common.RESULTS_DIR, "multi_process.json"))
    args = parser.parse_args(argv)
    rows = []
    for backend in args.backends.split(","):
        results = {}
        for num_processes in (1, 2):
            with tempfile.TemporaryDirectory() as out:
                results[num_processes] = run(backend, num_processes, args, out)
        steps = results[1]["num_steps"]
        for num_processes, result in results.items():
            later = result["step_times"][steps:]  # After the first epoch.
            rows.append(
                {
                    "backend": backend,
                    "processes": num_processes,
                    "rows_per_process": args.batch_size // num_processes,
                    "step_ms_median": 1000 * statistics.median(later),
                    "steps_timed": len(later),
                    "max_loss_diff_vs_1": max(
                        abs(a - b) for a, b in zip(result["losses"], results[1]["losses"])
                    ),
                    "wall_s": result["wall_s"],
                }
            )
    for row in rows:
        one = next(r for r in rows if r["backend"] == row["backend"] and r["processes"] == 1)
        row["vs_1_process"] = row["step_ms_median"] / one["step_ms_median"]
    _common.print_table(
        rows,
        [
            "backend",
            "processes",
            "rows_per_process",
            "step_ms_median",
            "vs_1_process",
            "max_loss_diff_vs_1",
            "wall_s",
        ],
        title="Training step, 1 vs 2 processes on one machine",
    )
    _common.write_json(
        args.out,
        {
            "benchmark": "multi_process_step_time",
            "config": vars(args),
            "environment": _common.environment(),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
