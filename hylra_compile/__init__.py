"""hylra_compile: HyLRA (Hybrid Layer Reuse Attention) as a torch.compile backend.

``torch.compile(model, backend="hylra", options={"policy": Policy.every(4, num_layers=L)})`` rewrites every
attention site of the Dynamo graph by policy into ``hylra::topk_attention`` producers and
``hylra::sparse_attention`` consumers linked by graph edges, then hands the graph to Inductor.
"""

from . import lowering  # noqa: F401  (registers torch.ops.hylra.*)
from .backend import HylraBackend, reports, reset_reports
from .evaluate import Evaluation, evaluate
from .generate import GenerateCompilation, compile_for_generate
from .optimizer import allocate_top_k, optimize
from .options import HylraOptions
from .policy import Policy
from .profiler import Profile, profile
from .report import GraphReport, SiteReport

__all__ = [
    "Evaluation",
    "GenerateCompilation",
    "GraphReport",
    "HylraBackend",
    "HylraOptions",
    "Policy",
    "Profile",
    "SiteReport",
    "allocate_top_k",
    "compile_for_generate",
    "evaluate",
    "optimize",
    "profile",
    "reports",
    "reset_reports",
]
