import subprocess
import sys
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_runs_prints_report_and_writes_dumps(tmp_path):
    result = subprocess.run([sys.executable, str(QUICKSTART)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 producer, 2 consumer, 0 dense" in result.stdout
    assert "top-1 agreement" in result.stdout
    (folder,) = (tmp_path / "hylra-dumps").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == [
        "00-input.py", "01-find_attention.md", "02-decide.md", "03-block_masks.md", "04-rewrite.py", "edges.dot", "report.md"
    ]
