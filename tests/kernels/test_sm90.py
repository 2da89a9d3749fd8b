"""The GPU kernels compile for Hopper on a machine without a GPU (tests/kernels/sm90.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _hopper_toolchain() -> str | None:
    """Why Triton cannot compile for sm_90 here (None when it can): its NVIDIA backend ships ptxas and cuobjdump."""
    try:
        import triton.backends.nvidia as nvidia
    except ImportError:
        return "triton has no NVIDIA backend"
    tools = Path(nvidia.__file__).parent / "bin"
    missing = [tool for tool in ("ptxas", "cuobjdump") if not (tools / tool).exists()]
    return f"triton's NVIDIA backend lacks {', '.join(missing)}" if missing else None


@pytest.mark.skipif(_hopper_toolchain() is not None, reason=str(_hopper_toolchain()))
def test_block_16_kernels_compile_for_sm90(tmp_path):
    """Every pass at block 16, where the selected (and, in decode, all) blocks are gathered four to a tile, and the
    refinement's selection with budgets by KV head: the interpreter runs their semantics, this their compilation
    for the GPU (fresh cache, so nothing is skipped)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-m", "tests.kernels.sm90", "16"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert run.stdout.count("registers") == 10, run.stdout
