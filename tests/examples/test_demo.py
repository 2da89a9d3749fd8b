import subprocess
import sys
from pathlib import Path

import pytest

from tests.smollm2 import smollm2

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.py"


@pytest.mark.slow
def test_demo_on_smollm2_answers_dense_and_compiled_and_writes_files(tmp_path):
    smollm2()  # skips when the model package is missing
    result = subprocess.run([sys.executable, str(DEMO)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hylra report for graph_0_0" in out and "KL(dense ‖ hylra)" in out
    assert "dense : 'The special magic number for" in out and "-> correct" in out.split("dense :")[1].split("\n")[0]
    assert "hylra : " in out
    folder = tmp_path / "hylra-demo"
    assert {"policy.json", "policy.png", "similarity.png", "dumps"} <= {p.name for p in folder.iterdir()}
    assert any((folder / "dumps").iterdir())
