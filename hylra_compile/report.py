"""What the backend found and did, per compiled graph: one :class:`AttentionSite` per attention call."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch.fx

SiteKind = Literal["sdpa", "eager"]
SiteAction = Literal["producer", "consumer", "dense"]


@dataclasses.dataclass(eq=False)
class AttentionSite:
    """One attention call in the graph.

    The public fields (``layer``, ``kind``, ``action``, ``source``, ``reason``) form the report; the rest is the
    match the rewrite needs. ``problem`` is set when the site is attention but cannot be rewritten (it then stays
    dense with that reason whatever the policy says).
    """

    layer: int
    kind: SiteKind
    action: SiteAction = "dense"
    source: int | None = None
    reason: str | None = None
    # -- match ------------------------------------------------------------------------------------------------
    node: torch.fx.Node | None = dataclasses.field(default=None, repr=False)  # the node producing the output
    q: torch.fx.Node | None = dataclasses.field(default=None, repr=False)
    k: torch.fx.Node | None = dataclasses.field(default=None, repr=False)  # native KV heads (repeat_kv looked through)
    v: torch.fx.Node | None = dataclasses.field(default=None, repr=False)
    mask: torch.fx.Node | None = dataclasses.field(default=None, repr=False)
    is_causal: bool = False
    scale: float | None = None
    internal: list[torch.fx.Node] = dataclasses.field(default_factory=list, repr=False)  # erased once unused
    problem: str | None = None
    module_layer: int | None = dataclasses.field(default=None, repr=False)  # from nn_module_stack
    block_idx: torch.fx.Node | None = dataclasses.field(default=None, repr=False)  # set on rewritten producers


@dataclasses.dataclass
class GraphReport:
    """The sites of one compiled graph, in layer order."""

    name: str
    sites: list[AttentionSite] = dataclasses.field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"producer": 0, "consumer": 0, "dense": 0}
        for site in self.sites:
            counts[site.action] += 1
        return counts

    def edges(self) -> list[tuple[int, int]]:
        """(producer layer, consumer layer) for every rewritten consumer."""
        return [(site.source, site.layer) for site in self.sites if site.action == "consumer"]

    def __str__(self) -> str:
        header = f"hylra report for {self.name}: "
        if not self.sites:
            return header + "no attention found; graph left unchanged"
        counts = self.counts()
        header += ", ".join(f"{n} {action}" for action, n in counts.items())
        rows = [("layer", "kind", "action", "source", "reason")]
        rows += [
            (str(s.layer), s.kind, s.action, "" if s.source is None else str(s.source), s.reason or "")
            for s in self.sites
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [header]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        lines = [f"# {self.name}", "", str(self).splitlines()[0], ""]
        if self.sites:
            lines += ["| layer | kind | action | source | reason |", "|---|---|---|---|---|"]
            for s in self.sites:
                source = "" if s.source is None else s.source
                lines.append(f"| {s.layer} | {s.kind} | {s.action} | {source} | {s.reason or ''} |")
        return "\n".join(lines) + "\n"
