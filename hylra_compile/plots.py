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
    ax.set_ylabel("producer layer i")
    theta = policy.provenance.get("theta")
    settings = _settings(policy.provenance)
    ax.set_title("how well layer i's blocks serve layer j; red: the chosen reuse"
                 + (f" (θ = {theta:g})" if theta is not None else "") + (f"\n{settings}" if settings else ""),
                 fontsize=9)
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


def plot_evaluation(evaluation, path) -> None:
    """Retrieval accuracy (with Wilson 95% intervals) and KL(dense ‖ setting) against the number of full-attention
    layers, one labelled point per setting (dense included), written to ``path`` (a file name or a binary file).
    Labels of settings at one x alternate between two columns, and a KL axis whose values are all rounding noise
    (< 1e-6) is drawn from 0 to 1e-3 rather than magnified."""
    from .evaluate import wilson_interval

    plt = _pyplot()
    results = evaluation.results
    panels = []
    if any(r.accuracy()[1] for r in results):
        panels.append(("retrieval exact match (%)",
                       [(100 * r.accuracy()[0] / max(r.accuracy()[1], 1),
                         [100 * end for end in wilson_interval(*r.accuracy())]) for r in results]))
    if any(r.positions for r in results):
        panels.append(("KL(dense ‖ setting), nats/token", [(r.mean_kl, None) for r in results]))
    if not panels:
        raise ValueError("the evaluation has neither retrieval prompts nor text windows: nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels):
        # Labels of settings at one x alternate between two columns in the order of their values, so settings
        # with close values do not print over each other.
        column = {}
        for x in {r.full_layers for r in results}:
            ranked = sorted((i for i, r in enumerate(results) if r.full_layers == x), key=lambda i: -values[i][0])
            column.update({i: rank % 2 for rank, i in enumerate(ranked)})
        for index, (result, (value, interval)) in enumerate(zip(results, values)):
            colour = "black" if result.name == "dense" else "#1f77b4"
            if interval is not None:
                ax.errorbar(result.full_layers, value, yerr=[[value - interval[0]], [interval[1] - value]],
                            fmt="o", color=colour, capsize=3, alpha=0.8)
            else:
                ax.scatter(result.full_layers, value, color=colour)
            ax.annotate(result.name, (result.full_layers, value), textcoords="offset points",
                        xytext=(6 + 75 * column[index], 2), fontsize=7,
                        arrowprops=dict(arrowstyle="-", color="#bbbbbb", lw=0.5) if column[index] else None)
        if label.startswith("KL") and max(value for value, _ in values) < 1e-6:
            ax.set_ylim(-5e-5, 1e-3)
        ax.set_xlabel("full-attention layers (dense + producer)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    m = evaluation.metadata
    dense = results[0]
    varied = any(r.options for r in results)  # settings then name what they change
    fig.suptitle(f"{m['model']}: top_k {m['top_k']}, block {m['block_size']}"
                 + ("" if varied else f", selection {m.get('selection', 'reuse')}") + "; "
                 f"{dense.accuracy()[1]} prompts, {dense.positions} scored text positions ({m['device']}, {m['date']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)
