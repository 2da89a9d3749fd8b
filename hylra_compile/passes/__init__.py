"""The hylra graph passes, one phase per file, run by :func:`run_passes` (``manager.py``) in this order:

1. :func:`find_attention` -- every attention call as an immutable :class:`AttentionMatch` (layer order).
2. :func:`decide` -- one :class:`Decision` per match from the policy (by layer index) and what the graph allows.
3. :func:`block_masks` -- per distinct mask of a rewritten site one stored copy (``hylra::shared_mask``), and for
   a prefill site its block structure (``hylra::mask_blocks``).
4. :func:`rewrite` -- producers, consumers and the sites a policy leaves dense become ``hylra::topk_attention``
   / ``hylra::sparse_attention`` / ``hylra::attention``.

Each phase is a function of the previous phases' outputs; the report is built from matches and decisions.
"""

from .block_masks import block_masks
from .decide import DENSE_CAUSES, Decision, decide
from .find_attention import AttentionMatch, find_attention
from .manager import run_passes
from .rewrite import rewrite

__all__ = [
    "DENSE_CAUSES",
    "AttentionMatch",
    "Decision",
    "block_masks",
    "decide",
    "find_attention",
    "rewrite",
    "run_passes",
]
