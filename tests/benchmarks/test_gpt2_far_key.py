"""`benchmarks/gpt2_far_key.py`, a smoke run: both density modes, the
record's structure, the zero start (before fine-tuning the memory model
answers exactly as GPT-2 does) and the summary recomputed from the runs.
JAX only, like the other benchmark smoke runs."""

import json
import math
import os
import sys

import numpy as np
import pytest
import repo_paths

sys.path.insert(0, os.path.join(repo_paths.ROOT, "benchmarks"))

import gpt2_far_key  # noqa: E402

pytestmark = pytest.mark.skipif(
    __import__("keras").backend.backend() != "jax",
    reason="benchmark script smoke run: on the benchmark backend (JAX) only",
)


def test_far_key_script_runs_both_densities(tmp_path):
    out = tmp_path / "far_key.json"
    gpt2_far_key.main(["--steps", "2", "--eval-rows", "8", "--seeds", "3", "--out", str(out)])
    record = json.loads(out.read_text())
    runs = record["runs"]
    assert [(r["density_mode"], r["seed"]) for r in runs] == [("affine", 3), ("content", 3)]
    for run in runs:
        assert run["basis_widths"] == [0.05, 0.1]
        before = run["answer_loss_before"]
        # The memory's output starts at zero: GPT-2's answer, to rounding.
        assert before["memory"] == pytest.approx(before["plain"], abs=1e-4)
        assert all(math.isfinite(v) and v > 0 for v in run["answer_loss_after"].values())
    for mode in ("affine", "content"):
        losses = [r["answer_loss_after"]["memory"] for r in runs if r["density_mode"] == mode]
        assert record["summary"][mode]["answer_loss_after"] == losses
        assert record["summary"][mode]["mean"] == pytest.approx(np.mean(losses))
    assert record["floor_without_memory_nats"] == pytest.approx(math.log(8))
