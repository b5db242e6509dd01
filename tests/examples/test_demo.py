"""`make demo`'s far-recall step reads the record `recall_task.main()` writes."""

import importlib
import pathlib
import re

import keras
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="`make demo` runs on JAX (the record is the same)"
)
def test_the_demo_summarises_every_recall_system(monkeypatch):
    for folder in ("examples", "benchmarks"):
        monkeypatch.syspath_prepend(str(ROOT / folder))
    recall_task = importlib.import_module("recall_task")
    demo = importlib.import_module("demo")
    record = recall_task.main(["--steps", "2", "--out", ""])
    line = demo.recall_summary(record)
    numbers = [float(x) for x in re.findall(r"\d\.\d{3}", line)]
    expected = [
        record["results"][name]["accuracy"] for name in ("infformer", "infformer_sticky", "xl")
    ]
    assert numbers == pytest.approx(
        [round(x, 3) for x in expected] + [record["chance_accuracy"]], abs=1e-3
    )
    assert f"{record['tokens_between_key_and_query']}+ tokens back" in line
