"""The README's usage examples run (on the current backend) and do what they
say: what they print, the memory they leave behind and the models they save.

Each example marked `<!-- readme-test -->` runs as a script with an epilogue
appended that records, for every object of the script that keeps memory
(`get_state()`), that memory and its weights. `check_readme_example` then
holds every example to the same rules, stated generically so that an
example can be rewritten without touching this file:

- every `label: (a, b, ...)` shape it prints is made of sizes the example
  states (integer literals of its code), and a shape printed as a memory's
  is the shape of a memory it left;
- the memory it leaves is finite, holds a past (some row filled, non-zero
  coefficients there, zero where a row is empty) and has the stated batch
  size and number of basis functions;
- every `.keras` file it saves loads, with the weights and the memory of
  the object that saved it.
"""

import ast
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_infformer  # noqa: F401 (registers the classes for load_model)

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-test -->"
LEFT_BEHIND = "readme_left_behind.npz"

# Appended to each example: the memory (and weights) of every object of the
# script's namespace that keeps memory, saved as "<name>/state/<key>" and
# "<name>/weight/<index>".
EPILOGUE = f"""

def _readme_test_dump(namespace):
    import keras as _keras
    import numpy as _np

    arrays = {{}}
    for name, value in namespace.items():
        if name.startswith("_") or not isinstance(value, _keras.layers.Layer):
            continue
        if not callable(getattr(value, "get_state", None)):
            continue
        try:
            state = value.get_state()
        except ValueError:  # Built without memory variables.
            continue
        for key, tensor in state.items():
            arrays[f"{{name}}/state/{{key}}"] = _keras.ops.convert_to_numpy(tensor)
        for i, weight in enumerate(value.weights):
            arrays[f"{{name}}/weight/{{i}}"] = _keras.ops.convert_to_numpy(weight)
    _np.savez({LEFT_BEHIND!r}, **arrays)


_readme_test_dump(dict(globals()))
"""


def readme_examples():
    text = README.read_text(encoding="utf-8")
    pattern = re.escape(MARKER) + r"\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


def run_example(code, directory):
    """Run `code` + EPILOGUE in `directory`; (stdout, left behind by object)."""
    script = directory / "example.py"
    script.write_text(code + EPILOGUE, encoding="utf-8")
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    objects = {}
    with np.load(directory / LEFT_BEHIND) as arrays:
        for path in arrays.files:
            name, kind, key = path.split("/", 2)
            entry = objects.setdefault(name, {"state": {}, "weight": {}})
            entry[kind][key] = arrays[path]
    for entry in objects.values():
        entry["weight"] = [entry["weight"][str(i)] for i in range(len(entry["weight"]))]
    return result.stdout, objects


def printed_shapes(stdout):
    """`label: (a, b, ...)` pairs printed by an example, label -> shape."""
    found = re.findall(r"([^\s:][^:\n]*?):\s*\((\d+(?:,\s*\d+)*),?\)", stdout)
    return {label.strip(): tuple(int(d) for d in dims.split(",")) for label, dims in found}


def stated_sizes(code):
    """The integer sizes an example states: `name -> value` for plain and
    tuple assignments and keyword arguments, and the set of every integer
    literal of its code."""
    names, literals = {}, set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.add(node.value)
        elif isinstance(node, ast.keyword) and isinstance(node.value, ast.Constant):
            if type(node.value.value) is int:
                names[node.arg] = node.value.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
            pairs = []
            if isinstance(target, ast.Name):
                pairs = [(target, value)]
            elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                pairs = list(zip(target.elts, value.elts))
            for t, v in pairs:
                if isinstance(t, ast.Name) and isinstance(v, ast.Constant) and type(v.value) is int:
                    names[t.id] = v.value
    return names, literals


def _check_memory(name, state, sizes):
    """A memory left behind: finite, holds a past, of the stated sizes."""
    assert state, name
    for key, value in state.items():
        assert np.all(np.isfinite(value)), (name, key)
    coefficient_keys = [k for k in state if k.endswith("coefficients")]
    # Each set of coefficients has its `filled` flags beside it (other
    # `*filled` flags, e.g. of vectors kept for the next segment, are not
    # a memory's).
    filled_keys = [
        k for k in state if k.endswith("filled") and k[: -len("filled")] + "coefficients" in state
    ]
    assert filled_keys and len(filled_keys) == len(coefficient_keys), sorted(state)
    batch = {sizes[k] for k in ("batch", "batch_size") if k in sizes}
    for filled_key, coefficient_key in zip(sorted(filled_keys), sorted(coefficient_keys)):
        filled = state[filled_key] > 0.5
        coefficients = state[coefficient_key]
        assert filled.any(), (name, filled_key, "no row holds a past")
        per_row = np.abs(coefficients).reshape(len(coefficients), -1).max(axis=1)
        assert np.all(per_row[filled] > 1e-3), (name, coefficient_key, per_row)
        np.testing.assert_array_equal(per_row[~filled], 0.0)
        if batch:
            assert coefficients.shape[0] in batch, (name, coefficients.shape, batch)
        if "num_basis" in sizes:
            assert coefficients.shape[1] == sizes["num_basis"], (name, coefficients.shape)


def check_readme_example(code, stdout, objects, directory):
    """The rules every README example is held to (see the module docstring).
    Adapt here when the README's examples change what they show."""
    sizes, literals = stated_sizes(code)
    shapes = printed_shapes(stdout)
    saved = sorted(directory.glob("*.keras"))
    memories = {name: entry["state"] for name, entry in objects.items()}
    # Each example shows something checkable: a printed shape or a saved model.
    assert shapes or saved, stdout[-2000:]
    assert memories, "the example leaves no memory behind"

    for label, shape in shapes.items():
        assert set(shape) <= literals, (label, shape, sorted(literals))
    memory_shapes = {
        tuple(value.shape)
        for state in memories.values()
        for key, value in state.items()
        if key.endswith("coefficients")
    }
    for label, shape in shapes.items():
        if "memory" in label.lower():
            assert shape in memory_shapes, (label, shape, memory_shapes)

    for name, state in memories.items():
        _check_memory(name, state, sizes)

    for path in saved:
        restored = keras.saving.load_model(path)
        weights = [keras.ops.convert_to_numpy(w) for w in restored.weights]
        owners = [
            name
            for name, entry in objects.items()
            if [w.shape for w in entry["weight"]] == [w.shape for w in weights]
        ]
        assert len(owners) == 1, (path.name, owners)
        entry = objects[owners[0]]
        for a, b in zip(entry["weight"], weights):
            np.testing.assert_array_equal(a, b)
        state = {k: keras.ops.convert_to_numpy(v) for k, v in restored.get_state().items()}
        assert set(state) == set(entry["state"])
        for key, value in state.items():
            np.testing.assert_array_equal(value, entry["state"][key], err_msg=key)
    return shapes, saved


def test_readme_has_examples():
    examples = readme_examples()
    assert len(examples) >= 2
    # The usage example is the promised ~20 lines.
    assert len(examples[0].strip().splitlines()) <= 25


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_example_runs_and_does_what_it_says(index, tmp_path):
    code = readme_examples()[index]
    stdout, objects = run_example(code, tmp_path)
    shapes, saved = check_readme_example(code, stdout, objects, tmp_path)
    print(
        f"example {index}: printed {shapes}; memories of {sorted(objects)}; "
        f"saved {[p.name for p in saved]}"
    )


def test_the_checks_see_a_wrong_print_and_an_empty_memory(tmp_path):
    """The rules above can fail: a shape with a size the example never
    states, a memory that holds nothing, a saved model whose memory is not
    the one left behind."""
    code = "batch, width = 2, 3\n"
    state = {"coefficients": np.zeros((2, 4, 3)), "filled": np.zeros(2)}
    objects = {"ltm": {"state": state, "weight": []}}
    with pytest.raises(AssertionError):
        check_readme_example(code, "out: (2, 3)\n", objects, tmp_path)  # no past
    state = {"coefficients": np.ones((2, 4, 3)), "filled": np.ones(2)}
    objects = {"ltm": {"state": state, "weight": []}}
    check_readme_example(code, "out: (2, 3)\n", objects, tmp_path)
    with pytest.raises(AssertionError):
        check_readme_example(code, "out: (2, 5)\n", objects, tmp_path)  # 5 unstated
    with pytest.raises(AssertionError):
        check_readme_example(code, "memory: (2, 3)\n", objects, tmp_path)  # not its shape
