"""Run every benchmark, each in its own process with the right backend.

- `context_scaling.py` and `memory_stability.py` run on the compiled backend
  (`--compiled-backend`, JAX by default: `jax.jit`, XLA memory analysis);
- `layer_throughput.py` runs once per backend of `--backends` (TensorFlow,
  JAX and PyTorch by default), each merging its entry into one JSON;
- `decode_speed.py` (compiled `generate()` against Transformer-XL) runs on
  the compiled backend.

Results land in benchmarks/results (JSON + PNG), or in `--out-dir`. At the
end `summary.py` prints the issue-16 targets against what that folder holds
and writes `summary.json` there (skipped with `--tiny` and no `--out-dir`,
where nothing is written).

    KERAS_BACKEND=jax python benchmarks/run_all.py --short   # `make bench`
    python benchmarks/run_all.py --tiny --out-dir /tmp/b     # smoke test
    python benchmarks/run_all.py                              # full mode
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import summary  # noqa: E402  (reads JSON only; no Keras)

SCRIPTS = ("context_scaling", "memory_stability", "layer_throughput", "decode_speed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="fast mode of every script")
    parser.add_argument("--tiny", action="store_true", help="smoke test (seconds per script)")
    parser.add_argument(
        "--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS)
    )
    parser.add_argument(
        "--backends", default="tensorflow,jax,torch", help="backends of layer_throughput"
    )
    parser.add_argument(
        "--compiled-backend",
        default="jax",
        help="backend of context_scaling, memory_stability and decode_speed",
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="where the JSON/PNG go (default benchmarks/results; "
        "with --tiny and no --out-dir nothing is written)",
    )
    return parser.parse_args(argv)


def run(script, backend, flags, out_dir, extra=()):
    cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), *flags, *extra]
    if out_dir:
        cmd += ["--out", os.path.join(out_dir, f"{script}.json")]
    env = dict(os.environ, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"\n### KERAS_BACKEND={backend} {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env)
    return rc, time.perf_counter() - t0


def main(argv=None):
    args = parse_args(argv)
    flags = ["--tiny"] if args.tiny else ["--short"] if args.short else []
    out_dir = args.out_dir
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    wanted = [s for s in args.only.split(",") if s]
    unknown = set(wanted) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"unknown scripts: {sorted(unknown)}")
    t_start = time.perf_counter()
    report = []
    for script in SCRIPTS:
        if script not in wanted:
            continue
        if script == "layer_throughput":
            for i, backend in enumerate(b for b in args.backends.split(",") if b):
                extra = ["--reset"] if i == 0 else []
                rc, wall = run(script, backend, flags, out_dir, extra)
                report.append((f"{script} [{backend}]", rc, wall))
        else:
            rc, wall = run(script, args.compiled_backend, flags, out_dir)
            report.append((f"{script} [{args.compiled_backend}]", rc, wall))
    total = time.perf_counter() - t_start
    print("\n== run_all summary")
    for name, rc, wall in report:
        print(f"{name:34s} {'ok' if rc == 0 else f'FAILED (rc {rc})':>14s} {wall:8.1f} s")
    print(f"{'total':34s} {'':>14s} {total:8.1f} s")
    failed = any(rc for _, rc, _ in report)
    if args.tiny and not out_dir:
        print("\n(--tiny without --out-dir wrote nothing: no summary)")
    else:
        results_dir = out_dir or os.path.join(HERE, "results")
        failed = summary.main(["--results-dir", results_dir]) != 0 or failed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
