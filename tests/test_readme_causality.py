"""The README's layer example is causal: no output reads a later token."""

import pathlib
import re

import keras
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
DRAW = 'segment_vectors = rng.normal(size=(batch, segment, width)).astype("float32")'


def _layer_example():
    text = README.read_text(encoding="utf-8")
    examples = re.findall(r"<!-- readme-test -->\s*```python\n(.*?)```", text, flags=re.S)
    example = [e for e in examples if "ContinuousLTM(" in e and "ltm.read()" in e]
    assert example, "the README's layer example is missing"
    return example[0]


def _run(code, perturb):
    # Same example, with token 40 of the last segment changed (or not).
    # Only the *stored* vector changes: the queries stay those drawn.
    assert DRAW in code
    indent = code.split(DRAW)[0].rsplit("\n", 1)[-1]
    code = code.replace(
        DRAW,
        DRAW + f"\n{indent}queries = segment_vectors.copy()"
        f"\n{indent}if step == 99: segment_vectors[:, 40] += {perturb}",
    )
    code = code.replace("attention(segment_vectors, ltm.read()", "attention(queries, ltm.read()")
    namespace = {}
    keras.utils.set_random_seed(0)  # The same layers in both runs.
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_readme_layer_example_never_reads_later_tokens():
    code = _layer_example()
    base, changed = _run(code, 0.0), _run(code, 5.0)
    outputs = [keras.ops.convert_to_numpy(n["outputs"]) for n in (base, changed)]
    np.testing.assert_array_equal(outputs[0], outputs[1])  # Whole segment.
    # The memory did take the change in (it is written after the read).
    memories = [keras.ops.convert_to_numpy(n["coefficients"]) for n in (base, changed)]
    assert np.abs(memories[0] - memories[1]).max() > 1e-4
    assert np.all(np.isfinite(outputs[0])) and np.abs(outputs[0]).max() > 0
