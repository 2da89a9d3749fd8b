"""The error measure every numerical test uses."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (‖out‖ when ref is all zeros); NaN in ``out`` never passes."""
    out, ref = out.double(), ref.double()
    assert not torch.isnan(out).any(), "NaN in output"
    den = ref.norm()
    return ((out - ref).norm() / den).item() if den > 0 else out.norm().item()
