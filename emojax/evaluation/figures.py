"""PNG figures of the sublayer, circuit, modulation and comparison stages (matplotlib, no display)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from emojax.circuit import Circuit  # noqa: E402
from emojax.data import EMOTIONS  # noqa: E402
from emojax.runs import write_bytes  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: Path) -> None:
    """Render to memory, then write atomically: a PNG under its final name is always complete."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight",
                metadata={"Software": None})  # no version stamp: identical figures give identical bytes
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def influence_heatmap(path: Path, mean_over_alpha: np.ndarray, model: str) -> None:
    """Emotions x sublayers in residual order (attn_0, mlp_0, attn_1, ...), mean-over-alpha influence."""
    n_layers = mean_over_alpha.shape[2]
    grid = np.stack([mean_over_alpha[:, 0], mean_over_alpha[:, 1]], axis=-1).reshape(len(EMOTIONS), 2 * n_layers)
    limit = float(np.abs(grid).max()) or 1.0
    fig, ax = plt.subplots(figsize=(max(8.0, 0.22 * 2 * n_layers), 3.2))
    image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_yticks(range(len(EMOTIONS)), EMOTIONS)
    ax.set_xticks(range(0, 2 * n_layers, 2), [str(l) for l in range(n_layers)], fontsize=7)
    ax.set_xlabel("layer (each layer: attention, then MLP)")
    ax.set_title(f"Sublayer influence on the final emotion score, mean over alpha ({model})")
    fig.colorbar(image, ax=ax, fraction=0.025, pad=0.01, label="I (score change per unit dose)")
    _save(fig, path)


def circuit_map(path: Path, circuit: Circuit, influence: np.ndarray, n_heads: int, title: str) -> None:
    """Left: circuit heads per layer (filled cells). Right: neurons per layer, with the clipped
    influence that weighted the allocation. influence [2, L] (attention, MLP)."""
    n_layers = circuit.n_layers
    heads = np.zeros((n_layers, n_heads))
    for layer, hs in enumerate(circuit.heads):
        heads[layer, list(hs)] = 1.0
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, max(4.0, 0.18 * n_layers)), sharey=True,
                                      gridspec_kw={"width_ratios": [max(n_heads, 4) / 6, 2]})
    left.imshow(heads, aspect="auto", cmap="Greens", vmin=0, vmax=1, interpolation="nearest", origin="lower")
    left.set_xlabel(f"head ({int(heads.sum())} in circuit)")
    left.set_ylabel("layer")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    counts = [len(ns) for ns in circuit.neurons]
    right.barh(range(n_layers), counts, color="tab:purple", alpha=0.6, label="neurons in circuit")
    right.set_xlabel(f"neurons per layer ({sum(counts)} in circuit)")
    twin = right.twiny()
    twin.plot(np.maximum(influence[1], 0), range(n_layers), color="tab:orange", marker=".", label="MLP influence")
    twin.plot(np.maximum(influence[0], 0), range(n_layers), color="tab:green", marker=".", label="attention influence")
    twin.set_xlabel("clipped sublayer influence (allocation weight)")
    twin.legend(loc="lower right", fontsize=7)
    fig.suptitle(title, y=1.02)
    _save(fig, path)


def accuracy_bars(path: Path, table: Mapping[str, Mapping[str, float]], groups: Sequence[str], title: str) -> None:
    """Grouped bars: one group per category (overall, emotions, valences), one bar per method (%)."""
    methods = list(table)
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 0.9 * len(groups)), 3.6))
    x = np.arange(len(groups))
    for i, method in enumerate(methods):
        values = [table[method].get(g, np.nan) for g in groups]
        ax.bar(x + (i - (len(methods) - 1) / 2) * width, values, width, label=method)
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)




def dose_curves(path: Path, doses: Sequence[float], curves: Mapping[str, Sequence[float | None]], best: float,
                dose_name: str, title: str) -> None:
    """One tuning search: the objective (%) against the dose (log axis), overall and per emotion."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, values in curves.items():
        ys = [np.nan if v is None else 100 * v for v in values]
        ax.plot(doses, ys, marker="o" if name == "overall" else ".", label=name,
                color="black" if name == "overall" else None, linewidth=2.2 if name == "overall" else 1.0)
    ax.axvline(best, color="grey", linestyle="--", label=f"chosen {dose_name} {best:g}")
    ax.set_xscale("log")
    ax.set_xlabel(dose_name)
    ax.set_ylabel("fluent accuracy on train (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(title)
    _save(fig, path)


def dose_response(path: Path, sweeps: Mapping[str, Mapping[str, object]]) -> None:
    """Fluent accuracy and fluent fraction (overall, %) against the dose, one panel per tuned
    method; `sweeps` is {method: tuning summary} (grid, curves, best, dose)."""
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.2 * len(sweeps), 3.8), squeeze=False)
    for ax, (method, sweep) in zip(axes[0], sweeps.items()):
        grid = sweep["grid"]
        for measure, style in (("fluent_accuracy", "o-"), ("fluent_fraction", "s--"), ("accuracy", "^:")):
            values = [np.nan if v is None else 100 * v for v in sweep["curves"][measure]["overall"]]
            ax.plot(grid, values, style, label=measure.replace("_", " "))
        ax.axvline(sweep["best"], color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(str(sweep["dose"]))
        ax.set_ylim(-2, 102)
        ax.set_title(f"{method} ({sweep['items']} train items)")
    axes[0][0].set_ylabel("% of train items")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("Dose response on the train split")
    _save(fig, path)
