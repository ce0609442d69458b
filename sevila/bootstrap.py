"""Bootstrap of the synthetic world's tiny image-language backbone (DESIGN.md §4): the stand-in for BLIP-2's
pre-training and Flan-T5's instruction tuning, run from nothing in a few minutes on two CPU cores.

Why a bootstrap at all. SeViLA starts from BLIP-2 (Yu et al. 2023, §3): a ViT and a Q-Former pre-trained on
image-text pairs, and Flan-T5, instruction-tuned so that it already answers text multiple choice in the
`Option A: ... select the correct answer` format. SeViLA then freezes ViT and T5 and trains only the Q-Formers;
its reverse chain (§3.2) needs an Answerer that answers correctly from a frame that shows the answer and not from
one that does not. A randomly initialised tiny backbone can do neither, so this stage gives it both abilities and
then freezes it, exactly where the real pipeline would load BLIP-2's weights.

What it trains on (nothing else; tests pin it):
- CAPTION: every sampled frame of every training video -> its caption (`synth.frame_caption`), with an empty
  text prompt: BLIP-2's image-to-text generative pre-training (Li et al. 2023, §3.3), queries -> caption.
- FRAME_QA: single frames INSIDE the event of a training question, with the official Answerer prompt and target
  `Option X`, the options re-shuffled per example: the analogue of BLIP-2/InstructBLIP image-QA data. Frames
  outside the event are never labelled with an answer, and no Localizer prompt and no multi-frame input is used,
  so the Localizer and the reverse chain learn from nothing they were shown here.
- MATCH and TEXT_QA: text-only multiple choice, the analogue of Flan's instruction tuning. TEXT_QA writes the
  frame as its caption (`Frame: a big red circle. Question: ... Option A: ...`) over freshly sampled world
  metadata (indices far beyond any generated video, so no question of the world is seen as text); MATCH is
  the bare skill under it: `Frame: red. Option A: green. Option B: red.` -> `Option B`.

The one thing that is hard (measured, see the module's report in `bootstrap_backbone`): the T5 must learn a
MATCHING circuit (find the option whose words equal the frame's content, emit that option's letter). Small
transformers sit on a long loss plateau before such content-addressed circuits form, and trained directly on
five-option QA a tiny T5 stayed at chance for thousands of steps. A curriculum breaks the plateau: first
two-option MATCH (escapes the plateau after ~600-900 steps of 64 examples), then 2-5 option MATCH mixed with
TEXT_QA, then the frames. Each phase keeps the easier tasks in its mix: dropping them right after the plateau
breaks was seen to make the young circuit collapse back to chance.

At the end the trained Answerer bridge (LayerNorm, Q-Former, query tokens, projection) is copied into the
Localizer slot too, as SeViLA starts both Q-Formers from BLIP-2's (official `load_qformer_loc`), everything is
frozen, and the four parts and the tokenizer are saved with `checkpoints.save_sevila`.
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sevila import prompts
from sevila.checkpoints import PARTS, save_sevila
from sevila.data import synth
from sevila.data.records import QARecord, read_records
from sevila.data.video import frame_labels, read_frames, resolve_video_path
from sevila.model import EncoderInputs, SeViLA, SeViLAConfig, sevila_tiny
from sevila.tokenizer import build_tiny_tokenizer, load_tokenizer, tokenize_prompts
from sevila.train import TrainConfig, train

log = logging.getLogger(__name__)

#: Text tasks hold the caption inside the prompt, so they run longer than the 77 tokens the model keeps of a
#: prompt after its visual tokens; T5 has only relative positions, so a longer text input is no new shape.
TEXT_MAX_LEN = 128
#: Word pool of MATCH: every colour and shape word of the world.
MATCH_WORDS: tuple[str, ...] = (*synth.COLOURS, *synth.SHAPES)
#: TEXT_QA samples world metadata from this index on: no generated video of any realistic world reaches it.
TEXT_META_OFFSET = 10_000_000
#: BLIP-2's generative pre-training gives the LLM the queries and no text; the prompt is then just </s>.
CAPTION_PROMPT = ""


class Task(str, enum.Enum):
    """One kind of bootstrap example (see the module docstring)."""

    MATCH = "match"  # text: `Frame: red. Option A: green. Option B: red.` -> `Option B`
    TEXT_QA = "text_qa"  # text: `Frame: <event caption>. <answerer prompt>` -> `Option X`
    CAPTION = "caption"  # frame (any): [Frame: ][queries] -> caption
    FRAME_QA = "frame_qa"  # frame (inside the event): [Frame: ][queries][answerer prompt] -> `Option X`

    @property
    def uses_frame(self) -> bool:
        return self in (Task.CAPTION, Task.FRAME_QA)


@dataclass(frozen=True)
class Example:
    """One training example. `frame` is a row of the training FrameTable for CAPTION/FRAME_QA, -1 for text."""

    task: Task
    prompt: str
    target: str
    frame: int = -1


@dataclass(frozen=True)
class TaskSpec:
    """A task as it appears in a phase's mix: `n_options` for MATCH/TEXT_QA is drawn from this range."""

    task: Task
    min_options: int = 5
    max_options: int = 5


@dataclass(frozen=True)
class Phase:
    """A curriculum phase: `steps` optimizer steps whose examples cycle through `mix` (so a task listed twice gets
    twice the share). `constant_lr`: no cosine decay inside the phase (a phase that must escape a plateau keeps
    its learning rate until its end)."""

    name: str
    steps: int
    mix: tuple[TaskSpec, ...]
    constant_lr: bool = True


@dataclass(frozen=True)
class BootstrapSettings:
    """The bootstrap recipe; the defaults are the measured one (see `bootstrap_backbone`'s metrics).

    Model: `d_model`-wide T5 with `t5_heads` heads (8 heads of width 8 broke the matching plateau more reliably
    than 4 of 16), `t5_layers` encoder and decoder layers, real T5's 32 relative buckets up to distance 128;
    ViT/Q-Former of width `d_model`, `image_size` input (the world renders 64x64), patch 8.
    """

    seed: int = 0
    vocab_size: int = 512
    image_size: int = 32
    d_model: int = 64
    t5_heads: int = 8
    t5_layers: int = 2
    n_query: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    batch_size: int = 64
    match_steps: int = 800  # phase 1: two-option MATCH only (the plateau breaks here)
    text_steps: int = 600  # phase 2: 2-5 option MATCH + TEXT_QA + captions
    joint_steps: int = 1000  # phase 3: FRAME_QA + captions + TEXT_QA + MATCH, cosine decay
    eval_every: int | None = None  # steps between evaluations inside a phase (None: at each phase's end)
    frames_per_video: int = 48  # frames decoded per training video (captions of all, QA of those in the event)
    n_eval_frames: int = 32  # frames per validation video for the single-frame accuracies
    n_text_metas: int = 4000  # world metadata sampled for TEXT_QA (text only)
    n_eval_text: int = 300  # held-out MATCH/TEXT_QA examples for the text accuracies

    def __post_init__(self) -> None:
        for name in ("vocab_size", "image_size", "d_model", "t5_heads", "t5_layers", "n_query", "batch_size",
                     "frames_per_video", "n_eval_frames", "n_text_metas", "n_eval_text"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BootstrapSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("match_steps", "text_steps", "joint_steps", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"BootstrapSettings.{name} must be >= 0, got {getattr(self, name)}")
        if self.d_model % self.t5_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of t5_heads {self.t5_heads}")
        if not self.lr > 0:
            raise ValueError(f"BootstrapSettings.lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BootstrapSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown bootstrap settings {unknown}; known: {sorted(known)}")
        return cls(**dict(d))


def curriculum(s: BootstrapSettings) -> tuple[Phase, ...]:
    """The phases of the recipe. Captions run from the start (the ViT and Q-Former learn to see while the T5
    learns to match); frames enter QA only once the T5 matches on text."""
    cap = TaskSpec(Task.CAPTION)
    return (
        Phase("match", s.match_steps, (TaskSpec(Task.MATCH, 2, 2),)),
        Phase("text", s.text_steps, (TaskSpec(Task.MATCH, 2, 5), TaskSpec(Task.MATCH, 4, 5),
                                     TaskSpec(Task.TEXT_QA, 2, 5), TaskSpec(Task.TEXT_QA, 5, 5), cap)),
        Phase("joint", s.joint_steps, (TaskSpec(Task.FRAME_QA), TaskSpec(Task.FRAME_QA), TaskSpec(Task.TEXT_QA),
                                       TaskSpec(Task.MATCH, 2, 5), cap), constant_lr=False),
    )


# ------------------------------------------------------------------------------------------------ model size


def world_model_config(vocab_size: int, image_size: int = 32, *, d_model: int = 64, t5_heads: int = 8,
                       t5_layers: int = 2, n_query: int = 8) -> SeViLAConfig:
    """The synthetic world's SeViLA: `sevila_tiny`'s structure at width `d_model`, with T5's real relative
    position buckets (32 up to distance 128: the tiny preset's 8/32 blur the option positions of a 70-token
    prompt) and no T5 dropout (the T5 is frozen after the bootstrap and runs in eval mode anyway)."""
    base = sevila_tiny(vocab_size)
    vision = dict(base.vision, hidden_size=d_model, intermediate_size=2 * d_model)
    qformer = dict(base.qformer, hidden_size=d_model, intermediate_size=2 * d_model)
    t5 = dict(base.t5, d_model=d_model, d_ff=2 * d_model, num_heads=t5_heads, d_kv=d_model // t5_heads,
              num_layers=t5_layers, num_decoder_layers=t5_layers, relative_attention_num_buckets=32,
              relative_attention_max_distance=128, dropout_rate=0.0)
    return dataclasses.replace(base, vision=vision, qformer=qformer, t5=t5, n_query=n_query, image_size=image_size)


# ------------------------------------------------------------------------------------------ example builders


def record_question(question: str) -> str:
    """A world question as the NExT-QA reader writes it (sevila/data/nextqa.py: question + `?`)."""
    return question + "?"


def record_option(option: str) -> str:
    """A world option as the NExT-QA reader writes it (option + `.`)."""
    return option + "."


def subset_options(options: Sequence[str], answer: int, n_options: int, rng: random.Random
                   ) -> tuple[list[str], int]:
    """`n_options` of `options` that include the answer, in a random order -> (options, new answer index)."""
    if not 0 <= answer < len(options):
        raise ValueError(f"answer {answer} outside 0..{len(options) - 1}")
    if not 1 <= n_options <= len(options):
        raise ValueError(f"n_options {n_options} outside 1..{len(options)}")
    others = [i for i in range(len(options)) if i != answer]
    keep = [answer, *rng.sample(others, n_options - 1)]
    rng.shuffle(keep)
    return [options[i] for i in keep], keep.index(answer)


def match_example(rng: random.Random, n_options: int, pool: Sequence[str] = MATCH_WORDS) -> Example:
    """`Frame: red. Option A: green. Option B: red.` -> `Option B` (distinct words from `pool`)."""
    words = rng.sample(list(pool), n_options)
    answer = rng.randrange(n_options)
    prompt = f"{prompts.SINGLE_FRAME_PREFIX}{words[answer]}. " + prompts.lettered_options(
        [record_option(w) for w in words])
    return Example(Task.MATCH, prompt, prompts.answer_target(answer))


def event_caption(meta: Mapping[str, Any]) -> str:
    """The caption of any frame inside the event (the target alone is on screen there)."""
    s, e = meta["event"]
    return synth.frame_caption(dict(meta), (s + e) / 2)


def text_qa_example(rng: random.Random, meta: Mapping[str, Any], n_options: int) -> Example:
    """One of `meta`'s questions with the event frame written as its caption, `n_options` options."""
    q = rng.choice(meta["questions"])
    opts, answer = subset_options([record_option(o) for o in q["options"]], int(q["answer"]), n_options, rng)
    prompt = (f"{prompts.SINGLE_FRAME_PREFIX}{event_caption(meta)}. "
              + prompts.answerer_prompt(record_question(q["question"]), opts))
    return Example(Task.TEXT_QA, prompt, prompts.answer_target(answer))


def text_metas(n: int, seed: int) -> list[dict]:
    """World metadata for TEXT_QA: sampled like the world's videos but at indices no world video has."""
    return [synth.sample_video_meta(TEXT_META_OFFSET + i, "train", seed) for i in range(n)]


# ------------------------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class FrameTable:
    """Decoded frames of some videos: pixels [N, 3, S, S] (CLIP-normalised), and per row its video and time."""

    pixels: torch.Tensor
    videos: tuple[str, ...]
    times: np.ndarray  # [N] seconds
    rows: Mapping[str, tuple[int, ...]]  # video -> its rows, temporal order

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


def load_frame_table(video_root: str | Path, videos: Sequence[str], n_frames: int, image_size: int) -> FrameTable:
    """Uniformly sample `n_frames` frames of each video (SeViLA's sampling, `read_frames`) at `image_size`."""
    pixels, vids, times, rows = [], [], [], {}
    start = 0
    for video in dict.fromkeys(videos):  # unique, first-seen order
        sample = read_frames(resolve_video_path(video_root, video), n_frames, size=image_size)
        pixels.append(sample.pixels)
        vids += [video] * len(sample.timestamps)
        times.append(np.asarray(sample.timestamps, dtype=np.float64))
        rows[video] = tuple(range(start, start + len(sample.timestamps)))
        start += len(sample.timestamps)
    if not pixels:
        raise ValueError("no videos to load frames from")
    return FrameTable(torch.cat(pixels), tuple(vids), np.concatenate(times), rows)


def event_rows(table: FrameTable, record: QARecord) -> list[int]:
    """Rows of `record`'s video whose time lies in its evidence (ground-truth event) span, ends inclusive."""
    if not record.evidence:
        raise ValueError(f"question {record.qid}: no evidence span (the synthetic world's records carry one)")
    rows = table.rows[record.video]
    inside = frame_labels(table.times[list(rows)], record.evidence)
    return [r for r, ok in zip(rows, inside) if ok]


def caption_examples(table: FrameTable, metas: Mapping[str, Mapping[str, Any]]) -> list[Example]:
    """One CAPTION example per frame of the table (inside and outside events: captions are always true)."""
    out = []
    for row, (video, t) in enumerate(zip(table.videos, table.times)):
        if video not in metas:
            raise KeyError(f"video {video} has frames but no entry in world.jsonl")
        out.append(Example(Task.CAPTION, CAPTION_PROMPT, synth.frame_caption(dict(metas[video]), float(t)), row))
    return out


def frame_qa_pool(table: FrameTable, records: Sequence[QARecord]) -> list[tuple[QARecord, int]]:
    """(question, frame row) for every sampled frame inside each question's event: the only frames QA trains on."""
    pool = []
    for rec in records:
        if rec.answer is None:
            raise ValueError(f"question {rec.qid}: unlabelled; the bootstrap trains on labelled questions only")
        pool += [(rec, row) for row in event_rows(table, rec)]
    return pool


def frame_qa_example(rng: random.Random, record: QARecord, row: int) -> Example:
    """The official Answerer prompt on one event frame, options re-shuffled (the answer must be read off the
    frame, never off a position)."""
    opts, answer = subset_options(list(record.options), int(record.answer), len(record.options), rng)
    return Example(Task.FRAME_QA, prompts.answerer_prompt(record.question, opts), prompts.answer_target(answer), row)


class PhaseData:
    """The examples of one phase: item i is built from its own RNG (seed, phase, i), so the data are the same in
    every run and on resumption, and nothing is materialised up front."""

    def __init__(self, phase: Phase, n_items: int, seed: int, text_pool: Sequence[Mapping[str, Any]],
                 captions: Sequence[Example], qa_pool: Sequence[tuple[QARecord, int]]) -> None:
        self.phase, self.n, self.seed = phase, n_items, seed
        self.text_pool, self.captions, self.qa_pool = text_pool, captions, qa_pool
        needs = {spec.task for spec in phase.mix}
        for task, pool in ((Task.TEXT_QA, text_pool), (Task.CAPTION, captions), (Task.FRAME_QA, qa_pool)):
            if task in needs and not pool:
                raise ValueError(f"phase {phase.name}: task {task.value} has no examples to draw from")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Example:
        if not 0 <= i < self.n:
            raise IndexError(i)
        spec = self.phase.mix[i % len(self.phase.mix)]
        rng = random.Random(f"{self.seed}:{self.phase.name}:{i}")
        n_opt = rng.randint(spec.min_options, spec.max_options)
        if spec.task is Task.MATCH:
            return match_example(rng, n_opt)
        if spec.task is Task.TEXT_QA:
            return text_qa_example(rng, rng.choice(self.text_pool), n_opt)
        if spec.task is Task.CAPTION:
            return rng.choice(self.captions)
        record, row = rng.choice(self.qa_pool)
        return frame_qa_example(rng, record, row)


def collate_examples(items: list[Example]) -> list[Example]:
    return list(items)


# ------------------------------------------------------------------------------------------------ losses


def _text_inputs(model: SeViLA, texts: Sequence[str]) -> EncoderInputs:
    tok = model.tokenizer
    text = tokenize_prompts(tok, texts, TEXT_MAX_LEN)
    embeds = model.t5.get_input_embeddings()(text.ids)  # [N, L, d]
    return EncoderInputs(embeds=embeds, mask=text.mask, truncated=text.truncated, visual_len=0)


class BootstrapLoss:
    """loss_fn for `train`: the mean over examples of each example's mean token cross-entropy.

    One T5 pass per task (not per batch): a short MATCH prompt is not padded to a long TEXT_QA one, and a caption
    (many target tokens) does not outweigh a three-token `Option X` as one pooled token mean would let it."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels  # [N, 3, S, S] training frames

    def __call__(self, model: SeViLA, batch: Sequence[Example]) -> torch.Tensor:
        groups: dict[Task, list[Example]] = {}
        for ex in batch:
            groups.setdefault(ex.task, []).append(ex)
        total = torch.zeros(())
        frames = [e for task in Task if task.uses_frame for e in groups.get(task, ())]  # in loop order
        if frames:  # one ViT pass for every frame of the batch
            px = self.pixels[[e.frame for e in frames]]  # [n, 3, S, S]
            feats = model.vision_features(px).unsqueeze(1)  # [n, 1, P, Dv]
        start = 0
        for task in Task:
            exs = groups.get(task)
            if not exs:
                continue
            if task.uses_frame:
                inputs = model.per_frame_inputs("answerer", feats[start:start + len(exs)], [e.prompt for e in exs])
                start += len(exs)
            else:
                inputs = _text_inputs(model, [e.prompt for e in exs])
            total = total + model._lm_loss(inputs, [e.target for e in exs]) * len(exs)
        return total / len(batch)


# ------------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def text_accuracy(model: SeViLA, examples: Sequence[Example], batch: int = 256) -> float:
    """Share of text examples whose argmax over the option letters (after `Option`, as the Answerer reads
    them) is the target's letter."""
    _, ids = model._need_tokenizer()
    correct = 0
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        inputs = _text_inputs(model, [e.prompt for e in chunk])
        n_opt = torch.tensor([e.prompt.count("Option ") for e in chunk])
        logits = model._option_logits(inputs, n_opt)  # [n, C]
        gold = torch.tensor([prompts.OPTION_LETTERS.index(e.target.split()[-1]) for e in chunk])
        correct += int((logits.argmax(1) == gold).sum())
    return correct / max(1, len(examples))


@torch.no_grad()
def single_frame_accuracy(model: SeViLA, table: FrameTable, records: Sequence[QARecord]) -> dict[str, float]:
    """The Answerer on each sampled frame ALONE (official prompt), split by whether the frame lies in the
    question's event: `event` should be high, `outside` near chance (the reverse chain's premise, §3.2)."""
    feats = {}
    hits = {"event": [0, 0], "outside": [0, 0]}
    for rec in records:
        rows = list(table.rows[rec.video])
        if rec.video not in feats:
            feats[rec.video] = model.encode_frames(table.pixels[rows])  # [T, P, Dv]
        out = model.answer_each_frame(feats[rec.video][None], [prompts.answerer_prompt(rec.question, rec.options)],
                                      [len(rec.options)])
        ok = (out.pred[0] == int(rec.answer)).numpy()  # [T]
        inside = frame_labels(table.times[rows], rec.evidence or ())
        for key, mask in (("event", inside), ("outside", ~inside)):
            hits[key][0] += int(ok[mask].sum())
            hits[key][1] += int(mask.sum())
    return {f"acc_{k}": (c / n if n else float("nan")) for k, (c, n) in hits.items()} | {
        "n_event_frames": float(hits["event"][1]), "n_outside_frames": float(hits["outside"][1])}


@torch.no_grad()
def caption_loss(model: SeViLA, table: FrameTable, captions: Sequence[Example], batch: int = 256) -> float:
    """Mean caption LM loss (per example) of `captions` (rows of `table`)."""
    loss = BootstrapLoss(table.pixels)
    total = 0.0
    for i in range(0, len(captions), batch):
        chunk = captions[i:i + batch]
        total += float(loss(model, chunk)) * len(chunk)
    return total / max(1, len(captions))


# ------------------------------------------------------------------------------------------------ the stage


def _world_tokenizer_texts(train: Sequence[QARecord], text_pool: Sequence[Mapping[str, Any]]) -> list[str]:
    texts = synth.world_text()
    texts += [prompts.answerer_prompt(r.question, r.options) for r in train]
    texts += [prompts.localizer_prompt(r.question, r.options) for r in train]
    texts += [text_qa_example(random.Random(i), m, 5).prompt for i, m in enumerate(text_pool[:500])]
    return texts


def _metas_by_video(world_dir: Path) -> dict[str, dict]:
    metas = synth.load_world(world_dir)
    return {m["video"]: m for m in metas}


def _world_seed(world_dir: Path, fallback: int) -> int:
    import json

    summary = world_dir / "world_summary.json"
    if summary.is_file():
        return int(json.loads(summary.read_text())["seed"])
    return fallback


def bootstrap_backbone(world_dir: str | Path, records_dir: str | Path, out_dir: str | Path,
                       settings: BootstrapSettings = BootstrapSettings(), *, work_dir: str | Path | None = None,
                       progress: bool = True) -> dict[str, float]:
    """Train the tiny backbone of the synthetic world from nothing and save it to `out_dir` (all four parts and
    the tokenizer, `checkpoints.save_sevila`). Returns metrics: train_seconds, caption_loss (val frames),
    val_acc_event / val_acc_outside (the Answerer on one val frame alone, inside / outside the event),
    val_text_acc / val_match_acc (held-out text tasks), steps.

    `world_dir` holds world.jsonl and videos/; `records_dir` the canonical train.jsonl and val.jsonl.
    Intermediate files (tokenizer, each phase's `train` checkpoints, which also make an interrupted run resume)
    go to `work_dir` (default: `<out_dir>.work` beside `out_dir`), removed after the final save.
    """
    t_start = time.perf_counter()
    s = settings
    world_dir, records_dir, out_dir = Path(world_dir), Path(records_dir), Path(out_dir)
    work = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    metas = _metas_by_video(world_dir)
    train_recs = [r for r in read_records(records_dir / "train.jsonl")]
    val_recs = [r for r in read_records(records_dir / "val.jsonl")]
    for split, recs in (("train", train_recs), ("val", val_recs)):
        missing = sorted({r.video for r in recs} - set(metas))
        if missing:
            raise KeyError(f"{records_dir / (split + '.jsonl')}: videos {missing[:5]} are not in "
                           f"{world_dir / 'world.jsonl'}")
    text_pool = text_metas(s.n_text_metas, _world_seed(world_dir, s.seed))

    # tokenizer: from the world's text (reused when an interrupted run left it)
    tok_dir = work / "tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        tok = load_tokenizer(tok_dir)
    else:
        shutil.rmtree(tok_dir, ignore_errors=True)
        tok = build_tiny_tokenizer(_world_tokenizer_texts(train_recs, text_pool), tok_dir, s.vocab_size)

    torch.manual_seed(s.seed)
    config = world_model_config(len(tok), s.image_size, d_model=s.d_model, t5_heads=s.t5_heads,
                                t5_layers=s.t5_layers, n_query=s.n_query)
    model = SeViLA(config, tok)
    model.vision.requires_grad_(True)
    model.t5.requires_grad_(True)
    model.set_trainable(localizer=False, answerer=True)

    video_root = world_dir / "videos"
    train_table = load_frame_table(video_root, [r.video for r in train_recs], s.frames_per_video, s.image_size)
    val_table = load_frame_table(video_root, [r.video for r in val_recs], s.n_eval_frames, s.image_size)
    captions = caption_examples(train_table, metas)
    qa_pool = frame_qa_pool(train_table, train_recs)
    val_captions = caption_examples(val_table, metas)
    eval_rng = random.Random(f"{s.seed}:eval")
    eval_pool = text_metas(s.n_eval_text, _world_seed(world_dir, s.seed) + 1)
    eval_match2 = [match_example(eval_rng, 2) for _ in range(s.n_eval_text)]
    eval_match = [match_example(eval_rng, 5) for _ in range(s.n_eval_text)]
    eval_text = [text_qa_example(eval_rng, m, 5) for m in eval_pool]

    def eval_text_only(m: SeViLA) -> dict[str, float]:
        return {"match2_acc": text_accuracy(m, eval_match2), "match_acc": text_accuracy(m, eval_match),
                "text_acc": text_accuracy(m, eval_text)}

    def eval_all(m: SeViLA) -> dict[str, float]:
        return eval_text_only(m) | single_frame_accuracy(m, val_table, val_recs)

    loss_fn = BootstrapLoss(train_table.pixels)
    history: list[dict[str, float]] = []
    done = 0
    phases = [p for p in curriculum(s) if p.steps > 0]
    for k, phase in enumerate(tqdm(phases, desc="bootstrap", disable=not progress)):
        data = PhaseData(phase, phase.steps * s.batch_size, s.seed, text_pool, captions, qa_pool)
        cfg = TrainConfig(lr=s.lr, epochs=1, batch_size=s.batch_size, micro_batch=s.batch_size,
                          weight_decay=s.weight_decay, warmup_steps=min(s.warmup_steps, phase.steps),
                          min_lr_ratio=1.0 if phase.constant_lr else 0.0, grad_clip=s.grad_clip,
                          checkpoint_every=max(1, phase.steps), eval_every=s.eval_every, seed=s.seed + k,
                          progress=progress)
        uses_frames = any(spec.task is Task.FRAME_QA for spec in phase.mix)
        result = train(model, data, loss_fn, cfg, work / f"phase{k}_{phase.name}", collate_fn=collate_examples,
                       eval_fn=eval_all if uses_frames else eval_text_only)
        for h in result.history:
            if "match_acc" in h:
                log.info("bootstrap %s step %d: %s", phase.name, h["step"], {k: round(v, 3) for k, v in h.items()})
        done += result.step
        history.append({"phase": float(k), "step": float(done), **result.final_metrics})
        log.info("bootstrap phase %s: %d steps, %s", phase.name, result.step, result.final_metrics)
    train_seconds = time.perf_counter() - t_start

    # SeViLA starts both Q-Formers from BLIP-2's: the trained Answerer bridge goes into the Localizer slot too.
    model.localizer.load_state_dict(model.answerer.state_dict())
    model.requires_grad_(False)
    model.set_trainable(localizer=False, answerer=False)
    model.eval()
    metrics: dict[str, float] = {"train_seconds": round(train_seconds, 1), "steps": float(done)}
    metrics |= {f"val_{k}": v for k, v in eval_text_only(model).items()}
    metrics |= {f"val_{k}": v for k, v in single_frame_accuracy(model, val_table, val_recs).items()}
    metrics["caption_loss"] = caption_loss(model, val_table, val_captions)
    metrics["eval_seconds"] = round(time.perf_counter() - t_start - train_seconds, 1)
    save_sevila(model, out_dir, modules=PARTS, step=done,
                run_config={"bootstrap": s.to_dict(), "metrics": metrics, "phases": history})
    shutil.rmtree(work, ignore_errors=True)
    return metrics
