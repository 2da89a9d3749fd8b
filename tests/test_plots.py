"""hylra_compile.plots: figures that name what they show and do not magnify rounding noise."""

from __future__ import annotations

import io

import numpy as np
import pytest

from hylra_compile import Policy
from hylra_compile.evaluate import Evaluation, Result
from hylra_compile.plots import MODE_LABELS, plot_evaluation, plot_policy, plot_similarity

pytest.importorskip("matplotlib")
PNG_MAGIC = b"\x89PNG"


def evaluation(kl_of_settings: float) -> Evaluation:
    results = [Result("dense", 4), Result("every:2", 2), Result("budget:2", 2)]
    for result, kl, hits in zip(results, (0.0, kl_of_settings, kl_of_settings), (3, 2, 2)):
        result.positions, result.kl, result.nll = 100, kl * 100, 100.0
        result.correct = {f"passkey-64-d0.{i}-s{i}": i < hits for i in range(4)}
    metadata = {"model": "tiny", "top_k": 24, "block_size": 8, "selection": "reuse", "device": "CPU", "date": "today"}
    return Evaluation(results, metadata)


def drawn_axes(monkeypatch, draw):
    """The matplotlib figure ``draw`` makes (closing it is skipped so the test can read it)."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    draw()
    return figures[-1]


def test_evaluation_figure_titles_intervals_and_noise_axis(monkeypatch):
    figure = drawn_axes(monkeypatch, lambda: plot_evaluation(evaluation(1e-9), io.BytesIO()))
    title = figure._suptitle.get_text()
    assert "tiny" in title and "top_k 24" in title and "4 prompts" in title and "100 scored" in title
    retrieval, kl = figure.axes
    assert kl.get_ylim()[1] == pytest.approx(1e-3)  # a KL of 1e-9 is not drawn as a difference
    labels = [t for t in retrieval.texts if t.get_text() in ("every:2", "budget:2")]
    assert len({t.xy[1] for t in labels}) == 1 and len({t.xy[0] for t in labels}) == 2  # one value, spread apart
    assert len({t.xyann for t in labels}) == 2  # labels in two columns, not over each other


def test_evaluation_figure_is_png_bytes():
    buffer = io.BytesIO()
    plot_evaluation(evaluation(0.05), buffer)
    assert buffer.getvalue().startswith(PNG_MAGIC)


def test_policy_and_similarity_figures_explain_their_terms(monkeypatch, tmp_path):
    policy = Policy.every(2, 4)
    policy.provenance.update(model="tiny", top_k=24, block_size=8, calibration="2 windows")
    figure = drawn_axes(monkeypatch, lambda: plot_policy(policy, tmp_path / "p.png"))
    legend = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert legend == [MODE_LABELS[m] for m in ("full", "producer", "consumer")]
    assert "2 of 4 full-attention layers" in figure.axes[0].get_title() and "tiny" in figure.axes[0].get_title()
    figure = drawn_axes(monkeypatch, lambda: plot_similarity(np.eye(4), policy, tmp_path / "s.png"))
    colorbar_label = figure.axes[1].get_ylabel()
    assert "S_i: the KV blocks layer i's own top-k selects" in colorbar_label
    assert "top_k 24" in figure.axes[0].get_title()
