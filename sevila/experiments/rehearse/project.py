"""The user's path on one benchmark's official files, end to end: a project folder whose params.yaml is the repo's
with the keys a user sets for a real benchmark (`dataset`, `datasets.<name>.annotations/videos`,
`datasets.qvhighlights.*`, `model.weights`, smaller `paper` recipes and frame counts), then every stage of
dvc.yaml in order through `sevila.stages.run_stage` (what `sevila stage NAME -p params.yaml` and `dvc repro` call),
with an MLflow store of its own inside the project. Nothing here knows how the files were made: the rehearsal's
miniature and a user's own folders go through the same function."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import yaml

from sevila.atomic import atomic_write_text
from sevila.config import Benchmark, apply_override, load_config, read_yaml
from sevila.stages import pipeline, run_stage

# Sized for a tiny model on a CPU: one epoch of small batches, 4 -> 2 frames (the paper: 32 -> 4, tens of epochs)
RECIPE = {"lr": 1.0e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "warmup_steps": 0}
N_FRAMES, N_KEYFRAMES = 4, 2
# Each study of the ablation tables with as few rows as show it (params.yaml's, at 4 and 8 frames instead of 16-64):
# components without and with the full SeViLA Localizer, frames 8 -> 2, BLIP-2 concat and voting, the oracle of
# SeViLA's Answerer (each frame in its keyframe slots) and the official zero-shot one
VARIANTS: dict[str, dict] = {
    "f4k2_none": {"study": "components", "n_frames": 4, "n_keyframes": 2, "localizer": "none"},
    "f4k2_qvh_sr": {"study": "components", "n_frames": 4, "n_keyframes": 2, "localizer": "qvh_sr"},
    "f8k2_qvh_sr": {"study": "frames", "n_frames": 8, "n_keyframes": 2},
    "uniform_k2": {"study": "baseline", "selector": "uniform", "n_frames": 4, "n_keyframes": 2,
                   "answerer": "finetuned_uniform"},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 4, "answerer": "zero_shot"},
    "oracle": {"study": "oracle", "selector": "oracle", "fusion": "vote", "n_frames": 4},
    "oracle_zero_shot": {"study": "oracle", "selector": "oracle", "fusion": "vote", "n_frames": 4,
                         "answerer": "zero_shot"},
}
EVAL_SPLIT = "val"  # test splits are unlabelled on most benchmarks (the paper reports val too)
REPORT_FILES = ("ablations.json", "ablations.md")


@dataclass(frozen=True)
class BenchmarkFiles:
    """A QA benchmark's official files and QVHighlights' (what a user downloads), wherever they are."""

    dataset: Benchmark
    annotations: Mapping[str, Path]  # split -> official annotation file
    videos: Path  # the folder in the official layout
    moments: Mapping[str, Path]  # QVHighlights split -> highlight_<split>_release.jsonl
    moment_videos: Path
    video_map: Path | None = None  # NExT-QA's map_vid_vidorID.json


def _setting(key: str, value) -> str:
    # JSON is YAML: a path with ': ' or '#' in it stays one string
    return f"{key}={json.dumps(str(value) if isinstance(value, Path) else value)}"


def overrides(files: BenchmarkFiles, weights: Path, project: Path) -> list[str]:
    """The params.yaml keys a user sets to run `files` on `weights`, with every path absolute and every output
    inside `project`."""
    name = files.dataset.value
    out = [_setting("dataset", name)]
    out += [_setting(f"datasets.{name}.annotations.{s}", p.resolve()) for s, p in files.annotations.items()]
    out.append(_setting(f"datasets.{name}.videos", files.videos.resolve()))
    if files.video_map is not None:
        out.append(_setting(f"datasets.{name}.video_map", files.video_map.resolve()))
    out += [_setting(f"datasets.qvhighlights.annotations.{s}", p.resolve()) for s, p in files.moments.items()]
    out.append(_setting("datasets.qvhighlights.videos", files.moment_videos.resolve()))
    out.append(_setting("model.weights", weights.resolve()))
    # the paper's recipe of each stage (what runs on BLIP-2 weights), cut down to the tiny model's size
    out += [_setting(f"datasets.{name}.paper.{k}", v) for k, v in (("n_frames", N_FRAMES), ("n_keyframes", N_KEYFRAMES),
                                                                 ("finetune_answerer", RECIPE),
                                                                 ("refine_localizer", RECIPE))]
    out.append(_setting("datasets.qvhighlights.paper.pretrain_localizer", RECIPE))
    out += [_setting("prepare.splits", sorted(files.annotations)), _setting("evaluate.split", EVAL_SPLIT),
            _setting("evaluate.variants", VARIANTS)]
    root = project.resolve()
    out += [_setting(f"paths.{k}", root / k) for k in ("data", "reports", "models", "runs")]
    out.append(_setting("frames.cache", root / "data" / "features"))
    return out


def write_params(project: Path, template: Path, settings: list[str]) -> Path:
    """`project/params.yaml` = `template` with `settings` applied, written only once they load as a valid config
    (an unknown key or a wrong value names the key and writes nothing)."""
    load_config(template, settings)
    raw = read_yaml(template)
    for item in settings:
        apply_override(raw, item)
    return atomic_write_text(project / "params.yaml", yaml.safe_dump(raw, sort_keys=False))


def run_project(params: Path, on_stage: Callable[[str, float, dict], None] | None = None) -> dict[str, dict]:
    """Every stage of the pipeline on `params`, in dvc.yaml's order (sevila.stages.pipeline; `bootstrap` trains
    nothing for a real benchmark and says so), with the project's own MLflow store
    (`<project>/mlflow.db`, where `sevila stage` run inside the project puts it). Returns each stage's metrics;
    `on_stage(name, seconds, metrics)` hears of each as it ends."""
    from sevila import tracking

    results = {}
    tracking.configure(params.parent / "mlflow.db")
    try:
        for name, stage, settings in pipeline():
            start = time.perf_counter()
            results[name] = run_stage(stage, str(params), settings)
            if on_stage is not None:
                on_stage(name, time.perf_counter() - start, results[name])
    finally:
        tracking.configure(None)  # back to MLFLOW_TRACKING_URI / the default for the rest of the process
    return results
