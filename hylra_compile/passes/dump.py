"""Pass 4: write the rewritten graph, the report and the producer -> consumer edge graph to the dump folder."""

from __future__ import annotations

import networkx as nx
import torch.fx

from ..report import GraphReport
from .base import HylraPass, PassContext

_COLORS = {"producer": "lightblue", "consumer": "palegreen", "dense": "lightgray"}


def edge_graph(report: GraphReport) -> nx.DiGraph:
    """Sites as nodes (by action), block_idx edges from each producer to its consumers."""
    graph = nx.DiGraph(name=report.name)
    for site in report.sites:
        label = f"layer {site.layer}\\n{site.kind}: {site.action}"
        graph.add_node(f"layer{site.layer}", label=label, style="filled", fillcolor=_COLORS[site.action])
    for producer, consumer in report.edges():
        graph.add_edge(f"layer{producer}", f"layer{consumer}", label="block_idx")
    return graph


class DumpPass(HylraPass):
    """``after.py``, ``report.md`` and ``edges.dot`` (``before.py`` is written by the manager before pass 1)."""

    name = "dump"

    def __call__(self, gm: torch.fx.GraphModule, ctx: PassContext) -> None:
        if ctx.dump_dir is None:
            return
        (ctx.dump_dir / "after.py").write_text(gm.print_readable(print_output=False))
        (ctx.dump_dir / "report.md").write_text(ctx.report.to_markdown())
        nx.nx_pydot.write_dot(edge_graph(ctx.report), ctx.dump_dir / "edges.dot")
