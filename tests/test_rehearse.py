"""`sevila rehearse`: the miniature is each benchmark's official form (the readers read it, every record's video is
where the official layout puts it and lasts past its window), and the real-data pipeline runs through it end to end
for every benchmark, and on a BLIP-2 directory and videos that this test makes itself."""
from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from sevila import cli
from sevila.data.annotations import Dataset, read_annotations
from sevila.data.video import verify_video
from sevila.rehearse import MARKER, check_out
from sevila.rehearse.project import VARIANTS
from sevila.rehearse.miniature import (
    MAX_MOMENT_VIDEOS, MAX_TEST_VIDEOS, QA_BENCHMARKS, SPECS, lay_out, split_by_video, star_from_sevila,
)

BENCHMARKS = [d.value for d in QA_BENCHMARKS]


@pytest.fixture(scope="module")
def miniatures(tmp_path_factory, realdata):
    """Every benchmark's miniature, each in its own folder (as `sevila rehearse` lays them out)."""
    return {b: (lay_out(b, tmp_path_factory.mktemp(b), realdata), realdata) for b in BENCHMARKS}


def official_file(dataset: Dataset, root: Path, record) -> Path:
    """Where the benchmark's own loader looks for a record's video, written out here independently of the code under
    test: `<videos>/<video>.mp4` (NExT-QA's video already mapped to `<dir>/<id>`), VLEP TV clips less `_ep`."""
    video = record.video
    if dataset is Dataset.VLEP and ":" not in video:
        assert video.endswith("_ep")
        video = video[:-3]
    return root / f"{video}.mp4"


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_miniature_is_the_official_form(miniatures, benchmark):
    mini, realdata = miniatures[benchmark]
    dataset = Dataset(benchmark)
    spec = SPECS[dataset]
    assert sorted(mini.annotations) == ["test", "train", "val"]
    split_records = {}
    for split, f in mini.annotations.items():
        assert f.path.name == spec.names[split] and f.path.parent.name == "annotations"
        recs = read_annotations(dataset, f.path)  # the default (official) format, the map beside a NExT-QA csv
        assert len(recs) == f.questions > 0
        split_records[split] = recs
        for r in recs:
            path = official_file(dataset, mini.videos, r)
            n, fps = verify_video(path)
            assert n / fps >= (r.end or 0.0), (r.qid, path)
    train, val, test = (split_records[s] for s in ("train", "val", "test"))
    # train + val are the whole labelled excerpt, split by video; every question of both is labelled
    source = read_annotations(dataset, realdata / spec.labelled.path, fmt=spec.labelled.fmt,
                              video_map=realdata / spec.video_map if spec.video_map else None)
    key = lambda r: (r.video, r.question or "", r.options, r.answer, r.start, r.end)  # How2QA's qid names its file
    assert sorted(map(key, train + val)) == sorted(map(key, source))
    assert not {r.video for r in train} & {r.video for r in val}
    assert all(r.answer is not None for r in train + val)
    assert len({r.video for r in test}) == MAX_TEST_VIDEOS
    for split, f in mini.moments.items():
        moments = read_annotations(Dataset.QVHIGHLIGHTS, f.path)
        assert len({m.video for m in moments}) == MAX_MOMENT_VIDEOS[split]
        for m in moments:
            n, fps = verify_video(mini.moment_videos / f"{m.video}.mp4")
            assert n / fps == m.duration


def test_nextqa_layout_goes_through_the_video_map(miniatures):
    mini, _ = miniatures["nextqa"]
    vmap = json.loads(mini.video_map.read_text())
    rows = list(csv.DictReader(open(mini.annotations["val"].path)))
    assert {r["video"] for r in rows} <= set(vmap)
    for r in rows:  # <videos>/<dir>/<id>.mp4, the dir from map_vid_vidorID.json
        d, vid = vmap[r["video"]].split("/")
        assert vid == r["video"] and (mini.videos / d / f"{vid}.mp4").is_file()


def test_excerpt_rows_are_copied_byte_for_byte(miniatures):
    mini, realdata = miniatures["how2qa"]
    source = (realdata / "how2qa" / "how2QA_val_release.csv").read_text().splitlines(keepends=True)
    written = [line for s in ("train", "val") for line in mini.annotations[s].path.read_text().splitlines(True)]
    assert sorted(written) == sorted(source)  # quoted fields included


def test_split_by_video_alternates_videos_in_order_of_first_appearance():
    from sevila.data.records import QARecord

    recs = [QARecord("nextqa", str(i), v, "q?", ("a", "b")) for i, v in enumerate("aabcbdc")]
    assert split_by_video(recs) == ([0, 1, 3, 6], [2, 4, 5])  # a, c -> train; b, d -> val


def test_star_from_sevila_gives_back_the_raw_star_record(realdata, tmp_path):
    """SeViLA's converted STAR val.json starts with the question of the raw STAR_val.json excerpt: the inverse
    conversion gives back its raw fields, and the raw reader reads both the same."""
    raw = json.loads((realdata / "star" / "STAR_val.json").read_text())[0]
    converted = json.loads((realdata / "sevila_data" / "star" / "val.json").read_text())[0]
    back = star_from_sevila(converted)
    trimmed = {k: raw[k] for k in back} | {"choices": [{k: c[k] for k in ("choice_id", "choice")}
                                                       for c in raw["choices"]]}  # no programs or situations
    assert back == trimmed
    (tmp_path / "back.json").write_text(json.dumps([back]))
    (tmp_path / "raw.json").write_text(json.dumps([raw]))
    assert read_annotations(Dataset.STAR, tmp_path / "back.json") == read_annotations(Dataset.STAR, tmp_path / "raw.json")
    test = star_from_sevila(json.loads((realdata / "sevila_data" / "star" / "test.json").read_text())[0])
    assert "answer" not in test  # an unlabelled test question stays unlabelled


def test_out_must_be_new_empty_or_a_rehearsals(tmp_path, capsys):
    (tmp_path / "data.txt").write_text("a user's file")
    assert cli.main(["rehearse", "nextqa", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sevila rehearse: error: --out {tmp_path}: not empty and not a rehearsal's folder (no {MARKER}); " \
                  "give a new folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]  # nothing written
    (tmp_path / MARKER).write_text("{}")
    check_out(tmp_path)  # an earlier rehearsal's folder may be written again
    check_out(tmp_path / "new")


@pytest.mark.parametrize("argv, message", [
    (["qvhighlights"], "argument benchmark: invalid choice: 'qvhighlights'"),
    (["nextqa", "--source", "{tmp}/none"], "--source {tmp}/none: the real annotation excerpts are not there"),
    (["star", "--video-map", "{tmp}/m.json"], "--video-map {tmp}/m.json: no such file"),
])
def test_bad_arguments_stop_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) if argv[0] == "qvhighlights" else _no_raise():
        assert cli.main(["rehearse", *argv, "--out", str(out)]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not out.exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ------------------------------------------------------------------------------------ the pipeline, end to end

#: the benchmark's own metric names (sevila.metrics.qa_metrics): NExT-QA's groups, STAR's four types and their mean
METRICS = {"nextqa": {"accuracy", "Causal", "Temporal", "Descriptive"},
           "star": {"accuracy", "Interaction", "Sequence", "Prediction", "Feasibility", "mean"},
           "how2qa": {"accuracy"}, "tvqa": {"accuracy"}, "vlep": {"accuracy"}}
PHASES = ("evaluate", "finetune", "pretrain", "pseudo_label", "refine", "report")


def mlflow_runs(uri: str) -> dict[str, set[str]]:
    """experiment name -> the names of its FINISHED runs."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {e.name: {r.info.run_name for r in client.search_runs([e.experiment_id]) if r.info.status == "FINISHED"}
            for e in client.search_experiments() if e.name.startswith("sevila/")}


def check_report(project: Path, benchmark: str, val_file: Path) -> None:
    """The report holds every variant with the benchmark's metric names, scored over every val question."""
    val = read_annotations(benchmark, val_file)
    rows = json.loads((project / "reports" / "ablations.json").read_text())
    assert sorted(r["variant"] for r in rows) == sorted(VARIANTS)
    for r in rows:
        assert r["dataset"] == benchmark and METRICS[benchmark] <= set(r), (r["variant"], sorted(r))
        assert r["count"] == len(val) and r["unlabelled"] == 0
    if benchmark == "nextqa":  # the per-type counts are the val file's
        assert {k[6:]: v for k, v in rows[0].items() if k.startswith("count_")} == dict(Counter(r.qtype for r in val))
    md = (project / "reports" / "ablations.md").read_text()
    assert f"## Dataset `{benchmark}`" in md and all(f"| {v} |" in md for v in VARIANTS)


@pytest.fixture(scope="module")
def rehearsal_dir(tmp_path_factory) -> Path:
    """One rehearsal folder for every benchmark, as a user switching `dataset` in one project has: each benchmark's
    runs land in its own experiments of the one MLflow store (and the store's schema is made once, not 5 times)."""
    return tmp_path_factory.mktemp("rehearsal")


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_rehearsal_runs_the_real_pipeline_end_to_end(benchmark, rehearsal_dir, realdata, capsys):
    out = rehearsal_dir
    assert cli.main(["rehearse", benchmark, "--out", str(out), "--source", str(realdata)]) == 0
    printed = capsys.readouterr().out
    project = out / "project"
    assert f"report: {project / 'reports' / 'ablations.md'}" in printed
    assert "split rule: train + val = the labelled excerpt split by video" in printed
    check_report(project, benchmark, out / benchmark / "annotations" / SPECS[Dataset(benchmark)].names["val"])
    runs = mlflow_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert {f"sevila/{benchmark}/{phase}" for phase in PHASES} <= set(runs)
    assert all(name.split("/")[1] in BENCHMARKS for name in runs)  # every experiment is one benchmark's
    assert runs[f"sevila/{benchmark}/evaluate"] == set(VARIANTS)
    validation = json.loads((project / "reports" / "validation.json").read_text())
    assert validation["success"] is True
    assert json.loads((out / MARKER).read_text())["benchmark"] == benchmark
