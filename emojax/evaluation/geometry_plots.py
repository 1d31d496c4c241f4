"""PNG plots of the emotion geometry (method.md S2 optional analyses), drawn with matplotlib's Agg backend.

- `plot_pca`: the first two principal components of last-token states at a few layers, raw and
  group-centred, one colour per emotion (the paper sees clusters emerge at ~1/3 of the depth);
- `plot_sublayer_cosines`: per emotion, the 2L x 2L cosine matrix of its directions in residual order;
- `plot_cross_emotion`: the 6 x 6 cosine matrix between emotions at a few layers;
- `plot_separability`: leave-one-scenario-out nearest-centroid accuracy per layer, with chance level
  and the paper's depth landmarks.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from emojax.data import EMOTIONS  # noqa: E402
from emojax.runs import write_bytes  # noqa: E402

COLOURS = {"anger": "#d62728", "sadness": "#1f77b4", "happiness": "#e6b800", "fear": "#9467bd",
           "surprise": "#ff7f0e", "disgust": "#2ca02c"}
# Depth fractions where the paper sees emotion clusters emerge and separate (method.md §8.3).
LANDMARKS = {"clusters emerge (f≈0.33)": 0.33, "separated (f≈0.44)": 0.44}


def _save(fig: plt.Figure, path: Path) -> None:
    """Write the figure atomically (render to bytes, then one atomic file write)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection of the rows of x [N, D] on their first two principal components (signs fixed)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2]
    # Make the sign deterministic: the largest-magnitude loading of each component is positive.
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    projected = centred @ (components * signs[:, None]).T
    return projected if projected.shape[1] == 2 else np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))


def plot_pca(rows: Mapping[str, Mapping[int, np.ndarray]], emotion: np.ndarray, path: Path, title: str) -> None:
    """rows: {row label: {layer: [N, D] states}}, one row of panels per label (e.g. raw and
    group-centred states); emotion [N] indices into EMOTIONS."""
    labels = list(rows)
    layers = sorted(rows[labels[0]])
    fig, axes = plt.subplots(len(labels), len(layers), figsize=(3.2 * len(layers), 3.2 * len(labels)),
                             squeeze=False)
    for r, label in enumerate(labels):
        for ax, layer in zip(axes[r], layers):
            xy = pca_2d(np.asarray(rows[label][layer], np.float64))
            for e, name in enumerate(EMOTIONS):
                sel = emotion == e
                ax.scatter(xy[sel, 0], xy[sel, 1], s=8, alpha=0.7, color=COLOURS[name], label=name)
            ax.set_title(f"{label}, layer {layer}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title)
    _save(fig, path)


def sublayer_labels(n_layers: int) -> list[str]:
    """attn_0, mlp_0, attn_1, ..., mlp_{L-1}: the residual order of the 2L sublayer states."""
    return [f"{kind}_{layer}" for layer in range(n_layers) for kind in ("attn", "mlp")]


def plot_sublayer_cosines(matrices: np.ndarray, path: Path) -> None:
    """matrices [6, 2L, 2L]: each emotion's direction cosines in residual order."""
    n = matrices.shape[-1]
    ticks = list(range(0, n, max(2, n // 8)))
    labels = sublayer_labels(n // 2)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), squeeze=False)
    for ax, e in zip(axes.flat, range(len(EMOTIONS))):
        image = ax.imshow(matrices[e], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(EMOTIONS[e])
        ax.set_xticks(ticks, [labels[t] for t in ticks], rotation=90, fontsize=7)
        ax.set_yticks(ticks, [labels[t] for t in ticks], fontsize=7)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="cosine")
    fig.suptitle("Cosine similarity of each emotion's directions across sublayers")
    _save(fig, path)


def plot_cross_emotion(cosines: np.ndarray, layers: Sequence[int], path: Path, kind: str) -> None:
    """cosines [L, 6, 6] between emotion directions of one kind; drawn at `layers`."""
    fig, axes = plt.subplots(1, len(layers), figsize=(3.3 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        image = ax.imshow(cosines[layer], vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{kind} layer {layer}")
        ax.set_xticks(range(len(EMOTIONS)), [e[:4] for e in EMOTIONS], rotation=90, fontsize=8)
        ax.set_yticks(range(len(EMOTIONS)), [e[:4] for e in EMOTIONS], fontsize=8)
        for i in range(len(EMOTIONS)):
            for j in range(len(EMOTIONS)):
                ax.text(j, i, f"{cosines[layer, i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="cosine")
    fig.suptitle(f"Cosine between emotion directions ({kind} states)")
    _save(fig, path)


def plot_separability(curves: Mapping[str, np.ndarray], path: Path, chance: float, title: str) -> None:
    """curves: {label: [L] accuracy}; x axis layer, with the depth fraction on top."""
    n_layers = len(next(iter(curves.values())))
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        style = "--" if "centred" in label else "-"
        ax.plot(range(n_layers), 100 * np.asarray(values), style, marker="o", markersize=3, label=label)
    ax.axhline(100 * chance, color="grey", linestyle=":", label=f"chance ({100 * chance:.1f}%)")
    for label, fraction in LANDMARKS.items():
        ax.axvline(fraction * (n_layers - 1), color="black", linestyle="--", linewidth=0.8, alpha=0.6)
        ax.text(fraction * (n_layers - 1), 2, " " + label, rotation=90, fontsize=7, va="bottom")
    ax.set_xlabel("layer")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 102)
    top = ax.secondary_xaxis("top", functions=(lambda l: l / max(n_layers - 1, 1),
                                               lambda f: f * max(n_layers - 1, 1)))
    top.set_xlabel("fraction of depth")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    _save(fig, path)
