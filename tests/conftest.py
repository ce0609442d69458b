"""Shared fixtures. The real annotation excerpts live in ../shared/realdata beside the repo (CI lays a copy of
shared/ beside its clone); SEVILA_REALDATA overrides the location. `tiny_project` builds the tiny chain project
(a prepared 6-video world and a random tiny backbone) that tests/stages and tests/flows run the stages on."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from sevila.checkpoints import PARTS, save_sevila
from sevila.config import load_config
from sevila.data.synth import world_text
from sevila.model import SeViLA, sevila_tiny
from sevila.stages import prepare
from sevila.tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("SEVILA_REALDATA", REPO.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.is_dir():
        pytest.fail(f"real annotation excerpts not found at {REALDATA} (set SEVILA_REALDATA)")
    return REALDATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_mlflow_store(tmp_path_factory):
    """No test writes to the repo's mlflow.db: every run goes to a throwaway store unless a test sets its own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")
    yield
    mp.undo()


#: Stage training of the tiny project: one epoch of global batches of 4 (1-2 optimizer steps per stage).
TINY_TRAIN = {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "checkpoint_every": 2}


def tiny_settings(root: Path) -> dict:
    """The tiny project's params.yaml sections (tiny world, 8 -> 2 frames, tiny training) under `root`."""
    return {
        # records land in <data>/processed/synth, the path dvc.yaml derives (paths.processed left null)
        "paths": {k: str(root / k) for k in ("data", "world", "reports", "models", "runs")},
        "world": {"videos": 6, "seed": 5, "fps": 4, "size": 32},
        "model": {"weights": str(root / "models" / "backbone")},
        "frames": {"n_frames": 8, "n_keyframes": 2, "cache": str(root / "features")},
        "pretrain_localizer": {"train": TINY_TRAIN},
        "refine_localizer": {"train": TINY_TRAIN},
        "finetune_answerer": {"train": TINY_TRAIN},
    }


def write_tiny_project(root: Path, variants: dict) -> Path:
    """A prepared tiny world (6 videos, 8 frames -> 2 keyframes) with a random tiny backbone (seed 0) at
    models/backbone, every path in its params.yaml absolute (no test depends on the cwd); returns params.yaml."""
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({**tiny_settings(root), "evaluate": {"split": "test", "variants": variants}}))
    cfg = load_config(params)
    prepare.run(cfg)
    tok = build_tiny_tokenizer(world_text(), root / "tok", vocab_size=256)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), cfg.model.weights, modules=PARTS)
    return params


@pytest.fixture(scope="session")
def make_tiny_project(tmp_path_factory) -> Callable[[str, dict], Path]:
    """`make_tiny_project(name, variants)`: a fresh tiny project in its own temporary directory."""
    return lambda name, variants: write_tiny_project(tmp_path_factory.mktemp(name), variants)
