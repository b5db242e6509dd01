"""`benchmarks/text_lm.py --quick` on a tiny corpus written here: the JSON's
structure, plausible finite numbers (bits per byte, intervals around their
estimates, bucket byte counts adding up, a disjoint split), and a clear
message when the corpus folder does not exist. Part 1 runs once, then part 2
alone into the same JSON (which must keep part 1); part 2's fine-tunes
start from the same pretrained weights (the zero start). One run of each
part, on JAX."""

import json
import math
import os
import sys

import numpy as np
import pytest
import repo_paths

ROOT = repo_paths.ROOT
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import text_lm  # noqa: E402

# A benchmark script's smoke run: on the benchmark backend (`make bench-text`
# runs JAX) only, like those of tests/benchmarks/test_benchmarks.py; the pieces it
# trains (the LM, the GPT-2 model, StreamingDataset) are tested on every
# backend in their own files.
pytestmark = pytest.mark.skipif(
    __import__("keras").backend.backend() != "jax",
    reason="benchmark script smoke run: on the benchmark backend (JAX) only",
)


def write_corpus(folder, count=10):
    """Documents of 600-3,000 bytes in nested folders, and a non-.txt file."""
    rng = np.random.default_rng(0)
    words = "the memory of a long document fades unless it is kept in a basis".split()
    for i in range(count):
        sub = folder / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        text = " ".join(rng.choice(words, int(rng.integers(120, 600))))
        (sub / f"doc{i}.rst.txt").write_text(f"Document {i}\n{text}\n")
    (folder / "notes.md").write_text("Not a .txt file: ignored.")
    return folder


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    base = tmp_path_factory.mktemp("text_lm")
    corpus = write_corpus(base / "corpus")
    argv = [
        "--quick",
        "--parts",
        "1",
        "--corpus",
        str(corpus),
        "--held-out",
        "0.3",
        "--steps",
        "24",
        "--num-layers",
        "1",
        "--hidden-dim",
        "16",
        "--buckets",
        "0",
        "128",
        "512",
        "--probe-documents",
        "4",
        "--bootstrap",
        "100",
        "--logdir",
        str(base / "logs"),
        "--out",
        str(base / "text_lm.json"),
    ]
    return dict(record=text_lm.main(argv), base=base, corpus=corpus)


@pytest.fixture(scope="module")
def merged(record):
    """Part 2 alone, into part 1's JSON."""
    base = record["base"]
    with open(base / "text_lm.json") as f:
        before = json.load(f)
    argv = [
        "--quick",
        "--parts",
        "2",
        "--corpus",
        str(record["corpus"]),
        "--held-out",
        "0.3",
        "--pretrain-steps",
        "12",
        "--finetune-steps",
        "8",
        "--gpt2-layers",
        "1",
        "--gpt2-hidden-dim",
        "16",
        "--buckets",
        "0",
        "128",
        "512",
        "--probe-documents",
        "4",
        "--bootstrap",
        "100",
        "--logdir",
        str(base / "logs"),
        "--out",
        str(base / "text_lm.json"),
    ]
    return dict(record=text_lm.main(argv), before=before, base=base)


def test_json_structure_and_files(record):
    r, base = record["record"], record["base"]
    assert (base / "text_lm.json").exists()
    assert set(r["results"]) == set(text_lm.SYSTEMS)
    assert r["corpus"]["documents"] == 10
    assert r["steps"] == 24
    for key in (
        "settings",
        "train_wall_seconds",
        "wall_seconds",
        "environment",
        "transformer_xl_reach_bytes",
        "probe_bytes",
    ):
        assert key in r
    # TensorBoard logs of every run, one folder per system.
    for name in text_lm.SYSTEMS:
        assert os.listdir(base / "logs" / name)
    # The same feed-forward width everywhere: the memories add parameters
    # to Transformer-XL's, nothing is resized to compensate.
    assert {s["intermediate_dim"] for s in r["results"].values()} == {4 * 16}
    sizes = {n: s["trainable_parameters"] for n, s in r["results"].items()}
    assert sizes["infformer"] == sizes["infformer_sticky"] > sizes["xl"]
    assert sizes["compressive"] > sizes["xl"]


def test_split_is_disjoint(record):
    split = record["record"]["split"]
    assert not set(split["train"]) & set(split["held_out"])
    assert sorted(split["train"] + split["held_out"]) == list(range(10))
    assert set(split["evaluated"]) <= set(split["held_out"])


def check_results(results, targets, baseline):
    """Bits per byte by position and the probe, for every system."""
    for name, result in results.items():
        rows = result["by_position"]
        assert [b["bucket"] for b in rows] == ["0-128", "128-512", "512+", "all"]
        # The buckets' bytes add up to every scored byte of the held-out part.
        assert sum(b["bytes"] for b in rows[:-1]) == rows[-1]["bytes"] == targets
        for b in rows:
            if not b["bytes"]:
                continue
            bits, (lo, hi) = b["bits_per_byte"], b["ci95"]
            assert 0 < bits < 8 + 1, (name, b)
            assert lo - 1e-9 <= bits <= hi + 1e-9, (name, b)
            if name != baseline:
                dlo, dhi = b[f"minus_{baseline}_ci95"]
                assert dlo - 1e-9 <= b[f"minus_{baseline}"] <= dhi + 1e-9
        assert math.isfinite(result["final_train_bits_per_byte"])
        probe = result["probe"]
        assert probe["documents"] >= 1
        for key in ("copy1_bits_per_byte", "copy2_bits_per_byte"):
            assert 0 < probe[key] < 9
        assert probe["drop"] == pytest.approx(
            probe["copy1_bits_per_byte"] - probe["copy2_bits_per_byte"], abs=1e-9
        )
        lo, hi = probe["drop_ci95"]
        assert lo - 1e-9 <= probe["drop"] <= hi + 1e-9


def test_bits_per_byte_plausible(record):
    r = record["record"]
    check_results(r["results"], r["corpus"]["evaluated_targets"], text_lm.BASELINE)


def test_part2_structure_and_merge(merged):
    r, before, base = merged["record"], merged["before"], merged["base"]
    with open(base / "text_lm.json") as f:
        on_disk = json.load(f)
    # Part 1's record survives as it was; part 2 is added.
    assert {k: v for k, v in on_disk.items() if k != "part2"} == before
    assert (
        "part2" not in before and on_disk["part2"]["results"].keys() == r["part2"]["results"].keys()
    )
    assert (base / "text_lm_gpt2.png").exists() or not _has_matplotlib()
    part2 = r["part2"]
    assert set(part2["results"]) == set(text_lm.GPT2_SYSTEMS)
    assert part2["pretrain_steps"] == 12 and part2["finetune_steps"] == 8
    for key in (
        "settings",
        "pretrain",
        "zero_start",
        "pretrain_wall_seconds",
        "finetune_wall_seconds",
        "wall_seconds",
        "environment",
        "probe_bytes",
        "corpus",
        "split",
    ):
        assert key in part2
    assert part2["split"] == before["split"]  # The same documents held out.
    assert math.isfinite(part2["pretrain"]["final_train_bits_per_byte"])
    for name in ("gpt2_pretrain", *text_lm.GPT2_SYSTEMS):
        assert os.listdir(base / "logs" / name)
    # (b) adds the memories' weights to (a)'s.
    sizes = {n: s["trainable_parameters"] for n, s in part2["results"].items()}
    assert sizes["gpt2_memory"] > sizes["gpt2"] == part2["pretrain"]["trainable_parameters"]
    check_results(part2["results"], part2["corpus"]["evaluated_targets"], text_lm.GPT2_BASELINE)


def test_part2_fine_tunes_start_from_the_same_weights(merged):
    zero = merged["record"]["part2"]["zero_start"]
    assert zero["bytes"] > 0
    assert 0 < zero["gpt2_bits_per_byte"] < 9
    assert zero["gpt2_memory_bits_per_byte"] == pytest.approx(zero["gpt2_bits_per_byte"], abs=1e-4)
    assert zero["max_abs_bits_difference"] <= 1e-4


def test_merge_keeps_the_part_not_run(tmp_path):
    path = str(tmp_path / "r.json")
    with open(path, "w") as f:
        json.dump({"results": {"xl": 1}, "steps": 5, "part2": {"results": "old"}}, f)
    # Part 1 alone: part 1's keys replaced, the earlier part 2 kept.
    out = text_lm.merge_into(path, {"results": {"xl": 2}, "steps": 7}, [1])
    assert out == {"results": {"xl": 2}, "steps": 7, "part2": {"results": "old"}}
    # Part 2 alone: only "part2" replaced.
    out = text_lm.merge_into(path, {"part2": {"results": "new"}}, [2])
    assert out == {"results": {"xl": 1}, "steps": 5, "part2": {"results": "new"}}
    # Nothing there yet: the record as it is.
    assert text_lm.merge_into(str(tmp_path / "none.json"), {"a": 1}, [1]) == {"a": 1}
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(SystemExit, match="--out"):
        text_lm.merge_into(path, {"part2": {}}, [2])


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_missing_corpus_names_the_folder_and_the_package(tmp_path):
    missing = str(tmp_path / "no_such_corpus")
    with pytest.raises(SystemExit) as info:
        text_lm.main(["--quick", "--corpus", missing])
    message = str(info.value)
    assert missing in message and "--corpus" in message
    assert "apt-get install linux-doc-6.1" in message


def test_gradient_norm_script_records_the_memory_apart(tmp_path):
    """`text_lm_gradient_norms.py` (its own PyTorch process): the memory's
    weights are exactly the long-term attention's; at step 0 (memory empty,
    read exactly zero, the same draw) the ∞-former's shared-weight gradient
    is Transformer-XL's and its memory's is zero; the summary follows from
    the recorded norms."""
    import subprocess

    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "norms.json"
    steps, early = 6, 2
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "text_lm_gradient_norms.py"),
            "--record-steps",
            str(steps),
            "--early-steps",
            str(early),
            "--quick",
            "--corpus",
            str(corpus),
            "--held-out",
            "0.3",
            "--num-layers",
            "1",
            "--hidden-dim",
            "16",
            "--out",
            str(out),
        ],
        check=True,
        timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        stdout=subprocess.DEVNULL,
    )
    with open(out) as f:
        result = json.load(f)
    assert result["environment"]["backend"] == "torch"
    memory = result["memory_weights"]
    assert memory["xl"] == []
    assert memory["infformer"] and all("long_term_attention" in p for p in memory["infformer"])
    norms = result["norms"]
    assert all(len(norms[n]) == steps for n in ("infformer", "xl"))
    first_mem, first_xl = norms["infformer"][0], norms["xl"][0]
    assert first_mem["memory"] == 0.0
    assert first_mem["shared"] == pytest.approx(first_xl["shared"], rel=1e-5)
    for name, summary in result["summary"].items():
        later = [s["total"] for s in norms[name][early:]]
        window = summary[f"{early}-{steps}"]
        clip = result["clipnorm"]
        assert window["clipped_fraction"] == pytest.approx(np.mean([t > clip for t in later]))
        assert window["mean_step_scale"] == pytest.approx(
            np.mean([min(1.0, clip / t) for t in later])
        )
        squares = [s["shared"] ** 2 + s["memory"] ** 2 for s in norms[name][early:]]
        assert [s["total"] ** 2 for s in norms[name][early:]] == pytest.approx(squares)


def test_xl_twin_is_transformer_xl_moved_by_one_part_in_a_million():
    """The control starts where Transformer-XL starts, each weight moved by
    a relative N(0, 1e-6) (zeros stay zero), so its distance from xl after
    training is what training alone moves a result by."""
    args = text_lm.parse_args(
        ["--quick", "--systems", "xl", "xl_twin", "--num-layers", "1", "--hidden-dim", "16"]
    )
    systems = text_lm.build_systems(args, 256)
    xl, twin = systems["xl"], systems["xl_twin"]
    assert [v.path.split("/", 1)[1] for v in xl.trainable_variables] == [
        v.path.split("/", 1)[1] for v in twin.trainable_variables
    ]
    relative = []
    for a, b in zip(xl.trainable_variables, twin.trainable_variables):
        a, b = np.asarray(a.numpy(), np.float64), np.asarray(b.numpy(), np.float64)
        assert np.array_equal(a == 0, b == 0)
        nonzero = a != 0
        relative.append((b[nonzero] - a[nonzero]) / a[nonzero])
    relative = np.concatenate(relative)
    assert relative.size > 1000
    # Within float32 rounding (~6e-8) of a relative N(0, 1e-6) draw.
    assert 0.9e-6 < relative.std() < 1.1e-6
    assert abs(relative.mean()) < 1e-7
    assert np.abs(relative).max() < 7e-6
    # A draw under half a float32 step (|z| < ~0.06) leaves a weight as it is.
    assert np.count_nonzero(relative) > 0.9 * relative.size
