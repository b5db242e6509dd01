"""The long-term-memory step on each backend: JAX against TensorFlow and PyTorch.

One step of the ∞-former's long-term memory at the paper's sorting size
(batch 2, L 1,024, N 512, e 300, 6 heads): the new segment absorbed into
the continuous memory (`ContinuousLTM.absorb`, the ridge fit of the
squeezed old signal and the new one) and read by Gaussian attention with
the segment's queries, forward and backward (the gradients of a scalar loss
with respect to the attention's weights, the segment and the queries):
the work of the official `LongTermAttention` module in one training step.
Compiled with XLA on JAX and TensorFlow (`jax.jit`, `tf.function(
jit_compile=True)`), eager on PyTorch.

Each backend runs in its own process; the processes alternate round by
round (jax, tensorflow, torch, jax, ...), so a slow phase of the machine
hits them alike. A round is the median of `--calls` timed calls after one
warm-up call. The figure of merit is JAX's time over the faster of the two
others (target ≤ 1.1).

    python benchmarks/ltm_step.py                 # 3 rounds, paper size
    python benchmarks/ltm_step.py --size small --rounds 1 --out ''

Writes benchmarks/results/ltm_step.json (or `--out`).
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results", "ltm_step.json")
SIZES = {
    "paper": dict(batch=2, length=1024, num_basis=512, dim=300, heads=6),
    "small": dict(batch=2, length=128, num_basis=64, dim=64, heads=2),
    "tiny": dict(batch=1, length=16, num_basis=8, dim=8, heads=2),
}
BACKENDS = ("jax", "tensorflow", "torch")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="paper")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=5, help="timed calls per round")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny size, 1 round, 1 call")
    p.add_argument("--no-plot", action="store_true", help="accepted; nothing is plotted")
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_step(size, seed=0):
    """`(step, args)`: `step(*args)` returns `(loss, gradients)` of one
    absorb + read, compiled where the backend compiles."""
    import numpy as np
    from keras import ops

    from keras_infformer.layers import ContinuousLTM, GaussianAttention

    b, L, N, e, h = (size[k] for k in ("batch", "length", "num_basis", "dim", "heads"))
    rng = np.random.default_rng(seed)
    f32 = lambda a: ops.convert_to_tensor(np.asarray(a, dtype="float32"))  # noqa: E731
    ltm = ContinuousLTM(num_basis=N, num_samples=N, tau=0.75, stateful=False)
    ltm.build((b, L, e))
    attention = GaussianAttention(num_heads=h, key_dim=e // h, output_dim=e)
    attention.build((b, L, e), (b, N, e))
    params, read, _ = _common.stateless(attention, attention.__call__)
    state = {
        "coefficients": f32(0.1 * rng.standard_normal((b, N, e))),
        "filled": f32(np.ones((b,))),
        "max_abs": f32(np.full((b,), 1e3)),
    }
    segment = f32(rng.standard_normal((b, L, e)))
    query = f32(rng.standard_normal((b, L, e)))

    def loss(differentiable, state):
        # One flat list (torch's autograd takes tensors, not nests).
        weights, segment, query = differentiable[:-2], differentiable[-2], differentiable[-1]
        coefficients = ltm.absorb(segment, state)[0]
        outputs, losses = read(weights, query, coefficients)
        total = ops.mean(ops.square(outputs))
        for extra in losses:
            total = total + extra
        return total, ()

    gradient = _common.grad_fn(loss)
    args = (list(params) + [segment, query], state)
    return (lambda: _common.block(gradient(*args))), args


def child(size_name, calls):
    """Time the step on this process's backend; print one JSON line."""
    import keras

    step, _ = build_step(SIZES[size_name])
    t0 = time.perf_counter()
    step()
    first = time.perf_counter() - t0
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    print(
        "RESULT "
        + json.dumps(
            {
                "backend": keras.backend.backend(),
                "median_seconds": _common.median(times),
                "seconds": times,
                "first_call_seconds": first,
            }
        )
    )


def run(args):
    per_backend = {b: [] for b in args.backends}
    for round_index in range(args.rounds):
        for backend in args.backends:
            env = dict(os.environ, KERAS_BACKEND=backend)
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", args.size]
                + ["--calls", str(args.calls)],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                raise RuntimeError(f"{backend} failed:\n{out.stderr[-3000:]}")
            result = json.loads(lines[-1][len("RESULT ") :])
            per_backend[backend].append(result)
            print(f"round {round_index} {backend:10s} {result['median_seconds'] * 1e3:9.1f} ms")
    medians = {
        b: _common.median([r["median_seconds"] for r in rounds])
        for b, rounds in per_backend.items()
    }
    record = {
        "benchmark": "ltm_step",
        "what": "fwd+bwd of ContinuousLTM.absorb + GaussianAttention, per backend "
        "(XLA on JAX and TensorFlow, eager PyTorch), processes alternating by round",
        "size": dict(SIZES[args.size], name=args.size),
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "median_seconds": medians,
        "rounds_detail": per_backend,
        "environment": _common.environment(),
    }
    others = [medians[b] for b in ("tensorflow", "torch") if b in medians]
    if "jax" in medians and others:
        record["jax_over_fastest_other"] = medians["jax"] / min(others)
        record["target"] = "jax_over_fastest_other <= 1.1"
    print(
        json.dumps(
            {k: record[k] for k in record if k in ("median_seconds", "jax_over_fastest_other")}
        )
    )
    if args.out:
        _common.write_json(args.out, record)
        print(f"wrote {args.out}")
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.tiny:
        args.size, args.rounds, args.calls = "tiny", 1, 1
    if args.child:
        child(args.child, args.calls)
        return None
    return run(args)


if __name__ == "__main__":
    main()
