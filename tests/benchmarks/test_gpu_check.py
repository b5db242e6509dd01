"""`benchmarks/gpu_check.py`: its `--quick` CPU smoke test writes the fields
the README names, and without a GPU it refuses (no timing is asserted)."""

import json
import os
import subprocess
import sys

import keras
import pytest
import repo_paths

ROOT = repo_paths.ROOT
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.py")
BACKEND = keras.backend.backend()
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check  # noqa: E402


@pytest.mark.slow  # About a minute: four tiny models compiled.
@pytest.mark.skipif(
    BACKEND not in ("jax", "tensorflow"), reason="the GPU check runs JAX and TensorFlow"
)
def test_quick_run_writes_every_field(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--backends", BACKEND, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["quick"] is True and record["device"] == "cpu"
    backend = record["backends"][BACKEND]
    assert backend["dtype_policy"] == "mixed_bfloat16"
    assert backend["device_kind"] == "cpu" and backend["peak_bf16_flops"] is None
    expected = {
        "paper_lm": ("infformer_sticky", "transformer_xl"),
        "gpt2_small": ("gpt2_memory", "gpt2"),
    }
    for pair, (candidate, baseline) in expected.items():
        systems = backend["pairs"][pair]["systems"]
        assert list(systems) == [candidate, baseline]
        for name, fields in systems.items():
            assert fields["tokens_per_s"] > 0 and fields["median_step_s"] > 0
            assert fields["flops_per_token"] > 6 * fields["trainable_parameters"]
            assert fields["mfu"] is None  # No GPU peak on a CPU.
        assert systems[candidate][f"step_time_ratio_to_{baseline}"] > 0


def test_refuses_without_a_gpu(tmp_path):
    if gpu_check.nvidia_gpus():
        pytest.skip("a GPU is present: the refusal is for machines without one")
    out = tmp_path / "gpu_check.json"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no GPU found" in result.stderr
    assert not out.exists()


def test_peak_flops_and_estimate():
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.peak_flops("NVIDIA H200") == 989e12
    assert gpu_check.peak_flops("Some New Accelerator") is None
    # 6 x parameters plus 12 x layers x width x keys attended.
    assert gpu_check.flops_per_token(100, 2, 8, 10) == 600 + 12 * 2 * 8 * 10
    with_memory = gpu_check.flops_per_token(100, 2, 8, 10, ltm=(4, 4, 8))
    assert with_memory > gpu_check.flops_per_token(100, 2, 8, 10)
