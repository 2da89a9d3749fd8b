"""Figures of a policy and its profile (matplotlib, imported only when a figure is drawn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .policy import Policy

MODE_COLORS = {"full": "#9e9e9e", "producer": "#1f77b4", "consumer": "#ff7f0e"}
# What each mode does, in the project's one vocabulary (legends, tables).
MODE_LABELS = {"full": "dense (full attention)", "producer": "producer (full attention, selects blocks)",
               "consumer": "consumer (sparse: its producer's blocks)"}


def _settings(provenance: dict) -> str:
    """``model, top_k …, block …, calibration …`` from a policy's provenance (what is known of it)."""
    parts = [provenance.get("model")]
    if provenance.get("top_k") is not None:
        parts.append(f"top_k {provenance['top_k']}, block {provenance.get('block_size')}")
    if provenance.get("calibration"):
        parts.append(f"calibrated on {provenance['calibration']}")
    return ", ".join(str(p) for p in parts if p)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("drawing figures needs matplotlib: pip install 'hylra_compile[plot]'") from None

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_similarity(similarity: np.ndarray, policy: Policy, path: str | Path) -> None:
    """Heatmap of similarity[i, j] (row: producer i, column: consumer j, upper triangle only) with each chosen
    reuse edge (source(j), j) outlined, written to ``path``."""
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    similarity = np.asarray(similarity, dtype=np.float64)
    num_layers = similarity.shape[0]
    if policy.num_layers != num_layers:
        raise ValueError(f"the policy has {policy.num_layers} layers but the similarity matrix {num_layers}")
    shown = np.ma.masked_where(~np.triu(np.ones_like(similarity, dtype=bool), k=1), similarity)
    size = 3 + 0.25 * num_layers
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shown, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper")
    fig.colorbar(image, ax=ax, label="similarity |S_i ∩ S_j| / |S_j|\n(S_i: the KV blocks layer i's own top-k selects)")
    for j, source in enumerate(policy.sources):
        if source is not None:
            ax.add_patch(Rectangle((j - 0.5, source - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    ax.set_xlabel("consumer layer j")
    ax.set_ylabel("candidate producer layer i")
    theta = policy.provenance.get("theta")
    settings = _settings(policy.provenance)
    dense = [layer for layer, mode in enumerate(policy.modes) if mode == "full"]
    ax.set_title("how well layer i's blocks serve layer j; red: the chosen reuse"
                 + (f" (θ = {theta:g})" if theta is not None else "")
                 + (f"; dense layers (no reuse): {', '.join(map(str, dense))}" if dense else "")
                 + (f"\n{settings}" if settings else ""), fontsize=9)
    step = max(1, num_layers // 16)
    ax.set_xticks(range(0, num_layers, step))
    ax.set_yticks(range(0, num_layers, step))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_policy(policy: Policy, path: str | Path) -> None:
    """One strip of layers coloured by mode (full / producer / consumer), each consumer labelled with its source,
    written to ``path``."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    num_layers = policy.num_layers
    fig, ax = plt.subplots(figsize=(max(4.0, 0.3 * num_layers + 1), 1.2))
    for layer, (mode, source) in enumerate(zip(policy.modes, policy.sources)):
        ax.bar(layer, 1, width=1.0, color=MODE_COLORS[mode], edgecolor="white")
        if source is not None and num_layers <= 64:
            ax.text(layer, 0.5, str(source), ha="center", va="center", fontsize=7, color="black")
    ax.set_xlim(-0.5, num_layers - 0.5)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel("layer (consumers labelled with their producer)")
    step = max(1, num_layers // 32)
    ax.set_xticks(range(0, num_layers, step))
    ax.legend(handles=[Patch(color=color, label=MODE_LABELS[mode]) for mode, color in MODE_COLORS.items()],
              loc="lower center", bbox_to_anchor=(0.5, 1.02), ncol=3, frameon=False, fontsize=7)
    full = sum(mode != "consumer" for mode in policy.modes)
    settings = _settings(policy.provenance)
    ax.set_title(f"{full} of {num_layers} full-attention layers" + (f"; {settings}" if settings else ""),
                 fontsize=8, pad=28)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


# The selection's colour in accuracy figures (dense is black).
SELECTION_COLORS = {"reuse": "#1f77b4", "refine": "#2ca02c", "oracle": "#7f7f7f"}
SETTING_TERMS = ("every:n = Jump-n (layers 0, n, 2n, … produce); budget:n = n full-attention layers chosen by the "
                 "profile (budget:nr: a profile of what refine keeps); refine = consumers keep the top_k of "
                 "4×top_k producer blocks by their own attention; "
                 "oracle = each consumer's own top-k (a measurement)")


def plot_evaluation(evaluation, path) -> None:
    """Retrieval accuracy (with Wilson 95% intervals) and KL(dense ‖ setting) against the number of full-attention
    layers, one labelled point per setting (dense black, the others coloured by selection), written to ``path`` (a
    file name or a binary file). Settings at one x are spread a little apart and their labels stacked in two
    columns; a setting sparse in decode only has no KL point (the text windows are prefills, which it leaves
    dense); a KL axis whose values are all rounding noise (< 1e-6) is drawn from 0 to 1e-3, not magnified."""
    from matplotlib.ticker import MaxNLocator

    from .evaluate import wilson_interval

    plt = _pyplot()
    results = evaluation.results
    panels = []
    if any(r.accuracy()[1] for r in results):
        panels.append(("retrieval exact match (%)",
                       [(100 * r.accuracy()[0] / max(r.accuracy()[1], 1),
                         [100 * end for end in wilson_interval(*r.accuracy())]) for r in results]))
    if any(r.positions for r in results):
        panels.append(("KL(dense ‖ setting), nats/token",
                       [(r.mean_kl if "prefill" in r.phases else None, None) for r in results]))
    if not panels:
        raise ValueError("the evaluation has neither retrieval prompts nor text windows: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    m = evaluation.metadata
    for ax, (label, values) in zip(axes[0], panels):
        shown = [i for i, (value, _) in enumerate(values) if value is not None]
        place = {}  # index -> (x offset, label column, label row)
        for x in {results[i].full_layers for i in shown}:
            ranked = sorted((i for i in shown if results[i].full_layers == x), key=lambda i: -values[i][0])
            place.update({i: (0.3 * (rank - (len(ranked) - 1) / 2), rank % 2, rank // 2)
                          for rank, i in enumerate(ranked)})
        for index in shown:
            result, (value, interval) = results[index], values[index]
            colour = "black" if result.name == "dense" else SELECTION_COLORS.get(
                result.options.get("selection", m.get("selection", "reuse")), "#d62728")
            dx, column, row = place[index]
            x = result.full_layers + dx
            if interval is not None:
                ax.errorbar(x, value, yerr=[[value - interval[0]], [interval[1] - value]], fmt="o", color=colour,
                            capsize=3, alpha=0.8)
            else:
                ax.scatter(x, value, color=colour)
            ax.annotate(result.name, (x, value), textcoords="offset points", xytext=(6 + 75 * column, 2 - 9 * row),
                        fontsize=7, arrowprops=dict(arrowstyle="-", color="#bbbbbb", lw=0.5) if column else None)
        if label.startswith("KL") and max(values[i][0] for i in shown) < 1e-6:
            ax.set_ylim(-5e-5, 1e-3)
        if label.startswith("retrieval"):
            ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("full-attention layers (dense + producer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for selection, colour in SELECTION_COLORS.items():
        axes[0][0].scatter([], [], color=colour, label=f"selection {selection}")
    axes[0][0].legend(fontsize=7, loc="upper right")
    dense = results[0]
    lengths = ", ".join(str(n) for n in m.get("lengths") or [m.get("seq_len")])
    fig.suptitle(f"{m['model']}, {lengths} tokens: top_k {m['top_k']}, block {m['block_size']}; "
                 f"{dense.accuracy()[1]} prompts, {dense.positions} scored text positions ({m['device']}, {m['date']})",
                 fontsize=9)
    fig.text(0.5, 0.01, SETTING_TERMS, ha="center", fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
