"""Correctness of what the benchmarks run (timings are never asserted).

- `ContinuousLTM.absorb`, as timed by `layer_throughput.py`, selects the
  empty-memory or the update fit row by row, eagerly and compiled, for every
  mix of filled rows.
- The full-attention baseline of `benchmarks/context_scaling.py` streamed
  segment by segment (growing cache, or fixed-capacity cache) must equal one
  causal pass over the whole sequence.
- Each benchmark script runs end to end in `--tiny` mode and writes JSON
  with the fields the README reports.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import repo_paths
from keras import ops

from keras_infformer.layers import ContinuousLTM

ROOT = repo_paths.ROOT
BENCH = os.path.join(ROOT, "benchmarks")


def _reference_absorb(
    ref, x, coefficients, filled, num_samples, tau=0.75, penalty=1.0, widths=(0.01, 0.05)
):
    """The update written out from conftest's Reference (docs/theory.md §2, §4):
    an empty row is fitted on its L vectors at (i + 1/2)/L; a filled row
    reads its old signal at m/M, squeezes it to tau m/M, appends the new
    vectors at tau + (1 - tau) l/L and refits. Row by row, float64."""
    x = x.astype(np.float64)
    length, m = x.shape[1], num_samples
    centers, basis_widths = ref.basis(coefficients.shape[1], widths)
    levels = np.arange(1, m + 1) / m
    update_positions = np.concatenate(
        [tau * levels, tau + (1 - tau) * np.arange(1, length + 1) / length]
    )
    out = []
    for b in range(len(x)):
        if filled[b] > 0.5:
            old = ref.signal(coefficients[b], levels, centers, basis_widths)
            out.append(
                ref.ridge_fit(
                    update_positions,
                    np.concatenate([old, x[b]]),
                    centers,
                    basis_widths,
                    penalty,
                    False,
                )
            )
        else:
            out.append(
                ref.ridge_fit(
                    (np.arange(length) + 0.5) / length,
                    x[b],
                    centers,
                    basis_widths,
                    penalty,
                    False,
                )
            )
    return np.stack(out)


@pytest.mark.parametrize("filled", [[1, 1, 1], [0, 0, 0], [1, 0, 1]], ids=["all", "none", "mixed"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_absorb_selects_the_fit_row_by_row(filled, compiled, ref, rng, to_numpy):
    batch, length, n, e = 3, 12, 8, 5
    ltm = ContinuousLTM(num_basis=n, basis_widths=(0.01, 0.05), num_samples=6, stateful=False)
    ltm.build((batch, length, e))
    x = rng.standard_normal((batch, length, e)).astype("float32")
    coefficients = rng.standard_normal((batch, n, e)).astype("float32")
    filled = np.asarray(filled, "float32")
    # Large enough that the read bound never clips (covered in test_continuous_ltm).
    max_abs = np.full((batch,), 1e3, "float32")
    expected = _reference_absorb(ref, x, coefficients, filled, num_samples=6)
    if compiled:
        xi = keras.Input((length, e), batch_size=batch)
        ci = keras.Input((n, e), batch_size=batch)
        fi = keras.Input((), batch_size=batch)
        ai = keras.Input((), batch_size=batch)
        out, _ = ltm(xi, state={"coefficients": ci, "filled": fi, "max_abs": ai})
        model = keras.Model([xi, ci, fi, ai], out)
        got = to_numpy(model.predict_on_batch([x, coefficients, filled, max_abs]))
    else:
        state = {"coefficients": coefficients, "filled": filled, "max_abs": max_abs}
        got, _ = ltm.absorb(x, state)
        got = to_numpy(got)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def _context_scaling():
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    import context_scaling

    return context_scaling


def test_full_attention_baseline_streams_like_one_pass(rng, to_numpy):
    Decoder, _ = _context_scaling().full_attention_classes()
    length, d, segments = 4, 8, 3
    block = Decoder(intermediate_dim=16, num_heads=2)
    block.build((1, length, d))
    x = ops.convert_to_tensor(rng.standard_normal((1, segments * length, d)).astype("float32"))

    whole, _ = block.step(x, block.get_initial_state(1))  # one causal pass
    growing, fixed = block.get_initial_state(1), block.get_initial_state(1, segments * length)
    outs_growing, outs_fixed = [], []
    for i in range(segments):
        seg = x[:, i * length : (i + 1) * length]
        out, growing = block.step(seg, growing)
        outs_growing.append(to_numpy(out))
        out, fixed = block.stream_step(seg, fixed, i * length)
        outs_fixed.append(to_numpy(out))
    np.testing.assert_allclose(
        np.concatenate(outs_growing, 1), to_numpy(whole), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(np.concatenate(outs_fixed, 1), to_numpy(whole), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(fixed["key"]), to_numpy(growing["key"]), rtol=1e-5, atol=1e-6
    )


# `make bench` measures on JAX; the scripts' smoke runs (minutes in all)
# run there only, except layer_throughput, whose table has a TF column too.
bench_backend_only = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="benchmark script smoke run: on the benchmark backend (JAX) only",
)


def _run(script, tmp_path, *extra):
    out = tmp_path / f"{script}.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, f"{script}.py"),
            "--tiny",
            "--no-plot",
            "--out",
            str(out),
            *extra,
        ],
        check=True,
        env=env,
        timeout=600,
        stdout=subprocess.DEVNULL,
    )
    with open(out) as f:
        return json.load(f)


@bench_backend_only
def test_sorting_generation_script(tmp_path):
    result = _run("sorting_generation", tmp_path)
    assert result["tokens_shape"] == [result["num_sequences"], result["sequence_length"]]
    assert result["targets_shape"] == [result["num_sequences"], 20]
    assert result["generator_s"] > 0 and result["floor_s"] > 0


@bench_backend_only
@pytest.mark.slow
def test_context_scaling_script(tmp_path):
    result = _run(
        "context_scaling",
        tmp_path,
        "--systems",
        "infformer_uniform,full_attention",
        "--units",
        "layer",
        "--no-paper",
        "--rounds",
        "2",
    )
    contexts = result["config"]["contexts"]
    scaling = result["scaling"]["infformer_uniform/layer/infer"]
    assert scaling["peak_bytes_equal_at_all_contexts"] and scaling["state_finite"]
    assert result["streams"]["infformer_uniform/layer"]["tokens"] == contexts[-1]
    cache = [
        r["state_bytes"]
        for r in result["rows"]
        if r["system"] == "full_attention" and "state_bytes" in r
    ]
    assert len(cache) >= 2 and cache == sorted(cache) and cache[0] < cache[-1]
    assert all(r["infer_ms"] > 0 for r in result["rows"] if "infer_ms" in r)


@bench_backend_only
@pytest.mark.slow
def test_memory_stability_script(tmp_path):
    # One run (each is its own process); mixed precision is tested in test_lm.
    result = _run("memory_stability", tmp_path, "--runs", "mixed_bfloat16/uniform")
    assert set(result["runs"]) == {"mixed_bfloat16/uniform"}
    for run in result["runs"].values():
        assert run["all_finite"]
        assert run["tokens"] == result["config"]["tokens"]


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="the summary reports JAX and TensorFlow (XLA) only",
)
def test_layer_throughput_script(tmp_path):
    result = _run("layer_throughput", tmp_path)
    (entry,) = result["backends"].values()
    ops_ = {(r["op"], r["mode"]) for r in entry["results"]}
    assert {op for op, _ in ops_} == {"ltm_absorb", "ltm_absorb_sticky", "gaussian_attention"}
    assert all(r["ratio_to_floor"] > 0 for r in entry["results"])


@bench_backend_only
@pytest.mark.slow
def test_decode_speed_script(tmp_path):
    result = _run("decode_speed", tmp_path, "--batches", "1")
    assert result["mode"] == "tiny" and result["environment"]["time"]
    assert set(result["ratio_to_transformer_xl"]) == {
        "infformer/batch_1",
        "infformer_sticky/batch_1",
    }
    xl = result["results"]["transformer_xl/batch_1"]["tokens_per_second"]
    for key, ratio in result["ratio_to_transformer_xl"].items():
        assert ratio == pytest.approx(result["results"][key]["tokens_per_second"] / xl)


@bench_backend_only
@pytest.mark.slow
def test_ltm_step_script(tmp_path):
    # Two of the three backends (the script's loop is the same for all):
    # TensorFlow's import alone would double this test's time.
    result = _run("ltm_step", tmp_path, "--backends", "jax", "torch")
    medians = result["median_seconds"]
    assert set(medians) == {"jax", "torch"}
    assert all(len(result["rounds_detail"][b]) == 1 for b in medians)
    assert result["jax_over_fastest_other"] == pytest.approx(medians["jax"] / medians["torch"])


@bench_backend_only
@pytest.mark.slow
def test_gpt2_memory_profile_script(tmp_path):
    import keras_hub

    result = _run("gpt2_memory_profile", tmp_path)
    settings, parts = result["settings"], result["parts"]
    assert set(parts) == {"gpt2_layer", "memory_layer", "absorb", "read", "sticky_histogram"}
    assert all(part["median_seconds"] > 0 for part in parts.values())
    # The GPT-2 layer's FLOPs, counted from keras-hub's own layer: every
    # kernel entry is 6 FLOPs per token (a multiply-add forward, two
    # backward), plus the scores and the weighted sum.
    length, width = settings["length"], settings["hidden_dim"]
    decoder = keras_hub.layers.TransformerDecoder(
        intermediate_dim=4 * width, num_heads=settings["num_heads"], normalize_first=True
    )
    decoder.build((1, length, width))
    kernels = sum(int(np.prod(w.shape)) for w in decoder.weights if w.path.endswith("kernel"))
    expected = 6 * length * kernels + 12 * length * length * width
    assert parts["gpt2_layer"]["matmul_flops"] == expected
    assert parts["memory_layer"]["matmul_flops"] == (
        parts["absorb"]["matmul_flops"] + parts["read"]["matmul_flops"]
    )
    assert result["memory_layer_over_gpt2_layer"] == pytest.approx(
        parts["memory_layer"]["median_seconds"] / parts["gpt2_layer"]["median_seconds"]
    )
