"""The ``hylra`` torch.compile backend: run the passes on each Dynamo graph, then hand it to Inductor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch.fx
from torch._guards import CompileContext

from .lowering.inductor import compile_with_inductor
from .options import HylraOptions
from .passes import PassContext, hylra_pass_manager
from .report import GraphReport


class HylraBackend:
    """``torch.compile(model, backend=HylraBackend(**options))``; keeps what it compiled for inspection.

    ``graphs``: the rewritten ``GraphModule`` of each compiled graph, in compile order.
    ``reports``: one :class:`GraphReport` per compiled graph, same order.
    """

    def __init__(self, **options: Any):
        self.options = HylraOptions.parse(options)
        self.graphs: list[torch.fx.GraphModule] = []
        self.reports: list[GraphReport] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        name = _graph_name(len(self.graphs))
        report = GraphReport(name=name)
        dump_dir = Path(self.options.dump_dir) / name if self.options.dump_dir else None
        hylra_pass_manager()(gm, PassContext(options=self.options, report=report, dump_dir=dump_dir))
        self.graphs.append(gm)
        self.reports.append(report)
        if self.options.inductor:
            return compile_with_inductor(gm, example_inputs, self.options.cudagraphs)
        return gm.forward


def _graph_name(index: int) -> str:
    """``graph_<frame>_<recompile>`` from Dynamo's compile id, so graphs of one process never share a dump folder."""
    compile_id = CompileContext.current_compile_id()
    if compile_id is None:
        return f"graph_{index}"
    return "graph_" + str(compile_id).replace("/", "_").replace(" ", "")


def hylra_backend(
    gm: torch.fx.GraphModule, example_inputs: list, *, options: Mapping[str, Any] | None = None, mode: str | None = None
) -> Callable:
    """Entry point behind ``backend="hylra"``: ``torch.compile(model, backend="hylra", options={...})``."""
    if mode not in (None, "default"):
        raise ValueError(f"the hylra backend takes no mode (got {mode!r}); pass settings through options={{...}}")
    return HylraBackend(**(options or {}))(gm, example_inputs)
