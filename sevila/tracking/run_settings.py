"""What each stage's MLflow run records as ITS settings and ITS input data (docs/design.md §3: runs a table can pivot
on).

Why not all of params.yaml as params: the MLflow UI shows params as columns, and with the whole file an 8 -> 1
evaluate run showed `frames.n_frames = 32` (the pipeline default it never used) next to `evaluate.variants.*`
of every other variant. So a run's params are only what it reads:
- an evaluate run: its variant's resolved settings under short names (`n_frames`, `n_keyframes`, `selector`,
  `fusion`, `localizer`, `answerer`, `study`; the same names as its tags, so the runs table of
  `sevila/<dataset>/evaluate` is the ablation table) plus the split, the round and the model it loads;
- a training stage (and bootstrap, pseudo_label): its own section of params.yaml plus the shared settings it
  reads (`frames.*`, `model.*`, `round`), under their params.yaml paths.
The whole resolved config (overrides applied) is every run's `params.yaml` artifact.

Inputs: every file of records a run reads is logged with `mlflow.data` semantics (a dataset with a digest of the
file's bytes, its row count, its path, and the context `train` or `eval`), so two runs on different data differ
visibly in the UI's Datasets column even when their settings are equal. The records files are the canonical
`<paths.processed>/<split>.jsonl` that sevila.stages.common.read_split reads.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

from sevila.config import Config, frame_slots, to_dict
from sevila.stages.common import records_file
from sevila.tracking import InputContext, InputFile, MlflowRunLogger, Phase, RunTags, start_run

SYNTH = "synth"  # the embedded default's dataset name: its runs carry the world's seed (sevila.experiments.seeds)

# Stage -> the params.yaml paths it reads (its own section first). A path names a section or one setting.
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "bootstrap": ("bootstrap", "world", "paths.world", "paths.processed", "model.weights"),
    "pretrain_localizer": ("pretrain_localizer", "frames.n_frames", "frames.n_keyframes", "frames.bad_video",
                           "model"),
    "pseudo_label": ("pseudo_label", "round", "frames.n_frames", "frames.bad_video", "model"),
    "refine_localizer": ("refine_localizer", "round", "frames.n_frames", "frames.bad_video", "model"),
    "finetune_answerer": ("finetune_answerer", "round", "frames.n_frames", "frames.n_keyframes",
                          "frames.bad_video", "model"),
}
# Stage -> (records file stem under paths.processed, context) of each records file it reads.
STAGE_INPUTS: dict[str, tuple[tuple[str, InputContext], ...]] = {
    "bootstrap": (("train", InputContext.TRAIN), ("val", InputContext.EVAL)),
    "pretrain_localizer": (("moments_train", InputContext.TRAIN), ("moments_val", InputContext.EVAL)),
    "pseudo_label": (("train", InputContext.EVAL),),  # the Answerer labels the training questions' frames
    "refine_localizer": (("train", InputContext.TRAIN),),
    "finetune_answerer": (("train", InputContext.TRAIN),),
}
# The variant settings an evaluate run logs as params, by their short (tag) names.
VARIANT_KEYS: tuple[str, ...] = ("study", "selector", "fusion", "n_frames", "n_keyframes", "localizer", "answerer",
                                "frame_slots")


def _lookup(tree: dict, path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"params.yaml has no setting {path!r} (run_settings.STAGE_SETTINGS is out of date)")
        node = node[part]
    return node


def stage_params(cfg: Config, stage: str) -> dict[str, Any]:
    """The settings stage `stage` reads, keyed by their params.yaml path (sections stay nested: tracking
    flattens them to dotted keys)."""
    if stage not in STAGE_SETTINGS:
        raise ValueError(f"run_settings: unknown stage {stage!r}; known: {sorted(STAGE_SETTINGS)}")
    tree = to_dict(cfg)
    out: dict[str, Any] = {}
    for path in STAGE_SETTINGS[stage]:
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _lookup(tree, path)
    return out


def variant_params(cfg: Config, variant: str) -> dict[str, Any]:
    """An evaluate run's own settings: the variant's resolved fields (short names), then what the stage reads
    besides (split, round, the model it loads, the bad-video policy)."""
    if variant not in cfg.evaluate.variants:
        raise ValueError(f"run_settings: {variant!r} is not in evaluate.variants; known: "
                         f"{sorted(cfg.evaluate.variants)}")
    v = to_dict(cfg.evaluate.variants[variant]) | {
        "frame_slots": frame_slots(cfg.evaluate.variants[variant], cfg.frames.n_keyframes)}  # null resolved
    return {"variant": variant, **{k: v[k] for k in VARIANT_KEYS}, "split": cfg.evaluate.split,
            "round": cfg.round, "model": to_dict(cfg.model), "frames": {"bad_video": cfg.frames.bad_video.value}}


def stage_inputs(cfg: Config, stage: str) -> list[InputFile]:
    if stage == "evaluate":
        return [InputFile(records_file(cfg, cfg.evaluate.split), InputContext.EVAL)]
    if stage not in STAGE_INPUTS:
        raise ValueError(f"run_settings: unknown stage {stage!r}; known: {sorted([*STAGE_INPUTS, 'evaluate'])}")
    return [InputFile(records_file(cfg, stem), ctx) for stem, ctx in STAGE_INPUTS[stage]]


@contextlib.contextmanager
def stage_run(cfg: Config, stage: str, phase: Phase, run_name: str, tags: RunTags, *, variant: str | None = None,
              inputs: Sequence[InputFile] = ()) -> Iterator[MlflowRunLogger]:
    """`tracking.start_run` for a pipeline stage: its own settings as params (`variant_params` for an evaluate
    variant, else `stage_params`), the resolved config as the `params.yaml` artifact, and the records it reads
    (plus `inputs`, e.g. a pseudo-label file) as datasets."""
    params = variant_params(cfg, variant) if variant is not None else stage_params(cfg, stage)
    if tags.seed is None and cfg.dataset.value == SYNTH:  # the world and backbone it ran on (sevila.experiments.seeds)
        tags = dataclasses.replace(tags, seed=cfg.world.seed)
    with start_run(cfg.dataset.value, phase, run_name, tags, params, config=to_dict(cfg),
                   inputs=[*stage_inputs(cfg, stage), *inputs]) as run:
        yield run
