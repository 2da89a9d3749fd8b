"""The ``hylra`` torch.compile backend: run the passes on each Dynamo graph, then hand it to Inductor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch.fx
from torch._guards import CompileContext

from .lowering.inductor import compile_with_inductor
from .options import HylraOptions
from .passes import run_passes
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
        dump_dir = Path(self.options.dump_dir) / name if self.options.dump_dir else None
        self.reports.append(run_passes(gm, self.options, name, dump_dir))
        self.graphs.append(gm)
        if self.options.inductor:
            return compile_with_inductor(gm, example_inputs, self.options.cudagraphs)
        return gm.forward


def _graph_name(index: int) -> str:
    """``graph_<frame>_<recompile>`` from Dynamo's compile id, so graphs of one process never share a dump folder."""
    compile_id = CompileContext.current_compile_id()
    if compile_id is None:
        return f"graph_{index}"
    return "graph_" + str(compile_id).replace("/", "_").replace(" ", "")


# backend="hylra": the backend of each torch.compile call, keyed by the options mapping that call holds (torch
# passes the same object for every graph of the call), and the reports of all of them in compile order.
_string_backends: list[tuple[Mapping[str, Any] | None, HylraBackend]] = []
_string_reports: list[GraphReport] = []


def hylra_backend(
    gm: torch.fx.GraphModule, example_inputs: list, *, options: Mapping[str, Any] | None = None, mode: str | None = None
) -> Callable:
    """Entry point behind ``backend="hylra"``: ``torch.compile(model, backend="hylra", options={...})``. The
    options are parsed once per ``torch.compile`` call (a policy file is read once); :func:`reports` returns
    what every graph became."""
    if mode not in (None, "default"):
        raise ValueError(
            f"the hylra backend takes no mode (got {mode!r}): torch.compile accepts either mode or options. Pass "
            'settings through options={...}, e.g. options={"policy": ..., "cudagraphs": True} for what '
            '"reduce-overhead" does'
        )
    backend = next((held for key, held in _string_backends if key is options), None)
    if backend is None:
        backend = HylraBackend(**(options or {}))
        _string_backends.append((options, backend))
    compiled = backend(gm, example_inputs)
    _string_reports.append(backend.reports[-1])
    return compiled


def reports() -> list[GraphReport]:
    """The report of every graph compiled with ``backend="hylra"`` in this process, in compile order (a
    :class:`HylraBackend` instance keeps its own in ``.reports``)."""
    return list(_string_reports)


def reset_reports() -> None:
    """Forget the string backend's compiled graphs and reports (the next ``torch.compile`` parses its options
    again)."""
    _string_backends.clear()
    _string_reports.clear()
