"""What the chain's stages share: where each trained module lives, how a model is assembled from the backbone
plus module checkpoints, and how records become cached ViT features.

Module checkpoints hold ONE module each and name it (sevila.weights.ours), so assembling a variant is: load the
backbone, then overlay the Localizer and Answerer it asks for; nothing is merged by hand and every load is
reported (the official code's hard-coded path silently overwrote the pre-trained Localizer, docs/design.md §2).
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from sevila.atomic import atomic_write_json
from sevila.config import AnswererId, Config, Fusion, LocalizerId, Precision, Selector, TrainConfig, to_dict
from sevila.data.records import QARecord, Record, read_records
from sevila.data.video import BadVideoPolicy, SkipLog
from sevila.errors import BadArgument
from sevila.inference.features import (
    ClipFeatures, FeatureCache, StoredFeatures, group_by_clip, iter_clip_features, load_features,
)
from sevila.model import chain
from sevila.model.prompts import qa_prompts
from sevila.tracking.inputs import file_digest
from sevila.training.loop import steps_per_epoch, train
from sevila.weights.checkpoint_dir import load_weights, trainable_state
from sevila.weights.load import assemble
from sevila.weights.ours import save_sevila

log = logging.getLogger(__name__)


def localizer_dir(cfg: Config, ident: LocalizerId, round_: int | None = None) -> Path:
    """models/localizer/qvh, models/localizer/{sr,qvh_sr}_r<round> (self-refined ones carry their round)."""
    ident = LocalizerId(ident)
    if ident is LocalizerId.BACKBONE:
        raise ValueError("the backbone's Localizer is part of the backbone checkpoint, not a module directory")
    name = ident.value if not ident.refined else f"{ident.value}_r{round_ or cfg.round}"
    return Path(cfg.paths.models) / "localizer" / name


def answerer_dir(cfg: Config, answerer: AnswererId = AnswererId.FINETUNED, round_: int | None = None) -> Path:
    """models/answerer/<id>_r<round>: finetuned_r1 (SeViLA's, on keyframes), finetuned_uniform_r1, ..."""
    answerer = AnswererId(answerer)
    if not answerer.finetuned:
        raise ValueError("the zero-shot Answerer is part of the backbone checkpoint, not a module directory")
    return Path(cfg.paths.models) / "answerer" / f"{answerer.value}_r{round_ or cfg.round}"


def round_dir(cfg: Config, round_: int | None = None) -> Path:
    return Path(cfg.paths.runs) / f"round{round_ or cfg.round}"


def device_of(cfg: Config) -> torch.device:
    if cfg.model.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.model.device)


def load_model(cfg: Config, localizer: LocalizerId = LocalizerId.BACKBONE,
               answerer: AnswererId = AnswererId.ZERO_SHOT, round_: int | None = None,
               precision: Precision = Precision.AUTO):
    """The backbone from `model.weights` (with `model.backbone`) and the asked-for Localizer and Answerer laid over
    it, frozen, eval, on `model.device`; on a GPU with bf16 the frozen ViT and T5 are held in bf16 (`precision`,
    sevila.weights.load.assemble; on a CPU nothing changes)."""
    modules = []
    if LocalizerId(localizer) is not LocalizerId.BACKBONE:
        modules.append(localizer_dir(cfg, localizer, round_))
    if AnswererId(answerer).finetuned:
        modules.append(answerer_dir(cfg, answerer, round_))
    model, reports = assemble(cfg.model.weights, cfg.model.backbone, modules, device=device_of(cfg),
                              precision=precision)
    for rep in reports:
        log.info("%s", rep.summary())
    if cfg.model.max_text_len is not None:  # the prompt budget is read at each tokenisation: no weight depends on it
        model.config = dataclasses.replace(model.config, max_text_len=cfg.model.max_text_len)
    return model


def feature_cache(cfg: Config, model) -> FeatureCache:
    """The ViT feature cache `frames.cache` bounded by `frames.cache_budget_gb`, or none (`frames.cache: null`)."""
    budget = cfg.frames.cache_budget_gb
    return FeatureCache(cfg.frames.cache, model, budget_bytes=None if budget is None else int(budget * 1e9))


def records_file(cfg: Config, stem: str) -> Path:
    """The canonical records file `<paths.processed>/<stem>.jsonl` (`train`, `moments_val`, ...)."""
    return Path(cfg.paths.processed) / f"{stem}.jsonl"


def read_split(cfg: Config, split: str, moments: bool = False) -> list[Record]:
    return read_records(records_file(cfg, f"moments_{split}" if moments else split))


class Clips:
    """`split_clips`' result: one clip's features at a time on each pass (each pass reads the cache again), and
    its length is the number of clips, so a progress bar knows its total."""

    def __init__(self, make: Callable[[], Iterator[ClipFeatures]], n_clips: int) -> None:
        self.make, self.n_clips = make, n_clips

    def __iter__(self) -> Iterator[ClipFeatures]:
        return self.make()

    def __len__(self) -> int:
        return self.n_clips


def split_clips(cfg: Config, model, records: Sequence[Record], n_frames: int | None = None,
                skip_log: SkipLog | None = None) -> Clips:
    """Cached ViT features per clip (one decode and one ViT pass per video and window, shared by every question,
    module, variant and round), the videos read from the records' benchmark folder (`Config.video_folder`). Bad
    videos follow `frames.bad_video`: fail, or skip and write them down.

    One clip at a time, so a pass over a split holds one clip's features at once; items that outlive the
    pass keep `ClipFeatures.held` (with a cache folder, a reference read back per batch: `stack`)."""
    cache = feature_cache(cfg, model)
    policy = BadVideoPolicy(cfg.frames.bad_video.value)
    kinds = sorted({r.dataset for r in records})
    if len(kinds) > 1:  # one records file is one benchmark; a mix would need two video folders
        raise ValueError(f"records of several datasets {kinds} in one call; pass one benchmark's records at a time")
    videos = cfg.video_folder(kinds[0]) if kinds else Path(cfg.paths.world) / "videos"
    n_frames = cfg.frames.n_frames if n_frames is None else n_frames  # 0 is an error downstream, never "default"
    skip_log = skip_log if skip_log is not None else SkipLog()
    return Clips(lambda: iter_clip_features(cache, records, videos, n_frames, policy=policy, skip_log=skip_log),
                 len(group_by_clip(records)))


def qa_prompt_pair(rec: QARecord) -> tuple[str, str]:
    """(Answerer prompt, Localizer prompt) of a record, VLEP's question-less form included (docs/design.md §2)."""
    return qa_prompts(rec.question, rec.options)


def fit_module(cfg: Config, model, module: str, items: list, loss_fn, stage: str, settings: TrainConfig,
               out_dir: Path, logger=None, eval_fn=None, best_metric: str | None = None) -> dict:
    """Train one module (`localizer` or `answerer`) with the shared loop, then save it alone to `out_dir`.

    With `best_metric` (a key of `eval_fn`'s metrics, higher is better) the module is evaluated after every epoch
    (unless `train.eval_every` says otherwise) and the epoch with the best value is what gets saved, as LAVIS's
    runner keeps its best val checkpoint: a short fine-tuning on few examples is not monotone in its epochs.

    Training state (resumable after an interruption) lives under runs/train/<stage>-<resume_key>: the same run
    resumes ("resuming at step N" in the log), while a run that reads anything different starts afresh; the
    published checkpoint holds and names one module."""
    if steps_per_epoch(len(items), settings.batch_size) == 0:  # before any setting is derived from it
        raise BadArgument(f"{stage}: {len(items)} training examples, fewer than one batch of "
                          f"{settings.batch_size}: lower {stage}.train.batch_size (and micro_batch) to at most "
                          f"{len(items)}, or give the split more examples")
    if eval_fn is not None and settings.eval_every is None:
        settings = dataclasses.replace(settings, eval_every=steps_per_epoch(len(items), settings.batch_size))
    model.set_trainable(**{module: True})
    work = Path(cfg.paths.runs) / "train" / f"{stage}-{resume_key(cfg, model, items, loss_fn, settings, out_dir)}"
    result = train(model, items, loss_fn, settings, work, collate_fn=list, logger=logger, eval_fn=eval_fn,
                   best_metric=best_metric, device=device_of(cfg))
    if result.best_checkpoint is not None and result.best_step != result.step:
        log.info("%s: keeping step %d (%s %.2f) of %d", stage, result.best_step, best_metric, result.best_value,
                 result.step)
        load_weights(model, result.best_checkpoint)
    model.set_trainable(**{module: False})
    kept = result.best_step if result.best_checkpoint is not None else result.step
    save_sevila(model, out_dir, modules=(module,), step=kept, run_config=to_dict(cfg))
    losses = [h["loss"] for h in result.history if "loss" in h]
    out = {"steps": result.step, "final_loss": losses[-1] if losses else float("nan"),
           "first_loss": losses[0] if losses else float("nan")}
    if best_metric is not None:
        out |= {"kept_step": kept, f"val_{best_metric}": result.best_value}
    return out


def qa_items(clips) -> list[dict]:
    """The labelled questions of `clips` with their clip's features [T, P, Dv], for `chain_accuracy`."""
    items = []
    for c in clips:
        for r in c.records:
            if r.answer is not None:
                qa, loc = qa_prompt_pair(r)
                items.append({"features": c.held, "qa": qa, "loc": loc, "answer": int(r.answer),
                              "n_options": len(r.options)})
    return items


@torch.no_grad()
def chain_accuracy(model, items: Sequence[dict], selector: Selector, n_keyframes: int, batch: int = 16) -> float:
    """Percent of `qa_items` the model answers right when `selector` picks `n_keyframes` of each clip's frames for
    the Answerer (concatenated): the val accuracy the chain's fine-tuning stages keep their best epoch by."""
    dev = next(model.t5.parameters()).device
    correct = 0
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        res = chain.answer(model, stack(chunk, "features").to(dev), [it["qa"] for it in chunk],
                           [it["n_options"] for it in chunk], selector=selector, fusion=Fusion.CONCAT,
                           n_keyframes=n_keyframes, loc_prompts=[it["loc"] for it in chunk],
                           gold=[it["answer"] for it in chunk])
        correct += int(res.correct.sum())
    return 100.0 * correct / max(1, len(items))


#: Code a training run's trajectory depends on besides the stage's own module (its loss function): the model, the
#: loop, the prompt texts and their tokenisation.
TRAINING_CODE = ("sevila.model.modeling", "sevila.model.configuration", "sevila.model.prompts",
                 "sevila.model.tokenizer", "sevila.model.precision", "sevila.training.loop",
                 "sevila.training.checkpointing")


def resume_key(cfg: Config, model, items: Sequence, loss_fn, settings: TrainConfig, out_dir: Path) -> str:
    """Names a training run by everything it reads, so its saved state is picked up again only by the same run:
    the training settings and output folder; the training items (features, prompts, labels: `content_digest`);
    the starting weights of the module that trains (every value) and the files of the frozen backbone by their
    CONTENT (`weights_identity`: a T5 swapped with its size and mtime kept is another T5); and the source of the
    code that computes the loss (the loss function's module and TRAINING_CODE)."""
    h = hashlib.sha256()
    h.update(json.dumps({"train": settings.to_dict(), "out": str(out_dir)}, sort_keys=True).encode())
    h.update(content_digest(items).encode())
    h.update(content_digest(dict(trainable_state(model)), sample_above=None).encode())
    digests = Path(cfg.paths.runs) / WEIGHT_DIGESTS
    for root in (cfg.model.weights, cfg.model.backbone):
        if root is not None:
            h.update(json.dumps(weights_identity(Path(root), digests)).encode())
    for name in sorted({loss_fn.__module__, *TRAINING_CODE}):
        h.update(Path(inspect.getsourcefile(sys.modules[name])).read_bytes())
    return h.hexdigest()[:12]


WEIGHT_DIGESTS = "weight_digests.json"  # under paths.runs (beside train/): each weights file's SHA-256 by its stat


def weights_identity(root: Path, cache: Path) -> list:
    """[relative path, size, SHA-256 prefix] of every file of a weights directory (or the one file). A digest is
    reused while the file's (device, inode, size, mtime, ctime) are unchanged, so a multi-GB ViT/T5 is hashed once
    per change: a rewrite that restores size and mtime (`cp -p`, `rsync -a`, `tar x`) still moves the ctime, which
    no one can set back, and is hashed again (issue 24)."""
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    out, changed = [], False
    for p in files:
        st = p.stat()
        stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = known.get(str(p.resolve()))
        if entry is None or entry[0] != stamp:
            entry, changed = [stamp, file_digest(p)], True
            known[str(p.resolve())] = entry
        out.append([str(p.relative_to(root)) if root.is_dir() else str(p), st.st_size, entry[1]])
    if changed:
        atomic_write_json(cache, known)
    return out


#: Tensors with more values than this are fingerprinted (dtype, shape, sum, a strided sample of SAMPLED values)
#: rather than hashed whole: cached ViT features are a deterministic function of video, frames and ViT, so a change
#: of any of those changes every value, and hashing all of a real training set's features would take minutes.
SAMPLE_ABOVE = 1 << 16
SAMPLED = 4096


def content_digest(obj, sample_above: int | None = SAMPLE_ABOVE) -> str:
    """A digest of nested items (mappings, sequences, tensors, arrays, strings, numbers). A tensor shared by several
    items (one clip's features, read by each of its questions) is digested once. Unknown types are an error rather
    than silently left out of the key."""
    h = hashlib.sha256()
    seen: dict[int, int] = {}  # id of a tensor/array of `obj` (alive while obj is) -> its first position

    def tensor(x, t: torch.Tensor) -> None:
        if id(x) in seen:
            h.update(f"<shared {seen[id(x)]}>".encode())
            return
        seen[id(x)] = len(seen)
        h.update(f"tensor|{t.dtype}|{tuple(t.shape)}|".encode())
        t = t.detach().cpu().contiguous().reshape(-1)
        if sample_above is not None and t.numel() > sample_above:
            h.update(repr(float(t.double().sum())).encode())
            t = t[:: max(1, t.numel() // SAMPLED)].contiguous()
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")

    def visit(x) -> None:
        if isinstance(x, torch.Tensor):
            tensor(x, x)
        elif isinstance(x, StoredFeatures):  # what the cache key names: video identity, sampling, ViT, rows
            h.update(f"stored|{x.identity()}|".encode())
        elif isinstance(x, np.ndarray):
            tensor(x, torch.from_numpy(np.ascontiguousarray(x)))
        elif isinstance(x, Mapping):
            h.update(f"map|{len(x)}|".encode())
            for k in sorted(x, key=str):
                h.update(f"{k!s}=".encode())
                visit(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"seq|{len(x)}|".encode())
            for v in x:
                visit(v)
        elif x is None or isinstance(x, (str, int, float, bool, np.generic)):
            h.update(f"{type(x).__name__}|{x!r}|".encode())
        else:
            raise TypeError(f"content_digest: cannot digest a {type(x).__name__}")

    visit(obj)
    return h.hexdigest()


def stack(batch: list, key: str) -> torch.Tensor:
    """The batch's `key` stacked [B, ...]; stored features (`StoredFeatures`) are read from the cache here."""
    return torch.stack([load_features(b[key]) for b in batch])
