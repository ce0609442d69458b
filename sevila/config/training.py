"""The settings of a training run and of the synthetic world's bootstrap, free of torch: `TrainConfig` (a stage's
`train:` block, read by the one loop in sevila.training.loop) and `BootstrapSettings` (params.yaml `bootstrap:`,
the recipe of sevila.synthetic.bootstrap). They check themselves on construction; a bad value raises
`InvalidSetting` naming the field."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sevila.config.modes import InvalidSetting, Precision


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (a stage's `train:` block in params.yaml). Everything that determines the
    trajectory is compared on resume. Defaults are the tiny world's; the paper's values for real runs are in
    params.yaml's comments."""

    lr: float = 1e-4  # peak learning rate, reached at the end of warm-up
    epochs: int = 1
    batch_size: int = 16  # GLOBAL examples per optimizer step (all processes, all micro-steps together)
    micro_batch: int = 16  # examples per forward pass on one process
    weight_decay: float = 0.05  # on matrices only, see sevila.training.loop.param_groups
    warmup_steps: int = 0  # optimizer steps of linear warm-up
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float | None = 1.0  # max global L2 norm of the trainable gradients; None: no clipping
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    checkpoint_every: int = 200  # optimizer steps between `last/` checkpoints; the final step always saves
    eval_every: int | None = None  # optimizer steps between eval_fn calls; eval_fn also runs at the end
    max_steps: int | None = None  # at most this many steps; the schedule then spans max_steps
    seed: int = 0
    precision: Precision = Precision.AUTO
    num_workers: int = 0  # DataLoader worker processes
    find_unused_parameters: bool = False  # DDP: set when some trainable params get no gradient in a step
    progress: bool = True  # tqdm bars (only on rank 0 and only when stderr is a terminal)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise InvalidSetting(name, getattr(self, name), why)

        for name in ("epochs", "batch_size", "micro_batch", "checkpoint_every"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("eval_every", "max_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad(name, "must be >= 1 or null")
        if not self.lr > 0:
            bad("lr", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            bad("min_lr_ratio", "must be in [0, 1]")
        if self.grad_clip is not None and not self.grad_clip > 0:
            bad("grad_clip", "must be > 0 or null")
        if self.batch_size % self.micro_batch:
            bad("batch_size", f"must be a multiple of micro_batch={self.micro_batch}")
        if self.num_workers < 0:
            bad("num_workers", "must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            bad("betas", "must be two numbers in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be > 0")
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError:
            bad("precision", f"must be one of {[p.value for p in Precision]}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["precision"] = self.precision.value
        d["betas"] = list(self.betas)
        return d


@dataclass(frozen=True)
class BootstrapSettings:
    """The synthetic world's backbone recipe (params.yaml `bootstrap`, run by sevila.synthetic.bootstrap); defaults are
    the
    embedded default's."""

    seed: int = 0
    vocab_size: int = 512
    image_size: int = 32
    d_model: int = 64
    t5_heads: int = 8
    t5_layers: int = 2
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100  # linear warm-up of the first phase
    phase_warmup_steps: int = 10  # ... and of each later one (every phase starts a fresh AdamW in `train`)
    grad_clip: float = 1.0
    batch_size: int = 64
    vocab_steps: int = 150  # phase 1: two-option MATCH over two words only
    match_steps: int = 4000  # phase 2 (at most): two-option MATCH over every word; the plateau breaks here
    options_steps: int = 2000  # phase 3 (at most): 2-5 option MATCH
    questions_steps: int = 4000  # phase 4 (at most): TEXT_QA, one frame
    context_steps: int = 3000  # phase 5 (at most): TEXT_QA over 2 and 4 frames, YES_NO, LOCALIZE
    see_steps: int = 1500  # phase 6: GROUND only (videos' frames + caption images), the T5 frozen from here on
    frames_steps: int = 0  # phase 7 (at most): FRAME_QA + FRAME_MATCH + GROUND on event frames (0: skipped)
    late_lr: float = 1e-3  # learning rate from phase 4 on (the circuit exists; keep it)
    gate_every: int = 100  # a gated phase evaluates its gate every gate_every steps
    gate: float = 0.85  # held-out accuracy that opens each gate
    stall_steps: int = 1200  # questions phase: stalled if text_acc has not risen stall_rise within this many steps
    stall_rise: float = 0.1  # ... of its first evaluation
    restarts: int = 2  # fresh draws of the whole bootstrap after a gated phase stalls or misses its gate
    z_loss: float = 1e-3  # weight of (log Z)^2 at the T5's first decoder step in its text tasks (0: off; params.yaml)
    frames_per_video: int = 48  # frames decoded per training video (GROUND on all, QA on those in the event)
    n_eval_frames: int = 32  # frames per validation video for the single-frame accuracies
    n_text_metas: int = 4000  # world metadata sampled for TEXT_QA (text only)
    caption_images: int = 8000  # image-caption pairs of fresh scenes for GROUND / FRAME_MATCH (0: the videos only)
    n_eval_text: int = 300  # held-out examples per text accuracy

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise InvalidSetting(name, getattr(self, name), why)

        for name in ("vocab_size", "image_size", "d_model", "t5_heads", "t5_layers", "batch_size",
                     "gate_every", "frames_per_video", "n_eval_frames", "n_text_metas", "n_eval_text", "stall_steps"):
            if getattr(self, name) < 1:
                bad(name, "must be >= 1")
        for name in ("vocab_steps", "match_steps", "options_steps", "questions_steps", "context_steps", "see_steps",
                     "frames_steps", "warmup_steps", "phase_warmup_steps", "restarts", "caption_images"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.d_model % self.t5_heads:
            bad("d_model", f"must be a multiple of t5_heads={self.t5_heads}")
        for name in ("lr", "late_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.z_loss < 0:
            bad("z_loss", "must be >= 0")
        if not 0.0 < self.gate <= 1.0:
            bad("gate", "must be in (0, 1]")
        if not 0.0 < self.stall_rise <= 1.0:
            bad("stall_rise", "must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
