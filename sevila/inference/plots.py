"""Pictures of one answer: a strip of the keyframes and the Localizer's score over time with the keyframes marked.

matplotlib's object API on the Agg canvas (no pyplot, so no global backend or figure state is touched), written
atomically as PNG.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from sevila.atomic import atomic_path
from sevila.data.video import CLIP_MEAN, CLIP_STD


def to_uint8_images(pixels: torch.Tensor) -> np.ndarray:
    """CLIP-normalised frames [n, 3, H, W] -> uint8 RGB [n, H, W, 3] (the inverse of `to_pixels`, up to rounding)."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be [n, 3, H, W], got {tuple(pixels.shape)}")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (pixels.detach().float().cpu() * std + mean).clamp(0.0, 1.0)
    return (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _save(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def keyframe_strip(images: np.ndarray, timestamps: Sequence[float], path: str | Path, *,
                   title: str | None = None, panel_inches: float = 2.0) -> Path:
    """One PNG with the keyframes side by side in temporal order, each captioned with its time in seconds."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [k, H, W, 3], got {images.shape} {images.dtype}")
    if len(timestamps) != len(images):
        raise ValueError(f"{len(images)} images but {len(timestamps)} timestamps")
    k = len(images)
    fig = Figure(figsize=(panel_inches * k, panel_inches + (0.6 if title else 0.35)))
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, img, t in zip(axes, images, timestamps):
        ax.imshow(img, interpolation="nearest")  # small frames stay crisp when enlarged
        ax.set_title(f"{float(t):.2f} s", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def score_plot(timestamps: Sequence[float], scores: Sequence[float], keyframes: Sequence[int], path: str | Path, *,
               title: str | None = None) -> Path:
    """The Localizer score of every sampled frame against its time, keyframes marked (paper Fig. 2's selection)."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    ts = np.asarray(timestamps, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if ts.shape != sc.shape or ts.ndim != 1 or len(ts) == 0:
        raise ValueError(f"need one score per timestamp, got {ts.shape} and {sc.shape}")
    kf = [int(i) for i in keyframes]
    if any(not 0 <= i < len(ts) for i in kf):
        raise ValueError(f"keyframe positions {kf} outside 0..{len(ts) - 1}")
    fig = Figure(figsize=(8, 3))
    ax = fig.subplots()
    ax.plot(ts, sc, marker="o", markersize=3, linewidth=1.2, label="Localizer score (yes logit)")
    ax.scatter(ts[kf], sc[kf], s=70, facecolors="none", edgecolors="red", linewidths=1.8, zorder=3,
               label=f"keyframes ({len(kf)})")
    for t in ts[kf]:
        ax.axvline(t, color="red", alpha=0.25, linewidth=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
