"""Video frame loading: safe path resolution, SeViLA's frame sampling, decoding with decord or PyAV,
CLIP preprocessing, and an explicit policy for bad videos.

Faithful to the official SeViLA/LAVIS `load_video` (lavis/datasets/data_utils.py):
- a clip window in seconds becomes frame indices by `int(t * fps)`, clipped to the video;
- the clip is split into `n` equal segments with `np.linspace(first, stop, n + 1).astype(int)`;
  uniform sampling takes each segment's middle frame `(a + b) // 2`, training ("random") a random frame of
  each segment; with fewer frames than `n`, the last index is repeated;
- frames are resized to a square `size x size` (no aspect ratio kept) and normalised with the CLIP mean/std.

Deliberate differences from the official code (docs/design.md §2, "traps"):
- an unreadable video raises a typed `VideoError` naming the video; `load_or_skip` applies an explicit
  `BadVideoPolicy` and records every skip in a `SkipLog` (the official loader silently substituted a random
  other sample);
- an unusable window (NaN, reversed, beyond the video) falls back to the whole video and says so
  (`window_fallback`), so callers can count it (TVQA has `NaN-NaN` timestamps);
- video ids from annotation files are untrusted: they cannot escape the video root.
"""
from __future__ import annotations

import enum
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F

from sevila.atomic import atomic_write_json
from sevila.errors import UserError

log = logging.getLogger(__name__)

# CLIP normalisation constants used by BLIP-2 / SeViLA (LAVIS BlipImageBaseProcessor defaults).
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Guards `int(t * fps)` against float artefacts such as 2.3 * 10 == 22.999999999999996 (the official code
# would give frame 22 there; we give 23, the frame the annotation means).
_FRAME_EPS = 1e-6


class Sampling(enum.Enum):
    """How one frame is picked inside each of the `n` equal segments of the clip."""

    UNIFORM = "uniform"  # evaluation: the middle frame of each segment
    RANDOM = "random"  # training: a random frame of each segment


class Backend(enum.Enum):
    AUTO = "auto"  # decord, then PyAV when decord is missing or cannot read the file
    DECORD = "decord"
    PYAV = "pyav"


class BadVideoPolicy(enum.Enum):
    FAIL = "fail"  # raise the VideoError
    SKIP = "skip"  # record it in a SkipLog and return None; never substitute another sample


# --------------------------------------------------------------------------------------------- errors


class VideoError(UserError):
    """A video that cannot be used. `video` is the id or path as given; `reason` says what is wrong."""

    kind = "video_error"  # stable category used to count skips

    def __init__(self, video: str | os.PathLike, reason: str) -> None:
        self.video = str(video)
        self.reason = reason
        super().__init__(f"video {self.video!r}: {reason}")


class VideoNotFound(VideoError):
    kind = "not_found"


class VideoEmpty(VideoError):
    kind = "empty"


class VideoCorrupt(VideoError):
    kind = "corrupt"


class UnsafeVideoPath(VideoError):
    kind = "unsafe_path"


# ------------------------------------------------------------------------------------ path resolution


def video_path_of(root: str | Path, video_id: str, ext: str = ".mp4") -> Path:
    """Where the video of `video_id` lies under `root` (`ext` not appended twice), unchecked: naming a file in a
    message; `resolve_video_path` is the check before reading one."""
    vid = str(video_id)
    return Path(root) / (vid if (ext and vid.endswith(ext)) else vid + ext)


def resolve_video_path(root: str | Path, video_id: str, ext: str = ".mp4") -> Path:
    """`root/<video_id><ext>`, refusing ids that could read outside `root`.

    Annotation files are untrusted input: absolute ids, `..` components and symlinks that resolve outside
    `root` raise `UnsafeVideoPath`. `ext` is not appended twice when the id already ends with it.
    Raises `VideoNotFound` when the file does not exist (or is not a regular file).
    """
    vid = str(video_id)
    if not vid or "\x00" in vid:
        raise UnsafeVideoPath(video_id, "empty video id or NUL byte in it")
    # Both separators count: a Windows-made annotation must not smuggle `..\` past a POSIX check.
    parts = vid.replace("\\", "/").split("/")
    drive = len(vid) >= 2 and vid[0].isalpha() and vid[1] == ":" and (len(vid) == 2 or vid[2] in "/\\")
    if os.path.isabs(vid) or vid.startswith(("/", "\\")) or drive:
        raise UnsafeVideoPath(video_id, "absolute paths are not allowed as video ids")
    if ".." in parts:
        raise UnsafeVideoPath(video_id, "'..' is not allowed in video ids")
    root_path = Path(root)
    candidate = video_path_of(root_path, vid, ext)
    root_real = root_path.resolve()
    real = candidate.resolve()
    if not real.is_relative_to(root_real):
        raise UnsafeVideoPath(video_id, f"resolves to {real}, outside the video root {root_real}")
    if not real.is_file():
        raise VideoNotFound(video_id, f"no such file {candidate}")
    return candidate


# ---------------------------------------------------------------------------------- frame sampling


def _usable(x: float | None) -> bool:
    return x is not None and math.isfinite(float(x))


def clip_bounds(n_video_frames: int, fps: float, start: float | None, end: float | None) -> tuple[int, int, bool]:
    """Frame range `[first, stop)` of the clip `[start, end]` seconds, and whether it fell back.

    As in the official `load_video`: `first = int(start * fps)`, `stop = int(end * fps)`, clipped to
    `[0, n_video_frames]`. No window at all (`start` and `end` both None) means the whole video by design
    (NExT-QA, QVHighlights) and is not a fallback. A window that cannot be used (NaN/inf, only one end given,
    `end <= start`, or lying wholly outside the video) falls back to the whole video and returns True, so
    the caller can count it (TVQA's `NaN-NaN`).
    """
    if n_video_frames <= 0:
        raise ValueError(f"n_video_frames must be positive, got {n_video_frames}")
    whole = (0, int(n_video_frames))
    if start is None and end is None:
        return (*whole, False)
    if not (_usable(start) and _usable(end)) or fps is None or not math.isfinite(fps) or fps <= 0:
        return (*whole, True)
    first = max(0, int(math.floor(float(start) * fps + _FRAME_EPS)))
    stop = min(int(n_video_frames), int(math.floor(float(end) * fps + _FRAME_EPS)))
    if stop <= first:
        return (*whole, True)
    return first, stop, False


def sample_indices(
    first: int,
    stop: int,
    n: int,
    mode: Sampling = Sampling.UNIFORM,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`n` frame indices in `[first, stop)` (official LAVIS `load_video` rule).

    Segment bounds: `np.linspace(first, stop, min(n, stop - first) + 1).astype(int)`. UNIFORM takes
    `(a + b) // 2` of each segment, RANDOM `rng.integers(a, b)` (or `a` when `a == b`). With fewer frames than
    `n`, the last index is repeated until there are `n`. `rng=None` in RANDOM mode uses fresh OS entropy;
    pass a seeded Generator for reproducible training.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 <= first < stop:
        raise ValueError(f"need 0 <= first < stop, got first={first}, stop={stop}")
    mode = Sampling(mode)
    bounds = np.linspace(first, stop, num=min(n, stop - first) + 1).astype(int)
    lo, hi = bounds[:-1], bounds[1:]
    if mode is Sampling.UNIFORM:
        idx = (lo + hi) // 2
    else:
        rng = rng if rng is not None else np.random.default_rng()
        idx = np.array([a if a == b else int(rng.integers(a, b)) for a, b in zip(lo, hi)], dtype=np.int64)
    idx = idx.astype(np.int64)
    if len(idx) < n:
        idx = np.concatenate([idx, np.full(n - len(idx), idx[-1], dtype=np.int64)])
    return idx


def frame_labels(timestamps: np.ndarray, windows: Sequence[tuple[float, float]]) -> np.ndarray:
    """Moment labels: True where a timestamp lies inside any window, ends inclusive (SeViLA's QVHighlights
    targets: a frame is "yes" when idx/fps falls in a relevant window)."""
    ts = np.asarray(timestamps, dtype=np.float64)
    out = np.zeros(ts.shape, dtype=bool)
    for s, e in windows:
        out |= (ts >= float(s)) & (ts <= float(e))
    return out


# ------------------------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class FrameSample:
    """Frames of one clip, ready for the image encoder."""

    pixels: torch.Tensor  # [n, 3, size, size] float32, resized then CLIP-normalised
    indices: np.ndarray  # [n] int frame indices into the video
    timestamps: np.ndarray  # [n] float seconds = index / fps
    fps: float
    n_video_frames: int
    window_fallback: bool  # True when the annotated window was unusable and the whole video was sampled


def _decord_module():
    try:
        import decord  # noqa: PLC0415 - optional at import time; PyAV covers for it
    except ImportError:
        return None
    return decord


class _DecordReader:
    def __init__(self, path: Path) -> None:
        decord = _decord_module()
        if decord is None:
            raise ImportError("decord is not installed")
        # One thread: decoding many small clips in data-loader workers, not one big one.
        self._vr = decord.VideoReader(str(path), num_threads=1)

    def info(self) -> tuple[int, float]:
        return len(self._vr), float(self._vr.get_avg_fps())

    def frames(self, indices: np.ndarray) -> np.ndarray:
        # decord seeks to the previous keyframe and decodes forward, so indices are exact on these files;
        # the tests check it against PyAV's sequential decode.
        return self._vr.get_batch([int(i) for i in indices]).asnumpy()


class _PyAVReader:
    def __init__(self, path: Path) -> None:
        self._path = path
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoEmpty(path, "the container holds no video stream (0 video frames)")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self._fps = float(rate) if rate else 0.0
            n = int(stream.frames or 0)
            if n <= 0 and stream.duration and stream.time_base and self._fps > 0:
                n = int(round(float(stream.duration * stream.time_base) * self._fps))
            self._n = n

    def info(self) -> tuple[int, float]:
        return self._n, self._fps

    def frames(self, indices: np.ndarray) -> np.ndarray:
        """Decode sequentially from the start and keep the wanted frames (repeats included): exact
        indices without trusting seeks."""
        wanted = set(int(i) for i in indices)
        last = max(wanted)
        got: dict[int, np.ndarray] = {}
        k = -1
        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            for k, frame in enumerate(container.decode(stream)):
                if k in wanted:
                    got[k] = frame.to_ndarray(format="rgb24")
                if k >= last:
                    break
        missing = sorted(i for i in wanted if i not in got)
        if missing:
            raise VideoCorrupt(
                self._path, f"stream ended after {k + 1} frames but frame {missing[0]} was wanted "
                f"(header says {self._n}); the file is probably truncated"
            )
        return np.stack([got[int(i)] for i in indices])


def _backends(backend: Backend) -> list[Backend]:
    backend = Backend(backend)
    if backend is Backend.AUTO:
        return [Backend.DECORD, Backend.PYAV] if _decord_module() is not None else [Backend.PYAV]
    if backend is Backend.DECORD and _decord_module() is None:
        raise RuntimeError("Backend.DECORD was asked for but decord is not installed (use AUTO or PYAV)")
    return [backend]


def _open(path: Path, backend: Backend):
    return _DecordReader(path) if backend is Backend.DECORD else _PyAVReader(path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoNotFound(path, "no such file")
    if not path.is_file():
        raise VideoNotFound(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoEmpty(path, "the file is 0 bytes")


def _with_backends(path: Path, backend: Backend, work):
    """Run `work(reader)` with each backend in turn; typed errors pass through, the first success wins,
    and when all fail the last failure becomes VideoCorrupt naming the video."""
    failures: list[str] = []
    for b in _backends(backend):
        try:
            return work(_open(path, b))
        except (VideoEmpty, VideoNotFound, UnsafeVideoPath):
            raise
        except Exception as e:  # decord raises RuntimeError/DECORDError, PyAV av.error.*; both mean unreadable
            failures.append(f"{b.value}: {_describe(e)}")
    raise VideoCorrupt(path, "cannot be decoded (" + "; ".join(failures) + ")")


def _describe(e: Exception) -> str:
    if isinstance(e, VideoError):
        return e.reason
    first_line = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__


def verify_video(path: str | Path) -> tuple[int, float]:
    """Full integrity check without decoding: demux every packet with PyAV and fail on a corrupt (cut)
    packet or on fewer packets than the header promises. Returns (n_frames, fps).

    `read_frames` only notices truncation when a sampled frame lies in the lost part (decoders cannot know
    earlier); run this once per video in validation to catch every cut-off file.
    """
    path = Path(path)
    _check_file(path)
    try:
        reader = _PyAVReader(path)
        n_header, fps = reader.info()
        n_packets = 0
        with av.open(str(path)) as container:
            for packet in container.demux(container.streams.video[0]):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                if packet.is_corrupt:
                    raise VideoCorrupt(path, f"packet {n_packets} is corrupt (the file is probably truncated)")
                n_packets += 1
    except VideoError:
        raise
    except Exception as e:
        raise VideoCorrupt(path, f"cannot be demuxed ({_describe(e)})") from None
    if n_packets == 0:
        raise VideoEmpty(path, "the video has 0 frames")
    if n_header and n_packets < n_header:
        raise VideoCorrupt(path, f"{n_packets} packets but the header says {n_header} frames (truncated?)")
    if not (fps > 0 and math.isfinite(fps)):
        raise VideoCorrupt(path, f"invalid frame rate {fps}")
    return max(n_header, n_packets), fps


def probe_video(path: str | Path) -> tuple[int, float]:
    """(n_frames, fps) from the container header, without decoding: what prepare records of each real video
    (its duration = n_frames / fps). `verify_video` (validate) is the full check of every packet."""
    path = Path(path)
    _check_file(path)
    try:
        n_frames, fps = _PyAVReader(path).info()
    except VideoError:
        raise
    except Exception as e:
        raise VideoCorrupt(path, f"cannot be opened ({_describe(e)})") from None
    if n_frames <= 0 or not (fps > 0 and math.isfinite(fps)):
        raise VideoCorrupt(path, f"the header gives {n_frames} frames at {fps} fps")
    return n_frames, fps


def to_pixels(frames: np.ndarray | torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 [n, H, W, 3] RGB -> float32 [n, 3, size, size], resized then CLIP-normalised.

    Resize is bicubic with antialiasing, to a square without keeping the aspect ratio, like the official
    pipeline (decord's decode-time resize to image_size x image_size through ffmpeg's scaler, whose default is
    bicubic; BLIP's image processor uses bicubic too). It runs in torch on the float copy of the uint8 frames,
    so decord and PyAV give identical tensors for identical decoded frames (no torchvision here).
    """
    x = torch.as_tensor(np.ascontiguousarray(frames) if isinstance(frames, np.ndarray) else frames)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [n, H, W, 3], got {tuple(x.shape)} {x.dtype}")
    x = x.permute(0, 3, 1, 2).to(torch.float32)  # [n, 3, H, W] in 0..255
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 255.0)  # bicubic overshoots at edges; a uint8 image could not
    x = x / 255.0
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def read_frames(
    path: str | Path,
    n: int,
    start: float | None = None,
    end: float | None = None,
    mode: Sampling = Sampling.UNIFORM,
    size: int = 224,
    rng: np.random.Generator | None = None,
    backend: Backend = Backend.AUTO,
) -> FrameSample:
    """Sample `n` frames of the clip `[start, end]` (seconds; None = whole video) and preprocess them.

    decord first; PyAV when decord is not installed or cannot open/read the file. Missing, empty, corrupt or
    truncated files raise `VideoNotFound` / `VideoEmpty` / `VideoCorrupt` naming the video.
    """
    path = Path(path)
    _check_file(path)
    mode = Sampling(mode)

    def work(reader):
        n_frames, fps = reader.info()
        if n_frames <= 0:
            raise VideoEmpty(path, "the video has 0 frames")
        if not (fps > 0 and math.isfinite(fps)):
            raise VideoCorrupt(path, f"invalid frame rate {fps}")
        first, stop, fell_back = clip_bounds(n_frames, fps, start, end)
        # Each backend attempt draws from a copy of the rng state, so a fallback to PyAV samples the same
        # indices decord would have.
        local_rng = None if rng is None else _copy_rng(rng)
        idx = sample_indices(first, stop, n, mode, local_rng)
        if stop - first < n:  # issue 24: said, never silent
            log.warning("%s: the clip has %d frames, %d asked: the last one is repeated %d times (SeViLA's official "
                        "sampling, LAVIS load_video, does the same)", path, stop - first, n, n - (stop - first))
        frames = reader.frames(idx)
        if frames.shape[0] != len(idx):
            raise VideoCorrupt(path, f"decoder returned {frames.shape[0]} frames for {len(idx)} indices")
        if local_rng is not None:
            rng.bit_generator.state = local_rng.bit_generator.state  # advance the caller's rng once
        return FrameSample(
            pixels=to_pixels(frames, size),
            indices=idx,
            timestamps=idx.astype(np.float64) / fps,
            fps=float(fps),
            n_video_frames=int(n_frames),
            window_fallback=fell_back,
        )

    return _with_backends(path, backend, work)


def _copy_rng(rng: np.random.Generator) -> np.random.Generator:
    g = np.random.Generator(type(rng.bit_generator)())
    g.bit_generator.state = rng.bit_generator.state
    return g


# --------------------------------------------------------------------------------- bad-video policy


@dataclass
class SkipLog:
    """What was skipped and why. Written next to results so a reader knows what was not evaluated."""

    entries: list[dict] = field(default_factory=list)

    def add(self, qid_or_video: str, video: str, reason: str, detail: str = "") -> None:
        self.entries.append({"id": str(qid_or_video), "video": str(video), "reason": str(reason), "detail": detail})

    @property
    def counts(self) -> dict[str, int]:
        """Number of skips per reason, sorted by reason."""
        return dict(sorted(Counter(e["reason"] for e in self.entries).items()))

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict:
        return {"n_skipped": len(self), "counts": self.counts, "entries": list(self.entries)}

    def write(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def load_or_skip(
    root: str | Path,
    record_video_id: str,
    policy: BadVideoPolicy,
    log: SkipLog,
    *,
    qid: str | None = None,
    ext: str = ".mp4",
    **read_kwargs,
) -> FrameSample | None:
    """Resolve `record_video_id` under `root` and read it; on a `VideoError`, FAIL re-raises and SKIP records
    (id = `qid` when given, else the video id; reason = the error kind) and returns None."""
    policy = BadVideoPolicy(policy)
    try:
        return read_frames(resolve_video_path(root, record_video_id, ext), **read_kwargs)
    except VideoError as e:
        if policy is BadVideoPolicy.FAIL:
            raise
        log.add(qid if qid is not None else record_video_id, record_video_id, e.kind, detail=str(e))
        return None
