"""A long stream through a small ∞-former LM: no memory growth, no NaN/Inf.

Streams 1M tokens (`--short`: 100k) of random token ids through a small
`InfiniteFormerLM` with its compiled explicit-state step
(`InfiniteFormerLM.step`, the serving path), in float32 and under the
`mixed_bfloat16` policy (uniform and sticky memories), and a shorter stream
through the stateful model with `predict_on_batch` (memory in variables, the
`model.fit`/`predict` path). Every `--every` segments it records the process
RSS, the largest |LTM coefficient| of any layer, whether the whole state and
the logits are finite, and the median step time of the window.

Each run is a fresh process (`--in-process` to share one), so that its RSS
owes nothing to the models and compilations of the runs before it.

Checks (reported, never asserted on timings):
- RSS growth from the end of warm-up (the first 5% of the stream) to the end
  is below `max(16 MiB, 1 %)`; the least-squares slope of RSS against tokens
  is reported too;
- the state and the logits stay finite at every check;
- the memory stays bounded: the largest |LTM coefficient| grows less than
  `BOUND` = 10× from the end of warm-up to the end;
- the step time does not drift (median of the last tenth / first tenth).

    KERAS_BACKEND=jax python benchmarks/memory_stability.py [--short|--tiny]
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

CONFIGS = {
    "full": dict(
        batch=1,
        length=512,
        dim=64,
        heads=2,
        ffn=256,
        num_basis=256,
        num_samples=256,
        vocab=256,
        layers=2,
        tokens=1024 * 1024,
        sticky_tokens=1024 * 1024,
        stateful_tokens=100 * 1024,
        every=32,
    ),
    "short": dict(
        batch=1,
        length=512,
        dim=64,
        heads=2,
        ffn=256,
        num_basis=256,
        num_samples=256,
        vocab=256,
        layers=2,
        tokens=100 * 1024,
        sticky_tokens=100 * 1024,
        stateful_tokens=20 * 1024,
        every=10,
    ),
    "tiny": dict(
        batch=1,
        length=16,
        dim=16,
        heads=2,
        ffn=32,
        num_basis=8,
        num_samples=8,
        vocab=32,
        layers=2,
        tokens=1024,
        sticky_tokens=1024,
        stateful_tokens=256,
        every=8,
    ),
}
# The memory is "bounded" if its largest coefficient grows less than this
# factor from the end of warm-up to the end of the stream.
BOUND = 10.0
RUNS = (
    # name, dtype policy, sticky, path
    ("float32/uniform", "float32", False, "step"),
    ("mixed_bfloat16/uniform", "mixed_bfloat16", False, "step"),
    ("float32/sticky", "float32", True, "step"),
    ("mixed_bfloat16/sticky", "mixed_bfloat16", True, "step"),
    ("float32/uniform/stateful_predict", "float32", False, "predict"),
    ("mixed_bfloat16/uniform/stateful_predict", "mixed_bfloat16", False, "predict"),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--tokens", type=int, default=None, help="stream length")
    parser.add_argument("--every", type=int, default=None, help="segments between checks")
    parser.add_argument(
        "--runs", default=",".join(r[0] for r in RUNS), help="comma-separated subset of the runs"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="all runs in this process (default: one fresh "
        "process per run, for clean RSS readings)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-tokens", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(cfg, dtype, sticky, seed):
    import keras

    from keras_infformer.models import InfiniteFormerLM

    keras.utils.set_random_seed(seed)
    return InfiniteFormerLM(
        vocabulary_size=cfg["vocab"],
        segment_length=cfg["length"],
        batch_size=cfg["batch"],
        num_layers=cfg["layers"],
        hidden_dim=cfg["dim"],
        num_heads=cfg["heads"],
        intermediate_dim=cfg["ffn"],
        num_basis=cfg["num_basis"],
        num_samples=cfg["num_samples"],
        sticky_memories=sticky,
        dropout=0.0,
        dtype=dtype,
    )


def ltm_max_abs(state):
    import numpy as np
    from keras import ops

    values = [
        np.abs(ops.convert_to_numpy(v)).max()
        for k, v in state.items()
        if k.endswith("ltm_coefficients")
    ]
    return float(max(values)) if values else 0.0


def finite(tree):
    import keras
    import numpy as np
    from keras import ops

    return bool(
        all(
            np.isfinite(ops.convert_to_numpy(ops.cast(x, "float32"))).all()
            for x in keras.tree.flatten(tree)
        )
    )


def stream(cfg, dtype, sticky, path, tokens, every, seed):
    import numpy as np
    from keras import ops

    model = build_model(cfg, dtype, sticky, seed)
    rng = np.random.default_rng(seed)
    b, L = cfg["batch"], cfg["length"]
    pool = [
        ops.convert_to_tensor(rng.integers(0, cfg["vocab"], (b, L)).astype("int32"))
        for _ in range(8)
    ]
    reset = ops.convert_to_tensor(np.zeros((b,), dtype=bool))
    if path == "step":
        params, pure, _ = _common.stateless(
            model, lambda tok, state: model.step(tok, reset, state, training=False)
        )

        def step_fn(params, state, tok):
            return pure(params, tok, state)[0]

        step_fn = _common.compile_fn(step_fn)
        state = model.get_initial_state(b)

        def advance(i, state):
            logits, state = step_fn(params, state, pool[i % len(pool)])
            _common.block(state)
            return logits, state

        def current(state):
            return state
    else:
        model.reset_state()

        def advance(i, state):
            logits = model.predict_on_batch({"token_ids": pool[i % len(pool)], "reset": reset})
            return logits, None

        def current(state):
            return model.get_state()

        state = None

    steps = tokens // L
    warm = max(2, steps // 20)
    trace, window = [], []
    rss_warm = None
    all_finite = True
    t_start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        logits, state = advance(i, state)
        window.append(time.perf_counter() - t0)
        last = i == steps - 1
        if (i + 1) % every == 0 or last or i + 1 == warm:
            s = current(state)
            ok = finite(s) and finite(logits)
            all_finite &= ok
            rss = _common.rss_bytes() / 2**20
            if i + 1 >= warm and rss_warm is None:
                rss_warm = rss
            trace.append(
                {
                    "tokens": (i + 1) * L,
                    "rss_mb": rss,
                    "ltm_max_abs": ltm_max_abs(s),
                    "finite": ok,
                    "step_ms": 1e3 * _common.median(window),
                }
            )
            window = []
    wall = time.perf_counter() - t_start
    post = [t for t in trace if t["tokens"] >= warm * L]
    after = [t for t in trace if t["tokens"] > warm * L]  # windows without compile
    rss_end = trace[-1]["rss_mb"]
    growth = rss_end - rss_warm
    slope = 0.0
    if len(post) >= 3:
        xs = np.array([t["tokens"] for t in post], dtype=float)
        ys = np.array([t["rss_mb"] for t in post], dtype=float)
        slope = float(np.polyfit(xs, ys, 1)[0]) * 1e6  # MiB per 1M tokens
    tenth = max(1, len(after) // 10)
    drift = (
        (
            _common.median([t["step_ms"] for t in after[-tenth:]])
            / _common.median([t["step_ms"] for t in after[:tenth]])
        )
        if after
        else float("nan")
    )
    tolerance = max(16.0, 0.01 * rss_warm)
    ltm_warm = next(t["ltm_max_abs"] for t in trace if t["tokens"] >= warm * L)
    ltm_growth = trace[-1]["ltm_max_abs"] / max(ltm_warm, 1e-30)
    return {
        "dtype_policy": dtype,
        "sticky_memories": sticky,
        "path": "compiled explicit-state step"
        if path == "step"
        else "stateful model, predict_on_batch",
        "tokens": steps * L,
        "segments": steps,
        "warmup_segments": warm,
        "wall_s": wall,
        "tokens_per_s": steps * L / wall,
        "rss_after_warmup_mb": rss_warm,
        "rss_end_mb": rss_end,
        "rss_growth_mb": growth,
        "rss_slope_mb_per_1m_tokens": slope,
        "rss_tolerance_mb": tolerance,
        "no_memory_growth": growth <= tolerance,
        "all_finite": all_finite,
        "ltm_max_abs_after_warmup": ltm_warm,
        "ltm_max_abs_end": trace[-1]["ltm_max_abs"],
        "ltm_growth": ltm_growth,
        "ltm_bounded": bool(ltm_growth < BOUND),
        "step_time_drift": drift,
        "trace": trace,
    }


def run_isolated(args, name, tokens, every):
    """One run in a fresh process, so that its RSS owes nothing to the
    models, compilations and garbage of the runs before it."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run.json")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            name,
            "--worker-tokens",
            str(tokens),
            "--every",
            str(every),
            "--seed",
            str(args.seed),
            "--worker-out",
            out,
            "--torch-threads",
            str(args.torch_threads),
        ]
        if args.tiny:
            cmd.append("--tiny")
        elif args.short:
            cmd.append("--short")
        subprocess.run(cmd, check=True, env=dict(os.environ))
        with open(out) as f:
            return json.load(f)


def worker(args):
    """`--worker NAME`: one run, JSON to `--worker-out` (used by main)."""
    import json

    mode = "tiny" if args.tiny else "short" if args.short else "full"
    cfg = dict(CONFIGS[mode])
    ((_, dtype, sticky, path),) = [r for r in RUNS if r[0] == args.worker]
    result = stream(cfg, dtype, sticky, path, args.worker_tokens, args.every, args.seed)
    with open(args.worker_out, "w") as f:
        json.dump(result, f)


def main(argv=None):
    args = parse_args(argv)
    backend = _common.select_backend(args.backend, args.torch_threads)
    if args.worker:
        return worker(args)
    mode = "tiny" if args.tiny else "short" if args.short else "full"
    cfg = dict(CONFIGS[mode])
    tokens = args.tokens or cfg["tokens"]
    every = args.every or cfg["every"]
    t0 = time.perf_counter()
    runs = {}
    wanted = args.runs.split(",")
    unknown = set(wanted) - {r[0] for r in RUNS}
    if unknown:
        raise SystemExit(f"unknown runs: {sorted(unknown)}")
    for name, dtype, sticky, path in RUNS:
        if name not in wanted:
            continue
        if path == "predict":
            n = cfg["stateful_tokens"]
        elif sticky and not args.tokens:
            n = cfg["sticky_tokens"]
        else:
            n = tokens
        if args.in_process:
            runs[name] = stream(cfg, dtype, sticky, path, n, every, args.seed)
        else:
            runs[name] = run_isolated(args, name, n, every)
        r = runs[name]
        print(
            f"{name:42s} {r['tokens']:>8d} tokens {r['wall_s']:6.1f} s  RSS growth "
            f"{r['rss_growth_mb']:+.1f} MiB  finite={r['all_finite']}",
            flush=True,
        )
    rows = [
        {"run": k, **{kk: vv for kk, vv in v.items() if kk != "trace"}} for k, v in runs.items()
    ]
    _common.print_table(
        rows,
        [
            "run",
            "tokens",
            "tokens_per_s",
            "rss_after_warmup_mb",
            "rss_end_mb",
            "rss_growth_mb",
            "rss_slope_mb_per_1m_tokens",
            "no_memory_growth",
            "all_finite",
            "ltm_max_abs_end",
            "ltm_growth",
            "ltm_bounded",
            "step_time_drift",
        ],
        title=f"memory stability, backend {backend}",
    )
    result = {
        "benchmark": "memory_stability",
        "mode": mode,
        "config": cfg,
        "method": __doc__.split("\n\n", 1)[1],
        "environment": _common.environment(),
        "wall_s": time.perf_counter() - t0,
        "all_pass": all(
            r["no_memory_growth"] and r["all_finite"] and r["ltm_bounded"] for r in runs.values()
        ),
        "runs": runs,
    }
    path = _common.output_path(args, "memory_stability")
    _common.write_json(path, result)
    if path and not args.no_plot:
        import plot_results

        plot_results.plot_memory_stability(path)
    return result


if __name__ == "__main__":
    main()
