import pytest
import torch
from torch._dynamo.utils import counters

import hylra_compile


@pytest.fixture(autouse=True)
def fresh_compile_state():
    """Each test compiles from scratch: no cached graphs, counters or string-backend reports, same weights."""
    torch._dynamo.reset()
    counters.clear()
    hylra_compile.reset_reports()
    torch.manual_seed(0)
