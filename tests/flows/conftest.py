"""Fixtures of the flow tests: one temporary Prefect server per session (prefect_test_harness, ~10-20 s) and
one tiny project (tiny world + tiny random backbone + pre-trained Localizer, as in tests/stages/test_chain.py)
that the round flows build on. Every path in its params.yaml is absolute, so no test depends on the cwd."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TRAIN = {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "checkpoint_every": 2}
MAIN = "f8k2_qvh_sr"  # the full-SeViLA variant at the tiny config's 8 -> 2 frames (the stopping rule's metric)
BACKBONE_ONLY = {"localizer": "none", "answerer": "zero_shot"}  # these evaluate before any round has run
VARIANTS = {
    MAIN: {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "qvh_sr"},
    "f8k2_none": {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "none"},
    "uniform_k2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2, **BACKBONE_ONLY},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 8, **BACKBONE_ONLY},
}


def tiny_params(root: Path) -> dict:
    return {
        "paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
        "world": {"videos": 6, "seed": 5, "fps": 4, "size": 32},
        "model": {"weights": str(root / "models" / "backbone")},
        "frames": {"n_frames": 8, "n_keyframes": 2, "cache": str(root / "features")},
        "pretrain_localizer": {"train": TRAIN},
        "refine_localizer": {"train": TRAIN},
        "finetune_answerer": {"train": TRAIN},
        "evaluate": {"split": "test", "variants": VARIANTS},
    }


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from the temporary server
    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A prepared tiny world with a random tiny backbone and a pre-trained Localizer (round 1's inputs);
    returns its params.yaml."""
    import torch

    from sevila.checkpoints import save_sevila
    from sevila.config import load_config
    from sevila.data.synth import world_text
    from sevila.model import SeViLA, sevila_tiny
    from sevila.stages import pretrain_localizer, prepare
    from sevila.tokenizer import build_tiny_tokenizer

    root = tmp_path_factory.mktemp("flows")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(root)))
    cfg = load_config(params)
    prepare.run(cfg)
    tok = build_tiny_tokenizer(world_text(), root / "tok", vocab_size=256)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), cfg.model.weights,
                modules=("vision", "t5", "localizer", "answerer"))
    pretrain_localizer.run(cfg)
    return params
