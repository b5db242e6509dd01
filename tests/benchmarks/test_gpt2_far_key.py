"""`benchmarks/gpt2_far_key.py`, a smoke run (one density mode, one
seed, to keep it short): the record's structure, the zero start (before fine-tuning the memory model
answers exactly as GPT-2 does) and the summary recomputed from the runs.
JAX only, like the other benchmark smoke runs."""

import json
import math
import os
import sys

import pytest
import repo_paths

sys.path.insert(0, os.path.join(repo_paths.ROOT, "benchmarks"))

import gpt2_far_key  # noqa: E402

pytestmark = pytest.mark.skipif(
    __import__("keras").backend.backend() != "jax",
    reason="benchmark script smoke run: on the benchmark backend (JAX) only",
)


def test_far_key_script_records_each_run_and_the_zero_start(tmp_path):
    out = tmp_path / "far_key.json"
    gpt2_far_key.main(
        [
            "--steps",
            "2",
            "--eval-rows",
            "8",
            "--seeds",
            "3",
            "--density-modes",
            "content",
            "--out",
            str(out),
        ]
    )
    record = json.loads(out.read_text())
    runs = record["runs"]
    assert [(r["density_mode"], r["seed"]) for r in runs] == [("content", 3)]
    for run in runs:
        # The pretrained models' default: the paper's widths scaled to N = 32.
        assert run["basis_widths"] == pytest.approx([0.08, 0.16], rel=1e-12)
        before = run["answer_loss_before"]
        # The memory's output starts at zero: GPT-2's answer, to rounding.
        assert before["memory"] == pytest.approx(before["plain"], abs=1e-4)
        assert all(math.isfinite(v) and v > 0 for v in run["answer_loss_after"].values())
    losses = [r["answer_loss_after"]["memory"] for r in runs]
    assert record["summary"] == {"content": {"answer_loss_after": losses, "mean": losses[0]}}
    assert record["floor_without_memory_nats"] == pytest.approx(math.log(8))
