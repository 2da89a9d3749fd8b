"""What the backend found and did, per compiled graph, built from the matches and decisions of the passes."""

from __future__ import annotations

import dataclasses

import networkx as nx

_COLORS = {"producer": "lightblue", "consumer": "palegreen", "dense": "lightgray"}


@dataclasses.dataclass(frozen=True)
class SiteReport:
    """One attention call of a graph: its layer (None when it has none), kind (``sdpa`` / ``eager``), action
    (``producer`` / ``consumer`` / ``dense``), the hylra op now computing it (None: left as written), the producer
    layer of a consumer and its head map (None: equal heads), why it is dense, and notes."""

    layer: int | None
    kind: str
    action: str
    op: str | None = None
    source: int | None = None
    reason: str | None = None
    notes: tuple[str, ...] = ()
    heads: tuple[int, ...] | None = None

    @property
    def source_text(self) -> str:
        """The producer layer, with the head map when there is one: ``5 heads [1, 0]``."""
        if self.source is None:
            return ""
        return str(self.source) + ("" if self.heads is None else f" heads {list(self.heads)}")


@dataclasses.dataclass(frozen=True)
class GraphReport:
    """The sites of one compiled graph, in layer order."""

    name: str
    sites: tuple[SiteReport, ...] = ()
    selection: str = "reuse"  # how the consumers choose their blocks (HylraOptions.selection)

    @classmethod
    def from_phases(cls, name: str, matches, decisions, selection: str = "reuse") -> "GraphReport":
        """The report of ``find_attention``'s matches and ``decide``'s decisions (same order)."""
        return cls(name, tuple(
            SiteReport(m.layer, m.kind, d.action, d.op, d.source, d.reason, m.notes, d.heads)
            for m, d in zip(matches, decisions)
        ), selection)

    def counts(self) -> dict[str, int]:
        counts = {"producer": 0, "consumer": 0, "dense": 0}
        for site in self.sites:
            counts[site.action] += 1
        return counts

    def edges(self) -> list[tuple[int, int]]:
        """(producer layer, consumer layer) for every rewritten consumer."""
        return [(site.source, site.layer) for site in self.sites if site.action == "consumer"]

    def edge_graph(self) -> nx.DiGraph:
        """Sites as nodes (coloured by action), ``block_idx`` edges from each producer to its consumers."""
        graph = nx.DiGraph(name=self.name)
        for site in self.sites:
            label = f"layer {site.layer}\\n{site.kind}: {site.action}"
            graph.add_node(f"layer{site.layer}", label=label, style="filled", fillcolor=_COLORS[site.action])
        for site in self.sites:
            if site.action == "consumer":
                label = "block_idx" + ("" if site.heads is None else f" heads {list(site.heads)}")
                graph.add_edge(f"layer{site.source}", f"layer{site.layer}", label=label)
        return graph

    def _rows(self) -> list[tuple[str, ...]]:
        return [
            ("?" if s.layer is None else str(s.layer), s.kind, s.action, s.op or "", s.source_text,
             "; ".join(([s.reason] if s.reason else []) + list(s.notes)))
            for s in self.sites
        ]

    def __str__(self) -> str:
        header = f"hylra report for {self.name}: "
        if not self.sites:
            return header + "no attention found; graph left unchanged"
        counts = self.counts()
        header += ", ".join(f"{n} {action}" for action, n in counts.items())
        if counts["consumer"] and self.selection != "reuse":
            header += f" (consumers select by {self.selection})"
        rows = [("layer", "kind", "action", "op", "source", "reason"), *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [header]
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[5])
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        lines = [f"# {self.name}", "", str(self).splitlines()[0], ""]
        if self.sites:
            lines += ["| layer | kind | action | op | source | reason |", "|---|---|---|---|---|---|"]
            lines += [f"| {' | '.join(row)} |" for row in self._rows()]
        return "\n".join(lines) + "\n"
