"""`sevila rehearse BENCHMARK [--out DIR] [--annotations DIR]`: the real-data pipeline, end to end, on a miniature of a
benchmark that
anyone can run on this machine (issue 9). It shows that the path a user with the real files takes works: the
official annotation files read by the real readers, videos found in the official folder layout, a BLIP-2
transformers directory as the weights, every stage of dvc.yaml from `prepare` to `report`, the benchmark's own
metric names and MLflow experiments. It does not show accuracy: the model is random and tiny, the data a few
dozen questions.

Its inputs need nothing beside the repository: the real annotation excerpts ship in the package
(sevila/data/realdata/). With `--annotations DIR` the benchmark's OWN official files are read instead (the first
videos of each, under their official names in DIR: what a user checks before a real run).

What it writes under DIR (default: rehearsals/<benchmark> in the working directory):
- `rehearsal.json`: marks DIR as a rehearsal's (a rerun may write here; any other non-empty folder is refused,
  so a mistyped --out never touches a user's data) and, at the end, the run's summary;
- `<benchmark>/annotations/`, `<benchmark>/videos/`, `qvhighlights/annotations/`, `qvhighlights/videos/`: the
  miniature in its official form (sevila.experiments.rehearse.miniature: real excerpts, generated videos under the real
  ids);
- `models/blip2-flan-t5-tiny/`: a random tiny BLIP-2 saved with `save_pretrained`, its T5 tokenizer beside it
  (sevila.experiments.rehearse.tiny_blip2);
- `project/`: params.yaml (the repo's, with the keys a user sets) and everything the stages write: data/,
  models/, runs/, reports/ablations.{md,json}, and the MLflow store mlflow.db (sevila.experiments.rehearse.project).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sevila.atomic import atomic_write_json
from sevila.config import Benchmark, load_config
from sevila.data import REALDATA_ENV, realdata_dir
from sevila.errors import BadArgument
from sevila.experiments.rehearse.miniature import QA_BENCHMARKS, SPECS, lay_out
from sevila.experiments.rehearse.project import REPORT_FILES, BenchmarkFiles, overrides, run_project, write_params
from sevila.experiments.rehearse.tiny_blip2 import DIR_NAME, save_tiny_blip2

MARKER = "rehearsal.json"
REPO = Path(__file__).resolve().parents[3]  # sevila/experiments/rehearse/__init__.py -> the repository
DEFAULT_OUT = Path("rehearsals")  # <benchmark>/ below it, in the working directory


def official_files(dataset: Benchmark, annotations: Path) -> dict[str, Path | None]:
    """A user's own official files of `dataset` in `annotations`, under their official names: the labelled split
    the miniature splits into train/val (the official val file), the test file, NExT-QA's video map. A missing
    labelled file is an error naming the path; a missing test file falls back to the excerpt."""
    if not annotations.is_dir():
        raise BadArgument(f"--annotations {annotations}: not a folder")
    spec = SPECS[dataset]
    labelled = annotations / spec.names["val"]
    if not labelled.is_file():
        raise BadArgument(f"--annotations {annotations}: no {spec.names['val']} (the official {dataset.value} val "
                          f"file, which the rehearsal splits into train/val)")
    test = annotations / spec.names["test"]
    vmap = annotations / Path(spec.video_map).name if spec.video_map else None
    if vmap is not None and not vmap.is_file():
        raise BadArgument(f"--annotations {annotations}: no {vmap.name} (NExT-QA's video map, beside {labelled.name})")
    return {"labelled": labelled, "test": test if test.is_file() else None, "video-map": vmap}


@dataclass(frozen=True)
class Rehearsal:
    benchmark: str
    out: Path
    params: Path
    reports: tuple[Path, ...]  # ablations.json, ablations.md
    mlflow_uri: str
    experiments: tuple[str, ...]
    seconds: dict[str, float]  # per step: layout, weights, then each stage
    summary: tuple[str, ...]


def check_out(out: Path) -> None:
    """DIR must be new, empty, or an earlier rehearsal's (never a folder of someone's data)."""
    if out.exists() and not out.is_dir():
        raise BadArgument(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BadArgument(f"--out {out}: not empty and not a rehearsal's folder (no {MARKER}); give a new folder")


def check_inputs(benchmark: str, out: Path, source: Path, given: dict[str, Path | None], template: Path) -> Benchmark:
    """Every argument checked before anything is written."""
    try:
        dataset = Benchmark(benchmark)
    except ValueError:
        dataset = None
    if dataset not in QA_BENCHMARKS:
        raise BadArgument(f"benchmark {benchmark!r}: one of {', '.join(d.value for d in QA_BENCHMARKS)}")
    check_out(out)
    for option, path in given.items():
        if path is not None and not path.is_file():
            raise BadArgument(f"--{option} {path}: no such file")
    if given.get("video-map") is not None and dataset is not Benchmark.NEXTQA:
        raise BadArgument(f"--video-map applies to nextqa only, not {benchmark}")
    if not source.is_dir():
        raise BadArgument(f"--source {source}: the real annotation excerpts are not there (unset {REALDATA_ENV} "
                          "to use the copy inside the package)")
    load_config(template)  # a broken template stops here, naming its file and key
    return dataset


def experiments_of(uri: str) -> tuple[str, ...]:
    from mlflow import MlflowClient

    return tuple(sorted(e.name for e in MlflowClient(uri).search_experiments() if e.name.startswith("sevila/")))


def rehearse(benchmark: str, out: Path | None = None, *, source: Path | None = None, labelled: Path | None = None,
             test: Path | None = None, video_map: Path | None = None, annotations: Path | None = None,
             template: Path | None = None, say: Callable[[str], None] = print) -> Rehearsal:
    """Lay out the miniature of `benchmark` and a tiny BLIP-2 under `out` (default rehearsals/<benchmark>), then
    run the pipeline on them. `annotations`: a folder of the user's own official files (`official_files`)."""
    out = Path(out) if out is not None else DEFAULT_OUT / benchmark
    source, template = Path(source or realdata_dir()), Path(template or REPO / "params.yaml")
    if annotations is not None and benchmark in {d.value for d in QA_BENCHMARKS}:
        own = official_files(Benchmark(benchmark), Path(annotations))
        labelled, test, video_map = labelled or own["labelled"], test or own["test"], video_map or own["video-map"]
    dataset = check_inputs(benchmark, out, source, {"labelled": labelled, "test": test, "video-map": video_map},
                           template)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MARKER, {"benchmark": dataset.value, "status": "running"})
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    mini = lay_out(dataset, out, source, labelled, test, video_map)
    seconds["layout"] = time.perf_counter() - start
    summary = [f"rehearsal of {dataset.value} in {out}", *mini.summary()]
    for line in summary:
        say(line)
    start = time.perf_counter()
    weights = save_tiny_blip2(out / "models" / DIR_NAME, mini.texts)
    seconds["weights"] = time.perf_counter() - start
    say(f"weights: {weights} (random tiny BLIP-2 + T5 tokenizer, transformers format)")
    files = BenchmarkFiles(dataset, {s: f.path for s, f in mini.annotations.items()}, mini.videos,
                           {s: f.path for s, f in mini.moments.items()}, mini.moment_videos, mini.video_map)
    project = out / "project"
    params = write_params(project, template, overrides(files, weights, project))
    say(f"project: {params} (the repo's params.yaml with dataset={dataset.value} and its datasets.* keys)")

    def heard(stage: str, took: float, metrics: dict) -> None:
        seconds[stage] = took
        say(f"stage {stage}: {took:.1f} s")

    run_project(params, on_stage=heard)
    reports = tuple(project / "reports" / name for name in REPORT_FILES)
    uri = f"sqlite:///{(project / 'mlflow.db').resolve()}"
    experiments = experiments_of(uri)
    summary += [f"report: {reports[1]} ({reports[0].name} beside it)", f"MLflow: {uri}",
                f"experiments: {', '.join(experiments)}",
                "seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())]
    for line in summary[-4:]:
        say(line)
    atomic_write_json(out / MARKER, {"benchmark": dataset.value, "status": "done", "summary": summary,
                                     "seconds": seconds})
    return Rehearsal(dataset.value, out, params, reports, uri, experiments, seconds, tuple(summary))


# ------------------------------------------------------------------------------------------------------ CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "rehearse", help="run the real-data pipeline end to end on a miniature of a benchmark (tiny random BLIP-2)",
        description=__doc__.split("\n\n")[0])
    p.add_argument("benchmark", choices=[d.value for d in QA_BENCHMARKS])
    p.add_argument("--out", type=Path, default=None,
                   help=f"folder to write everything in, new or a rehearsal's (default: {DEFAULT_OUT}/BENCHMARK)")
    p.add_argument("--annotations", type=Path, default=None,
                   help="a folder of your own official annotation files of the benchmark, under their official "
                        "names (e.g. nextqa: val.csv, test.csv, map_vid_vidorID.json); the first videos of each "
                        "are rehearsed instead of the shipped excerpts")
    p.add_argument("--source", type=Path, default=None,
                   help=f"the folder of annotation excerpts (default: ${REALDATA_ENV}, else the copy shipped in "
                        "the package, sevila/data/realdata)")
    p.add_argument("--labelled", type=Path, default=None,
                   help="an official labelled annotation file of the benchmark to split into train/val "
                        f"(default: the excerpt, e.g. {SPECS[Benchmark.NEXTQA].labelled.path})")
    p.add_argument("--test", type=Path, default=None, help="an official test annotation file (default: the excerpt)")
    p.add_argument("--video-map", type=Path, default=None, help="nextqa: the map_vid_vidorID.json of --labelled")
    p.add_argument("--params", type=Path, default=None, help="the params.yaml to start from (default: the repo's)")
    p.set_defaults(func=_cli_rehearse)


def _cli_rehearse(args: argparse.Namespace) -> int:
    r = rehearse(args.benchmark, args.out, source=args.source, labelled=args.labelled, test=args.test,
                 video_map=args.video_map, annotations=args.annotations, template=args.params)
    print(json.dumps({"report": str(r.reports[1]), "json": str(r.reports[0]), "mlflow": r.mlflow_uri}))
    return 0
