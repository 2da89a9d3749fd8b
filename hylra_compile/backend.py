"""The ``hylra`` torch.compile backend: run the passes on each Dynamo graph, then hand it to Inductor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import torch.fx
from torch._guards import CompileContext

from .layers import traced_model
from .lowering.inductor import compile_with_inductor
from .options import HylraOptions
from .passes import run_passes
from .report import GraphReport


class HylraBackend:
    """``torch.compile(model, backend=HylraBackend(**options))``; keeps what it compiled for inspection.

    ``name``: how its graphs are named (``<name>_<frame>_<recompile>``), in reports and dump folders.
    ``graphs``: the rewritten ``GraphModule`` of each compiled graph, in compile order.
    ``reports``: one :class:`GraphReport` per compiled graph, same order (also in :func:`reports`).

    Called with ``mode="reduce-overhead"`` (what ``torch.compile(..., mode=...)`` passes on, e.g. from Hugging
    Face's default ``CompileConfig(backend=HylraBackend(...))``) it replays graphs as CUDA graphs, as
    ``cudagraphs=True`` does. A copy of the backend is the backend itself (``CompileConfig`` deep-copies its
    fields), so its graphs and reports stay where the caller looks.
    """

    def __init__(self, *, name: str = "graph", **options: Any):
        self.name = name
        self.options = HylraOptions.parse(options)
        self.graphs: list[torch.fx.GraphModule] = []
        self.reports: list[GraphReport] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list, *, mode: str | None = None) -> Callable:
        cudagraphs = _cudagraphs_of_mode(mode) or self.options.cudagraphs  # the mode checked even when it adds nothing
        if cudagraphs and not self.options.inductor:
            raise ValueError(f"mode={mode!r} replays graphs as CUDA graphs, which needs the hylra option inductor=True")
        graph_name = _graph_name(self.name, len(self.graphs))
        dump_dir = Path(self.options.dump_dir) / graph_name if self.options.dump_dir else None
        report = run_passes(gm, self.options, graph_name, dump_dir, traced_model(gm))
        self.reports.append(report)
        _all_reports.append(report)
        self.graphs.append(gm)
        if self.options.inductor:
            return compile_with_inductor(gm, example_inputs, cudagraphs)
        return gm.forward

    def __deepcopy__(self, memo: dict) -> "HylraBackend":
        return self


_MODES = {None: False, "default": False, "reduce-overhead": True}


def _cudagraphs_of_mode(mode: str | None) -> bool:
    if mode not in _MODES:
        raise ValueError(
            f"the hylra backend takes mode None, 'default' or 'reduce-overhead' (CUDA graphs), got {mode!r}; "
            "Inductor's autotuning modes do not apply to the hylra ops"
        )
    return _MODES[mode]


def _graph_name(name: str, index: int) -> str:
    """``<name>_<frame>_<recompile>`` from Dynamo's compile id, so graphs of one process never share a dump
    folder."""
    compile_id = CompileContext.current_compile_id()
    if compile_id is None:
        return f"{name}_{index}"
    return f"{name}_" + str(compile_id).replace("/", "_").replace(" ", "")


# backend="hylra": the backend of each torch.compile call, keyed by the options mapping that call holds (torch
# passes the same object for every graph of the call) and the values it held then. The reports of every backend,
# in compile order.
_string_backends: list[tuple[Mapping[str, Any] | None, dict[str, Any], HylraBackend]] = []
_all_reports: list[GraphReport] = []


def hylra_backend(
    gm: torch.fx.GraphModule, example_inputs: list, *, options: Mapping[str, Any] | None = None, mode: str | None = None
) -> Callable:
    """Entry point behind ``backend="hylra"``: ``torch.compile(model, backend="hylra", options={...})``. The
    options are parsed once per ``torch.compile`` call (a policy file is read once); :func:`reports` returns
    what every graph became. ``mode="reduce-overhead"`` (torch.compile takes a mode only without options) turns
    on CUDA graphs."""
    values = dict(options or {})
    # The same mapping with the same values: a mapping changed since (opts["policy"] = ...) is parsed anew.
    backend = next((held for key, held_values, held in _string_backends if key is options and held_values == values),
                   None)
    if backend is None:
        backend = HylraBackend(**values)
        _string_backends.append((options, values, backend))
    return backend(gm, example_inputs, mode=mode)


def reports() -> list[GraphReport]:
    """The report of every graph the hylra backend compiled in this process, in compile order, whichever way it
    was called (``backend="hylra"``, a :class:`HylraBackend`, :func:`compile_for_generate`)."""
    return list(_all_reports)


def reset_reports() -> None:
    """Forget every report and the string backend's compiled graphs (the next ``torch.compile`` with
    ``backend="hylra"`` parses its options again)."""
    _string_backends.clear()
    _all_reports.clear()
