"""The ViT feature cache, question grouping by clip, and single-video inference (`score_frames`, `answer_video`).

Why a cache (DESIGN.md §5): per question at full size most compute is the frozen ViT-g over `n_frames` frames, and
its output depends only on (the video file, the frame sampling, the vision weights). The official code recomputes
it for every question, every epoch and every round; here it is computed once per clip and reused by every question
of that clip, both modules, every ablation variant and every self-refinement round.

What is cached: `SeViLA.encode_frames` output, i.e. the ViT features BEFORE the final LayerNorm (each module applies
its own `ln_vision`), for UNIFORM sampling only (training's random sampling draws new frames every epoch, so there is
nothing to reuse). One safetensors file per key holds the features (fp16 by default, bf16 when fp16 would overflow
or when asked), the sampled frame indices and timestamps, and the facts of the sampling; it is written atomically.

The key hashes: the video file's identity (resolved path + size + mtime_ns, or a content hash of its first and last
MiB + size, which survives copying a dataset elsewhere), n_frames, the clip window, the image size, the storage
dtype and a fingerprint of the vision weights and config (a hash of every tensor of the ViT's state dict).
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sevila import prompts
from sevila.data.video import (
    Backend, BadVideoPolicy, FrameSample, SkipLog, VideoError, VideoNotFound, read_frames, resolve_video_path,
)
from sevila.io import atomic_path
from sevila.settings import Fusion, Selector

log = logging.getLogger(__name__)

FEATURE_FORMAT = "sevila.features/1"  # bump when what `encode_frames` returns changes meaning (e.g. pre-LN)
_CONTENT_CHUNK = 1 << 20  # 1 MiB from each end of the file for the content identity
_FP16_MAX = float(torch.finfo(torch.float16).max)


class VideoIdentity(str, enum.Enum):
    """How a video file is identified in the cache key. STAT: resolved path + size + mtime_ns (any rewrite changes
    it; moving the dataset invalidates it). CONTENT: size + hash of the first and last MiB (survives copies)."""

    STAT = "stat"
    CONTENT = "content"


class StoreDtype(str, enum.Enum):
    FP16 = "float16"  # 10-bit mantissa: relative error <= 2^-11; falls back to bf16 per file when values exceed it
    BF16 = "bfloat16"  # fp32's range, 7-bit mantissa


@dataclass(frozen=True)
class FrameMeta:
    """A FrameSample without its pixels: which frames the features are of."""

    indices: np.ndarray  # [n] int frame indices into the video
    timestamps: np.ndarray  # [n] float seconds
    fps: float
    n_video_frames: int
    window_fallback: bool  # the annotated window was unusable; the whole video was sampled

    @classmethod
    def from_sample(cls, s: FrameSample) -> "FrameMeta":
        return cls(np.asarray(s.indices, dtype=np.int64), np.asarray(s.timestamps, dtype=np.float64), float(s.fps),
                   int(s.n_video_frames), bool(s.window_fallback))


# ---------------------------------------------------------------------------------------------- key parts


def video_identity(path: str | Path, mode: VideoIdentity = VideoIdentity.STAT) -> dict[str, Any]:
    """The facts of a video file that go into the key (see VideoIdentity)."""
    path = Path(path)
    if not path.is_file():
        raise VideoNotFound(path, "no such file")
    st = path.stat()
    if VideoIdentity(mode) is VideoIdentity.STAT:
        return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        h.update(fh.read(_CONTENT_CHUNK))
        if st.st_size > _CONTENT_CHUNK:
            fh.seek(max(_CONTENT_CHUNK, st.st_size - _CONTENT_CHUNK))
            h.update(fh.read(_CONTENT_CHUNK))
    return {"size": st.st_size, "content": h.hexdigest()}


def vision_fingerprint(model) -> str:
    """Hash of the ViT's weights (every tensor of its state dict: name, dtype, shape, bytes) and of its config and
    the input size: two models share cached features iff their ViTs compute the same function."""
    h = hashlib.blake2b(digest_size=16)
    h.update(FEATURE_FORMAT.encode())
    h.update(json.dumps(model.config.vision_config().to_dict(), sort_keys=True, default=str).encode())
    h.update(str(model.config.image_size).encode())
    for name, t in sorted(model.vision.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # raw bytes, any dtype
    return h.hexdigest()


def _window(x: float | None) -> float | str | None:
    """Window ends as key material: None stays None, NaN/inf are kept distinct (TVQA's NaN windows fall back to the
    whole video and that fallback must still be counted), floats are rounded to the microsecond."""
    if x is None:
        return None
    x = float(x)
    return repr(x) if not math.isfinite(x) else round(x, 6)


def cache_key(identity: dict[str, Any], n_frames: int, start: float | None, end: float | None, image_size: int,
              fingerprint: str, store_dtype: StoreDtype) -> tuple[str, dict[str, Any]]:
    """(hex key, the fields it hashes). Sampling is always UNIFORM here (random training samples are not cached)."""
    fields = {"format": FEATURE_FORMAT, "video": identity, "n_frames": int(n_frames), "sampling": "uniform",
              "window": [_window(start), _window(end)], "image_size": int(image_size), "vision": fingerprint,
              "dtype": StoreDtype(store_dtype).value}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return key, fields


# ------------------------------------------------------------------------------------------------- cache


class FeatureCache:
    """On-disk cache of pre-LN ViT features per (video, n_frames, window).

    `get(video, n, start, end)` -> (features [n, P, Dv] float32 on CPU, FrameMeta). A miss decodes the clip (or uses
    a FrameSample the caller already decoded), runs the ViT in chunks of `chunk_size` frames, and stores the result.
    The vision fingerprint is computed once, at construction: if the ViT's weights are changed in place afterwards,
    call `refresh_fingerprint()` (the ViT is frozen in SeViLA, so this does not happen in the pipeline).
    Counters: `hits`, `misses`, `frames_encoded`.
    """

    def __init__(self, root: str | Path, model, *, store_dtype: StoreDtype = StoreDtype.FP16, chunk_size: int = 32,
                 identity: VideoIdentity = VideoIdentity.STAT, backend: Backend = Backend.AUTO,
                 fingerprint: str | None = None) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.root = Path(root)
        self.model = model
        self.store_dtype = StoreDtype(store_dtype)
        self.chunk_size = int(chunk_size)
        self.identity = VideoIdentity(identity)
        self.backend = Backend(backend)
        self.fingerprint = fingerprint or vision_fingerprint(model)
        self.hits = self.misses = self.frames_encoded = 0

    def refresh_fingerprint(self) -> str:
        self.fingerprint = vision_fingerprint(self.model)
        return self.fingerprint

    # ---- keys and paths

    def key(self, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None) -> str:
        return self._key(video, n_frames, start, end)[0]

    def _key(self, video, n_frames, start, end) -> tuple[str, dict[str, Any]]:
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        return cache_key(video_identity(video, self.identity), n_frames, start, end, self.model.config.image_size,
                         self.fingerprint, self.store_dtype)

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    # ---- the one public operation

    def get(self, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None,
            sample: FrameSample | None = None) -> tuple[torch.Tensor, FrameMeta]:
        """Features and frame facts of `n_frames` uniformly sampled frames of the clip [start, end] of `video`.

        `sample` (optional) is the same clip already decoded by the caller with `read_frames(video, n_frames,
        start, end, size=image_size)`; on a miss it is encoded instead of decoding the video again."""
        video = Path(video)
        key, fields = self._key(video, n_frames, start, end)
        path = self.path_for(key)
        if path.is_file():
            got = self._read(path, fields)
            if got is not None:
                self.hits += 1
                return got
        self.misses += 1
        if sample is None:
            sample = read_frames(video, n_frames, start, end, size=self.model.config.image_size, backend=self.backend)
        elif sample.pixels.shape[0] != n_frames:
            raise ValueError(f"{video}: the given sample has {sample.pixels.shape[0]} frames, not {n_frames}")
        features = self.encode(sample.pixels)  # [n, P, Dv] float32
        meta = FrameMeta.from_sample(sample)
        stored = self._write(path, features, meta, fields, video)
        # Return what a later hit will return (the stored precision), so a run never depends on whether the
        # features came from the cache or were just computed.
        return stored.float(), meta

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, H, W] -> pre-LN ViT features [n, P, Dv] float32 on CPU, `chunk_size` frames per pass."""
        device = next(self.model.vision.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, pixels.shape[0], self.chunk_size):
                chunk = pixels[i:i + self.chunk_size].to(device)
                out.append(self.model.encode_frames(chunk).float().cpu())  # [c, P, Dv]
                self.frames_encoded += chunk.shape[0]
        return torch.cat(out, dim=0)

    # ---- file format

    def _write(self, path: Path, features: torch.Tensor, meta: FrameMeta, fields: dict[str, Any], video: Path
               ) -> torch.Tensor:
        """Store one entry atomically; returns the features as stored (fp16 or bf16)."""
        dtype = torch.float16 if self.store_dtype is StoreDtype.FP16 else torch.bfloat16
        if dtype is torch.float16 and features.abs().max().item() > _FP16_MAX:
            log.warning("%s: ViT features exceed the float16 range; this entry is stored as bfloat16", video)
            dtype = torch.bfloat16
        tensors = {
            "features": features.to(dtype).contiguous(),  # [n, P, Dv]
            "indices": torch.as_tensor(meta.indices, dtype=torch.int64),  # [n]
            "timestamps": torch.as_tensor(meta.timestamps, dtype=torch.float64),  # [n]
        }
        header = {"format": FEATURE_FORMAT, "key": json.dumps(fields, sort_keys=True), "video": str(video),
                  "fps": repr(meta.fps), "n_video_frames": str(meta.n_video_frames),
                  "window_fallback": str(int(meta.window_fallback))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
        return tensors["features"]

    def _read(self, path: Path, fields: dict[str, Any]) -> tuple[torch.Tensor, FrameMeta] | None:
        """A cached entry, or None (logged) when the file is unreadable or not the entry the key promises."""
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                header = dict(f.metadata() or {})
                features = f.get_tensor("features")
                indices = f.get_tensor("indices").numpy()
                timestamps = f.get_tensor("timestamps").numpy()
            if header.get("format") != FEATURE_FORMAT or json.loads(header["key"]) != fields:
                raise ValueError("the header does not match the key")
            n, p, dv = fields["n_frames"], self.model.config.n_vision_tokens, self.model.vision.config.hidden_size
            if tuple(features.shape) != (n, p, dv) or indices.shape != (n,) or timestamps.shape != (n,):
                raise ValueError(f"shape {tuple(features.shape)}, expected {(n, p, dv)}")
            meta = FrameMeta(indices.astype(np.int64), timestamps.astype(np.float64), float(header["fps"]),
                             int(header["n_video_frames"]), bool(int(header["window_fallback"])))
        except Exception as e:  # a truncated or foreign file is a miss, then overwritten
            log.warning("feature cache entry %s is unusable (%s); recomputing it", path, e)
            return None
        return features.float(), meta


# -------------------------------------------------------------------------------------- grouping by clip


class Clip(NamedTuple):
    """One decoded-and-encoded unit: a video and the window its questions sample from (None = whole video)."""

    video: str
    start: float | None
    end: float | None


R = TypeVar("R")


def clip_of(record) -> Clip:
    """The clip a QARecord (video + optional start/end) or MomentRecord (whole video) samples from. A NaN window is
    kept as NaN, so every record with it shares one clip and the whole-video fallback is still reported."""
    return Clip(str(record.video), getattr(record, "start", None), getattr(record, "end", None))


def group_by_clip(records: Iterable[R]) -> dict[Clip, list[R]]:
    """Records grouped by clip, in first-appearance order (each clip decoded and encoded once for all of them).
    Records whose window is NaN (TVQA's `NaN-NaN`) share one group per video (NaN != NaN would split them); iterate
    over the result rather than looking a NaN clip up in it."""
    groups: dict[tuple, tuple[Clip, list[R]]] = {}
    for r in records:
        clip = clip_of(r)
        k = (clip.video, *("nan" if x is not None and math.isnan(x) else x for x in (clip.start, clip.end)))
        groups.setdefault(k, (clip, []))[1].append(r)
    return {clip: recs for clip, recs in groups.values()}


@dataclass
class ClipFeatures:
    clip: Clip
    features: torch.Tensor  # [n, P, Dv] float32
    meta: FrameMeta
    records: list  # the records of this clip, in input order


def iter_clip_features(cache: FeatureCache, records: Iterable, video_root: str | Path, n_frames: int, *,
                       ext: str = ".mp4", policy: BadVideoPolicy = BadVideoPolicy.FAIL,
                       skip_log: SkipLog | None = None) -> Iterator[ClipFeatures]:
    """For each clip of `records`: its features from the cache (one decode + one ViT pass per clip on a miss).

    Video ids are resolved under `video_root` safely. A bad video under SKIP is recorded once per record of the clip
    (id = qid) in `skip_log` and its records are not yielded; under FAIL the VideoError propagates."""
    policy = BadVideoPolicy(policy)
    if policy is BadVideoPolicy.SKIP and skip_log is None:
        raise ValueError("policy=skip needs a SkipLog to record what was skipped")
    for clip, recs in group_by_clip(records).items():
        try:
            path = resolve_video_path(video_root, clip.video, ext)
            features, meta = cache.get(path, n_frames, clip.start, clip.end)
        except VideoError as e:
            if policy is BadVideoPolicy.FAIL:
                raise
            for r in recs:
                skip_log.add(getattr(r, "qid", clip.video), clip.video, e.kind, detail=str(e))
            continue
        yield ClipFeatures(clip, features, meta, recs)


# ----------------------------------------------------------------------------------- single-video inference


def clip_features(model, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None,
                  *, cache: FeatureCache | None = None, sample: FrameSample | None = None
                  ) -> tuple[torch.Tensor, FrameMeta]:
    """Features [n, P, Dv] and frame facts of one clip, through `cache` when given."""
    if cache is not None:
        return cache.get(video, n_frames, start, end, sample=sample)
    if sample is None:
        sample = read_frames(video, n_frames, start, end, size=model.config.image_size)
    with torch.no_grad():
        device = next(model.vision.parameters()).device
        features = model.encode_frames(sample.pixels.to(device)).float().cpu()
    return features, FrameMeta.from_sample(sample)


def _device(model) -> torch.device:
    return next(model.t5.parameters()).device


def score_frames(model, video_path: str | Path, query: str, n_frames: int = 32, *,
                 options: Sequence[str] | None = None, start: float | None = None, end: float | None = None,
                 cache: FeatureCache | None = None) -> list[tuple[float, float]]:
    """The Localizer's score (logit of `yes`, paper §3.1) for each of `n_frames` uniformly sampled frames:
    [(timestamp seconds, score)] in temporal order.

    Without `options` the query is asked as in QVHighlights pre-training (`Question: {query}. Option A: yes. Option
    B: no. Does the information ...`, paper §3.3); with them, as the Localizer prompt of a multiple-choice question.
    """
    if options is None:
        loc_prompt = prompts.qvh_localizer_prompt(query)
    else:
        loc_prompt = prompts.localizer_prompt(query, options)
    features, meta = clip_features(model, video_path, n_frames, start, end, cache=cache)
    model.eval()
    with torch.no_grad():
        scores = model.localize(features.unsqueeze(0).to(_device(model)), [loc_prompt]).scores[0]  # [T]
    return [(float(t), float(s)) for t, s in zip(meta.timestamps, scores.float().cpu())]


@dataclass(frozen=True)
class VideoAnswer:
    """What SeViLA's forward chain (Localizer -> Answerer) decided about one question on one video."""

    pred: int  # option index
    option_logits: list[float]  # the letter logits (A.. for the question's options)
    option_probs: list[float]  # softmax over the question's options
    keyframes: list[int]  # positions among the sampled frames, temporal order
    keyframe_timestamps: list[float]
    frame_indices: list[int]  # sampled video frame indices
    frame_timestamps: list[float]
    frame_scores: list[float]  # Localizer score per sampled frame
    qa_truncated: bool
    loc_truncated: bool
    window_fallback: bool

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def answer_video(model, video_path: str | Path, question: str | None, options: Sequence[str], *, n_frames: int = 32,
                 n_keyframes: int = 4, start: float | None = None, end: float | None = None,
                 cache: FeatureCache | None = None, sample: FrameSample | None = None) -> VideoAnswer:
    """SeViLA on one video (paper §3.1 forward chain): the Localizer picks `n_keyframes` of `n_frames` uniformly
    sampled frames, the Answerer reads them together and picks an option. `question=None` means VLEP."""
    if not 1 <= n_keyframes <= n_frames:
        raise ValueError(f"need 1 <= keyframes <= frames, got {n_keyframes} of {n_frames}")
    qa_prompt, loc_prompt = prompts.qa_prompts(question, options)
    features, meta = clip_features(model, video_path, n_frames, start, end, cache=cache, sample=sample)
    model.eval()
    with torch.no_grad():
        res = model.answer(features.unsqueeze(0).to(_device(model)), [qa_prompt], [len(options)],
                           selector=Selector.LOCALIZER, fusion=Fusion.CONCAT, n_keyframes=n_keyframes,
                           loc_prompts=[loc_prompt])
    logits = res.option_logits[0, : len(options)].float().cpu()  # [n_options]
    keyframes = [int(k) for k in res.frames[0].cpu()]
    return VideoAnswer(
        pred=int(res.pred[0]), option_logits=logits.tolist(), option_probs=logits.softmax(0).tolist(),
        keyframes=keyframes, keyframe_timestamps=[float(meta.timestamps[k]) for k in keyframes],
        frame_indices=[int(i) for i in meta.indices], frame_timestamps=[float(t) for t in meta.timestamps],
        frame_scores=[float(s) for s in res.frame_scores[0].float().cpu()],
        qa_truncated=bool(res.qa_truncated[0]), loc_truncated=bool(res.loc_truncated[0]),
        window_fallback=bool(meta.window_fallback))
