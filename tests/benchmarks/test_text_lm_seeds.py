"""`benchmarks/text_lm_seeds_plot.py`: the summary over seeds of text_lm.py
runs, checked against a NumPy computation and a printed t table."""

import json
import os
import sys

import numpy as np
import pytest
import repo_paths

sys.path.insert(0, os.path.join(repo_paths.ROOT, "benchmarks"))

import text_lm_seeds_plot  # noqa: E402


def fake_run(seed, differences, systems=("infformer",)):
    """A text_lm.py record with the given minus_xl per bucket."""
    results = {"xl": {"by_position": [{"bucket": b, "bits_per_byte": 2.7} for b in differences]}}
    for system in systems:
        results[system] = {
            "by_position": [
                {
                    "bucket": b,
                    "bits_per_byte": 2.7 + d,
                    "minus_xl": d,
                    "minus_xl_ci95": [d - 0.01, d + 0.01],
                }
                for b, d in differences.items()
            ]
        }
    return {"settings": {"seed": seed, "steps": 10}, "results": results}


def test_t_quantiles_match_the_table():
    # Student's t, two-sided 95 %: 12.706 (1), 4.303 (2), 2.776 (4), 2.262 (9).
    for df, value in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262)):
        assert text_lm_seeds_plot.t_quantile_975(df) == pytest.approx(value, abs=1e-3)


def test_summary_over_seeds_against_numpy(tmp_path):
    values = {"0-1k": [0.004, 0.031, 0.002, -0.010], "all": [0.001, 0.024, -0.012, 0.000]}
    runs = [
        fake_run(
            seed,
            {b: v[i] for b, v in values.items()},
            ("infformer", "infformer_sticky") if i < 2 else ("infformer",),
        )
        for i, seed in enumerate((0, 1, 2, 3))
    ]
    paths = []
    for i, run in enumerate(runs):
        paths.append(str(tmp_path / f"run{i}.json"))
        with open(paths[-1], "w") as f:
            json.dump(run, f)
    out = tmp_path / "summary.json"
    summary = text_lm_seeds_plot.main(paths + ["--summary", str(out)])
    with open(out) as f:
        assert json.load(f)["systems"] == json.loads(json.dumps(summary))
    assert set(summary) == {"infformer", "infformer_sticky"}
    for system, n in (("infformer", 4), ("infformer_sticky", 2)):
        for row in summary[system]:
            v = np.array(values[row["bucket"]][:n], np.float64)
            assert row["seeds"] == [0, 1, 2, 3][:n]
            assert row["minus_xl"] == pytest.approx(v.tolist())
            assert row["mean"] == pytest.approx(v.mean())
            assert row["sd"] == pytest.approx(v.std(ddof=1))
            half = {4: 3.182446, 2: 12.706205}[n] * v.std(ddof=1) / np.sqrt(n)
            assert row["mean_ci95"] == pytest.approx([v.mean() - half, v.mean() + half])
            assert row["runs_at_or_below_0"] == int((v <= 0).sum())


def test_one_run_has_no_interval_over_seeds():
    summary = text_lm_seeds_plot.seed_summary([fake_run(5, {"all": 0.01})])
    (row,) = summary["infformer"]
    assert row["mean"] == pytest.approx(0.01)
    assert "mean_ci95" not in row and "sd" not in row
