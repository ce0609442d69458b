"""The synthetic world's backbone bootstrap, through its stage: a fast run on a tiny world saves a complete model
whose two modules start from the same Q-Former, and the recipe's settings are checked by key."""
import json

import pytest
import torch
import yaml

from sevila.bootstrap import BootstrapSettings
from sevila.checkpoints import load_sevila
from sevila.config import load_config
from sevila.stages import bootstrap, prepare

FAST = {"match_steps": 2, "text_steps": 2, "joint_steps": 2, "batch_size": 8, "frames_per_video": 6,
        "n_eval_frames": 6, "n_text_metas": 20, "n_eval_text": 10}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot")
    params = {
        "paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
        "world": {"videos": 6, "seed": 2, "fps": 4, "size": 32},
        "model": {"weights": str(root / "backbone")},
        "bootstrap": FAST,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    prepare.run(cfg)
    return cfg


def test_stage_saves_a_complete_model_with_twin_modules(cfg):
    metrics = bootstrap.run(cfg)
    assert {"val_acc_event", "val_acc_outside"} <= set(metrics)
    assert all(0 <= metrics[k] <= 100 for k in ("val_acc_event", "val_acc_outside"))
    model, report = load_sevila(cfg.model.weights)
    assert set(report.set_parts) == {"vision", "t5", "localizer", "answerer"}
    loc, ans = model.localizer.state_dict(), model.answerer.state_dict()
    assert list(loc) == list(ans) and all(torch.equal(loc[k], ans[k]) for k in loc)
    tok = model.tokenizer
    assert tok.decode(tok("Option C").input_ids, skip_special_tokens=True) == "Option C"
    assert json.loads(open(f"{cfg.paths.reports}/bootstrap.json").read()) == metrics


def test_repo_params_build_the_recipe():
    from sevila.config import build

    repo = load_config("params.yaml")
    settings = build(BootstrapSettings, repo.bootstrap, "bootstrap")
    assert settings.t5_heads == repo.bootstrap["t5_heads"]


def test_unknown_recipe_key_is_an_error():
    from sevila.config import ConfigError, build

    with pytest.raises(ConfigError, match="bootstrap: unknown setting"):
        build(BootstrapSettings, {"txt_steps": 1}, "bootstrap")
