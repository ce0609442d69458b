"""Host memory and read cost of a training stage's items: features held in RAM vs read back from the feature cache
(`sevila.inference.features.StoredFeatures`, what the stages keep when `frames.cache` is a folder).

    python bench/stored_features.py [--clips 48] [--n-frames 32] [--out bench/results/stored_features.json]

One process, one model, the same clips, so the ratios do not depend on the machine:
- memory: the resident set (VmRSS) added by building one item per clip the way `pretrain_localizer` /
  `refine_localizer` do, once keeping `ClipFeatures.features` (held: every clip's float32 tensor stays alive) and
  once keeping `ClipFeatures.held` (stored: a reference per clip). The stored pass runs first, so memory the held
  pass frees later cannot flatter it.
- read cost: `sevila.stages.common.stack` of a batch of 8 stored items (8 safetensors reads + fp16 -> fp32) against the
  same batch held, and against one Localizer training step on that batch (forward + backward of `localizer_loss`),
  which is what the read is added to.

The model is bench/forward_chain.py's (BLIP-2's feature shape per frame: 224 px, 14 px patches, 257 tokens; width
256) with one ViT layer: the ViT's depth changes how long the cache takes to fill, not what is measured.
"""
from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.forward_chain import small_config  # noqa: E402
from sevila.atomic import atomic_write_json  # noqa: E402
from sevila.data.records import QARecord  # noqa: E402
from sevila.inference.features import FeatureCache, iter_clip_features  # noqa: E402
from sevila.model import prompts  # noqa: E402
from sevila.model.configuration import SeViLAConfig
from sevila.model.modeling import SeViLA  # noqa: E402
from sevila.model.tokenizer import build_tiny_tokenizer  # noqa: E402
from sevila.stages.common import stack  # noqa: E402
from sevila.synthetic.render import write_mp4  # noqa: E402
from sevila.synthetic.world import world_text  # noqa: E402

BATCH = 8


def bench_config(vocab_size: int) -> SeViLAConfig:
    """bench/forward_chain.py's model with one ViT layer (the ViT only fills the cache here)."""
    config = small_config(vocab_size)
    return dataclasses.replace(config, vision=dict(config.vision, num_hidden_layers=1))


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def clips_of(root: Path, n_clips: int) -> list[QARecord]:
    """`n_clips` distinct clips: 4 noise videos of 20 s, each cut into windows [i, i + 4] s (one cache entry each)."""
    rng = np.random.default_rng(0)
    for v in range(4):
        write_mp4(root / f"v{v}.mp4", rng.integers(0, 256, size=(160, 64, 64, 3), dtype=np.uint8), fps=8)
    recs = []
    for i in range(n_clips):
        start = (i // 4) * 16 / max(1, n_clips // 4)
        recs.append(QARecord("nextqa", f"q{i}", f"v{i % 4}", "what is shown", ("a", "b"), 0,
                             start=round(start, 3), end=round(start + 4.0, 3)))
    return recs


def release_freed() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc malloc_trim), so RSS counts live memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc: RSS then also holds freed memory the allocator kept
        pass


def build_items(cache: FeatureCache, recs, root: Path, n_frames: int, keep: str) -> tuple[list[dict], int]:
    release_freed()
    before = rss_bytes()
    items = [{"features": getattr(c, keep), "prompt": prompts.qvh_localizer_prompt("what is shown"),
              "labels": torch.zeros(n_frames, dtype=torch.bool)}
             for c in iter_clip_features(cache, recs, root, n_frames)]
    release_freed()
    return items, rss_bytes() - before


def seconds(fn, repeats: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--n-frames", type=int, default=32)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stored_features.json")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = build_tiny_tokenizer(world_text(), tmp / "tok", vocab_size=256)
        model = SeViLA(bench_config(len(tok)), tok).eval()
        recs = clips_of(tmp, args.clips)
        cache = FeatureCache(tmp / "cache", model)
        t0 = time.perf_counter()
        for _ in iter_clip_features(cache, recs, tmp, args.n_frames):  # fill the cache (both passes then hit it)
            pass
        fill_s = time.perf_counter() - t0
        stored, stored_rss = build_items(cache, recs, tmp, args.n_frames, "held")
        held, held_rss = build_items(cache, recs, tmp, args.n_frames, "features")
        clip_bytes = held[0]["features"].numel() * 4
        read_stored = seconds(lambda: stack(stored[:BATCH], "features"))
        read_held = seconds(lambda: stack(held[:BATCH], "features"))
        model.set_trainable(localizer=True)

        def step() -> None:
            loss, _ = model.localizer_loss(stack(held[:BATCH], "features"), [it["prompt"] for it in held[:BATCH]],
                                           torch.stack([it["labels"] for it in held[:BATCH]]))
            loss.backward()
            model.zero_grad(set_to_none=True)

        step_s = seconds(step, repeats=2)
    result = {
        "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "clips": args.clips, "n_frames": args.n_frames, "clip_mb_float32": round(clip_bytes / 1e6, 2),
        "cache_fill_seconds": round(fill_s, 1),
        "rss_added_mb": {"held": round(held_rss / 1e6, 1), "stored": round(stored_rss / 1e6, 1),
                         "held_expected": round(args.clips * clip_bytes / 1e6, 1)},
        "rss_ratio_stored_to_held": round(stored_rss / held_rss, 4) if held_rss > 0 else None,
        "batch_read_ms": {"held": round(read_held * 1e3, 2), "stored": round(read_stored * 1e3, 2)},
        "stored_read_share_of_a_localizer_step": round(read_stored / step_s, 4),
    }
    atomic_write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
