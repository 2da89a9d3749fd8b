import os

import torch

# Triton kernels run on CPU tensors only under the interpreter; it must be set before any @triton.jit module loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
