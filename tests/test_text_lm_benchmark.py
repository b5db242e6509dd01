"""`benchmarks/text_lm.py --quick` on a tiny corpus written here: the JSON's
structure, plausible finite numbers (bits per byte, intervals around their
estimates, bucket byte counts adding up, a disjoint split), and a clear
message when the corpus folder does not exist. One run per backend."""

import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import text_lm  # noqa: E402


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
        "--quick", "--corpus", str(corpus), "--held-out", "0.3", "--steps", "24",
        "--num-layers", "1", "--hidden-dim", "16", "--buckets", "0", "128", "512",
        "--probe-documents", "4", "--bootstrap", "100",
        "--logdir", str(base / "logs"), "--out", str(base / "text_lm.json"),
    ]
    return dict(record=text_lm.main(argv), base=base)


def test_json_structure_and_files(record):
    r, base = record["record"], record["base"]
    assert (base / "text_lm.json").exists()
    assert set(r["results"]) == set(text_lm.SYSTEMS)
    assert r["corpus"]["documents"] == 10
    assert r["steps"] == 24
    for key in ("settings", "train_wall_seconds", "wall_seconds", "environment",
                "transformer_xl_reach_bytes", "probe_bytes"):
        assert key in r
    # TensorBoard logs of every run, one folder per system.
    for name in text_lm.SYSTEMS:
        assert os.listdir(base / "logs" / name)
    # Equal trainable size (within one feed-forward unit per layer).
    sizes = [s["trainable_parameters"] for s in r["results"].values()]
    assert max(sizes) - min(sizes) <= 2 * (2 * 16 + 1)


def test_split_is_disjoint(record):
    split = record["record"]["split"]
    assert not set(split["train"]) & set(split["held_out"])
    assert sorted(split["train"] + split["held_out"]) == list(range(10))
    assert set(split["evaluated"]) <= set(split["held_out"])


def test_bits_per_byte_plausible(record):
    r = record["record"]
    targets = r["corpus"]["evaluated_targets"]
    for name, result in r["results"].items():
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
            if name != text_lm.BASELINE:
                dlo, dhi = b["minus_xl_ci95"]
                assert dlo - 1e-9 <= b["minus_xl"] <= dhi + 1e-9
        assert math.isfinite(result["final_train_bits_per_byte"])
        probe = result["probe"]
        assert probe["documents"] >= 1
        for key in ("copy1_bits_per_byte", "copy2_bits_per_byte"):
            assert 0 < probe[key] < 9
        assert probe["drop"] == pytest.approx(
            probe["copy1_bits_per_byte"] - probe["copy2_bits_per_byte"], abs=1e-9)
        lo, hi = probe["drop_ci95"]
        assert lo - 1e-9 <= probe["drop"] <= hi + 1e-9


def test_missing_corpus_names_the_folder_and_the_package(tmp_path):
    missing = str(tmp_path / "no_such_corpus")
    with pytest.raises(SystemExit) as info:
        text_lm.main(["--quick", "--corpus", missing])
    message = str(info.value)
    assert missing in message and "--corpus" in message
    assert "apt-get install linux-doc-6.1" in message
