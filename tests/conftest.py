"""Shared fixtures. The real annotation excerpts ship inside the repository (sevila/data/realdata, with SOURCES.md);
SEVILA_REALDATA may point at another copy. `tiny_project` builds the tiny chain project
(a prepared 6-video world and a random tiny backbone) that tests/stages and tests/flows run the stages on."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from sevila.weights.ours import PARTS, save_sevila
from sevila.config import load_config
from sevila.data import realdata_dir
from sevila.synthetic.world import world_text
from sevila.model import prompts
from sevila.model.modeling import SeViLA
from sevila.model.configuration import sevila_tiny
from sevila.stages import prepare
from sevila.model.tokenizer import build_tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def realdata() -> Path:
    found = realdata_dir()
    if not found.is_dir():
        pytest.fail(f"real annotation excerpts not found at {found} (SEVILA_REALDATA is set to a missing folder)")
    return found


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


# ---------------------------------------------------------------- tiny models (model, weights, inference tests)
# A tiny tokenizer trained offline on a fixed corpus and a tiny SeViLA, both built once per session (read-only:
# tests that change a model build their own with `fresh_model`).

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("square", "circle", "triangle", "star")

#: Questions of the tests: 5-, 4- and 2-option ones (NExT-QA-, STAR- and VLEP-like).
QUESTIONS = [
    ("what colour is the square when it stops?", ["red", "green", "blue", "yellow", "purple"]),
    ("which shape moves to the left first?", ["square", "circle", "triangle", "star"]),
    (None, ["the red star will turn left.", "the blue circle will stop."]),
]


def _corpus() -> list[str]:
    texts = [f"a {c} {s} moves to the left and stops" for c in COLOURS for s in SHAPES]
    for q, options in QUESTIONS:
        texts += list(prompts.qa_prompts(q, options))
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tiny_tokenizer(_corpus(), tmp_path_factory.mktemp("tok") / "tiny", vocab_size=256)


def make_model(tokenizer, seed: int = 0, **overrides) -> SeViLA:
    torch.manual_seed(seed)
    config = dataclasses.replace(sevila_tiny(len(tokenizer)), **overrides)
    return SeViLA(config, tokenizer)


@pytest.fixture(scope="session")
def model_factory(tiny_tokenizer):
    """`model_factory(seed=0, **config_overrides)` -> a new tiny SeViLA on the session tokenizer."""
    return lambda seed=0, **overrides: make_model(tiny_tokenizer, seed, **overrides)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> SeViLA:
    return make_model(tiny_tokenizer)


@pytest.fixture
def fresh_model(tiny_tokenizer) -> SeViLA:
    return make_model(tiny_tokenizer, seed=1)


@pytest.fixture(scope="session")
def batch(tiny_model):
    """3 questions x 6 frames of ViT features [3, 6, 17, 64] with their prompts."""
    torch.manual_seed(123)
    pixels = torch.randn(3 * 6, 3, 32, 32)
    features = tiny_model.encode_frames(pixels).view(3, 6, *tiny_model.encode_frames(pixels[:1]).shape[1:])
    qa, loc = zip(*(prompts.qa_prompts(q, o) for q, o in QUESTIONS))
    return {
        "pixels": pixels,
        "features": features,
        "qa": list(qa),
        "loc": list(loc),
        "n_options": [len(o) for _, o in QUESTIONS],
        "questions": QUESTIONS,
    }
