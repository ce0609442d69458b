"""Settings: params.yaml read into frozen, typed dataclasses (docs/design.md §3). Import every setting from here.

- `sevila.config.params`: the `Config` tree of params.yaml, `load_config(path, overrides)`, the paper settings.
- `sevila.config.modes`: the typed modes (`Selector`, `Fusion`, `LocalizerId`, `AnswererId`, `Precision`, ...).
- `sevila.config.training`: `TrainConfig` (one run of the training loop) and `BootstrapSettings`.

Free of torch, so `sevila convert` and the flows import it cheaply.
"""
from sevila.config.modes import (
    AnswererId, Benchmark, FrameSelection, Fusion, InvalidSetting, LocalizerId, Precision, Selector,
)
from sevila.config.params import (
    BadVideoPolicyName, BenchmarkData, Config, ConfigError, DatasetsConfig, EvaluateConfig, FinetuneConfig,
    FramesConfig, ModelConfig, PaperSettings, PathsConfig, PrepareConfig, PretrainLocalizerConfig, PseudoLabelConfig,
    RefineConfig, SplitFiles, StageRecipe, ValidateConfig, VariantConfig, WorldConfig, apply_override, build,
    check_frames, frame_slots, load_config, read_yaml, real_weights, to_dict, with_paper_settings,
)
from sevila.config.training import BootstrapSettings, TrainConfig

__all__ = [
    "AnswererId", "BadVideoPolicyName", "Benchmark", "BenchmarkData", "BootstrapSettings", "Config", "ConfigError",
    "DatasetsConfig", "EvaluateConfig", "FinetuneConfig", "FrameSelection", "FramesConfig", "Fusion",
    "InvalidSetting", "LocalizerId", "ModelConfig", "PaperSettings", "PathsConfig", "Precision", "PrepareConfig",
    "PretrainLocalizerConfig", "PseudoLabelConfig", "RefineConfig", "Selector", "SplitFiles", "StageRecipe",
    "TrainConfig", "ValidateConfig", "VariantConfig", "WorldConfig", "apply_override", "build", "check_frames",
    "frame_slots", "load_config", "read_yaml", "real_weights", "to_dict", "with_paper_settings",
]
