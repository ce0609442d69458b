from pathlib import Path

import pytest

from sevila.config import BadVideoPolicyName, Config, ConfigError, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_load_with_types():
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, Config)
    assert isinstance(cfg.world.videos, int) and cfg.world.videos > 0
    assert cfg.prepare.bad_video in set(BadVideoPolicyName)
    assert cfg.prepare.splits == ("train", "val", "test")


def test_overrides_are_parsed_as_yaml(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("world:\n  videos: 10\n")
    cfg = load_config(p, ["world.seed=7", "prepare.bad_video=skip", "prepare.splits=[train, test]"])
    assert cfg.world.videos == 10 and cfg.world.seed == 7
    assert cfg.prepare.bad_video is BadVideoPolicyName.SKIP
    assert cfg.prepare.splits == ("train", "test")
    assert to_dict(cfg)["prepare"]["bad_video"] == "skip"


def test_exponents_without_a_dot_are_numbers(tmp_path):
    # YAML 1.1 reads `1e-3` as the string "1e-3"; a float setting takes it as the number it means
    p = tmp_path / "params.yaml"
    p.write_text("pretrain_localizer:\n  train: {lr: 1e-3}\n")
    cfg = load_config(p, ["finetune_answerer.train.lr=3e-5"])
    assert cfg.pretrain_localizer.train.lr == 0.001 and cfg.finetune_answerer.train.lr == 3e-5


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("world:\n  vidoes: 3\n", [], "world: unknown setting(s) ['vidoes']"),
        ("world:\n  videos: many\n", [], "world.videos: expected an integer"),
        ("world:\n  videos: true\n", [], "world.videos: expected an integer"),
        ("pretrain_localizer:\n  train: {lr: fast}\n", [], "pretrain_localizer.train.lr: expected a number, got 'fast'"),
        ("prepare:\n  bad_video: ignore\n", [], "prepare.bad_video: 'ignore' is not one of ['fail', 'skip']"),
        ("wrld: {}\n", [], "<root>: unknown setting(s) ['wrld']"),
        ("", ["world.videos"], "is not of the form key=value"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, overrides, message):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p, overrides)
    assert message in str(err.value)
