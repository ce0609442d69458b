"""The ViT feature cache, question grouping by clip, and the Localizer over one video (`score_frames`; answering
one video is `sevila.inference.predictor`).

Why a cache (docs/design.md §5): per question at full size most compute is the frozen ViT-g over `n_frames` frames, and
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

Disk at real size: an entry is n_frames x 257 tokens x 1408 (ViT-g/14 at 224 px) x 2 bytes, 23.2 MB at 32 frames,
so a whole benchmark's cache runs to 100+ GB (`entry_bytes`; README "Disk and GPU memory"). Two answers:
- a budget (`budget_bytes`): after every write the least recently USED entries are deleted until the cache fits.
  Last use is recorded as the entry's mtime (set on write and on every hit; atime is unreliable on relatime/noatime
  mounts). Only finished entries (`<key>.safetensors`) are counted or deleted, never the temp file of a write in
  progress, and never the entry this process just wrote; several processes may share one cache: an entry deleted
  under a reader is a miss there (recomputed), and an entry used again since the scan (newer mtime) is kept.
- no cache at all (`root=None`): every clip is decoded and encoded on every request, rounded to the storage dtype
  exactly as a write would, so the chain's numbers do not depend on whether or where features are cached.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Sequence, TypeVar

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sevila.atomic import atomic_path
from sevila.data.video import (
    Backend, BadVideoPolicy, FrameSample, SkipLog, VideoError, VideoNotFound, read_frames, resolve_video_path,
)
from sevila.model import prompts

log = logging.getLogger(__name__)

FEATURE_FORMAT = "sevila.features/1"  # bump when what `encode_frames` returns changes meaning (e.g. pre-LN)
_CONTENT_CHUNK = 1 << 20  # 1 MiB from each end of the file for the content identity
_FP16_MAX = float(torch.finfo(torch.float16).max)
_ENTRY_SUFFIX = ".safetensors"  # finished entries only: atomic_path's temp files are `.<name>.<random>.tmp`
_GB = 1e9


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


def entry_bytes(n_frames: int, n_tokens: int, width: int, store_dtype: StoreDtype = StoreDtype.FP16) -> int:
    """Bytes of the features of one cached clip: n_frames x n_tokens x width x bytes per value (both storage dtypes
    take 2). The file adds its header, indices and timestamps (about 1 kB + 16 bytes per frame)."""
    return int(n_frames) * int(n_tokens) * int(width) * _itemsize(StoreDtype(store_dtype))


def _itemsize(store_dtype: StoreDtype) -> int:
    return torch.finfo(torch.float16 if store_dtype is StoreDtype.FP16 else torch.bfloat16).bits // 8


def _now_ns() -> int:
    """The clock of last use (module-level so that a test can step it: file mtimes can tie within a tick)."""
    return time.time_ns()


@dataclass(frozen=True)
class CacheUsage:
    entries: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.entries} entries, {self.bytes / _GB:.3f} GB"


# ------------------------------------------------------------------------------------------------- cache


class FeatureCache:
    """On-disk cache of pre-LN ViT features per (video, n_frames, window), or no cache at all (`root=None`).

    `get(video, n, start, end)` -> (features [n, P, Dv] float32 on CPU, FrameMeta). A miss decodes the clip (or uses
    a FrameSample the caller already decoded), runs the ViT in chunks of `chunk_size` frames, and stores the result.
    `budget_bytes` (None: unlimited) bounds the cache's size by deleting least recently used entries after each
    write (module docstring). The vision fingerprint is computed once, at construction (not at all without a root):
    if the ViT's weights are changed in place afterwards, call `refresh_fingerprint()` (the ViT is frozen in SeViLA,
    so this does not happen in the pipeline). Counters: `hits`, `misses`, `frames_encoded`, `evicted`.
    """

    def __init__(self, root: str | Path | None, model, *, store_dtype: StoreDtype = StoreDtype.FP16,
                 chunk_size: int = 32, identity: VideoIdentity = VideoIdentity.STAT, backend: Backend = Backend.AUTO,
                 fingerprint: str | None = None, budget_bytes: int | None = None) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if budget_bytes is not None and (root is None or budget_bytes <= 0):
            raise ValueError(f"budget_bytes={budget_bytes} needs a cache folder and a size > 0")
        self.root = Path(root) if root is not None else None
        self.model = model
        self.store_dtype = StoreDtype(store_dtype)
        self.chunk_size = int(chunk_size)
        self.identity = VideoIdentity(identity)
        self.backend = Backend(backend)
        self.budget_bytes = budget_bytes
        self.fingerprint = fingerprint or (vision_fingerprint(model) if self.root is not None else None)
        self.hits = self.misses = self.frames_encoded = self.evicted = 0
        if self.root is not None:
            budget = "unlimited" if budget_bytes is None else f"{budget_bytes / _GB:.3f} GB"
            log.info("feature cache %s: %s (budget %s)", self.root, self.usage(), budget)
        else:
            log.info("feature cache off: every clip's ViT features are computed when asked for")

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
                         self.fingerprint or vision_fingerprint(self.model), self.store_dtype)

    def path_for(self, key: str) -> Path:
        if self.root is None:
            raise ValueError("the feature cache is off (no folder): no entry has a path")
        return self.root / key[:2] / f"{key}{_ENTRY_SUFFIX}"

    # ---- the one public operation

    def get(self, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None,
            sample: FrameSample | None = None, *, expect_key: str | None = None) -> tuple[torch.Tensor, FrameMeta]:
        """Features and frame facts of the clip (`get_keyed` without its key)."""
        features, meta, _ = self.get_keyed(video, n_frames, start, end, sample, expect_key=expect_key)
        return features, meta

    def get_keyed(self, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None,
                  sample: FrameSample | None = None, *, expect_key: str | None = None
                  ) -> tuple[torch.Tensor, FrameMeta, str | None]:
        """Features and frame facts of `n_frames` uniformly sampled frames of the clip [start, end] of `video`.

        `sample` (optional) is the same clip already decoded by the caller with `read_frames(video, n_frames,
        start, end, size=image_size)`; on a miss it is encoded instead of decoding the video again. `expect_key`
        (with a cache folder): the key this clip had when first read; another key now means the video changed on
        disk, a VideoError (the key is computed once either way: with content identity it reads 2 MiB). Also returns
        the key (None without a cache folder), so a caller that keeps the clip's `StoredFeatures` need not compute
        it again."""
        video = Path(video)
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        path = fields = key = None
        if self.root is not None:
            key, fields = self._key(video, n_frames, start, end)
            if expect_key is not None and key != expect_key:
                raise VideoError(video, "changed on disk since this run computed its features (the cache key "
                                        "holds the file's identity)")
            path = self.path_for(key)
            got = self._read(path, fields) if path.is_file() else None
            if got is not None:
                self.hits += 1
                _touch(path)  # the record of last use that eviction orders by
                return (*got, key)
        self.misses += 1
        if sample is None:
            sample = read_frames(video, n_frames, start, end, size=self.model.config.image_size, backend=self.backend)
        elif sample.pixels.shape[0] != n_frames:
            raise ValueError(f"{video}: the given sample has {sample.pixels.shape[0]} frames, not {n_frames}")
        meta = FrameMeta.from_sample(sample)
        stored = self._stored(self.encode(sample.pixels), video)  # [n, P, Dv] float32 -> the storage dtype
        if path is not None:
            self._write(path, stored, meta, fields, video)
            self._evict(keep=path)
        # Return what a later hit will return (the stored precision), so a run never depends on whether the
        # features came from the cache, were just computed, or are never cached.
        return stored.float(), meta, key

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, H, W] -> pre-LN ViT features [n, P, Dv] float32 on CPU, `chunk_size` frames per pass."""
        weight = next(self.model.vision.parameters())  # the ViT may be held in bf16 on a GPU (sevila.precision)
        out = []
        with torch.no_grad():
            for i in range(0, pixels.shape[0], self.chunk_size):
                chunk = pixels[i:i + self.chunk_size].to(weight.device, weight.dtype)
                out.append(self.model.encode_frames(chunk).float().cpu())  # [c, P, Dv]
                self.frames_encoded += chunk.shape[0]
        return torch.cat(out, dim=0)

    # ---- size and eviction

    def entries(self) -> list[tuple[Path, int, int]]:
        """Every finished entry as (path, size in bytes, last use in ns), oldest use first. Files that vanish
        while listed (another process evicting) are left out."""
        found = []
        if self.root is None or not self.root.is_dir():
            return found
        for sub in os.scandir(self.root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for e in os.scandir(sub.path):
                if e.name.startswith(".") or not e.name.endswith(_ENTRY_SUFFIX):
                    continue  # a temp file of a write in progress (atomic_path) is never counted or deleted
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((Path(e.path), st.st_size, st.st_mtime_ns))
        return sorted(found, key=lambda x: (x[2], x[0].name))

    def usage(self) -> CacheUsage:
        listed = self.entries()
        return CacheUsage(len(listed), sum(size for _, size, _ in listed))

    def _evict(self, keep: Path) -> None:
        """Delete least recently used entries until the cache fits `budget_bytes`; `keep` (just written) stays."""
        if self.budget_bytes is None:
            return
        listed = self.entries()
        total, count = sum(size for _, size, _ in listed), len(listed)
        kept = next((size for path, size, _ in listed if path == keep), 0)
        gone: list[tuple[Path, int, str]] = []
        for path, size, used in listed:
            if total <= self.budget_bytes:
                break
            if path == keep:
                continue
            try:
                if os.stat(path).st_mtime_ns != used:
                    continue  # used again since the scan (by another process): no longer the least recent
                video = _entry_video(path)
                path.unlink()
            except FileNotFoundError:  # another process evicted it first: it no longer counts either way
                total, count = total - size, count - 1
                continue
            total, count = total - size, count - 1
            gone.append((path, size, video))
            log.debug("feature cache: evicted %s (video %s)", path.name, video)
        if gone:
            self.evicted += len(gone)
            names = ", ".join(f"{p.stem[:12]} ({video})" for p, _, video in gone[:3])
            more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
            log.info("feature cache %s: evicted %d least recently used entr%s (%.3f GB: %s%s); now %s of the %.3f GB "
                     "budget", self.root, len(gone), "y" if len(gone) == 1 else "ies",
                     sum(s for _, s, _ in gone) / _GB, names, more, CacheUsage(count, total),
                     self.budget_bytes / _GB)
        if total > self.budget_bytes:
            log.warning("feature cache %s: %.3f GB after eviction, over the %.3f GB budget (the entry in use is "
                        "never deleted; set frames.cache_budget_gb above one clip's %.3f GB)", self.root,
                        total / _GB, self.budget_bytes / _GB, kept / _GB)

    # ---- file format

    def _stored(self, features: torch.Tensor, video: Path) -> torch.Tensor:
        """Features in the storage dtype (fp16, or bf16 when they exceed fp16's range or when asked)."""
        dtype = torch.float16 if self.store_dtype is StoreDtype.FP16 else torch.bfloat16
        if dtype is torch.float16 and features.abs().max().item() > _FP16_MAX:
            log.warning("%s: ViT features exceed the float16 range; this entry is stored as bfloat16", video)
            dtype = torch.bfloat16
        return features.to(dtype).contiguous()

    def _write(self, path: Path, stored: torch.Tensor, meta: FrameMeta, fields: dict[str, Any], video: Path) -> None:
        """Store one entry atomically, its last use = now."""
        tensors = {
            "features": stored,  # [n, P, Dv] fp16 or bf16
            "indices": torch.as_tensor(meta.indices, dtype=torch.int64),  # [n]
            "timestamps": torch.as_tensor(meta.timestamps, dtype=torch.float64),  # [n]
        }
        header = {"format": FEATURE_FORMAT, "key": json.dumps(fields, sort_keys=True), "video": str(video),
                  "fps": repr(meta.fps), "n_video_frames": str(meta.n_video_frames),
                  "window_fallback": str(int(meta.window_fallback))}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=header)
            _touch(tmp)

    def _read(self, path: Path, fields: dict[str, Any]) -> tuple[torch.Tensor, FrameMeta] | None:
        """A cached entry, or None (logged) when the file is gone, unreadable or not the entry the key promises."""
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
        except FileNotFoundError:  # evicted by another process between is_file() and the read: a plain miss
            return None
        except Exception as e:  # a truncated or foreign file is a miss, then overwritten
            log.warning("feature cache entry %s is unusable (%s); recomputing it", path, e)
            return None
        return features.float(), meta


def _touch(path: Path) -> None:
    """Record a use of a cache entry (its mtime). An entry evicted meanwhile by another process, or a cache this
    user may read but not write, is no error: the entry is then ordered by its last write only."""
    now = _now_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:
        pass


def _entry_video(path: Path) -> str:
    """The video an entry was computed from (its header), for the eviction log; FileNotFoundError if it is gone."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("video", "?")
    except FileNotFoundError:
        raise
    except Exception:  # a damaged entry is evicted like any other
        return "?"


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


class StoredFeatures:
    """One clip's features left in the feature cache: `load()` reads them back when a batch needs them. A training
    stage holds one of these per question instead of the tensor, so a split never sits in RAM whole (NExT-QA's train
    split at 32 ViT-g frames is ~180 GB in float32; its cache entries are read one batch at a time). `rows`: the
    frames kept, in order (an Answerer's keyframes), None for all. An entry evicted since (`frames.cache_budget_gb`)
    is recomputed by the read; a video changed since is an error, not silently other features."""

    __slots__ = ("cache", "video", "n_frames", "start", "end", "rows", "key")

    def __init__(self, cache: FeatureCache, video: Path, n_frames: int, start: float | None, end: float | None,
                 rows: tuple[int, ...] | None = None, key: str | None = None) -> None:
        if cache.root is None:
            raise ValueError("StoredFeatures needs a feature cache folder to read from")
        self.cache, self.video, self.n_frames, self.start, self.end = cache, Path(video), n_frames, start, end
        self.rows = rows
        self.key = key or cache.key(video, n_frames, start, end)

    def load(self) -> torch.Tensor:
        """[n or len(rows), P, Dv] float32 on CPU."""
        features, _ = self.cache.get(self.video, self.n_frames, self.start, self.end, expect_key=self.key)
        return features if self.rows is None else features[list(self.rows)]

    def take(self, rows: Sequence[int]) -> StoredFeatures:
        """The same clip with only `rows` of the current frames (indices into what `load` returns now)."""
        rows = [int(r) for r in rows]
        kept = tuple(rows) if self.rows is None else tuple(self.rows[r] for r in rows)
        return StoredFeatures(self.cache, self.video, self.n_frames, self.start, self.end, kept, self.key)

    def identity(self) -> str:
        """What a content digest of the item reads: the cache key (video identity, sampling, ViT) and the rows."""
        return f"{self.key}|{self.rows}"


def load_features(features: torch.Tensor | StoredFeatures) -> torch.Tensor:
    """The tensor [n, P, Dv] of a clip's features as a stage holds them: the tensor itself (no cache folder to read
    them back from) or StoredFeatures."""
    return features.load() if isinstance(features, StoredFeatures) else features


def take_frames(features: torch.Tensor | StoredFeatures, rows: Sequence[int]) -> torch.Tensor | StoredFeatures:
    """`rows` of a clip's frames, held or stored alike."""
    if isinstance(features, StoredFeatures):
        return features.take(rows)
    return features[torch.as_tensor(list(rows), dtype=torch.long)]


@dataclass
class ClipFeatures:
    clip: Clip
    features: torch.Tensor  # [n, P, Dv] float32
    meta: FrameMeta
    records: list  # the records of this clip, in input order
    stored: StoredFeatures | None = None  # where `features` can be read back from (None: no cache folder)

    @property
    def held(self) -> torch.Tensor | StoredFeatures:
        """What an item should keep: the stored reference when there is one, else the tensor itself."""
        return self.stored if self.stored is not None else self.features


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
            features, meta, key = cache.get_keyed(path, n_frames, clip.start, clip.end)
        except VideoError as e:
            if policy is BadVideoPolicy.FAIL:
                raise
            for r in recs:
                skip_log.add(getattr(r, "qid", clip.video), clip.video, e.kind, detail=str(e))
            continue
        stored = StoredFeatures(cache, path, n_frames, clip.start, clip.end, key=key) if key is not None else None
        yield ClipFeatures(clip, features, meta, recs, stored)


# ----------------------------------------------------------------------------------- single-video inference


def clip_features(model, video: str | Path, n_frames: int, start: float | None = None, end: float | None = None,
                  *, cache: FeatureCache | None = None, sample: FrameSample | None = None
                  ) -> tuple[torch.Tensor, FrameMeta]:
    """Features [n, P, Dv] and frame facts of one clip, through `cache` when given."""
    if cache is not None:
        return cache.get(video, n_frames, start, end, sample=sample)
    if sample is None:
        sample = read_frames(video, n_frames, start, end, size=model.config.image_size)
    weight = next(model.vision.parameters())  # the ViT may be held in bf16 on a GPU (sevila.precision)
    with torch.no_grad():
        features = model.encode_frames(sample.pixels.to(weight.device, weight.dtype)).float().cpu()
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
