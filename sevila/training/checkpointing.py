"""What makes a training run resumable bit for bit (sevila.training.loop): the `last/` and `best/` directory names,
snapshots of every global RNG, and reading `last/` back into a model and optimizer after checking the run's
settings did not change. The directory format itself (atomic publish, safe reading) is
sevila.weights.checkpoint_dir's."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sevila.config.training import TrainConfig
from sevila.training.distributed import DistEnv, barrier
from sevila.weights.checkpoint_dir import (
    CHECKPOINT_FORMAT, STATE_FILE, CheckpointError, load_state_file, load_weights, modules_of, recover_dir,
    write_checkpoint_dir,
)

LAST = "last"
BEST = "best"

# Fields that may change between a run and its resumption without changing the trajectory.
OPERATIONAL_FIELDS = frozenset({"checkpoint_every", "num_workers", "progress"})


def rng_state() -> dict[str, Any]:
    """The global RNG states as tensors and primitives (storable under weights_only=True)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_for_resume(model: nn.Module, optimizer: torch.optim.Optimizer, last_dir: Path,
                     cfg: TrainConfig) -> dict[str, Any]:
    state = load_state_file(last_dir / STATE_FILE)
    saved, now = state["config"], cfg.to_dict()
    differ = sorted(k for k in set(saved) | set(now)
                    if k not in OPERATIONAL_FIELDS and saved.get(k) != now.get(k))
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ)
        raise CheckpointError(f"{last_dir}: cannot resume, the config changed ({detail}); use a new out_dir")
    load_weights(model, last_dir)
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{last_dir / STATE_FILE}: optimizer state does not fit this model ({e})") from e
    return state


@dataclass
class RunState:
    """Where a run is and what it has seen: what `last/` holds besides the weights, optimizer and RNG states."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    position: int = 0  # optimizer steps done inside `epoch`
    history: list[dict[str, float]] = field(default_factory=list)  # {"step": s, name: value, ...} per record
    best_value: float | None = None
    best_step: int | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation
    stopped: bool = False  # should_stop ended the run at `step`

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> "RunState":
        return cls(int(state["step"]), int(state["epoch"]), int(state["position"]), [dict(h) for h in state["history"]],
                   state["best_value"], state["best_step"], dict(state["final_metrics"]), bool(state.get("stopped", False)))


@dataclass
class Checkpoints:
    """The two checkpoint directories of one run: `last/` (everything a resume needs, every `checkpoint_every`
    steps and at the end) and `best/` (the weights with the best validation metric). Only rank 0 writes."""

    out_dir: Path
    params: dict[str, torch.Tensor]  # the trainable parameters by name: what the weights file holds
    cfg: TrainConfig
    total_steps: int
    per_epoch: int
    env: DistEnv

    @property
    def last(self) -> Path:
        return self.out_dir / LAST

    @property
    def best(self) -> Path:
        return self.out_dir / BEST

    def recover(self) -> None:
        """Finish or undo a publish that a crash interrupted (sevila.weights.checkpoint_dir), on every rank's view."""
        if self.env.main:
            recover_dir(self.last)
            recover_dir(self.best)
        barrier(self.env)

    def meta(self, at_step: int) -> dict[str, Any]:
        names = list(self.params)
        return {"format": CHECKPOINT_FORMAT, "step": at_step, "total_steps": self.total_steps,
                "modules": modules_of(names), "n_trainable_tensors": len(names),
                "n_trainable_values": sum(p.numel() for p in self.params.values()), "config": self.cfg.to_dict(),
                "world_size": self.env.world_size}

    def save_last(self, run: RunState, optimizer: torch.optim.Optimizer) -> None:
        """`last/` at `run.step`, with the RNG states of every rank (gathered: a collective, so every rank calls)."""
        rng = rng_state()
        rngs = [rng]
        if self.env.world_size > 1:
            rngs = [None] * self.env.world_size
            dist.all_gather_object(rngs, rng)
        if not self.env.main:
            return
        e, p = (run.epoch + 1, 0) if run.position >= self.per_epoch else (run.epoch, run.position)
        state = {"format": CHECKPOINT_FORMAT, "step": run.step, "epoch": e, "position": p,
                 "total_steps": self.total_steps, "config": self.cfg.to_dict(), "optimizer": optimizer.state_dict(),
                 "rng": rngs, "history": run.history, "best_value": run.best_value, "best_step": run.best_step,
                 "final_metrics": run.final_metrics, "stopped": run.stopped, "world_size": self.env.world_size}
        meta = self.meta(run.step) | {"epoch": e, "position": p, "best_value": run.best_value,
                                      "best_step": run.best_step, "stopped": run.stopped}
        write_checkpoint_dir(self.last, self.params, meta, state)

    def save_best(self, run: RunState, metric: str, goal: str) -> None:
        if self.env.main:
            write_checkpoint_dir(self.best, self.params, self.meta(run.step) | {
                "best_metric": metric, "best_goal": goal, "best_value": run.best_value})
