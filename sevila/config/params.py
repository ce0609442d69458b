"""params.yaml as frozen dataclasses (the single source of settings, docs/design.md §3).

`load_config(path, overrides)` reads the YAML, applies `a.b.c=value` overrides (values parsed as YAML scalars),
and builds the typed tree, rejecting unknown keys and wrong types with the dotted key named (a typo in
params.yaml is an error, never a silently ignored setting).
"""
from __future__ import annotations

import dataclasses
import enum
import logging
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from sevila.config.modes import AnswererId, Benchmark, FrameSelection, Fusion, InvalidSetting, LocalizerId, Selector
from sevila.config.training import BootstrapSettings, TrainConfig
from sevila.errors import UserError


log = logging.getLogger(__name__)

class ConfigError(UserError, ValueError):
    """A setting is missing, unknown or of the wrong type; the message names the dotted key."""


class BadVideoPolicyName(str, enum.Enum):
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class PathsConfig:
    data: str = "data"
    world: str = "data/raw/synth"  # the synthetic world as generated (official formats)
    # canonical records of `dataset`, in a folder named after it; null: <data>/processed/<dataset>
    processed: str | None = None
    reports: str = "reports"
    models: str = "models"  # trained modules: models/localizer/<id>/, models/answerer/<id>/ (round-suffixed)
    runs: str = "runs"  # per-round pseudo-labels and predictions


@dataclass(frozen=True)
class WorldConfig:
    """The embedded default: a generated video world (sevila.data.synth)."""

    videos: int = 200
    seed: int = 0
    fps: int = 8
    size: int = 64


@dataclass(frozen=True)
class PrepareConfig:
    splits: tuple[str, ...] = ("train", "val", "test")
    bad_video: BadVideoPolicyName = BadVideoPolicyName.FAIL


@dataclass(frozen=True)
class ValidateConfig:
    fail_on_error: bool = True


@dataclass(frozen=True)
class ModelConfig:
    """Where the weights come from: our checkpoint (all parts), an HF BLIP-2 directory, or a LAVIS/SeViLA .pth
    with `backbone` (an HF BLIP-2 directory) for the parts it lacks. Local paths only."""

    weights: str = "models/backbone"
    backbone: str | None = None
    device: str = "auto"  # auto: cuda when available, else cpu; or cpu, cuda, cuda:N, mps
    # T5 prompt tokens kept (incl. </s>); null: the weights' own (the official code's max_txt_len, 77), which cuts
    # long option lists. Evaluate warns with the count of prompts it cut.
    max_text_len: int | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(self.device)):
            raise InvalidSetting("device", self.device, "must be auto, cpu, cuda, cuda:N or mps")
        if self.max_text_len is not None and self.max_text_len < 2:
            raise InvalidSetting("max_text_len", self.max_text_len, "must leave room for text and </s> (>= 2), or null")


@dataclass(frozen=True)
class FramesConfig:
    n_frames: int = 32  # uniformly sampled candidate frames per clip (the cached ViT features)
    n_keyframes: int = 4
    cache: str | None = "data/features"  # folder of the ViT feature cache; null: no cache (computed when needed)
    cache_budget_gb: float | None = None  # at most this many GB (1e9 bytes) of cached features; null: unlimited
    bad_video: BadVideoPolicyName = BadVideoPolicyName.FAIL

    def __post_init__(self) -> None:
        check_frames(self.n_frames, self.n_keyframes)
        if self.cache_budget_gb is not None:
            if not self.cache_budget_gb > 0:
                raise InvalidSetting("cache_budget_gb", self.cache_budget_gb, "must be > 0 or null (unlimited)")
            if self.cache is None:
                raise InvalidSetting("cache_budget_gb", self.cache_budget_gb,
                                     "is a budget for the feature cache, but frames.cache is null (no cache)")


@dataclass(frozen=True)
class PretrainLocalizerConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class PseudoLabelConfig:
    answerer: AnswererId = AnswererId.ZERO_SHOT  # round 1: the frozen zero-shot Answerer (paper §3.2)


@dataclass(frozen=True)
class RefineConfig:
    starts: tuple[LocalizerId, ...] = (LocalizerId.BACKBONE, LocalizerId.QVH)  # -> sr, qvh_sr
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class FinetuneConfig:
    frames: FrameSelection = FrameSelection.LOCALIZER
    localizer: LocalizerId = LocalizerId.QVH_SR
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass(frozen=True)
class VariantConfig:
    """One evaluated configuration (a row of an ablation table)."""

    study: str
    selector: Selector = Selector.LOCALIZER
    fusion: Fusion = Fusion.CONCAT
    n_frames: int = 32
    # read by the selectors that pick keyframes (uniform, localizer); <= n_frames always, as the MLflow tags need
    n_keyframes: int = 4
    localizer: LocalizerId = LocalizerId.QVH_SR
    answerer: AnswererId = AnswererId.FINETUNED
    # fusion vote: each frame read alone fills this many keyframe slots (sevila.model.chain.answer). null (the
    # default) = the
    # input the Answerer was trained on (`frame_slots` below): 1 for the zero-shot one (the official per-frame
    # input, BLIP-2 reads one image); frames.n_keyframes for one fine-tuned on that many keyframes, which never saw
    # a one-frame input, so its oracle gives each frame all k slots: one frame's content, in the format it answers in
    frame_slots: int | None = None

    def __post_init__(self) -> None:
        check_frames(self.n_frames, self.n_keyframes)
        if self.frame_slots is None:
            return
        if self.frame_slots < 1:
            raise InvalidSetting("frame_slots", self.frame_slots, "must be >= 1")
        if self.frame_slots > 1 and self.fusion is not Fusion.VOTE:
            raise InvalidSetting("frame_slots", self.frame_slots,
                                 f"is for frames read alone (fusion: vote), not fusion: {self.fusion.value}")


def frame_slots(v: VariantConfig, finetuned_keyframes: int) -> int:
    """The keyframe slots each frame read alone fills: `v.frame_slots` if set; if null, the number of frames the
    variant's Answerer was trained to read: `finetuned_keyframes` (frames.n_keyframes, what finetune_answerer
    trains on, so the paper settings of a real run count) for a fine-tuned one under vote fusion (its oracle, README
    "Which oracle bounds SeViLA"), else 1 (the zero-shot one; concat fusion does not read the field)."""
    if v.frame_slots is not None:
        return v.frame_slots
    return finetuned_keyframes if v.fusion is Fusion.VOTE and v.answerer.finetuned else 1


def check_frames(n_frames: int, n_keyframes: int) -> None:
    """n keyframes out of N candidate frames needs 1 <= n <= N (0 is never "the default": docs/design.md §3)."""
    if n_frames < 1:
        raise InvalidSetting("n_frames", n_frames, "must be >= 1")
    if not 1 <= n_keyframes <= n_frames:
        raise InvalidSetting("n_keyframes", n_keyframes, f"must be between 1 and n_frames={n_frames}")


@dataclass(frozen=True)
class EvaluateConfig:
    split: str = "test"
    variants: dict[str, VariantConfig] = field(default_factory=dict)
    only: tuple[str, ...] = ()  # evaluate just these variants (DVC's foreach runs one per stage)

    def __post_init__(self) -> None:
        unknown = [v for v in self.only if v not in self.variants]
        if unknown:
            raise InvalidSetting("only", list(self.only), f"names unknown variants {unknown}; "
                                                          f"known: {sorted(self.variants)}")


# ---- the real benchmarks (`datasets:`): where each one's official files are, and the paper's settings for it


@dataclass(frozen=True)
class SplitFiles:
    """A benchmark's official annotation file per pipeline split (null: that split is not available)."""

    train: str | None = None
    val: str | None = None
    test: str | None = None

    def get(self, split: str) -> str | None:
        names = [f.name for f in dataclasses.fields(self)]
        if split not in names:
            raise ConfigError(f"prepare.splits: {split!r} is not a split a benchmark's annotations name {names}")
        return getattr(self, split)


@dataclass(frozen=True)
class StageRecipe:
    """One training stage as the official run scripts ran it (run_scripts/sevila/*, lavis/projects/sevila/train):
    `batch_size` is the global batch (per-GPU batch x GPUs x accumulation), `micro_batch` the per-GPU one."""

    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    micro_batch: int | None = None
    warmup_steps: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                raise InvalidSetting(f.name, None, "must be set (the official run script's value)")



@dataclass(frozen=True)
class PaperSettings:
    """What runs for a benchmark with real weights (`model.weights` a BLIP-2 directory or a SeViLA .pth): its
    frames -> keyframes and the recipe of each training stage it feeds (QVHighlights: pre-training only)."""

    n_frames: int = 32
    n_keyframes: int = 4
    pretrain_localizer: StageRecipe | None = None
    refine_localizer: StageRecipe | None = None
    finetune_answerer: StageRecipe | None = None

    def __post_init__(self) -> None:
        check_frames(self.n_frames, self.n_keyframes)


@dataclass(frozen=True)
class BenchmarkData:
    """One benchmark's official files: annotations per split, the video folder in its official layout, and
    NExT-QA's `map_vid_vidorID.json` (its csv names videos by an id that the map turns into `<dir>/<id>`)."""

    annotations: SplitFiles = field(default_factory=SplitFiles)
    videos: str | None = None
    video_map: str | None = None
    paper: PaperSettings = field(default_factory=PaperSettings)
    # the splits released without answers (or QVHighlights windows): only these may lack them; a blank answer or an
    # empty `relevant_windows` anywhere else is a lost label, refused by prepare naming the file and the record
    unlabelled: tuple[str, ...] = ("test",)


@dataclass(frozen=True)
class DatasetsConfig:
    nextqa: BenchmarkData = field(default_factory=BenchmarkData)
    star: BenchmarkData = field(default_factory=BenchmarkData)
    how2qa: BenchmarkData = field(default_factory=BenchmarkData)
    tvqa: BenchmarkData = field(default_factory=BenchmarkData)
    vlep: BenchmarkData = field(default_factory=BenchmarkData)
    qvhighlights: BenchmarkData = field(default_factory=BenchmarkData)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != Benchmark.NEXTQA.value and getattr(self, f.name).video_map is not None:
                raise InvalidSetting(f"{f.name}.video_map", getattr(self, f.name).video_map,
                                     "applies only to NExT-QA (its csv names videos through map_vid_vidorID.json)")

    def __getitem__(self, benchmark: Benchmark | str) -> BenchmarkData:
        b = Benchmark(benchmark)
        if not b.real:
            raise KeyError("the synthetic world has no `datasets` entry (it is generated: `world`)")
        return getattr(self, b.value)


@dataclass(frozen=True)
class Config:
    dataset: Benchmark = Benchmark.SYNTH  # the one switch: synth, or a QA benchmark of `datasets`
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    round: int = 1  # self-refinement round (paper §3.2): part of every chain output path and record
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)  # the synthetic world's backbone recipe
    model: ModelConfig = field(default_factory=ModelConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    pretrain_localizer: PretrainLocalizerConfig = field(default_factory=PretrainLocalizerConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    refine_localizer: RefineConfig = field(default_factory=RefineConfig)
    finetune_answerer: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        if self.round < 1:
            raise InvalidSetting("round", self.round, "must be >= 1 (rounds count from 1, paper §3.2)")
        if self.dataset is Benchmark.QVHIGHLIGHTS:
            raise InvalidSetting("dataset", self.dataset.value, "is the Localizer's pre-training set, not a QA "
                                 "benchmark: pick one of " + ", ".join(b.value for b in Benchmark
                                                                       if b is not Benchmark.QVHIGHLIGHTS))
        if self.paths.processed is None:  # frozen: the derived default is set once, here
            object.__setattr__(self, "paths", dataclasses.replace(
                self.paths, processed=f"{self.paths.data}/processed/{self.dataset.value}"))
        elif self.dataset.real and Path(self.paths.processed).name != self.dataset.value:
            # one benchmark's records never land in another's folder (params.yaml's default is synth's)
            raise InvalidSetting("paths.processed", self.paths.processed,
                                 f"must be a folder named after dataset={self.dataset.value} "
                                 f"(e.g. {self.paths.data}/processed/{self.dataset.value})")

    def video_folder(self, records_dataset: str) -> Path:
        """Where the videos of records of `records_dataset` (a record's `dataset` field) are: the world's folder for
        the synthetic world (its QA and moments alike); a real benchmark's own folder, QVHighlights' for moments."""
        if not self.dataset.real:
            return Path(self.paths.world) / "videos"
        videos = self.datasets[records_dataset].videos
        if videos is None:
            raise ConfigError(f"datasets.{records_dataset}.videos: not set (the folder of its videos)")
        return Path(videos)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping: PyYAML keeps the last one silently,
    DVC (ruamel) rejects the file, so the two would disagree on what params.yaml says."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}: line {line}: duplicate key {key!r} (first at line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    """A YAML file read safely (no tags that build objects), with duplicate keys rejected."""
    path = Path(path)
    loader = _UniqueKeyLoader(path.read_text(encoding="utf-8"))
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    finally:
        loader.dispose()


def load_config(path: str | Path = "params.yaml", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for item in overrides:
        apply_override(raw, item)
    # a setting the user names on the command line wins over the paper's (issue 24: -o frames.n_frames=16 was
    # silently replaced by the benchmark's 32 on real weights)
    return with_paper_settings(build(Config, raw, ""), named=[item.split("=", 1)[0].strip() for item in overrides])


def real_weights(weights: str | Path) -> bool:
    """`model.weights` is a transformers BLIP-2 directory or a LAVIS/SeViLA .pth, not one of our checkpoints (the
    synthetic world's tiny backbone). A path that does not exist yet is not: the stage loading it says so."""
    if not Path(weights).exists():
        return False
    # Imported here: telling the formats apart lives in sevila.weights.load (which needs torch); settings load without
    # it.
    from sevila.weights.checkpoint_dir import CheckpointKind
    from sevila.weights.load import detect_kind

    return detect_kind(weights) in (CheckpointKind.HF_BLIP2, CheckpointKind.LAVIS)


def with_paper_settings(cfg: Config, named: Sequence[str] = ()) -> Config:
    """A real benchmark run with real weights runs the paper's settings for that benchmark (`datasets.<name>.paper`,
    from the official run scripts): its frames -> keyframes, and the recipes of fine-tuning and self-refinement;
    Localizer pre-training takes `datasets.qvhighlights.paper`. Every other field of a stage's `train:` block stays,
    and so does every setting in `named` (the dotted keys a user gave as overrides, or a section above them: the
    user's word wins over the paper's). The log says which settings came from the paper and which were kept.
    The synthetic world, and a real benchmark on our own checkpoints, run params.yaml's stage settings as written."""
    if not cfg.dataset.real or not real_weights(cfg.model.weights):
        return cfg
    qa, qvh = cfg.datasets[cfg.dataset].paper, cfg.datasets.qvhighlights.paper
    taken, kept = {}, []

    def paper(key: str, value, current):
        if any(key == n or key.startswith(n + ".") for n in named):
            kept.append(key)
            return current
        taken[key] = value
        return value

    def stage(name: str, section, recipe: StageRecipe | None):
        if recipe is None:
            return section
        values = {f.name: paper(f"{name}.train.{f.name}", getattr(recipe, f.name), getattr(section.train, f.name))
                  for f in dataclasses.fields(recipe)}
        return dataclasses.replace(section, train=dataclasses.replace(section.train, **values))

    frames = dataclasses.replace(cfg.frames, n_frames=paper("frames.n_frames", qa.n_frames, cfg.frames.n_frames),
                                 n_keyframes=paper("frames.n_keyframes", qa.n_keyframes, cfg.frames.n_keyframes))
    out = dataclasses.replace(
        cfg, frames=frames,
        pretrain_localizer=stage("pretrain_localizer", cfg.pretrain_localizer, qvh.pretrain_localizer),
        refine_localizer=stage("refine_localizer", cfg.refine_localizer, qa.refine_localizer),
        finetune_answerer=stage("finetune_answerer", cfg.finetune_answerer, qa.finetune_answerer))
    log.info("%s on real weights: from the paper's settings (datasets.%s.paper, datasets.qvhighlights.paper): %s%s",
             cfg.dataset.value, cfg.dataset.value, ", ".join(f"{k}={v}" for k, v in taken.items()) or "nothing",
             f"; kept as given: {', '.join(kept)}" if kept else "")
    return out


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3, 0.5, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key!r}: {p!r} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def build(cls: type, data: Any, where: str):
    """Build dataclass `cls` from plain data, checking keys and types; `where` is the dotted path for errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or '<root>'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or '<root>'}: unknown setting(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except InvalidSetting as e:
        key = f"{where}.{e.key}" if where else e.key
        raise ConfigError(f"{key}: {e.value!r} {e.why}") from None


def _coerce(tp: Any, value: Any, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _key_tp, val_tp = typing.get_args(tp)
        return {str(k): _coerce(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from None
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(obj) -> dict:
    """Plain (YAML/JSON-able) dict of a config tree: enums become their values, tuples lists."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, enum.Enum):
            return v.value
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)
