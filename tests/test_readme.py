"""The README's usage examples really run (on the current backend)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- readme-test -->"


def readme_examples():
    text = README.read_text(encoding="utf-8")
    pattern = re.escape(MARKER) + r"\s*```python\n(.*?)```"
    return re.findall(pattern, text, flags=re.S)


def test_readme_has_examples():
    examples = readme_examples()
    assert len(examples) >= 2
    # The usage example is the promised ~20 lines.
    assert len(examples[0].strip().splitlines()) <= 25


@pytest.mark.parametrize("index", range(len(readme_examples())))
def test_readme_example_runs(index, tmp_path):
    code = readme_examples()[index]
    script = tmp_path / f"example_{index}.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
