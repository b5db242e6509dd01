"""`benchmarks/summary.py`: the README's Performance table is generated.

- The block between the README's `summary-table` markers is exactly what
  summary.py renders from the committed `benchmarks/results/summary.json`
  (so nobody edits those numbers by hand).
- The committed summary.json agrees with the committed result JSONs.
- On small made-up result files, the ratios, the met flags and the table
  match a computation written out here.

Reads JSON only: no Keras, no timing.
"""

import importlib.util
import json
import os
import shutil

import pytest
import repo_paths

ROOT = repo_paths.ROOT
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def _load_summary_module():
    spec = importlib.util.spec_from_file_location(
        "bench_summary", os.path.join(ROOT, "benchmarks", "summary.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


summary = _load_summary_module()


def test_readme_table_is_rendered_from_summary_json():
    with open(os.path.join(RESULTS, "summary.json")) as f:
        committed = json.load(f)
    block = summary.readme_block(os.path.join(ROOT, "README.md"))
    assert block == summary.render_markdown(committed), (
        "README's Performance table differs from summary.json: run "
        "`python benchmarks/summary.py --update-readme`"
    )


def test_summary_json_matches_the_result_files():
    with open(os.path.join(RESULTS, "summary.json")) as f:
        committed = json.load(f)
    fresh = summary.build_summary(RESULTS)
    for part in ("targets", "context"):
        got = {r["id"]: (r["values"], r["met"]) for r in fresh[part]}
        want = {r["id"]: (r["values"], r["met"]) for r in committed[part]}
        assert got == want, f"summary.json is stale ({part}): run benchmarks/summary.py"


def _write(directory, name, obj):
    with open(os.path.join(directory, f"{name}.json"), "w") as f:
        json.dump(obj, f)


@pytest.fixture
def made_up(tmp_path):
    env = {"time": "2030-01-02 03:04:05 UTC", "machine": "x86_64", "cpu_count": 4, "backend": "jax"}
    _write(
        tmp_path,
        "context_scaling",
        {
            "mode": "short",
            "environment": env,
            "ltm_overhead_vs_transformer_xl": {
                "infformer_uniform/lm/train": 0.10,
                "infformer_sticky/lm/train": 0.30,
            },
            "paper_size_blocks": {
                "config": {"dim": 300, "length": 1024, "num_basis": 512},
                "systems": {
                    # no stored ratio: summary.py falls back to the ratio of times
                    "infformer_uniform": {"infer_ms": 110.0, "train_ms": 400.0},
                    "infformer_sticky": {
                        "infer_ms": 125.0,
                        "train_ms": 410.0,
                        "train_overhead_vs_transformer_xl": 0.02,
                    },
                    "transformer_xl": {"infer_ms": 100.0, "train_ms": 400.0},
                },
            },
        },
    )
    _write(
        tmp_path,
        "layer_throughput",
        {
            "backends": {
                "jax": {
                    "environment": env,
                    "mode": "short",
                    "results": [
                        {
                            "op": "ltm_absorb",
                            "mode": "compiled",
                            "size": "paper",
                            "ratio_to_floor": 1.2,
                        },
                        {
                            "op": "ltm_absorb",
                            "mode": "eager",
                            "size": "paper",
                            "ratio_to_floor": 9.0,
                        },
                        {
                            "op": "gaussian_attention",
                            "mode": "compiled",
                            "size": "paper",
                            "time_ms": 3.0,
                            "floor_ms": 2.5,
                        },
                    ],
                }
            }
        },
    )
    _write(
        tmp_path,
        "decode_speed",
        {
            "environment": env,
            "mode": "short",
            "results": {
                "infformer/batch_1": {"tokens_per_second": 900.0},
                "infformer_sticky/batch_1": {"tokens_per_second": 700.0},
                "transformer_xl/batch_1": {"tokens_per_second": 1000.0},
            },
        },
    )
    return tmp_path


def test_issue_26_rows_from_made_up_results(made_up):
    env = {"time": "2030-01-02 03:04:05 UTC", "machine": "x86_64", "cpu_count": 4, "backend": "jax"}
    _write(
        made_up,
        "ltm_step",
        {
            "environment": env,
            "size": {"length": 1024, "num_basis": 512, "dim": 300},
            "median_seconds": {"jax": 0.105, "tensorflow": 0.1, "torch": 0.12},
            "jax_over_fastest_other": 1.05,
        },
    )
    _write(
        made_up,
        "gpt2_finetune_step",
        {"backend": "jax", "step_time_ratio_to_gpt2": {"memory_all": 1.3, "memory_only": 0.9}},
    )
    _write(
        made_up,
        "serving_warmup",
        {
            "date": "2030-01-02",
            "machine": {"processor": "x86_64", "cpus": 4},
            "results": {
                "xla": {
                    "warmup_file": {"first_over_warm_decode_step": 1.2},
                    "client_warm_up": {"first_over_warm_decode_step": 1.5},
                },
                "plain_tf": {
                    "warmup_file": {"first_over_warm_decode_step": 1.3},
                    "client_warm_up": {"first_over_warm_decode_step": 2.5},
                },
            },
        },
    )
    rows = {r["id"]: r for r in summary.build_summary(str(made_up))["targets"]}
    ltm = rows["ltm_step/jax"]
    assert ltm["values"] == {"JAX / fastest other": 1.05} and ltm["met"] is True
    assert ltm["before"].startswith("1.82×") and "(before: 1.82×" in ltm["measured"]
    assert "L 1024, N 512, e 300" in ltm["what"]
    gpt2 = rows["gpt2_step/train"]
    assert gpt2["values"] == {"every weight": 1.3} and gpt2["met"] is False
    first = rows["serving/first_request"]
    assert first["values"]["plain TF, client"] == 2.5 and first["met"] is False
    assert (
        first["source"]["date"] == "2030-01-02" and first["source"]["machine"] == "x86_64, 4 CPUs"
    )


def test_ratios_and_flags_from_made_up_results(made_up):
    result = summary.build_summary(str(made_up))
    rows = {r["id"]: r for r in result["targets"]}

    lm = rows["ltm_overhead/small_lm/train"]
    assert lm["values"] == {"uniform": 0.10, "sticky": 0.30}
    assert lm["met"] is False  # sticky 30% > 20%

    train = rows["ltm_overhead/paper_block/train"]
    assert train["values"]["uniform"] == pytest.approx(400.0 / 400.0 - 1.0)
    assert train["values"]["sticky"] == 0.02  # the stored paired ratio wins
    assert train["met"] is True
    infer = rows["ltm_overhead/paper_block/infer"]
    assert infer["values"]["uniform"] == pytest.approx(0.10)
    assert infer["values"]["sticky"] == pytest.approx(0.25)
    assert infer["met"] is False

    jax_ops = rows["ltm_ops_vs_floor/jax"]
    assert jax_ops["values"] == pytest.approx(
        {"absorb (paper)": 1.2, "Gaussian attention (paper)": 3.0 / 2.5}
    )  # eager ignored
    assert jax_ops["met"] is True
    assert rows["ltm_ops_vs_floor/tensorflow"]["met"] is None  # not in the file

    decode = rows["decode/batch_1"]
    assert decode["values"] == pytest.approx({"uniform": 0.9, "sticky": 0.7})
    assert decode["met"] is False
    assert decode["source"]["date"] == "2030-01-02 03:04:05 UTC"
    assert decode["source"]["file"] == "decode_speed.json"

    assert result["all_targets_met"] is False
    assert "memory_stability.json" in result["missing"]
    table = summary.render_markdown(result)
    assert "| +10.0% / +25.0% (before: +18.4% / +20.1%) | ≤ +15% | **no** |" in table
    assert "| 0.90 / 0.70 | ≥ 0.8× | **no** |" in table


def test_update_readme_rewrites_only_the_block(made_up, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{summary.START}\nold numbers\n{summary.END}\nafter\n")
    assert summary.main(["--results-dir", str(made_up)]) == 0
    assert (
        summary.main(["--results-dir", str(made_up), "--update-readme", "--readme", str(readme)])
        == 0
    )
    text = readme.read_text()
    assert text.startswith(f"before\n{summary.START}\n| what | measured | target | met |")
    assert text.endswith(f"{summary.END}\nafter\n") and "old numbers" not in text
    with open(made_up / "summary.json") as f:
        assert summary.readme_block(str(readme)) == summary.render_markdown(json.load(f))


def test_committed_results_render_without_git(tmp_path):
    # A copy outside the repository (no git history): dates still render.
    for name in summary.SOURCES:
        shutil.copy(os.path.join(RESULTS, f"{name}.json"), tmp_path)
    result = summary.build_summary(str(tmp_path))
    assert {r["id"] for r in result["targets"]} >= {
        "ltm_overhead/small_lm/train",
        "ltm_overhead/paper_block/train",
        "ltm_overhead/paper_block/infer",
        "ltm_ops_vs_floor/jax",
        "ltm_ops_vs_floor/tensorflow",
        "decode/batch_1",
        "decode/batch_8",
    }
    summary.render_markdown(result)
