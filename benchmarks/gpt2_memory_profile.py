"""Where the memory's share of a GPT-2 fine-tuning step goes, part by part.

`gpt2_finetune_step.py` times the whole step (GPT-2 small's shape with and
without the memory); this script takes one layer of it apart at the same
shape (batch 1, segment 512, width 768, 12 heads, N = M = 512, the
pretrained models' defaults: sticky memories, widths (0.005, 0.01)), each
part compiled alone and timed side by side (parts alternating, rounds in
random order, `_common.interleaved_timing`):

- `gpt2_layer`: one keras-hub `TransformerDecoder` layer of GPT-2 (without
  dropout), forward and backward (gradients of its weights and input);
- `memory_layer`: one `ContinuousMemoryAttention` step as the model runs it
  (absorb the previous segment, read with the layer's query, keep this
  segment and, with sticky memories, the histogram of where it read),
  forward and backward (gradients of its weights and of the query);
- its parts: `absorb` (the ridge fit of the squeezed old signal and the
  new segment; no gradient flows into the memory), `read` (Gaussian
  attention, forward and backward), `sticky_histogram` (the bin masses of
  the read densities, forward only).

Beside each time, the part's matmul FLOPs counted from its shapes (training:
forward and backward where a gradient flows), so time over FLOPs shows what
is arithmetic and what is not. Prints a table, writes JSON.

    KERAS_BACKEND=jax python benchmarks/gpt2_memory_profile.py
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import _common  # noqa: E402

RESULTS = os.path.join(HERE, "results", "gpt2_memory_profile.json")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--hidden-dim", type=int, default=768)
    p.add_argument("--num-heads", type=int, default=12)
    p.add_argument("--num-basis", type=int, default=512)
    p.add_argument("--sticky", type=int, default=1, help="sticky memories (1/0)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny sizes")
    p.add_argument("--no-plot", action="store_true", help="accepted; nothing is plotted")
    p.add_argument("--out", default=RESULTS, help="JSON path ('' to skip)")
    return p.parse_args(argv)


def matmul_flops(L, d, N, M):
    """Training matmul FLOPs per part (batch 1), from the shapes.

    GPT-2 layer: the four attention projections and the 4d feed-forward,
    `2·L·12d²` forward, ×3 with the backward; scores and weighted sum
    `4·L²·d`, ×3. Memory: absorb (forward only) reads the old signal at M
    points and refits M + L samples, `2·(2M + L)·N·d`; the value projection
    of the N coefficients, forward and the weights' gradient, `4·N·d²`; the
    read `z = r V`, `2·L·N·d`, ×3; the output projection `2·L·d²`, ×3.
    """
    read = 6 * L * N * d + 4 * N * d * d + 6 * L * d * d
    absorb = 2 * (2 * M + L) * N * d
    return {
        "gpt2_layer": 3 * (2 * L * 12 * d * d + 4 * L * L * d),
        "memory_layer": read + absorb,
        "absorb": absorb,
        "read": read,
        "sticky_histogram": 0,
    }


def build_cases(args):
    import keras_hub
    import numpy as np
    from keras import ops

    from keras_infformer.layers import ContinuousMemoryAttention, memory_settings

    L, d, h, N = args.length, args.hidden_dim, args.num_heads, args.num_basis
    rng = np.random.default_rng(0)
    f32 = lambda a: ops.convert_to_tensor(np.asarray(a, dtype="float32"))  # noqa: E731
    settings = dict(memory_settings.PRETRAINED_LONG_TERM_MEMORY)
    settings.update(num_basis=N, num_samples=N, sticky_memories=bool(args.sticky))
    layer = ContinuousMemoryAttention(
        num_heads=h,
        key_dim=d // h,
        output_dim=d,
        project_query=False,
        zero_output=False,  # A trained memory: the read is not zero.
        stateful=False,
        **settings,
    )
    layer.build((1, L, d), (1, L, h, d // h))
    state = layer.get_initial_state(1)
    # An awake memory: a past segment absorbed, this one pending.
    state = layer.step(
        f32(rng.standard_normal((1, L, d))),
        state,
        query=f32(rng.standard_normal((1, L, h, d // h))),
    )[1]
    state = dict(state, pending=f32(rng.standard_normal((1, L, d))))
    query = f32(rng.standard_normal((1, L, h, d // h)))
    inputs = f32(rng.standard_normal((1, L, d)))

    params, step, _ = _common.stateless(layer, layer.step)
    _, read, _ = _common.stateless(layer, layer.read)

    def layer_loss(differentiable, state):
        weights, query = differentiable[:-1], differentiable[-1]
        (outputs, new_state), losses = step(weights, inputs, state, query=query)
        total = ops.mean(ops.square(outputs)) + sum(losses)
        return total, new_state

    def read_loss(differentiable, state):
        weights, query = differentiable[:-1], differentiable[-1]
        (outputs, _, _), losses = read(weights, state, query)
        return ops.mean(ops.square(outputs)) + sum(losses), ()

    absorbed = layer.begin_segment(state)
    mu, sigma_sq = layer.read(absorbed, query)[1:]
    layer_grad = _common.grad_fn(layer_loss)
    read_grad = _common.grad_fn(read_loss)
    absorb = _common.compile_fn(layer.begin_segment)
    histogram = _common.compile_fn(lambda mu, sigma_sq: layer.bin_mass(mu, sigma_sq))

    decoder = keras_hub.layers.TransformerDecoder(
        intermediate_dim=4 * d,
        num_heads=h,
        dropout=0.0,  # A dropout seed is no weight to differentiate.
        activation="gelu",
        layer_norm_epsilon=1e-5,
        normalize_first=True,
    )
    decoder.build((1, L, d))
    decoder_params, decoder_call, _ = _common.stateless(
        decoder, lambda x: decoder(x, use_causal_mask=True, training=True)
    )

    def decoder_loss(differentiable):
        weights, x = differentiable[:-1], differentiable[-1]
        outputs, _ = decoder_call(weights, x)
        return ops.mean(ops.square(outputs)), ()

    decoder_grad = _common.grad_fn(decoder_loss)
    decoder_args = list(decoder_params) + [inputs]
    differentiable = list(params) + [query]
    block = _common.block
    cases = {
        "gpt2_layer": lambda: block(decoder_grad(decoder_args)),
        "memory_layer": lambda: block(layer_grad(differentiable, state)),
        "absorb": lambda: block(absorb(state)),
        "read": lambda: block(read_grad(differentiable, absorbed)),
        "sticky_histogram": lambda: block(histogram(mu, sigma_sq)),
    }
    if not args.sticky:
        del cases["sticky_histogram"]
    return cases


def main(argv=None):
    args = parse_args(argv)
    if args.tiny:
        args.length, args.hidden_dim, args.num_heads, args.num_basis = 16, 16, 2, 8
        args.rounds = 3
    _common.select_backend(os.environ.get("KERAS_BACKEND", "jax"))
    cases = build_cases(args)
    times = _common.interleaved_timing(cases, rounds=args.rounds, warmup=2)
    flops = matmul_flops(args.length, args.hidden_dim, args.num_basis, args.num_basis)
    medians = {name: _common.median(seconds) for name, seconds in times.items()}
    gpt2 = medians["gpt2_layer"]
    rows = []
    parts = {}
    for name, seconds in medians.items():
        parts[name] = dict(
            median_seconds=seconds,
            seconds=times[name],
            over_gpt2_layer=seconds / gpt2,
            matmul_flops=flops[name],
            gflops_per_second=flops[name] / seconds / 1e9 if flops[name] else None,
        )
        rate = parts[name]["gflops_per_second"]
        rows.append(
            {
                "part": name,
                "ms": 1e3 * seconds,
                "over GPT-2 layer": seconds / gpt2,
                "matmul GFLOP": flops[name] / 1e9,
                "GFLOP/s": rate,
            }
        )
    _common.print_table(
        rows,
        ["part", "ms", "over GPT-2 layer", "matmul GFLOP", "GFLOP/s"],
        title="One layer at GPT-2 small's shape, training",
    )
    record = {
        "benchmark": "gpt2_memory_profile",
        "settings": dict(
            length=args.length,
            hidden_dim=args.hidden_dim,
            num_heads=args.num_heads,
            num_basis=args.num_basis,
            num_samples=args.num_basis,
            sticky_memories=bool(args.sticky),
            batch_size=1,
            rounds=args.rounds,
        ),
        "parts": parts,
        "memory_layer_over_gpt2_layer": medians["memory_layer"] / gpt2,
        "memory_layer_flops_over_gpt2_layer": flops["memory_layer"] / flops["gpt2_layer"],
        "environment": _common.environment(),
    }
    print(
        f"memory layer / GPT-2 layer: time {record['memory_layer_over_gpt2_layer']:.3f}, "
        f"matmul FLOPs {record['memory_layer_flops_over_gpt2_layer']:.3f}"
    )
    if args.out:
        _common.write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
