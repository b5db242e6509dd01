"""Per-segment cost after a stream of 1k, 10k, 100k and 1M tokens.

For one decoder layer and for a small LM, and for five systems:

- `infformer_uniform`: the ∞-former (continuous LTM, uniform reads);
- `infformer_sticky`: the ∞-former with sticky memories;
- `transformer_xl`: the same block without LTM (`use_long_term_memory=False`),
  i.e. Transformer-XL with the same short-term window;
- `compressive`: Transformer-XL plus a Compressive Transformer memory
  (`compressed_memory_length=N`, the same number of slots as the ∞-former's
  basis functions, rate 4);
- `full_attention`: the same block (pre-norm, rotary, same widths) attending
  causally over *all* past keys/values (a growing KV cache), written here.

Each fixed-size system is driven through the stream for real: the compiled
explicit-state step (`InfiniteFormerDecoder.step` / `InfiniteFormerLM.step`)
runs segment after segment and the state is snapshotted when the stream has
absorbed each context size. The snapshots are then timed side by side (all
systems and contexts alternate within each round; medians over rounds; the
ratio t(T)/t(first) is the median of per-round ratios), for the inference
step and for a train step (forward + backward of one segment, gradient with
respect to every trainable weight). Peak memory on JAX is XLA's buffer
assignment for one compiled step (arguments + outputs + temporaries −
aliased; exact, deterministic); the process RSS after each checkpoint of the
stream is recorded too. The full-attention cache of the single layer is
exact at every context (a single layer's keys/values are projections of its
past inputs, computed directly); the LM's caches are streamed for real up to
`lm_stream_max` tokens and filled with random values beyond (the cost of a
step depends on the cache's shape only) — marked `"cache": "synthetic"`.
Full attention stops where one step would need more than `--memory-limit-gb`
of buffers (from XLA's analysis before running) or takes longer than
`--time-limit` seconds.

    KERAS_BACKEND=jax python benchmarks/context_scaling.py [--short|--tiny]
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

K = 1024
_MODEL = dict(
    batch=1,
    length=512,
    dim=64,
    heads=2,
    ffn=256,
    num_basis=256,
    num_samples=256,
    vocab=256,
    lm_layers=2,
)
# The paper's sorting block (d 300, 6 heads, L = STM = 1024, N = M = 512),
# batch 1: where the LTM overhead over Transformer-XL is also measured.
PAPER = dict(
    batch=1,
    length=1024,
    dim=300,
    heads=6,
    ffn=1200,
    num_basis=512,
    num_samples=512,
    vocab=256,
    lm_layers=1,
)
CONFIGS = {
    "full": dict(
        _MODEL,
        contexts=[K, 10 * K, 100 * K, 1024 * K],
        full_contexts=[K // 2, K, 2 * K, 4 * K, 10 * K, 100 * K, 1024 * K],
        lm_stream_max=10 * K,
        rounds=11,
        budget=90.0,
        full_rounds=3,
        full_budget=60.0,
        paper_rounds=5,
        paper_budget=40.0,
    ),
    "short": dict(
        _MODEL,
        contexts=[K, 10 * K, 100 * K],
        full_contexts=[K // 2, K, 2 * K, 4 * K, 10 * K],
        lm_stream_max=10 * K,
        rounds=9,
        budget=40.0,
        full_rounds=5,
        full_budget=20.0,
        paper_rounds=5,
        paper_budget=20.0,
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
        lm_layers=2,
        contexts=[64, 256],
        full_contexts=[16, 64, 128, 256],
        lm_stream_max=128,
        rounds=3,
        budget=5.0,
        full_rounds=2,
        full_budget=5.0,
        paper_rounds=2,
        paper_budget=5.0,
    ),
}
SYSTEMS = ("infformer_uniform", "infformer_sticky", "transformer_xl", "compressive")
FULL = "full_attention"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_common_arguments(parser)
    parser.add_argument("--memory-limit-gb", type=float, default=6.0)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds per full-attention step before it stops",
    )
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS + (FULL,)),
        help="comma-separated subset of the systems",
    )
    parser.add_argument("--units", default="layer,lm", help="layer, lm or both")
    parser.add_argument(
        "--no-paper", action="store_true", help="skip the paper-size overhead measurement"
    )
    _common.add_host_malloc_argument(parser)
    return parser.parse_args(argv)


# -- the full-attention baseline ----------------------------------------------


def full_attention_classes():
    import keras
    import keras_hub
    from keras import ops

    from keras_infformer.memory import flatten_state, state_name

    class FullAttentionDecoder(keras.layers.Layer):
        """The ∞-former block without memories, attending over all the past.

        Same sublayers as `InfiniteFormerDecoder` (pre-norm, rotary, same
        widths). The cache holds the rotated keys and the values of every
        past token; a step attends causally over `[cache; segment]`.
        """

        def __init__(self, intermediate_dim, num_heads, **kwargs):
            super().__init__(**kwargs)
            self.intermediate_dim = intermediate_dim
            self.num_heads = num_heads

        def build(self, input_shape):
            _, length, d = input_shape
            h = self.num_heads
            self.head_dim = d // h
            dense = dict(dtype=self.dtype_policy)
            shape = (None, None, d)
            self.norm = keras.layers.LayerNormalization(
                epsilon=1e-5, name="attention_norm", **dense
            )
            self.norm.build(shape)
            self.q = keras.layers.EinsumDense(
                "btd,dhk->bthk", (None, h, self.head_dim), name="query", **dense
            )
            self.k = keras.layers.EinsumDense(
                "btd,dhk->bthk", (None, h, self.head_dim), name="key", **dense
            )
            self.v = keras.layers.EinsumDense(
                "btd,dhk->bthk", (None, h, self.head_dim), name="value", **dense
            )
            for layer in (self.q, self.k, self.v):
                layer.build(shape)
            self.o = keras.layers.EinsumDense(
                "bthk,hkd->btd", (None, d), name="attention_output", **dense
            )
            self.o.build((None, None, h, self.head_dim))
            self.rotary = keras_hub.layers.RotaryEmbedding(name="rotary_embedding", **dense)
            self.ff_norm = keras.layers.LayerNormalization(
                epsilon=1e-5, name="feedforward_norm", **dense
            )
            self.ff_norm.build(shape)
            self.ff1 = keras.layers.Dense(
                self.intermediate_dim, activation="relu", name="ff1", **dense
            )
            self.ff1.build(shape)
            self.ff2 = keras.layers.Dense(d, name="ff2", **dense)
            self.ff2.build((None, None, self.intermediate_dim))
            self.built = True

        def get_initial_state(self, batch, capacity=0):
            shape = (batch, capacity, self.num_heads, self.head_dim)
            return {"key": ops.zeros(shape), "value": ops.zeros(shape)}

        def project(self, x, start):
            """Rotated keys and values of `x` at positions start..start+L-1."""
            n = self.norm(x)
            positions = ops.cast(start + ops.arange(x.shape[1]), "float32")
            return self.rotary(self.k(n), positions=positions), self.v(n)

        def _attend(self, x, cache, past_valid, start):
            length = x.shape[1]
            n = self.norm(x)
            positions = ops.cast(start + ops.arange(length), "float32")
            q = self.rotary(self.q(n), positions=positions)
            k = self.rotary(self.k(n), positions=positions)
            v = self.v(n)
            keys = ops.concatenate([ops.cast(cache["key"], k.dtype), k], axis=1)
            values = ops.concatenate([ops.cast(cache["value"], v.dtype), v], axis=1)
            causal = ops.arange(length)[:, None] >= ops.arange(length)[None, :]
            past = ops.broadcast_to(past_valid[None, :], (length, past_valid.shape[0]))
            mask = ops.concatenate([past, causal], axis=-1)
            attended = ops.dot_product_attention(q, keys, values, mask=mask[None, None])
            x = x + self.o(attended)
            x = x + self.ff2(self.ff1(self.ff_norm(x)))
            return x, k, v

        def step(self, x, cache):
            """Growing cache: `(x, cache of T) -> (outputs, cache of T + L)`."""
            total = cache["key"].shape[1]
            valid = ops.ones((total,), dtype="bool")
            out, k, v = self._attend(x, cache, valid, total)
            new = {
                "key": ops.concatenate([ops.cast(cache["key"], k.dtype), k], axis=1),
                "value": ops.concatenate([ops.cast(cache["value"], v.dtype), v], axis=1),
            }
            return out, new

        def stream_step(self, x, cache, length):
            """Fixed-capacity cache with `length` tokens filled (streaming)."""
            capacity = cache["key"].shape[1]
            valid = ops.arange(capacity) < length
            out, k, v = self._attend(x, cache, valid, length)
            zero = ops.zeros((), "int32")
            start = (zero, ops.cast(length, "int32"), zero, zero)
            new = {
                "key": ops.slice_update(cache["key"], start, ops.cast(k, cache["key"].dtype)),
                "value": ops.slice_update(cache["value"], start, ops.cast(v, cache["value"].dtype)),
            }
            return out, new

    class FullAttentionLM(keras.layers.Layer):
        """Embedding, `num_layers` full-attention blocks, final norm, tied output."""

        def __init__(
            self, vocabulary_size, num_layers, hidden_dim, num_heads, intermediate_dim, **kwargs
        ):
            super().__init__(**kwargs)
            self.embedding = keras.layers.ReversibleEmbedding(
                vocabulary_size,
                hidden_dim,
                tie_weights=True,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                name="token_embedding",
            )
            self.blocks = [
                FullAttentionDecoder(intermediate_dim, num_heads, name=f"decoder_layer_{i}")
                for i in range(num_layers)
            ]
            self.final_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")
            self.hidden_dim = hidden_dim

        def build(self, token_shape):
            self.embedding.build(token_shape)
            shape = tuple(token_shape) + (self.hidden_dim,)
            for block in self.blocks:
                block.build(shape)
            self.final_norm.build(shape)
            self.built = True

        def get_initial_state(self, batch, capacity=0):
            return flatten_state(
                {
                    state_name("layer", i): block.get_initial_state(batch, capacity)
                    for i, block in enumerate(self.blocks)
                }
            )

        def _run(self, tokens, state, fn):
            x = self.embedding(tokens)
            new = {}
            for i, block in enumerate(self.blocks):
                names = {k: state_name("layer", i, k) for k in ("key", "value")}
                x, c = fn(block, x, {k: state[n] for k, n in names.items()})
                new.update({n: c[k] for k, n in names.items()})
            return self.embedding(self.final_norm(x), reverse=True), new

        def step(self, tokens, state):
            return self._run(tokens, state, lambda b, x, c: b.step(x, c))

        def stream_step(self, tokens, state, length):
            return self._run(tokens, state, lambda b, x, c: b.stream_step(x, c, length))

    return FullAttentionDecoder, FullAttentionLM


# -- building the systems --------------------------------------------------------


def system_kwargs(name, cfg):
    if name == "infformer_uniform":
        return dict(use_long_term_memory=True)
    if name == "infformer_sticky":
        return dict(use_long_term_memory=True, sticky_memories=True)
    if name == "transformer_xl":
        return dict(use_long_term_memory=False)
    if name == "compressive":
        return dict(
            use_long_term_memory=False,
            compressed_memory_length=cfg["num_basis"],
            compression_rate=4,
        )
    raise ValueError(name)


class Runner:
    """One system in one unit (layer or LM): compiled infer and train steps."""

    def __init__(self, system, unit, cfg, seed):
        import keras
        import numpy as np
        from keras import ops

        self.system, self.unit, self.cfg = system, unit, cfg
        keras.utils.set_random_seed(seed)
        rng = np.random.default_rng(seed)
        b, L, d = cfg["batch"], cfg["length"], cfg["dim"]
        common = dict(
            num_heads=cfg["heads"],
            intermediate_dim=cfg["ffn"],
        )
        if system == FULL:
            Decoder, LM = full_attention_classes()
            if unit == "layer":
                module = Decoder(cfg["ffn"], cfg["heads"], name="full_attention_block")
                module.build((b, L, d))
            else:
                module = LM(
                    cfg["vocab"],
                    cfg["lm_layers"],
                    d,
                    cfg["heads"],
                    cfg["ffn"],
                    name="full_attention_lm",
                )
                module.build((b, L))
            step = lambda inp, state, training: module.step(inp, state)  # noqa: E731
        elif unit == "layer":
            from keras_infformer.layers import InfiniteFormerDecoder

            module = InfiniteFormerDecoder(
                memory_length=L,
                num_basis=cfg["num_basis"],
                num_samples=cfg["num_samples"],
                dropout=0.0,
                stateful=False,
                name=f"{system}_block",
                **common,
                **system_kwargs(system, cfg),
            )
            module.build((b, L, d))

            def step(inp, state, training):
                return module.step(inp, state, training=training)
        else:
            from keras_infformer.models import InfiniteFormerLM

            module = InfiniteFormerLM(
                vocabulary_size=cfg["vocab"],
                segment_length=L,
                batch_size=b,
                num_layers=cfg["lm_layers"],
                hidden_dim=d,
                memory_length=L,
                num_basis=cfg["num_basis"],
                num_samples=cfg["num_samples"],
                dropout=0.0,
                name=f"{system}_lm",
                **common,
                **system_kwargs(system, cfg),
            )

            def step(inp, state, training):
                reset = ops.zeros((inp.shape[0],), dtype="bool")
                return module.step(inp, reset, state, training=training)

        self.module = module
        params, pure, variables = _common.stateless(module, step)
        self.params = params
        tidx = [i for i, v in enumerate(variables) if v.trainable]
        oidx = [i for i, v in enumerate(variables) if not v.trainable]
        self.train_params = [params[i] for i in tidx]
        self.other_params = [params[i] for i in oidx]

        def merge(tp, op):
            full = [None] * len(variables)
            for i, p in zip(tidx, tp):
                full[i] = p
            for i, p in zip(oidx, op):
                full[i] = p
            return full

        if unit == "layer":
            self.inputs = [
                ops.convert_to_tensor(rng.standard_normal((b, L, d)).astype("float32"))
                for _ in range(4)
            ]
            target = None
        else:
            self.inputs = [
                ops.convert_to_tensor(rng.integers(0, cfg["vocab"], (b, L)).astype("int32"))
                for _ in range(4)
            ]
            target = ops.convert_to_tensor(rng.integers(0, cfg["vocab"], (b, L)).astype("int32"))

        def infer(params, state, inp):
            (out, new_state), _ = pure(params, inp, state, False)
            return out, new_state

        def loss(tp, op, state, inp):
            (out, _), losses = pure(merge(tp, op), inp, state, True)
            if target is None:
                value = ops.mean(ops.square(ops.cast(out, "float32")))
            else:
                value = ops.mean(
                    keras.losses.sparse_categorical_crossentropy(
                        target, ops.cast(out, "float32"), from_logits=True
                    )
                )
            for extra in losses:
                value = value + ops.cast(extra, "float32")
            return value, None

        self.infer = _common.compile_fn(infer)
        self.train = _common.grad_fn(loss)
        self._pure = pure
        if system == FULL:

            def stream(params, state, inp, length):
                def f(inp, state, training):
                    return module.stream_step(inp, state, length)

                p2, pure2, _ = _common.stateless(module, f)
                (out, new_state), _ = pure2(params, inp, state, False)
                return out, new_state

            self.stream = _common.compile_fn(stream)
            if unit == "layer":

                def project(params, inp, start):
                    p3, pure3, _ = _common.stateless(module, lambda x, s: module.project(x, s))
                    return pure3(params, inp, start)[0]

                self.project = _common.compile_fn(project)

    def initial_state(self, capacity=0):
        b = self.cfg["batch"]
        if self.system == FULL:
            return self.module.get_initial_state(b, capacity)
        return self.module.get_initial_state(b)

    def prepare(self, state):
        """Compile the inference and train steps for `state`'s shapes.

        On JAX ahead of time (`state` may be abstract), which also gives
        XLA's memory analysis; returns `(infer, train, memory_infer,
        memory_train)`.
        """
        infer, mem_i = _common.aot(self.infer, self.params, state, self.inputs[0])
        train, mem_t = _common.aot(
            self.train, self.train_params, self.other_params, state, self.inputs[0]
        )
        return infer, train, mem_i, mem_t

    def infer_call(self, infer, state):
        return lambda: _common.block(infer(self.params, state, self.inputs[0]))

    def train_call(self, train, state):
        return lambda: _common.block(
            train(self.train_params, self.other_params, state, self.inputs[0])
        )


def all_finite(tree):
    import keras
    import numpy as np
    from keras import ops

    return bool(all(np.isfinite(ops.convert_to_numpy(x)).all() for x in keras.tree.flatten(tree)))


def ltm_max_abs(state):
    """Largest |LTM coefficient| in a state (None without an LTM)."""
    import numpy as np
    from keras import ops

    values = [
        float(np.abs(ops.convert_to_numpy(v)).max())
        for k, v in state.items()
        if k.endswith("ltm_coefficients")
    ]
    return max(values) if values else None


# -- measurement ---------------------------------------------------------------


def stream_fixed(runner, infer, contexts):
    """Drive the compiled explicit-state step through the stream; snapshot
    the state each time the stream reaches one of `contexts` tokens."""
    L = runner.cfg["length"]
    state = runner.initial_state()
    seen, step = 0, 0
    snapshots, info = {}, {}
    t_start = time.perf_counter()
    step_times = []
    for target in contexts:
        while seen < target:
            t0 = time.perf_counter()
            _, state = infer(runner.params, state, runner.inputs[step % len(runner.inputs)])
            _common.block(state)
            step_times.append(time.perf_counter() - t0)
            seen += L
            step += 1
        snapshots[target] = state
        info[target] = {
            "tokens": seen,
            "segments": step,
            "rss_mb": _common.rss_bytes() / 2**20,
            "state_bytes": _common.tree_bytes(state),
            "state_finite": all_finite(state),
            "ltm_max_abs": ltm_max_abs(state),
            "cache": "streamed",
        }
    n = len(step_times)
    k = max(1, n // 10)
    stream = {
        "tokens": seen,
        "segments": n,
        "wall_s": time.perf_counter() - t_start,
        "first_10pct_median_step_ms": 1e3 * _common.median(step_times[:k]),
        "last_10pct_median_step_ms": 1e3 * _common.median(step_times[-k:]),
    }
    return snapshots, info, stream


def full_memory_estimate(cfg, unit, total):
    """Bytes of the attention scores of one train step (fallback off JAX)."""
    layers = 1 if unit == "layer" else cfg["lm_layers"]
    b, h, L = cfg["batch"], cfg["heads"], cfg["length"]
    return 4 * b * h * L * (total + L) * 4 * layers  # scores, fwd + bwd copies


def full_cache(runner, total, stream_max):
    """The full-attention cache after `total` tokens, and how it was made."""
    import numpy as np
    from keras import ops

    cfg = runner.cfg
    b, L, d, h = cfg["batch"], cfg["length"], cfg["dim"], cfg["heads"]
    if runner.unit == "layer":
        keys, values = [], []
        for i in range(total // L):
            k, v = runner.project(
                runner.params,
                runner.inputs[i % len(runner.inputs)],
                ops.convert_to_tensor(np.int32(i * L)),
            )
            keys.append(k)
            values.append(v)
        if not keys:
            return runner.initial_state(), "exact"
        state = {"key": ops.concatenate(keys, 1), "value": ops.concatenate(values, 1)}
        return _common.block(state), "exact (projections of the past inputs)"
    if total <= stream_max:
        state = runner.initial_state(capacity=total)
        for i in range(total // L):
            _, state = runner.stream(
                runner.params,
                state,
                runner.inputs[i % len(runner.inputs)],
                ops.convert_to_tensor(np.int32(i * L)),
            )
        return _common.block(state), "streamed"
    rng = np.random.default_rng(total)
    state = {}
    from keras_infformer.memory import state_name

    for i in range(cfg["lm_layers"]):
        for name in ("key", "value"):
            state[state_name("layer", i, name)] = ops.convert_to_tensor(
                rng.standard_normal((b, total, h, d // h)).astype("float32")
            )
    return state, "synthetic (random values; the cost depends on the shape only)"


def abstract_like(tree):
    import jax
    import keras

    return keras.tree.map_structure(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), tree)


def measure_full(unit, cfg, seed, time_limit, mem_limit, records, memory, cases_small, cases_large):
    """Full attention at growing contexts, until memory or time stops it."""
    import keras

    is_jax = keras.backend.backend() == "jax"
    runner = Runner(FULL, unit, cfg, seed)
    stopped = None
    for T in cfg["full_contexts"]:
        rec = {"tokens": T}
        records[(FULL, unit, T)] = rec
        if stopped:
            rec["stopped"] = stopped
            continue
        state0 = runner.initial_state(capacity=T)
        infer, train, mem_i, mem_t = runner.prepare(abstract_like(state0) if is_jax else state0)
        need = (mem_t or {}).get("peak_bytes") or full_memory_estimate(cfg, unit, T)
        if need > mem_limit:
            stopped = (
                f"memory: one train step needs {need / 2**30:.1f} GiB of "
                f"buffers > limit {mem_limit / 2**30:.1f} GiB"
            )
            rec["stopped"] = stopped
            rec["train_needed_bytes"] = need
            if mem_i:
                rec["infer_needed_bytes"] = mem_i["peak_bytes"]
            print(f"full_attention {unit}: stops at {T} tokens ({stopped})", flush=True)
            continue
        del state0
        state, how = full_cache(runner, T, cfg["lm_stream_max"])
        memory[(FULL, unit, "infer", T)] = mem_i
        memory[(FULL, unit, "train", T)] = mem_t
        rec.update(
            {
                "rss_mb": _common.rss_bytes() / 2**20,
                "state_bytes": _common.tree_bytes(state),
                "cache": how,
            }
        )
        cases = cases_small if T <= cfg["lm_stream_max"] else cases_large
        cases[(FULL, unit, T, "infer")] = call_i = runner.infer_call(infer, state)
        cases[(FULL, unit, T, "train")] = runner.train_call(train, state)
        call_i()
        t0 = time.perf_counter()
        call_i()
        t_one = time.perf_counter() - t0
        print(
            f"full_attention {unit}: {T} tokens ready ({how}), one step {t_one * 1e3:.0f} ms",
            flush=True,
        )
        if t_one > time_limit:
            stopped = f"time: one inference step took {t_one:.1f} s > limit {time_limit:.0f} s"


def paper_overhead(cfg, rounds, budget, seed, systems):
    """Per-segment cost of each fixed-size block at the paper's size."""
    cases, memory = {}, {}
    for system in systems:
        r = Runner(system, "layer", cfg, seed)
        state = r.initial_state()
        infer, train, mem_i, mem_t = r.prepare(state)
        for i in range(3):  # Fill every memory (STM, LTM, compressed) for real.
            _, state = infer(r.params, state, r.inputs[i % len(r.inputs)])
        _common.block(state)
        cases[(system, "infer")] = r.infer_call(infer, state)
        cases[(system, "train")] = r.train_call(train, state)
        memory[system] = (mem_i, mem_t)
    times = _common.interleaved_timing(
        cases, rounds=rounds, warmup=1, budget_s=budget, seed=seed, inner=3, inner_target_s=0.3
    )
    out = {"config": cfg, "systems": {}}
    for system in systems:
        entry = {}
        for k, m in enumerate(("infer", "train")):
            entry[f"{m}_ms"] = 1e3 * _common.median(times[(system, m)])
            entry[f"{m}_rounds"] = len(times[(system, m)])
            mem = memory[system][k]
            entry[f"{m}_peak_bytes"] = mem["peak_bytes"] if mem else None
            if "transformer_xl" in systems:
                entry[f"{m}_overhead_vs_transformer_xl"] = (
                    _common.paired_ratio(times[(system, m)], times[("transformer_xl", m)]) - 1.0
                )
        out["systems"][system] = entry
    return out


def run(args):
    mode = "tiny" if args.tiny else "short" if args.short else "full"
    cfg = dict(CONFIGS[mode])
    if args.rounds:
        cfg["rounds"] = cfg["full_rounds"] = cfg["paper_rounds"] = args.rounds
    time_limit = args.time_limit or (2.0 if args.tiny else 20.0 if mode == "full" else 10.0)
    mem_limit = args.memory_limit_gb * 2**30
    wanted = args.systems.split(",")
    unknown = set(wanted) - set(SYSTEMS + (FULL,))
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    systems = [s for s in SYSTEMS if s in wanted]
    units = [u for u in ("layer", "lm") if u in args.units.split(",")]
    records = {}  # (system, unit, context) -> dict
    cases_a, cases_b, cases_c = {}, {}, {}
    streams, memory = {}, {}
    t_start = time.perf_counter()
    first = cfg["contexts"][0]

    for unit in units:
        for system in systems:
            runner = Runner(system, unit, cfg, args.seed)
            t0 = time.perf_counter()
            infer, train, mem_i, mem_t = runner.prepare(runner.initial_state())
            memory[(system, unit, "infer")] = mem_i
            memory[(system, unit, "train")] = mem_t
            snaps, info, stream = stream_fixed(runner, infer, cfg["contexts"])
            streams[(system, unit)] = stream
            print(
                f"streamed {system:18s} {unit:5s} {stream['tokens']:>8d} tokens in "
                f"{time.perf_counter() - t0:6.1f} s",
                flush=True,
            )
            for T, state in snaps.items():
                records[(system, unit, T)] = dict(info[T])
                cases_a[(system, unit, T, "infer")] = runner.infer_call(infer, state)
                cases_a[(system, unit, T, "train")] = runner.train_call(train, state)
            cases_b[(system, unit, first, "infer")] = runner.infer_call(infer, snaps[first])
            cases_b[(system, unit, first, "train")] = runner.train_call(train, snaps[first])
        if FULL in wanted:
            measure_full(
                unit, cfg, args.seed, time_limit, mem_limit, records, memory, cases_b, cases_c
            )

    print(f"setup done in {time.perf_counter() - t_start:.0f} s; timing...", flush=True)
    times_a = _common.interleaved_timing(
        cases_a, rounds=cfg["rounds"], warmup=1, budget_s=cfg["budget"], seed=args.seed, inner=3
    )
    # Full attention up to `lm_stream_max` tokens, side by side with every
    # fixed-size system (the crossover comes from these rounds) ...
    times_b = _common.interleaved_timing(
        cases_b, rounds=cfg["rounds"], warmup=0, budget_s=cfg["budget"] / 2, seed=args.seed, inner=3
    )
    # ... and its slow long contexts, a few rounds.
    times_b.update(
        _common.interleaved_timing(
            cases_c,
            rounds=cfg["full_rounds"],
            warmup=0,
            budget_s=cfg["full_budget"],
            min_rounds=2,
            seed=args.seed,
            inner=3,
        )
    )
    result = summarise(
        cfg, mode, systems, units, records, times_a, times_b, streams, memory, time_limit, mem_limit
    )
    if not args.no_paper and systems:
        paper_cfg = dict(CONFIGS["tiny"]) if args.tiny else dict(PAPER)
        print("paper-size blocks...", flush=True)
        result["paper_size_blocks"] = paper_overhead(
            paper_cfg, cfg["paper_rounds"], cfg["paper_budget"], args.seed, systems
        )
    return result


def summarise(
    cfg, mode, systems, units, records, times_a, times_b, streams, memory, time_limit, mem_limit
):
    rows = []
    first = cfg["contexts"][0]
    last = cfg["contexts"][-1]
    for (system, unit, T), rec in sorted(
        records.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])
    ):
        row = {"system": system, "unit": unit, "context": T}
        row.update(rec)
        for m in ("infer", "train"):
            key = (system, unit, T, m)
            ts = times_a.get(key) or times_b.get(key)
            if ts:
                row[f"{m}_ms"] = 1e3 * _common.median(ts)
                row[f"{m}_rounds"] = len(ts)
            if system != FULL and key in times_a:
                row[f"{m}_ratio_to_first"] = _common.paired_ratio(
                    ts, times_a[(system, unit, first, m)]
                )
            mem = (
                memory.get((system, unit, m))
                if system != FULL
                else memory.get((system, unit, m, T))
            )
            if mem:
                row[f"{m}_peak_bytes"] = mem["peak_bytes"]
                row[f"{m}_xla"] = mem
        rows.append(row)

    # t(last)/t(first) per system, paired within rounds; the state (so the
    # compiled step and its buffers) has the same shapes at every context.
    scaling = {}
    for unit in units:
        for system in systems:
            sizes = sorted({records[(system, unit, T)]["state_bytes"] for T in cfg["contexts"]})
            finite = all(records[(system, unit, T)]["state_finite"] for T in cfg["contexts"])
            for m in ("infer", "train"):
                mem = memory.get((system, unit, m)) or {}
                scaling[f"{system}/{unit}/{m}"] = {
                    "first_context": first,
                    "last_context": last,
                    "ratio_last_to_first": _common.paired_ratio(
                        times_a[(system, unit, last, m)], times_a[(system, unit, first, m)]
                    ),
                    "max_ratio_any_context": max(
                        _common.paired_ratio(
                            times_a[(system, unit, T, m)], times_a[(system, unit, first, m)]
                        )
                        for T in cfg["contexts"]
                    ),
                    "peak_bytes": mem.get("peak_bytes"),
                    "state_bytes": sizes,
                    "peak_bytes_equal_at_all_contexts": len(sizes) == 1,
                    "state_finite": finite,
                }
        full = [r for r in rows if r["system"] == FULL and r["unit"] == unit]
        for m in ("infer", "train"):
            done = [r for r in full if f"{m}_ms" in r and r["context"] >= first]
            if len(done) >= 2:
                scaling[f"{FULL}/{unit}/{m}"] = {
                    "first_context": done[0]["context"],
                    "last_context": done[-1]["context"],
                    "ratio_last_to_first": done[-1][f"{m}_ms"] / done[0][f"{m}_ms"],
                    "peak_bytes": done[-1].get(f"{m}_peak_bytes"),
                    "peak_bytes_first": done[0].get(f"{m}_peak_bytes"),
                    "stopped_at": next((r["context"] for r in full if "stopped" in r), None),
                    "stopped": next((r["stopped"] for r in full if "stopped" in r), None),
                }

    # Overhead of each memory over the Transformer-XL block, paired per round.
    overhead = {}
    if "transformer_xl" in systems:
        for unit in units:
            for system in systems:
                if system == "transformer_xl":
                    continue
                for m in ("infer", "train"):
                    ratios = [
                        _common.paired_ratio(
                            times_a[(system, unit, T, m)], times_a[("transformer_xl", unit, T, m)]
                        )
                        for T in cfg["contexts"]
                    ]
                    overhead[f"{system}/{unit}/{m}"] = _common.median(ratios) - 1.0

    # Crossover: where full attention becomes dearer than each fixed system.
    crossover = {}
    for unit in units:
        for m in ("infer", "train"):
            pts = [
                (r["context"], r[f"{m}_ms"])
                for r in rows
                if r["system"] == FULL and r["unit"] == unit and f"{m}_ms" in r
            ]
            for system in systems:
                ts = times_b.get((system, unit, first, m))
                if not ts or not pts:
                    continue
                fixed = 1e3 * _common.median(ts)
                crossover[f"{system}/{unit}/{m}"] = crossover_point(pts, fixed)
                crossover[f"{system}/{unit}/{m}"]["fixed_ms"] = fixed
    return {
        "benchmark": "context_scaling",
        "mode": mode,
        "config": cfg,
        "time_limit_s": time_limit,
        "memory_limit_bytes": mem_limit,
        "rows": rows,
        "scaling": scaling,
        "ltm_overhead_vs_transformer_xl": overhead,
        "crossover": crossover,
        "streams": {f"{s}/{u}": v for (s, u), v in streams.items()},
    }


def crossover_point(points, fixed_ms):
    """First context where the full-attention time exceeds `fixed_ms`
    (log-log interpolation between measured contexts)."""
    points = sorted(points)
    if points[0][1] >= fixed_ms:
        return {
            "context": None,
            "below": points[0][0],
            "note": f"full attention already dearer at {points[0][0]} tokens",
        }
    for (t0, y0), (t1, y1) in zip(points, points[1:]):
        if y0 < fixed_ms <= y1:
            f = (math.log(fixed_ms) - math.log(y0)) / (math.log(y1) - math.log(y0))
            return {
                "context": float(math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))),
                "between": [t0, t1],
            }
    return {
        "context": None,
        "above": points[-1][0],
        "note": "full attention still cheaper at the longest context measured",
    }


def print_results(result):
    cols = [
        "system",
        "unit",
        "context",
        "infer_ms",
        "infer_ratio_to_first",
        "train_ms",
        "train_ratio_to_first",
        "infer_peak_bytes",
        "state_bytes",
        "rss_mb",
        "ltm_max_abs",
    ]
    _common.print_table(result["rows"], cols, title="per-segment cost after a stream of T tokens")
    rows = [
        {"case": k, **{kk: vv for kk, vv in v.items() if not isinstance(vv, (list, dict))}}
        for k, v in result["scaling"].items()
    ]
    _common.print_table(
        rows,
        [
            "case",
            "first_context",
            "last_context",
            "ratio_last_to_first",
            "max_ratio_any_context",
            "peak_bytes",
            "peak_bytes_equal_at_all_contexts",
        ],
        title="t(last)/t(first)",
    )
    _common.print_table(
        [{"case": k, "overhead": v} for k, v in result["ltm_overhead_vs_transformer_xl"].items()],
        ["case", "overhead"],
        title="per-segment overhead over Transformer-XL",
    )
    rows = [
        {
            "case": k,
            "crossover_context": v.get("context"),
            "fixed_ms": v.get("fixed_ms"),
            "note": v.get("note", ""),
        }
        for k, v in result["crossover"].items()
    ]
    _common.print_table(
        rows,
        ["case", "crossover_context", "fixed_ms", "note"],
        title="crossover: full attention dearer beyond",
    )
    paper = result.get("paper_size_blocks")
    if paper:
        rows = [{"system": k, **v} for k, v in paper["systems"].items()]
        _common.print_table(
            rows,
            [
                "system",
                "infer_ms",
                "infer_overhead_vs_transformer_xl",
                "train_ms",
                "train_overhead_vs_transformer_xl",
                "infer_peak_bytes",
                "train_peak_bytes",
            ],
            title="one block at size "
            + ", ".join(
                f"{k}={paper['config'][k]}"
                for k in ("dim", "heads", "length", "num_basis", "batch")
            ),
        )


def main(argv=None):
    args = parse_args(argv)
    _common.select_backend(args.backend, args.torch_threads)
    host_malloc = _common.configure_host_malloc(args.host_malloc)
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    result["environment"] = dict(_common.environment(), host_malloc=host_malloc)
    result["method"] = __doc__.split("\n\n", 1)[1]
    print_results(result)
    path = _common.output_path(args, "context_scaling")
    _common.write_json(path, result)
    if path and not args.no_plot:
        import plot_results

        plot_results.plot_context_scaling(path)
    return result


if __name__ == "__main__":
    main()
