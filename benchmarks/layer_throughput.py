"""Throughput of the ∞-former's two memory ops against their matmul floor.

For `ContinuousLTM.absorb` (the ridge-regression update of the long-term
memory) and `GaussianAttention` (continuous attention over it), at the
paper's size (L 1024, N 512, M 512, e 300, 6 heads) and at a small size,
on the backend chosen by KERAS_BACKEND (or `--backend`), eager and compiled
(XLA: `jax.jit` on JAX, `tf.function(jit_compile=True)` on TensorFlow; eager
only on PyTorch). Each op is timed side by side with its "floor": the same
matmuls/einsums done alone with `keras.ops.einsum`:

- LTM floor: the read `X_old = ψᵀ B_old` (M·N·e) and the fit
  `B = Gᵀ [X_old; X]` ((M + L)·N·e);
- attention floor: the K and V projections (N·e·e each), the scores
  `K_h q` (L·N·e), the read `rᵀ V` (L·N·e) and the output projection
  (L·e·e).

The ratio op / floor is the median over rounds of the per-round ratio (op
and floor run in the same round, in random order). Results of each backend
are merged into `results/layer_throughput.json` (one entry per backend, so
`run_all.py` runs this script once per backend, each in its own process).

    KERAS_BACKEND=jax python benchmarks/layer_throughput.py --short
    python benchmarks/layer_throughput.py --backend torch
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SIZES = {
    # name: (batch, L, N, M, e, heads)
    "paper": dict(batch=2, length=1024, num_basis=512, num_samples=512, dim=300, heads=6),
    "small": dict(batch=2, length=128, num_basis=64, num_samples=64, dim=64, heads=2),
    "tiny": dict(batch=1, length=16, num_basis=8, num_samples=8, dim=8, heads=2),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds of timing rounds per size"
    )
    _common.add_host_malloc_argument(parser)
    parser.add_argument(
        "--reset",
        action="store_true",
        help="start a fresh JSON (drop the entries of other backends)",
    )
    return parser.parse_args(argv)


def flops(size):
    b, L, N, M, e = (size[k] for k in ("batch", "length", "num_basis", "num_samples", "dim"))
    ltm = 2 * b * (M * N * e + (M + L) * N * e)
    attention = 2 * b * (2 * N * e * e + 2 * L * N * e + L * e * e)
    return {"ltm_absorb": ltm, "ltm_absorb_sticky": ltm, "gaussian_attention": attention}


def build_cases(size, jit, seed):
    """Zero-argument callables: each op and its floor, at one size."""
    import numpy as np
    from keras import ops

    from keras_infformer.layers import ContinuousLTM, GaussianAttention

    rng = np.random.default_rng(seed)
    b, L, N, M, e, h = (
        size[k] for k in ("batch", "length", "num_basis", "num_samples", "dim", "heads")
    )
    dk = e // h
    f32 = lambda a: ops.convert_to_tensor(np.asarray(a, dtype="float32"))  # noqa: E731

    # -- long-term memory update ------------------------------------------
    ltm = ContinuousLTM(num_basis=N, num_samples=M, tau=0.75, stateful=False)
    ltm.build((b, L, e))
    x = f32(rng.standard_normal((b, L, e)))
    state = {
        "coefficients": f32(0.1 * rng.standard_normal((b, N, e))),
        "filled": f32(np.ones((b,))),
        "max_abs": f32(np.full((b,), 1e3)),
    }
    points = f32(np.sort(rng.uniform(0.0, 1.0, (b, M)), axis=-1))
    _, g_update, psi_uniform = ltm._ridge_matrices(L)

    def ltm_op(x, state):
        return ltm.absorb(x, state)[0]

    def ltm_sticky_op(x, state, points):
        return ltm.absorb(x, state, sample_points=points)[0]

    def ltm_floor(x, coefficients):
        x_old = ops.einsum("mn,bne->bme", psi_uniform, coefficients)
        return ops.einsum("pn,bpe->bne", g_update, ops.concatenate([x_old, x], axis=1))

    # -- Gaussian attention -----------------------------------------------
    attention = GaussianAttention(num_heads=h, key_dim=dk, output_dim=e, project_query=False)
    attention.build((b, L, h, dk), (b, N, e))
    query = f32(rng.standard_normal((b, L, h, dk)))
    coefficients = state["coefficients"]
    params, attention_stateless, variables = _common.stateless(attention, attention.__call__)

    def attention_op(params, query, coefficients):
        return attention_stateless(params, query, coefficients)[0]

    w_k = attention._key_dense.kernel.value
    w_v = attention._value_dense.kernel.value
    w_o = attention._output_dense.kernel.value

    def attention_floor(query, coefficients, w_k, w_v, w_o):
        k = ops.einsum("bne,ehk->bnhk", coefficients, w_k)
        v = ops.einsum("bne,ehk->bnhk", coefficients, w_v)
        scores = ops.einsum("bqhk,bnhk->bhqn", query, k)
        z = ops.einsum("bhqn,bnhk->bqhk", scores, v)
        return ops.einsum("bqhk,hko->bqo", z, w_o)

    c = lambda f: _common.compile_fn(f, jit=jit)  # noqa: E731
    fns = {
        "ltm_absorb": (c(ltm_op), (x, state)),
        "ltm_absorb_sticky": (c(ltm_sticky_op), (x, state, points)),
        "ltm_floor": (c(ltm_floor), (x, coefficients)),
        "gaussian_attention": (c(attention_op), (params, query, coefficients)),
        "attention_floor": (c(attention_floor), (query, coefficients, w_k, w_v, w_o)),
    }
    cases = {}
    for name, (fn, args) in fns.items():
        cases[name] = lambda fn=fn, args=args: _common.block(fn(*args))
    return cases


FLOOR_OF = {
    "ltm_absorb": "ltm_floor",
    "ltm_absorb_sticky": "ltm_floor",
    "gaussian_attention": "attention_floor",
}


def run(args):
    import keras

    sizes = ["tiny"] if args.tiny else ["small", "paper"]
    modes = ["eager", "compiled"]
    if keras.backend.backend() == "torch":
        modes = ["eager"]  # torch.compile is optional and slow to start on CPU
    rounds = args.rounds or (5 if args.tiny else 15 if args.short else 25)
    budget = args.budget or (2.0 if args.tiny else 20.0 if args.short else 40.0)
    results = []
    for size_name in sizes:
        size = dict(SIZES[size_name])
        if args.short and size_name == "paper":
            size["batch"] = 1
        cases = {}
        for mode in modes:
            for name, f in build_cases(size, mode == "compiled", args.seed).items():
                cases[(mode, name)] = f
        times = _common.interleaved_timing(
            cases, rounds=rounds, warmup=2, budget_s=budget, seed=args.seed, inner=5
        )
        fl = flops(size)
        for mode in modes:
            for op, floor in FLOOR_OF.items():
                t = times[(mode, op)]
                tf_ = times[(mode, floor)]
                results.append(
                    {
                        "size": size_name,
                        "shape": size,
                        "op": op,
                        "mode": mode,
                        "time_ms": 1e3 * _common.median(t),
                        "floor_ms": 1e3 * _common.median(tf_),
                        "ratio_to_floor": _common.paired_ratio(t, tf_),
                        "floor_gflops": fl[op] / _common.median(tf_) / 1e9,
                        "rounds": len(t),
                    }
                )
    return results


def main(argv=None):
    args = parse_args(argv)
    backend = _common.select_backend(args.backend, args.torch_threads)
    host_malloc = _common.configure_host_malloc(args.host_malloc)
    results = run(args)
    _common.print_table(
        results,
        ["size", "op", "mode", "time_ms", "floor_ms", "ratio_to_floor", "floor_gflops", "rounds"],
        title=f"layer throughput, backend {backend}",
    )
    path = _common.output_path(args, "layer_throughput")
    if path is None:
        return results
    merged = {}
    if os.path.exists(path) and not args.reset:
        try:
            with open(path) as f:
                merged = json.load(f)
        except (OSError, ValueError):
            merged = {}
    merged.setdefault("benchmark", "layer_throughput")
    merged["method"] = (
        "Per-call time of ContinuousLTM.absorb (uniform and sticky reads, "
        "all rows filled) and GaussianAttention (project_query=False, as in "
        "the decoder, via keras.StatelessScope) against their matmul floor "
        "(the same einsums alone, keras.ops.einsum). Op and floor are timed "
        "in the same rounds, in random order (each visit keeps the fastest of "
        "up to 5 back-to-back calls); time = median over rounds; ratio = "
        "median over rounds of the per-round ratio. Compiled = jax.jit / tf.function(jit_compile="
        "True); torch is eager only. Shapes: batch, L, N, M, e, heads."
    )
    merged.setdefault("backends", {})
    merged["backends"][backend] = {
        "environment": dict(_common.environment(), host_malloc=host_malloc),
        "mode": "tiny" if args.tiny else "short" if args.short else "full",
        "results": results,
    }
    _common.write_json(path, merged)
    if not args.no_plot:
        import plot_results

        plot_results.plot_layer_throughput(path)
    return results


if __name__ == "__main__":
    main()
