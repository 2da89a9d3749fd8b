"""The hylra graph passes, one per file, run by :func:`hylra_pass_manager` in this order:

1. :class:`FindAttentionPass` -- find SDPA and eager attention sites (layer order).
2. :class:`ApplyPolicyPass` -- decide producer / consumer / dense per site, checking shapes symbolically.
3. :class:`RewritePass` -- replace sites with ``hylra::topk_attention`` / ``hylra::sparse_attention``.
4. :class:`DumpPass` -- write ``after.py``, ``report.md`` and ``edges.dot`` when a dump folder is set.
"""

from .apply_policy import ApplyPolicyPass
from .base import HylraPass, PassContext, PassManager
from .dump import DumpPass
from .find_attention import FindAttentionPass
from .rewrite import RewritePass


def hylra_pass_manager() -> PassManager:
    return PassManager([FindAttentionPass(), ApplyPolicyPass(), RewritePass(), DumpPass()])


__all__ = [
    "ApplyPolicyPass",
    "DumpPass",
    "FindAttentionPass",
    "HylraPass",
    "PassContext",
    "PassManager",
    "RewritePass",
    "hylra_pass_manager",
]
