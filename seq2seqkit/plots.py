"""Attention heatmaps: which source tokens each output token looked at.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch),
so plotting works headless and never disturbs a caller's own matplotlib state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .checkpoint import atomic_write_bytes

CELL_INCHES = 0.32  # room per token, so labels stay legible on long sentences


def plot_attention(weights: torch.Tensor | np.ndarray, src_tokens: Sequence[str], out_tokens: Sequence[str],
                   path: str | Path) -> None:
    """Write a PNG heatmap of ``weights`` (T output steps x S source positions) to ``path``,
    atomically: source tokens on x, output tokens on y, darker = less attention."""
    w = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights, dtype=float)
    if w.shape != (len(out_tokens), len(src_tokens)):
        raise ValueError(f"attention is {w.shape}, labels are {len(out_tokens)} outputs x {len(src_tokens)} sources")
    longest = max(len(src_tokens), len(out_tokens), 1)
    fontsize = float(np.clip(14 - longest / 8, 7, 12))  # shrinks slowly; the figure grows instead
    fig = Figure(figsize=(max(4.0, CELL_INCHES * len(src_tokens) + 2.0), max(3.0, CELL_INCHES * len(out_tokens) + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(w, cmap="viridis", aspect="auto", interpolation="nearest", vmin=0.0, vmax=max(float(w.max(initial=0.0)), 1e-9))
    ax.set_xticks(range(len(src_tokens)), list(src_tokens), rotation=90, fontsize=fontsize)
    ax.set_yticks(range(len(out_tokens)), list(out_tokens), fontsize=fontsize)
    ax.set_xlabel("source", fontsize=fontsize)
    ax.set_ylabel("output", fontsize=fontsize)
    fig.colorbar(image, ax=ax).ax.tick_params(labelsize=fontsize)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())
