"""The README's first example and its generate() continuation run as pasted and print what the README shows."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.smollm2 import smollm2

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.mark.slow
def test_readme_use_example_runs_as_pasted(tmp_path):
    smollm2()  # skips when the model package is missing
    text = README.read_text()
    use = text[text.index("## Use"):]
    first = re.search(r"```python\n(.*?)```", use, re.S).group(1)
    generate = re.search(r"### `generate\(\)`\n\n```python\n(.*?)```", use, re.S).group(1)
    shown = re.search(r"```\n(hylra report for .*?)\n", use).group(1)
    result = subprocess.run([sys.executable, "-c", first + generate], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert shown in result.stdout
    assert "hylra report for prefill_" in result.stdout and "hylra report for decode_" in result.stdout
    assert "runs sparse" not in result.stderr  # no warning that nothing is sparse
