"""A small pass base class and the manager that runs the passes in their fixed order."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch.fx

from ..options import HylraOptions
from ..report import GraphReport

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PassContext:
    """State shared by the passes of one compiled graph."""

    options: HylraOptions
    report: GraphReport
    dump_dir: Path | None  # this graph's dump folder, or None


class HylraPass:
    """One graph transformation or analysis. Subclasses set ``name`` and implement ``__call__``."""

    name: str = ""

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        raise NotImplementedError


class PassManager:
    """Runs passes in the order given; with a dump folder, writes ``before.py`` first."""

    def __init__(self, passes: list[HylraPass]):
        self.passes = passes

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        if ctx.dump_dir is not None:
            ctx.dump_dir.mkdir(parents=True, exist_ok=True)
            (ctx.dump_dir / "before.py").write_text(gm.print_readable(print_output=False))
        for graph_pass in self.passes:
            log.debug("hylra: running pass %s on %s", graph_pass.name, ctx.report.name)
            graph_pass(gm, ctx)
