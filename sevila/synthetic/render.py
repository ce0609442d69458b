"""The pixels of a synthetic-world video (sevila.data.synth): the palette, what is on screen at a time, the
rendering of a frame as a pure function of the video's metadata, and the reproducible mp4 encoding.

`visible_objects` is the one definition of what a frame shows: the renderer draws it and the captions
(`synth.frame_caption`) and the bootstrap's slot words (sevila.synthetic.bootstrap_examples) read it, so they cannot
disagree.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from sevila.atomic import atomic_path

# Saturated colours that stay apart after yuv420p chroma subsampling and at 32x32 input.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 235),
    "yellow": (235, 215, 30),
    "purple": (150, 40, 200),
    "cyan": (30, 205, 215),
}
OUTLINE_RGB = (255, 255, 255)  # the target's marker


# ------------------------------------------------------------------------------------- on screen


def in_event(meta: dict, t: float) -> bool:
    s, e = meta["event"]
    return s <= t <= e


def visible_objects(meta: dict, t: float) -> list[dict]:
    """Objects on screen at time `t` (seconds): the target alone inside the event, else the distractors
    whose span holds `t`. Rendering and captions both use this, so they cannot disagree."""
    if in_event(meta, t):
        return [meta["target"]]
    return [d for d in meta["distractors"] if d["span"][0] <= t <= d["span"][1]]


# -------------------------------------------------------------------------------------- rendering


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    return xs, ys


def shape_mask(shape: str, cx: float, cy: float, r: float, size: int) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) pixels with half-size r pixels (y grows downwards)."""
    xs, ys = _grid(size)
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.05 * r
    if shape == "cross":
        arm = 0.32 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    if shape == "triangle":  # apex up, base down
        top, bottom = -r, 0.8 * r
        half_w = r * (dy - top) / (bottom - top)
        return (dy >= top) & (dy <= bottom) & (np.abs(dx) <= half_w)
    raise ValueError(f"unknown shape {shape!r}")


def _dilate(mask: np.ndarray, width: int) -> np.ndarray:
    out = mask.copy()
    for oy in range(-width, width + 1):
        for ox in range(-width, width + 1):
            if (ox or oy) and ox * ox + oy * oy <= width * width:
                out |= np.roll(np.roll(mask, oy, axis=0), ox, axis=1)
    return out


def _bounce(p0: float, v: float, t: float, lo: float, hi: float) -> float:
    """Position moving at speed v inside [lo, hi], reflecting at the walls (a triangle wave)."""
    span = hi - lo
    if span <= 0:
        return (lo + hi) / 2
    q = (p0 - lo + v * t) % (2 * span)
    return lo + (q if q <= span else 2 * span - q)


def _position(obj: dict, t: float, size: int) -> tuple[float, float, float]:
    r = obj["radius"] * size
    lo, hi = r / size, 1 - r / size
    x = _bounce(obj["x"], obj["vx"], t, lo, hi)
    y = _bounce(obj["y"], obj["vy"], t, lo, hi)
    return x * size, y * size, r


def _background(meta: dict, t: float) -> np.ndarray:
    size, bg = meta["size"], meta["background"]
    xs, ys = _grid(size)
    u = (xs * math.cos(bg["angle"]) + ys * math.sin(bg["angle"])) / (bg["wavelength"] * size)
    wave = np.sin(2 * np.pi * (u - bg["drift"] * t))
    return bg["grey"] + bg["amp"] * wave


def render_frame(meta: dict, i: int) -> np.ndarray:
    """Frame `i` of the video as uint8 [size, size, 3] RGB; a pure function of `meta` and `i`."""
    size, fps = meta["size"], meta["fps"]
    t = i / fps
    img = np.repeat(_background(meta, t)[..., None], 3, axis=2).astype(np.float32)
    noise_rng = np.random.default_rng([meta["background"]["noise_seed"], i])
    n = meta["background"]["noise"]
    img += noise_rng.integers(-n, n + 1, size=(size, size, 1)).astype(np.float32)
    if in_event(meta, t):
        tg = meta["target"]
        cx, cy, r = _position(tg, t - meta["event"][0], size)
        mask = shape_mask(tg["shape"], cx, cy, r, size)
        img[_dilate(mask, max(1, round(size / 32)))] = OUTLINE_RGB
        img[mask] = COLOURS[tg["colour"]]
    else:
        for d in visible_objects(meta, t):
            cx, cy, r = _position(d, t, size)
            img[shape_mask(d["shape"], cx, cy, r, size)] = COLOURS[d["colour"]]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_video(meta: dict) -> np.ndarray:
    return np.stack([render_frame(meta, i) for i in range(meta["n_frames"])])


# ---------------------------------------------------------------------------------------- encoding


@lru_cache(maxsize=1)
def available_codec() -> str:
    """libx264 when this PyAV build has it, else FFmpeg's built-in MPEG-4 part 2 encoder."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return "mpeg4"


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> uint8 [H*3/2, W] planar yuv420p (BT.601, limited range, 2x2 chroma means).

    Done here rather than by FFmpeg's swscale so that the bytes fed to the encoder depend on nothing but
    the frame (same seed -> same video, whatever else ran in the process)."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0
    cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0
    cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0
    h, w = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y.reshape(-1), sub(cb).reshape(-1), sub(cr).reshape(-1)]
    out = np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8)
    return out.reshape(h * 3 // 2, w)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, codec: str | None = None) -> Path:
    """Write uint8 [n, H, W, 3] frames as a constant-frame-rate yuv420p mp4, atomically.

    One encoder thread, a constant quantiser and our own colour conversion make the bytes reproducible
    (same seed -> same file).
    """
    codec = codec or available_codec()
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            # Constant quantiser, not a rate control: x264's CRF decisions use floating point that was seen
            # to change after other FFmpeg code ran in the same process (same frames, different bytes).
            if codec == "libx264":
                stream.options = {"qp": "12", "preset": "medium", "threads": "1"}
            else:
                stream.codec_context.qscale = True  # fixed quantiser, like `ffmpeg -q:v 3`
                stream.codec_context.global_quality = 3 * 118  # FF_QP2LAMBDA = 118
                stream.options = {"threads": "1"}
            for f in frames:
                yuv = av.VideoFrame.from_ndarray(rgb_to_yuv420p(f), format="yuv420p")
                container.mux(stream.encode(yuv))
            container.mux(stream.encode())
    return path
