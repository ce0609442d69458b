"""Runs `sevila.training.loop.train` on the toy problem in its own process, for the kill/resume test (plain python)
and the DDP test (under torchrun: WORLD_SIZE/RANK in the environment). Rank 0 writes the run's history as
JSON to --result. --die-after-step N SIGKILLs the process during step N+2, i.e. after step N (which must be a
checkpoint step) and one more step that is done and logged but not checkpointed."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonl_log import JsonlLogger  # noqa: E402
from _train_toy import Toy, make_dataset, make_eval_fn, mse_loss  # noqa: E402

from sevila.training.loop import train  # noqa: E402
from sevila.config import TrainConfig


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--result", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--die-after-step", type=int)
    args = ap.parse_args()
    torch.set_num_threads(1)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    accum = args.batch // (args.micro * world)
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        if args.die_after_step is not None and calls == (args.die_after_step + 1) * accum + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return mse_loss(model, batch)

    cfg = TrainConfig(lr=3e-2, epochs=args.epochs, batch_size=args.batch, micro_batch=args.micro,
                      warmup_steps=3, min_lr_ratio=0.1, grad_clip=1.0, checkpoint_every=args.checkpoint_every,
                      eval_every=args.eval_every, seed=5)
    data = make_dataset(48)
    eval_fn = make_eval_fn(make_dataset(16, seed=2), noisy=True)
    result = train(Toy(dropout=args.dropout), data, loss_fn, cfg, args.out,
                   logger=JsonlLogger(args.out / f"metrics.rank{rank}.jsonl"),
                   eval_fn=eval_fn, best_metric="val/mse", best_goal="min")
    if rank == 0 and args.result:
        args.result.write_text(json.dumps({"step": result.step, "history": result.history,
                                           "resumed_from": result.resumed_from, "best_step": result.best_step,
                                           "best_value": result.best_value}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
