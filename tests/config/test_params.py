import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

import sevila.synthetic.bootstrap
import sevila.training.loop
from sevila import config, tracking
from sevila.config import BadVideoPolicyName, Config, ConfigError, Precision, load_config, modes, to_dict, training
from sevila.model import selection

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_load_with_types():
    cfg = load_config(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert isinstance(cfg, Config)
    assert type(cfg.world.videos) is int and cfg.world.videos == raw["world"]["videos"]
    assert cfg.prepare.bad_video is BadVideoPolicyName(raw["prepare"]["bad_video"])
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
        # values checked by the settings themselves, named by their dotted key
        ("pretrain_localizer:\n  train: {lr: 0}\n", [], "pretrain_localizer.train.lr: 0.0 must be > 0"),
        ("finetune_answerer:\n  train: {precision: fp8}\n", [], "finetune_answerer.train.precision: 'fp8' is not one"),
        ("", ["refine_localizer.train.betas=[0.9, 1.5]"], "refine_localizer.train.betas: (0.9, 1.5) must be two"),
        ("", ["frames.n_frames=0"], "frames.n_frames: 0 must be >= 1"),
        ("", ["frames.n_keyframes=9", "frames.n_frames=8"], "frames.n_keyframes: 9 must be between 1 and n_frames=8"),
        ("", ["evaluate.variants.v={study: frames, n_frames: 0}"], "evaluate.variants.v.n_frames: 0 must be >= 1"),
        ("", ["evaluate.variants.v={study: frames, n_frames: 8, n_keyframes: 0}"],
         "evaluate.variants.v.n_keyframes: 0 must be between 1 and n_frames=8"),
        ("", ["evaluate.variants.v={study: x, selector: localizer_uniform}"], "evaluate.variants.v.selector: "
         "'localizer_uniform' is not one of ['uniform', 'localizer', 'oracle', 'all']"),
        ("", ["evaluate.variants.v={study: oracle, selector: oracle, fusion: vote, frame_slots: 0}"],
         "evaluate.variants.v.frame_slots: 0 must be >= 1"),
        ("", ["evaluate.variants.v={study: frames, frame_slots: 4}"],
         "evaluate.variants.v.frame_slots: 4 is for frames read alone (fusion: vote), not fusion: concat"),
        ("", ["round=0"], "round: 0 must be >= 1"),
        # issue 24: these two ended in tracebacks at the stage instead of one line naming the key
        ("", ["model.device=tpu"], "model.device: 'tpu' must be auto, cpu, cuda, cuda:N or mps"),
        ("", ["evaluate.only=[nosuch]"], "evaluate.only: ['nosuch'] names unknown variants ['nosuch']; known: ["),
        # the bootstrap recipe is a typed section like every other (sevila.config.BootstrapSettings)
        ("bootstrap:\n  text_steps: 5\n", [], "bootstrap: unknown setting(s) ['text_steps']"),
        ("", ["bootstrap.batch_size=0"], "bootstrap.batch_size: 0 must be >= 1"),
        ("", ["bootstrap.gate=2"], "bootstrap.gate: 2.0 must be in (0, 1]"),
        ("", ["bootstrap.z_loss=-0.1"], "bootstrap.z_loss: -0.1 must be >= 0"),
        ("", ["bootstrap.seed=zero"], "bootstrap.seed: expected an integer, got 'zero'"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, text, overrides, message):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(p, overrides)
    assert message in str(err.value)


def test_train_blocks_set_every_field_of_the_one_train_config(tmp_path):
    # params.yaml's train blocks ARE sevila.training.loop's TrainConfig: precision, betas, max_steps ... are settable
    p = tmp_path / "params.yaml"
    p.write_text("pretrain_localizer:\n  train: {precision: bf16, betas: [0.8, 0.99], max_steps: 7, eps: 1.0e-6}\n")
    train = load_config(p).pretrain_localizer.train
    assert type(train) is sevila.training.loop.TrainConfig
    assert (train.precision, train.betas, train.max_steps, train.eps) == (Precision.BF16, (0.8, 0.99), 7, 1e-6)
    assert {f.name for f in dataclasses.fields(train)} >= {"num_workers", "find_unused_parameters", "grad_clip"}


def test_variant_modes_are_the_selection_enums(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  variants:\n    v: {study: baseline, selector: all, fusion: vote, n_frames: 8}\n")
    v = load_config(p).evaluate.variants["v"]
    assert v.selector is selection.Selector.ALL and v.fusion is selection.Fusion.VOTE
    assert not v.selector.uses_keyframes and selection.Selector.UNIFORM.uses_keyframes


def test_frame_slots_default_to_the_input_the_answerer_was_trained_on(tmp_path):
    # null: a fine-tuned Answerer read by vote gets frames.n_keyframes slots (what finetune_answerer trained it on),
    # the zero-shot one and concat fusion 1; a set value stays
    p = tmp_path / "params.yaml"
    p.write_text("frames: {n_keyframes: 8}\nevaluate:\n  variants:\n"
                 "    oracle: {study: oracle, selector: oracle, fusion: vote}\n"
                 "    oracle_zs: {study: oracle, selector: oracle, fusion: vote, answerer: zero_shot}\n"
                 "    set: {study: oracle, selector: oracle, fusion: vote, frame_slots: 3}\n"
                 "    concat: {study: frames}\n")
    cfg = load_config(p)
    assert cfg.evaluate.variants["oracle"].frame_slots is None  # resolved where read, after the paper settings
    assert {name: config.frame_slots(v, cfg.frames.n_keyframes) for name, v in cfg.evaluate.variants.items()} == {
        "oracle": 8, "oracle_zs": 1, "set": 3, "concat": 1}


def test_one_home_per_setting():
    assert config.Selector is selection.Selector is modes.Selector
    assert config.TrainConfig is sevila.training.loop.TrainConfig is training.TrainConfig
    assert config.LocalizerId is modes.LocalizerId and config.AnswererId is modes.AnswererId
    assert config.BootstrapSettings is sevila.synthetic.bootstrap.BootstrapSettings is training.BootstrapSettings
    assert typing.get_type_hints(config.params.Config)["bootstrap"] is training.BootstrapSettings
    assert not hasattr(config, "StageTrain")
    assert tracking.SELECTOR_VALUES == tuple(s.value for s in modes.Selector)


def test_a_duplicate_key_is_an_error_naming_key_and_line(tmp_path):
    # PyYAML keeps the last value silently; DVC rejects the file. We reject it too, saying where.
    p = tmp_path / "params.yaml"
    p.write_text("world:\n  videos: 10\n  seed: 1\n  videos: 20\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line 4: duplicate key 'videos' \(first at line 2\)"):
        load_config(p)
    p.write_text("world: {videos: 10}\nround: 1\nworld: {seed: 2}\n")
    with pytest.raises(ConfigError, match="line 3: duplicate key 'world'"):
        load_config(p)


def test_loading_settings_never_imports_torch():
    # the typed settings (the bootstrap recipe's included) live in torch-free sevila.config
    code = "import sys, sevila.config; sevila.config.load_config('params.yaml'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_frame_choice_makes_its_own_answerer_directory():
    from sevila.stages.common import answerer_dir  # torch: kept out of the torch-free import test above

    cfg = load_config(Path(__file__).resolve().parents[2] / "params.yaml")
    assert [modes.AnswererId.trained_on(f).value for f in modes.FrameSelection] == [
        "finetuned", "finetuned_uniform", "finetuned_random"]
    assert answerer_dir(cfg).as_posix() == "models/answerer/finetuned_r1"  # SeViLA's Answerer keeps its name
    uniform = answerer_dir(cfg, modes.AnswererId.FINETUNED_UNIFORM, 3)
    assert uniform.as_posix() == "models/answerer/finetuned_uniform_r3"
    with pytest.raises(ValueError, match="zero-shot Answerer is part of the backbone"):
        answerer_dir(cfg, modes.AnswererId.ZERO_SHOT)
    variants = cfg.evaluate.variants  # the baselines read the Answerer fine-tuned on their own frames
    assert {n: v.answerer.value for n, v in variants.items() if v.selector is modes.Selector.UNIFORM} == {
        "uniform_k4": "finetuned_uniform", "uniform_k32": "finetuned_uniform"}
