"""Custom ops (schemas, fake and reference kernels), device dispatch, and the hand-off to Inductor."""

from . import ops  # noqa: F401  (registers torch.ops.hylra.*)
from . import dispatch  # noqa: F401
