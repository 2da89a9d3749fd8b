"""The pass manager: runs the phases in their fixed order, feeding each the previous one's output, and writes a
numbered dump of every phase's result (to the dump folder and to ``TORCH_LOGS`` / ``TORCH_TRACE`` through
torch's structured logging, so ``tlparse`` shows them) and counts what matched (``counters["hylra"]``).

0. input graph                                                       ``00-input.py``
1. :func:`find_attention` (gm, model's modules) -> matches           ``01-find_attention.md``
2. :func:`decide` (matches, policy, model, top_k) -> decisions        ``02-decide.md``
3. :func:`block_masks` (gm, matches, decisions) -> shared masks      ``03-block_masks.md``
4. :func:`rewrite` (gm, matches, decisions, shared masks) -> gm       ``04-rewrite.py``
   the report (matches + decisions)                                  ``report.md``, ``edges.dot``
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import networkx as nx
import torch.fx
from torch._dynamo.utils import counters
from torch._logging import trace_structured

from ..layers import TracedModel
from ..options import HylraOptions
from ..report import GraphReport
from .block_masks import block_masks
from .decide import decide
from .find_attention import LAYER_BY_NAME, find_attention
from .patterns import example_value
from .rewrite import rewrite

log = logging.getLogger(__name__)


def run_passes(gm: torch.fx.GraphModule, options: HylraOptions, name: str, dump_dir: Path | None,
               model: TracedModel = TracedModel()) -> GraphReport:
    """Rewrite ``gm`` in place by ``options``; returns its report. ``dump_dir``: this graph's dump folder.
    ``model``: what the model the graph belongs to says of itself (its layer count, its sliding-window layers, its
    non-causal modules, the layers of its modules by name)."""
    dump = _Dump(name, dump_dir)
    dump("00-input.py", lambda: gm.print_readable(print_output=False))
    matches = find_attention(gm, model)
    dump("01-find_attention.md", lambda: _table(
        ("layer", "kind", "output", "q", "k", "v", "mask", "is_causal", "scale", "problem / notes"),
        [(m.layer, m.kind, m.output.name, *(_shape(m, o) for o in ("q", "k", "v", "mask")), m.is_causal, m.scale,
          "; ".join(([m.problem] if m.problem else []) + list(m.notes))) for m in matches]))
    decisions = decide(matches, options.policy, model, options.top_k)
    dump("02-decide.md", lambda: _table(
        ("layer", "action", "op", "source", "dense cause", "reason"),
        [(m.layer, d.action, d.op, d.source, d.dense_cause, d.reason) for m, d in zip(matches, decisions)]))
    masks = block_masks(gm, matches, decisions, options)
    dump("03-block_masks.md", lambda: _table(
        ("mask", "stored copy", "block size", "block mask", "shape"), _mask_rows(masks)))
    outputs = rewrite(gm, matches, decisions, masks, options)
    dump("04-rewrite.py", lambda: gm.print_readable(print_output=False))
    report = GraphReport.from_phases(name, matches, decisions, options.selection)
    dump("report.md", report.to_markdown)
    if dump_dir is not None:
        nx.nx_pydot.write_dot(report.edge_graph(), dump_dir / "edges.dot")
    _count(matches, decisions, masks, outputs)
    warn_if_nothing_sparse(name, matches, decisions, options)
    if any(LAYER_BY_NAME in m.notes for m in matches):
        # One text for every graph, so Python shows it once however many layers break.
        warnings.warn("hylra: a graph break inside the layer loop compiles the layers one by one, so they run dense "
                      "(no consumer has its producer in its graph); their numbers in the reports come from the "
                      "modules' names in the model, and a layer's graph that Dynamo reuses for other layers reports "
                      "the first. Remove the break (TORCH_LOGS=graph_breaks shows where Dynamo breaks)",
                      UserWarning, stacklevel=2)
    return report


def _mask_rows(masks) -> list[tuple]:
    """A row per block mask of each stored mask (one without, where the kernels take none)."""
    rows = []
    for mask, shared in masks.items():
        rows += ([(mask.name, shared.mask.name, size, node.name, _shape_of(node))
                  for size, node in shared.block_masks.items()] or [(mask.name, shared.mask.name, "", "", "")])
    return rows


def _count(matches, decisions, masks, outputs) -> None:
    hylra = counters["hylra"]
    for match, decision in zip(matches, decisions):
        hylra[f"{match.kind}_{'unmatched' if match.problem else 'matched'}"] += 1
        hylra[f"{decision.action}_sites"] += 1
        if decision.dense_cause is not None:
            hylra[f"dense.{decision.dense_cause}"] += 1
        if decision.heads is not None:
            hylra["head_mapped_consumers"] += 1
    counts = (("shared_masks", len(masks)), ("block_masks", sum(len(s.block_masks) for s in masks.values())),
              ("rewritten", len(outputs)))
    for key, count in counts:
        if count:
            hylra[key] += count


class _Dump:
    """Writes ``<dump_dir>/<file>`` when a folder is set and emits the same text as a structured-trace artifact
    ``hylra_<graph>_<file>`` when tracing is on; the text is built only if someone reads it."""

    def __init__(self, graph_name: str, dump_dir: Path | None):
        self.graph_name, self.dump_dir = graph_name, dump_dir
        if dump_dir is not None:
            dump_dir.mkdir(parents=True, exist_ok=True)

    def __call__(self, file: str, text_fn) -> None:
        log.debug("hylra: %s of %s", file, self.graph_name)
        if self.dump_dir is not None:
            (self.dump_dir / file).write_text(text_fn())
        trace_structured(
            "artifact",
            metadata_fn=lambda: {"name": f"hylra_{self.graph_name}_{file}", "encoding": "string"},
            payload_fn=text_fn,
        )


def _shape(match, operand: str) -> str:
    node = getattr(match, operand)
    return "" if node is None else _shape_of(node)


def _shape_of(node) -> str:
    return "x".join(str(size) for size in example_value(node).shape)


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Why a whole graph may end up with no sparse site although a policy was given, for causes the user can fix or
# should know of: (the text of a site's reason that names it, what to do).
_EXPLAINED_CAUSES = (
    ("inputs require grad", "run the model under torch.no_grad() (or torch.inference_mode()) and in model.eval()"),
    ("not a compile-time constant", "compile with static shapes (no dynamic=True): the attention scale became a "
                                    "symbolic value"),
    ("non-causal attention", "the policy applies to causal (decoder) attention only; a bidirectional encoder runs "
                             "dense"),
    ("sliding window of", "sliding-window layers no longer than top_k are left as written, so they cannot produce "
                          "for other layers: give the policy the global layers (Policy.every(n, L, layers=[...]))"),
)


def warn_if_nothing_sparse(name: str, matches, decisions, options: HylraOptions) -> None:
    """Warn (once per cause and graph) when a policy was given but no site of the graph attends sparsely for a
    reason the user can fix or should know of: the inputs require grad, a symbolic scale (``dynamic=True``),
    non-causal attention, sliding-window producers left as written, a policy with no consumer, a ``top_k`` that
    keeps every block of the traced key length, or a ``min_seq_len`` above it."""
    if options.policy is None or not matches:
        return
    fixes = []
    if not any(d.action == "consumer" for d in decisions):
        fixes += [f"{cause}: {fix}" for cause, fix in _EXPLAINED_CAUSES
                  if any(d.reason and cause in d.reason for d in decisions)]
        if "consumer" not in options.policy.modes:
            fixes.append("the policy has no consumer layer: give some layers mode 'consumer' (e.g. Policy.every(4, "
                         "n))")
    lengths = [example_value(m.k).shape[2] for m, d in zip(matches, decisions) if d.action == "consumer"]
    if lengths and all(isinstance(n, int) and options.n_select * options.block_size >= n for n in lengths):
        fixes.append(f"top_k={options.top_k} keeps every block of the traced keys ({max(lengths)}), so consumers "
                     "attend densely: a smaller top_k, or longer inputs, make them sparse")
    elif lengths and all(isinstance(n, int) and n < options.min_seq_len for n in lengths):
        fixes.append(f"every query has fewer than min_seq_len={options.min_seq_len} keys (the traced keys: "
                     f"{max(lengths)}), so consumers attend densely: a smaller min_seq_len, or longer inputs, make "
                     "them sparse")
    for fix in fixes:
        warnings.warn(f"hylra: no attention site of {name} runs sparse; {fix}", UserWarning, stacklevel=2)
