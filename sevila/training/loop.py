"""The one training loop every SeViLA training stage uses (Localizer pre-training on QVHighlights, Answerer
fine-tuning on keyframes, Localizer self-refinement on pseudo-labels).

Read top to bottom like a nanoGPT / torchtune recipe: no callbacks. A stage hands over a model, a dataset and
`loss_fn(model, batch) -> scalar mean loss`; the loop owns everything that must be right for every stage:

- AdamW over the trainable parameters only (BLIP-2's ViT and LLM are frozen; only the Q-Former side trains,
  about 2.5% of the parameters), weight decay on matrices only (`param_groups`).
- Linear warm-up then cosine decay of the learning rate, as LAVIS' `linear_warmup_cosine_lr` schedule used by
  the official SeViLA code (`lr_at`).
- Gradient accumulation: a global batch of `batch_size` examples per optimizer step, processed as
  `batch_size / (micro_batch * world_size)` micro-steps per process; the update equals one big batch.
- Reproducible data order: a seeded permutation per epoch (`epoch_batches`), so the position inside an epoch
  is two integers that a checkpoint can hold.
- Full-state checkpoints written atomically: `last/` every `checkpoint_every` steps (and at the end) and
  `best/` by a validation metric. Rerunning `train` on the same `out_dir` resumes from `last/` and ends with
  the same weights and metric history, bit for bit, as a run that was never interrupted.
- `torchrun` / DDP: with WORLD_SIZE > 1 in the environment the loop joins the process group, splits each global
  batch across ranks and averages gradients with DDP; only rank 0 writes checkpoints and logs.
- bf16 autocast where the hardware has it (`Precision`).
- A stop condition, as nanoGPT's and torchtune's loops have one: `should_stop(step, metrics)` is asked after
  every evaluation; True ends the run there, with `last/` written at that step and marked stopped, so a rerun on
  the same `out_dir` returns the stopped run instead of training on (a curriculum phase that reached its gate).

Checkpoint layout (a directory, published in one rename):
  trainable.safetensors  the parameters with requires_grad (the frozen backbone is never copied), with
                         metadata: format, step, which modules, the TrainConfig as JSON
  state.pt               torch.save of tensors and primitives only, read back with weights_only=True:
                         optimizer state, step/epoch/position, RNG states of every rank, metric history, best
  meta.json              the same facts for humans
`best/` holds `trainable.safetensors` and `meta.json` only (weights to use, not to resume from).

What the loop needs from a model for exact resume: everything that changes during training is a parameter
with requires_grad (buffers are not checkpointed); randomness comes from the global python/numpy/torch RNGs
(restored) or, in dataset workers, from (seed, epoch, index). The loop calls `model.train()`; a model whose
frozen parts must stay in eval mode (no dropout in a frozen LLM) overrides `train()` to keep them there, as
LAVIS does with `disabled_train`.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from sevila.config.training import TrainConfig
from sevila.model.precision import use_bf16
from sevila.training.checkpointing import (
    Checkpoints, RunState, load_for_resume, rng_state, seed_everything, set_rng_state,
)
from sevila.training.distributed import DistEnv, barrier, distributed
from sevila.training.runlog import NullLogger, RunLogger
from sevila.weights.checkpoint_dir import trainable_state

log = logging.getLogger(__name__)


class Goal(str, enum.Enum):
    """Whether a larger or smaller value of the validation metric is better (accuracy: MAX, loss: MIN)."""

    MAX = "max"
    MIN = "min"


@dataclass(frozen=True)
class TrainResult:
    step: int  # optimizer steps done
    total_steps: int
    history: list[dict[str, float]]  # one record per log call: {"step": s, name: value, ...}
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    best_value: float | None
    best_step: int | None
    resumed_from: int | None = None  # the step of the checkpoint this call started from, if any
    stopped: bool = False  # should_stop ended the run at `step` (before total_steps, or at it)
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last eval_fn result


# ----------------------------------------------------------------------------------------------- pure parts


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: decay on matrices and higher (ndim >= 2: linear and
    embedding weights, query tokens), none on vectors and scalars (biases, LayerNorm gains/biases), the
    rule of nanoGPT and, in effect, of LAVIS' BLIP-2 optimizer setup. Frozen parameters are left out.
    Each group carries `param_names` (kept in the optimizer state, so a checkpoint says what it holds)."""
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append((name, p))
    groups = []
    for pairs, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if pairs:
            groups.append({"params": [p for _, p in pairs], "param_names": [n for n, _ in pairs],
                           "weight_decay": wd})
    return groups


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total_steps`.

    Warm-up: base_lr * (step + 1) / warmup_steps for step < warmup_steps, so the first update already moves
    and the last warm-up step reaches base_lr. Then cosine from base_lr down to min_lr_ratio * base_lr:
    progress = (step - warmup) / (total - warmup), lr = min + (base - min) * (1 + cos(pi * progress)) / 2.
    Steps at or past `total_steps` get the floor.
    """
    if step < 0 or total_steps < 1:
        raise ValueError(f"lr_at: need step >= 0 and total_steps >= 1, got step={step}, total={total_steps}")
    min_lr = base_lr * min_lr_ratio
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch. The tail of the permutation that does not fill a global batch is
    dropped for that epoch (the next epoch's permutation puts other examples there), so every step sees
    exactly `batch_size` examples and the split across ranks and micro-steps is always even."""
    return n_examples // batch_size


def epoch_batches(n_examples: int, epoch: int, seed: int, batch_size: int, micro_batch: int,
                  rank: int = 0, world_size: int = 1, start_step: int = 0) -> list[list[int]]:
    """The micro-batches (dataset indices) that process `rank` reads in `epoch`, from optimizer step
    `start_step` of that epoch on. The order is a permutation drawn from torch.Generator(seed + epoch), so it
    is the same for every run, rank and resumption. Global batch s of the epoch is perm[s*B:(s+1)*B]; rank r
    takes its r-th contiguous share of B / world_size, cut into micro-batches."""
    if batch_size % (micro_batch * world_size):
        raise ValueError(f"batch_size={batch_size} is not a multiple of micro_batch={micro_batch} x "
                         f"world_size={world_size}")
    perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    share = batch_size // world_size
    out: list[list[int]] = []
    for s in range(start_step, steps_per_epoch(n_examples, batch_size)):
        mine = perm[s * batch_size + rank * share: s * batch_size + (rank + 1) * share]
        out.extend(mine[i:i + micro_batch] for i in range(0, share, micro_batch))
    return out


# ------------------------------------------------------------------------------------------ the loss as a module


class _LossModule(nn.Module):
    """Makes `loss_fn(model, batch)` the forward of one module, so DDP sees the forward whatever methods of
    the model the loss function calls."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.model, batch)


def _to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: _to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


# ------------------------------------------------------------------------------------------------- loop


def train(model: nn.Module, dataset: Any, loss_fn: Callable[[nn.Module, Any], torch.Tensor], cfg: TrainConfig,
          out_dir: str | Path, collate_fn: Callable[[list], Any] | None = None,
          logger: RunLogger | None = None,
          eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None,
          should_stop: Callable[[int, Mapping[str, float]], bool] | None = None,
          best_metric: str | None = None, best_goal: Goal = Goal.MAX, resume: bool = True,
          device: str | torch.device | None = None) -> TrainResult:
    """Train `model`'s parameters that have requires_grad on `dataset` (anything with len and [i]).

    `loss_fn(model, batch)` returns the MEAN loss over the micro-batch (a scalar tensor); the loop scales it so
    the update equals one step on the global batch. `eval_fn(model)` (model in eval mode, under no_grad, run on
    rank 0 with the RNGs saved and restored around it, so evaluating never changes the training trajectory)
    returns metrics; `best/` keeps the weights with the best `best_metric` by `best_goal`.
    `should_stop(step, metrics)`, asked after each evaluation (every `eval_every` steps and at the end) with the
    step just done and eval_fn's metrics, ends training when it returns True: the model then holds the weights
    of that step, `last/` is written there and marked stopped, and the result says `stopped`. Rerunning a stopped
    run returns it as it stopped (never trains on). Under DDP every rank asks it with the same metrics.

    Files go to `out_dir/last/` and `out_dir/best/`. With `resume` and an existing `out_dir/last/`, training
    continues from it (its config must match `cfg` in every field that affects the trajectory); without
    `resume` an existing `last/` is an error, never silently overwritten. `device`: default cuda:LOCAL_RANK
    when CUDA is available, else CPU; the model is moved there.

    A fresh run seeds the global python/numpy/torch RNGs from `cfg.seed + rank` (ranks draw different dropout
    masks); a resumed run restores them from the checkpoint. Build the model before calling (its own seeding
    is the caller's); under DDP rank 0's parameters are broadcast to the others when the wrapper is built.
    """
    logger = logger or NullLogger()
    if best_metric is not None and eval_fn is None:
        raise ValueError("best_metric needs an eval_fn to compute it")
    if should_stop is not None and eval_fn is None:
        raise ValueError("should_stop is asked after each evaluation: it needs an eval_fn")
    best_goal = Goal(best_goal)
    collate_fn = collate_fn or default_collate
    with distributed() as env:
        world, rank = env.world_size, env.rank
        n = len(dataset)
        per_epoch, total, accum = schedule(cfg, n, world)
        device = torch.device(device if device is not None else
                              f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu")
        model.to(device)
        params = trainable_state(model)
        if not params:
            raise ValueError("the model has no parameter with requires_grad: nothing to train")
        optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                      eps=cfg.eps)
        bf16 = use_bf16(cfg.precision, device)

        # ---- start or resume
        ckpt = Checkpoints(Path(out_dir), params, cfg, total, per_epoch, env)
        ckpt.recover()
        run, resumed_from = RunState(), None
        if ckpt.last.exists():
            if not resume:
                raise FileExistsError(f"{ckpt.last} exists and resume=False: choose another out_dir or delete it")
            state = load_for_resume(model, optimizer, ckpt.last, cfg)
            run = RunState.from_checkpoint(state)
            if len(state["rng"]) == world:
                set_rng_state(state["rng"][rank])
            else:
                log.warning("%s was written by %d processes, now %d: RNG streams reseeded, so the run will not "
                            "match an uninterrupted one bit for bit", ckpt.last, len(state["rng"]), world)
                seed_everything(cfg.seed + 7919 * run.step + rank)
            resumed_from = run.step
            log.info("resuming at step %d/%d from %s (epoch %d, position %d)%s", run.step, total, ckpt.last,
                     run.epoch, run.position,
                     ": the run stopped there (should_stop), nothing left to train" if run.stopped else "")
        else:
            seed_everything(cfg.seed + rank)  # ranks draw different dropout masks, as separate machines would
        if env.main:
            logger.log_params({f"train.{k}": v for k, v in cfg.to_dict().items()}
                              | {"train.total_steps": total, "train.world_size": world})

        runner: nn.Module = _LossModule(model, loss_fn)
        ddp = None
        if world > 1:
            ddp = nn.parallel.DistributedDataParallel(
                runner, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
                forward_sync_buffers=False)  # buffers are synced once at construction; frozen ones never change
            runner = ddp
        trainable = list(params.values())

        def record(metrics: Mapping[str, float]) -> None:
            run.history.append({"step": run.step, **metrics})
            if env.main:
                logger.log_metrics(dict(metrics), run.step)

        # ---- the loop: epochs of seeded permutations, global batches of accumulated micro-batches
        show = cfg.progress and env.main and sys.stderr.isatty()
        model.train()
        epoch_bar = tqdm(total=cfg.epochs, initial=run.epoch, desc="epochs", disable=not show, position=0)
        while run.step < total and not run.stopped:
            if run.position >= per_epoch:
                run.epoch, run.position = run.epoch + 1, 0
                epoch_bar.update(1)
            micro = epoch_batches(n, run.epoch, cfg.seed, cfg.batch_size, cfg.micro_batch, rank, world,
                                  start_step=run.position)
            loader = DataLoader(dataset, batch_sampler=micro, collate_fn=collate_fn, num_workers=cfg.num_workers,
                                pin_memory=device.type == "cuda",
                                # worker seeds come from this generator, never from the global RNG we restore
                                generator=torch.Generator().manual_seed(cfg.seed + run.epoch))
            batches = iter(loader)
            step_bar = tqdm(total=min(per_epoch, run.position + total - run.step), initial=run.position,
                            desc=f"epoch {run.epoch}", disable=not show, leave=False, position=1)
            while run.position < per_epoch and run.step < total and not run.stopped:
                lr = lr_at(run.step, total, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_value = _accumulate(runner, ddp, batches, accum, device, bf16, world)
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"loss is {loss_value} at optimizer step {run.step + 1} "
                                             f"(epoch {run.epoch}); no update was applied")
                metrics = {"loss": loss_value, "lr": lr}
                # the global gradient norm, clipped to grad_clip (an infinite limit leaves the gradients as they are):
                # a finite loss can still have an inf/nan gradient, and one such step turns every weight into nan
                grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip or float("inf")))
                if not math.isfinite(grad_norm):
                    raise FloatingPointError(f"gradient norm is {grad_norm} at optimizer step {run.step + 1} "
                                             f"(epoch {run.epoch}, loss {loss_value:.4g}); no update was applied")
                if cfg.grad_clip is not None:
                    metrics["grad_norm"] = grad_norm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                run.step, run.position = run.step + 1, run.position + 1
                record(metrics)
                step_bar.update(1)
                step_bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")

                if eval_fn is not None and ((cfg.eval_every and run.step % cfg.eval_every == 0) or run.step == total):
                    run.final_metrics = _evaluate(model, eval_fn, device, bf16, env, best_metric)
                    record(run.final_metrics)
                    if best_metric is not None and improves(run.final_metrics[best_metric], run.best_value,
                                                            best_goal):
                        run.best_value, run.best_step = run.final_metrics[best_metric], run.step
                        ckpt.save_best(run, best_metric, best_goal.value)
                    run.stopped = should_stop is not None and bool(should_stop(run.step, run.final_metrics))
                    if run.stopped:
                        log.info("should_stop ended training at step %d/%d: %s", run.step, total, run.final_metrics)
                if run.step % cfg.checkpoint_every == 0 or run.step == total or run.stopped:
                    ckpt.save_last(run, optimizer)
            step_bar.close()
        if run.position >= per_epoch:
            epoch_bar.update(1)
        epoch_bar.close()
        barrier(env)
        return TrainResult(step=run.step, total_steps=total, history=run.history,
                           last_checkpoint=ckpt.last if ckpt.last.exists() else None,
                           best_checkpoint=ckpt.best if run.best_step is not None and ckpt.best.exists() else None,
                           best_value=run.best_value, best_step=run.best_step, resumed_from=resumed_from,
                           stopped=run.stopped, final_metrics=run.final_metrics)


def schedule(cfg: TrainConfig, n_examples: int, world_size: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, micro-steps per optimizer step on each of `world_size` ranks)."""
    if cfg.batch_size % (cfg.micro_batch * world_size):
        raise ValueError(f"TrainConfig.batch_size={cfg.batch_size} must be a multiple of micro_batch="
                         f"{cfg.micro_batch} x world_size={world_size}")
    per_epoch = steps_per_epoch(n_examples, cfg.batch_size)
    if per_epoch == 0:
        raise ValueError(f"the dataset has {n_examples} examples, fewer than one global batch of {cfg.batch_size}")
    total = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.epochs * per_epoch, cfg.max_steps)
    return per_epoch, total, cfg.batch_size // (cfg.micro_batch * world_size)


def improves(value: float, best: float | None, goal: Goal) -> bool:
    """Whether `value` beats the best so far (anything beats none)."""
    if best is None:
        return True
    return value > best if goal is Goal.MAX else value < best


def _accumulate(runner: nn.Module, ddp, batches, accum: int, device: torch.device, bf16: bool, world: int) -> float:
    """Forward and backward of `accum` micro-batches (gradients all-reduced once, on the last); the mean loss over
    the global batch, averaged over ranks."""
    loss_sum = torch.zeros((), device=device)
    for k in range(accum):
        batch = _to_device(next(batches), device)
        sync = ddp is None or k == accum - 1  # all-reduce gradients once, on the last micro-step
        with (contextlib.nullcontext() if sync else ddp.no_sync()):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = runner(batch)
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
            (loss.float() / accum).backward()
        loss_sum += loss.detach().float()
    if world > 1:
        dist.all_reduce(loss_sum)
    return loss_sum.item() / (accum * world)


def _evaluate(model: nn.Module, eval_fn, device: torch.device, bf16: bool, env: DistEnv,
              best_metric: str | None) -> dict[str, float]:
    """eval_fn on rank 0 (eval mode, no_grad, the RNGs saved and restored around it so evaluating never changes the
    training trajectory), its metrics broadcast to every rank."""
    metrics: dict[str, float] = {}
    if env.main:
        saved = rng_state()
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            metrics = {k: float(v) for k, v in eval_fn(model).items()}
        model.train()
        set_rng_state(saved)
        if best_metric is not None and best_metric not in metrics:
            raise KeyError(f"eval_fn returned no {best_metric!r} (best_metric); it returned {sorted(metrics)}")
    if env.world_size > 1:
        box = [metrics]
        dist.broadcast_object_list(box, src=0)
        metrics = box[0]
    return metrics
