"""What makes a training run resumable bit for bit (sevila.training.loop): the `last/` and `best/` directory names,
snapshots of every global RNG, and reading `last/` back into a model and optimizer after checking the run's
settings did not change. The directory format itself (atomic publish, safe reading) is
sevila.weights.checkpoint_dir's."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from sevila.config.training import TrainConfig
from sevila.weights.checkpoint_dir import STATE_FILE, CheckpointError, load_state_file, load_weights

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
