"""Hand-off of the rewritten graph to Inductor.

Inductor has no lowering for the hylra ops, so it keeps each as a fallback kernel call (the op's registered
kernel for the device: Triton on CUDA, the reference elsewhere) and compiles everything around it.
"""

from __future__ import annotations

from typing import Callable

import torch.fx


def compile_with_inductor(gm: torch.fx.GraphModule, example_inputs: list, cudagraphs: bool = False) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches={"triton.cudagraphs": cudagraphs})
