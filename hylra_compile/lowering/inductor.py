"""Hand-off of the rewritten graph to Inductor.

Inductor has no lowering for the hylra ops, so it keeps each as a fallback kernel call (the op's registered
kernel for the device: Triton on CUDA, the reference elsewhere) and compiles everything around it.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Callable

import torch.fx


@functools.cache
def ops_cache_key() -> str:
    """A hash of the source that defines the hylra ops' outputs (schemas, fake kernels, reference).

    Inductor's graph cache keys a graph by its code, not by what a custom op's fake kernel says its outputs look
    like; a graph cached against an older version of the ops asserts the old output layout (after
    ``hylra::shared_mask`` padded its rows, a cached graph failed on its stride). The key goes into the cache key
    through ``unsafe_marked_cacheable_functions``, the config whose values Inductor hashes for that purpose."""
    source = b"".join((Path(__file__).parent / name).read_bytes() for name in ("ops.py", "reference.py"))
    return hashlib.sha256(source).hexdigest()[:16]


def compile_with_inductor(gm: torch.fx.GraphModule, example_inputs: list, cudagraphs: bool = False) -> Callable:
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    keyed = {**config.unsafe_marked_cacheable_functions, "torch.ops.hylra": ops_cache_key()}
    return compile_fx(gm, example_inputs,
                      config_patches={"triton.cudagraphs": cudagraphs, "unsafe_marked_cacheable_functions": keyed})
