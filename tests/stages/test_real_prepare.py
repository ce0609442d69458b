"""`prepare` and `validate` on the real benchmarks (issue 9): the official annotation excerpts of sevila/data/realdata
read through the readers, with tiny generated .mp4 files laid out in each benchmark's official layout under the
real video ids. Pins the records per split, each video's path, window and duration, the errors (a missing video, an
annotation naming no video file, an id escaping the folder) and that nothing already written is lost; then the
chain on that path, every stage from prepare to report on NExT-QA with our tiny random backbone (the rehearsal runs
the same with a BLIP-2 directory)."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sevila.stages.common import split_clips, read_split
from sevila.config import load_config
from sevila.data.annotations import AnnotationError, read_annotations
from sevila.data.benchmarks import SKIPPED_FILE, VIDEOS_FILE, MissingVideo
from sevila.data.records import MomentRecord, QARecord, read_records
from sevila.synthetic.render import write_mp4
from sevila.data.video import SkipLog
from sevila.errors import UserError
from sevila import tracking
from sevila.weights.ours import PARTS, save_sevila
from sevila.model.modeling import SeViLA
from sevila.model.configuration import sevila_tiny
from sevila.stages import (
    bootstrap, evaluate, finetune_answerer, prepare, pretrain_localizer, pseudo_label, refine_localizer, report,
    validate,
)
from sevila.model.tokenizer import build_tiny_tokenizer

FPS, N_FRAMES = 2, 20  # every generated video: 20 frames at 2 fps = 10 s
DURATION = N_FRAMES / FPS

# benchmark -> (split -> excerpt file under realdata); NExT-QA has no train.csv excerpt (SOURCES.md)
FILES = {
    "nextqa": {"train": "nextqa/val.csv", "val": "nextqa/test.csv"},
    "star": {"train": "star/sample_question.json", "val": "star/STAR_val.json"},
    "how2qa": {"val": "how2qa/how2QA_val_release.csv", "test": "how2qa/how2QA_test_public_release.csv"},
    "tvqa": {"val": "tvqa/tvqa_plus_val.json", "test": "tvqa/tvqa_test_public.jsonl"},
    "vlep": {"val": "vlep/vlep_dev_release.jsonl", "test": "vlep/vlep_test_release.jsonl"},
}
# QVHighlights moments for the same pipeline splits: two small excerpts, no query in two splits (validate checks it)
QVH_FILES = {"train": "qvhighlights/highlight_train_release.jsonl", "val": "qvhighlights/highlight_test_with_gt.jsonl",
             "test": "qvhighlights/highlight_train_release.jsonl"}
# questions per excerpt file and distinct videos (SOURCES.md; counted from the files)
COUNTS = {
    "nextqa": {"train": (46, 5), "val": (46, 6)},
    "star": {"train": (1, 1), "val": (1, 1)},
    "how2qa": {"val": (40, 22), "test": (19, 18)},
    "tvqa": {"val": (30, 8), "test": (43, 43)},
    "vlep": {"val": (40, 29), "test": (20, 14)},
}


@pytest.fixture(scope="session")
def template_mp4(tmp_path_factory) -> bytes:
    frames = np.zeros((N_FRAMES, 16, 16, 3), dtype=np.uint8)
    frames[:, :, :, 0] = np.arange(N_FRAMES, dtype=np.uint8)[:, None, None] * 10
    return write_mp4(tmp_path_factory.mktemp("mp4") / "t.mp4", frames, FPS).read_bytes()


def official_files(realdata: Path, benchmark: str) -> dict[str, Path]:
    return {split: realdata / f for split, f in FILES[benchmark].items()}


def expected_files(realdata: Path, benchmark: str, path: Path) -> list[str]:
    """The official layout, worked out here from the raw files (not by the code under test): the ids a user's
    video folder holds, relative to it, with the extension."""
    if benchmark == "nextqa":
        vmap = json.loads((realdata / "nextqa/map_vid_vidorID.json").read_text())
        with open(path, newline="") as fh:
            return [vmap[row["video"]] + ".mp4" for row in csv.DictReader(fh)]
    if benchmark == "vlep":  # SeViLA's loader: TV clips lose their `_ep`, YouTube ones (with a ':') keep it
        names = [json.loads(line)["vid_name"] for line in path.read_text().splitlines() if line.strip()]
        return [(n if ":" in n else n[:-3]) + ".mp4" for n in names]
    return [r.video + ".mp4" for r in read_annotations(benchmark, path)]


def lay_out(root: Path, files: list[str], template: bytes) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(template)


def write_params(root: Path, realdata: Path, benchmark: str, **extra) -> Path:
    splits = list(FILES[benchmark])
    entry = {"annotations": {s: str(p) for s, p in official_files(realdata, benchmark).items()},
             "videos": str(root / benchmark / "videos")}
    if benchmark == "nextqa":
        entry["video_map"] = str(realdata / "nextqa/map_vid_vidorID.json")
    params = {
        "dataset": benchmark,
        "paths": {"data": str(root / "data"), "world": str(root / "world"), "reports": str(root / "reports"),
                  "models": str(root / "models")},
        "prepare": {"splits": splits},
        "datasets": {benchmark: entry, "qvhighlights": {
            "annotations": {s: str(realdata / QVH_FILES[s]) for s in splits}, "videos": str(root / "qvh")}},
    }
    for key, value in extra.items():
        node = params
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


def benchmark_project(root: Path, realdata: Path, benchmark: str, template: bytes, **extra):
    """A project on `benchmark` with every video of its excerpts (and of QVHighlights') in place."""
    for split, path in official_files(realdata, benchmark).items():
        lay_out(root / benchmark / "videos", expected_files(realdata, benchmark, path), template)
    for split in FILES[benchmark]:
        lay_out(root / "qvh", expected_files(realdata, "qvhighlights", realdata / QVH_FILES[split]), template)
    return load_config(write_params(root, realdata, benchmark, **extra))


@pytest.mark.parametrize("benchmark", list(FILES))
def test_prepare_reads_the_official_files_into_records_with_paths_and_durations(tmp_path, realdata, template_mp4,
                                                                                 benchmark):
    cfg = benchmark_project(tmp_path, realdata, benchmark, template_mp4)
    summary = prepare.run(cfg)
    processed = Path(cfg.paths.processed)
    assert processed == tmp_path / "data" / "processed" / benchmark  # the folder dvc.yaml tracks
    manifest = [json.loads(line) for line in (processed / VIDEOS_FILE).read_text().splitlines()]
    by_video = {(m["dataset"], m["video"]): m for m in manifest}
    for split, (n_questions, n_videos) in COUNTS[benchmark].items():
        qa = read_records(processed / f"{split}.jsonl")
        assert len(qa) == n_questions and len({r.video for r in qa}) == n_videos
        assert all(isinstance(r, QARecord) and r.dataset == benchmark and r.split == split for r in qa)
        assert summary["splits"][split] == {"questions": n_questions, "videos": n_videos, "moments": len(
            read_records(processed / f"moments_{split}.jsonl")), "unlabelled": sum(r.answer is None for r in qa),
            "skipped": 0}
        want = expected_files(realdata, benchmark, official_files(realdata, benchmark)[split])
        got = [by_video[(benchmark, r.video)]["path"] for r in qa]
        assert got == [str(tmp_path / benchmark / "videos" / f) for f in want]  # in file order, official layout
        assert all(by_video[(benchmark, r.video)]["duration"] == DURATION for r in qa)
        # windows as the official files give them (the readers' business), carried through unchanged
        raw = read_annotations(benchmark, official_files(realdata, benchmark)[split],
                               video_map=realdata / "nextqa/map_vid_vidorID.json" if benchmark == "nextqa" else None)
        assert [(r.qid, r.start, r.end) for r in qa] == [(r.qid, r.start, r.end) for r in raw]
    assert {m["duration"] for m in manifest} == {DURATION} and {m["n_frames"] for m in manifest} == {N_FRAMES}
    assert all(m["size"] == len(template_mp4) for m in manifest)
    assert not (processed / SKIPPED_FILE).exists()
    assert json.loads((processed / "summary.json").read_text()) == summary
    assert summary["dataset"] == benchmark and summary["skipped"] == 0
    assert [p.name for p in Path(cfg.paths.world).iterdir()] == [prepare.NO_WORLD]  # nothing generated


def test_windows_and_question_forms_of_each_benchmark(tmp_path, realdata, template_mp4):
    """Pinned from the excerpts: STAR's clip window, TVQA's `NaN-NaN` (whole video), VLEP without a question and
    its TV clip's `_ep` dropped, NExT-QA's `<dir>/<id>` through the map."""
    records = {}
    for benchmark in ("star", "tvqa", "vlep", "nextqa"):
        cfg = benchmark_project(tmp_path / benchmark, realdata, benchmark, template_mp4)
        prepare.run(cfg)
        for split in FILES[benchmark]:
            records |= {(benchmark, r.qid): r for r in read_records(Path(cfg.paths.processed) / f"{split}.jsonl")}
    star = records[("star", "Interaction_T1_13")]
    assert (star.video, star.start, star.end) == ("6H78U", 11.1, 19.6)
    assert all((records[("tvqa", q)].start, records[("tvqa", q)].end) == (None, None)
               for q in ("137648", "142453", "142977"))
    vlep = [r for (b, _), r in records.items() if b == "vlep"]
    assert all(r.question is None and len(r.options) == 2 for r in vlep)
    assert "friends_s03e09_seg02_clip_07" in {r.video for r in vlep}
    assert any(":" in r.video and r.video.endswith("_ep") for r in vlep)  # YouTube clips keep their name
    assert records[("nextqa", "CW_4010069381_1")].video == "1106/4010069381"


def test_qvhighlights_moments_for_localizer_pretraining(tmp_path, realdata, template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "star", template_mp4)
    prepare.run(cfg)
    moments = read_records(Path(cfg.paths.processed) / "moments_train.jsonl")
    assert len(moments) == 30 and all(isinstance(m, MomentRecord) and m.split == "train" for m in moments)
    assert sum(len(m.windows) > 1 for m in moments) == 17  # SOURCES.md: 17 multi-window records
    manifest = [json.loads(line) for line in (Path(cfg.paths.processed) / VIDEOS_FILE).read_text().splitlines()]
    qvh = {m["video"]: m for m in manifest if m["dataset"] == "qvhighlights"}
    assert qvh["j7rJstUseKg_360.0_510.0"]["path"] == str(tmp_path / "qvh" / "j7rJstUseKg_360.0_510.0.mp4")
    assert cfg.video_folder("qvhighlights") == tmp_path / "qvh"  # pretrain_localizer reads its moments' videos here
    assert cfg.video_folder("star") == tmp_path / "star" / "videos"


def test_a_missing_video_stops_prepare_naming_file_record_and_path_and_loses_nothing(tmp_path, realdata,
                                                                                     template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "vlep", template_mp4)
    prepare.run(cfg)
    processed = Path(cfg.paths.processed)
    before = {p.name: p.read_bytes() for p in processed.iterdir()}
    missing = tmp_path / "vlep" / "videos" / "friends_s03e09_seg02_clip_07.mp4"
    missing.unlink()
    with pytest.raises(MissingVideo) as err:
        prepare.run(cfg)
    msg = str(err.value)
    assert str(realdata / "vlep/vlep_dev_release.jsonl") in msg and "record 1 ('20142')" in msg and str(missing) in msg
    assert {p.name: p.read_bytes() for p in processed.iterdir()} == before  # nothing half-written, nothing lost


def test_skip_leaves_out_and_counts_the_questions_of_a_missing_video(tmp_path, realdata, template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "nextqa", template_mp4, **{"prepare.bad_video": "skip"})
    (tmp_path / "nextqa" / "videos" / "1106" / "4010069381.mp4").unlink()
    summary = prepare.run(cfg)
    processed = Path(cfg.paths.processed)
    train = read_records(processed / "train.jsonl")
    lost = [r.qid for r in read_annotations("nextqa", realdata / "nextqa/val.csv") if r.video == "1106/4010069381"]
    assert lost and len(train) == 46 - len(lost) and not {r.qid for r in train} & set(lost)
    skipped = json.loads((processed / SKIPPED_FILE).read_text())
    assert [e["id"] for e in skipped["entries"]] == lost and skipped["counts"] == {"not_found": len(lost)}
    assert summary["splits"]["train"]["skipped"] == len(lost) and summary["skipped"] == len(lost)
    assert validate.run(cfg)["skipped_by_prepare"] == len(lost)


def test_an_annotation_naming_no_video_file_stops_with_file_and_line(tmp_path, realdata, template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "vlep", template_mp4)
    lines = (realdata / "vlep/vlep_dev_release.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    row["vid_name"] = ""
    bad = tmp_path / "vlep_dev_release.jsonl"
    bad.write_text("\n".join(lines[:2] + [json.dumps(row)] + lines[3:]) + "\n")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["datasets"]["vlep"]["annotations"]["val"] = str(bad)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(AnnotationError, match=rf"{bad}, line 3: record '{row['example_id']}': video id must be"):
        prepare.run(load_config(tmp_path / "params.yaml"))
    assert not Path(cfg.paths.processed).exists()  # checked before anything is written


def _point(tmp_path: Path, benchmark: str, split: str, path: Path | None) -> Path:
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["datasets"][benchmark]["annotations"][split] = None if path is None else str(path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def test_a_blank_answer_in_a_labelled_split_is_a_lost_label(tmp_path, realdata, template_mp4):
    # issue 24: a blank answer cell became `answer: null` and passed prepare and validate
    cfg = benchmark_project(tmp_path, realdata, "nextqa", template_mp4)
    prepare.run(cfg)
    processed = Path(cfg.paths.processed)
    before = {p.name: p.read_bytes() for p in processed.iterdir()}
    rows = list(csv.reader(io.StringIO((realdata / "nextqa/val.csv").read_text())))
    rows[3][rows[0].index("answer")] = ""
    bad = tmp_path / "val.csv"
    with bad.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    qid = f"{rows[3][rows[0].index('type')]}_{rows[3][0]}_{rows[3][rows[0].index('qid')]}"
    params = _point(tmp_path, "nextqa", "train", bad)
    with pytest.raises(AnnotationError, match=rf"{bad}, record 3 \('{qid}'\): no answer in split 'train', which is "
                                              r"labelled; only datasets.nextqa.unlabelled \(\['test'\]\) may lack"):
        prepare.run(load_config(params))
    assert {p.name: p.read_bytes() for p in processed.iterdir()} == before  # nothing lost, nothing half-written
    # a split declared unlabelled may lack answers
    assert prepare.run(load_config(params, ["datasets.nextqa.unlabelled=[train]"]))["splits"]["train"]["unlabelled"] == 1


def test_a_qvhighlights_query_with_no_relevant_window_in_a_labelled_split_is_refused(tmp_path, realdata, template_mp4):
    # issue 24: `relevant_windows: []` trained the Localizer on no positive frame and passed prepare and validate
    benchmark_project(tmp_path, realdata, "vlep", template_mp4)
    lines = (realdata / QVH_FILES["val"]).read_text().splitlines()
    row = json.loads(lines[1])
    row["relevant_windows"] = []
    bad = tmp_path / "highlight_val.jsonl"
    bad.write_text("\n".join([lines[0], json.dumps(row), *lines[2:]]) + "\n")
    with pytest.raises(AnnotationError, match=rf"{bad}, record 2 \('{row['qid']}'\): no relevant window "
                                              r"\(relevant_windows is empty\) in split 'val'"):
        prepare.run(load_config(_point(tmp_path, "qvhighlights", "val", bad)))


def test_a_video_id_cannot_escape_the_video_folder(tmp_path, realdata, template_mp4):
    """A NExT-QA map entry that climbs out is refused by the reader; a symlink in the folder that points outside
    is refused when the video is located."""
    cfg = benchmark_project(tmp_path, realdata, "nextqa", template_mp4)
    vmap = json.loads((realdata / "nextqa/map_vid_vidorID.json").read_text())
    vmap["4010069381"] = "../../outside/4010069381"
    (tmp_path / "map.json").write_text(json.dumps(vmap))
    with pytest.raises(AnnotationError, match="'..' path part"):
        prepare.run(load_config(tmp_path / "params.yaml", [f"datasets.nextqa.video_map={tmp_path / 'map.json'}"]))
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(template_mp4)
    link = tmp_path / "nextqa" / "videos" / "1106" / "4010069381.mp4"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(MissingVideo, match="outside the video root"):
        prepare.run(cfg)


def test_an_unset_annotation_file_is_named_before_anything_is_read(tmp_path, realdata, template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "how2qa", template_mp4)
    with pytest.raises(UserError, match=r"datasets.how2qa.annotations.train is not set \(prepare.splits has 'train'\)"):
        prepare.run(load_config(tmp_path / "params.yaml", ["prepare.splits=[val, train]"]))
    with pytest.raises(UserError, match=r"prepare.splits: 'dev' is not a split a benchmark's annotations name"):
        prepare.run(load_config(tmp_path / "params.yaml", ["prepare.splits=[val, dev]"]))
    assert not Path(cfg.paths.processed).exists()


def test_qvhighlights_needs_only_the_splits_pretraining_reads(tmp_path, realdata, template_mp4):
    # issue 24: NExT-QA's test split failed unless a QVHighlights test file existed, and params.yaml's own
    # `datasets.qvhighlights.annotations.test: null` was refused (prepare.splits is shared by both)
    benchmark_project(tmp_path, realdata, "how2qa", template_mp4)  # splits val, test
    params = _point(tmp_path, "qvhighlights", "test", None)
    summary = prepare.run(load_config(params))
    assert summary["splits"]["test"]["moments"] == 0 and summary["splits"]["test"]["questions"] == 19
    assert read_records(tmp_path / "data" / "processed" / "how2qa" / "moments_test.jsonl") == []
    with pytest.raises(UserError, match=r"datasets.qvhighlights.annotations.val is not set \(pretrain_localizer "
                                        r"trains and validates on QVHighlights' train and val moments\)"):
        prepare.run(load_config(_point(tmp_path, "qvhighlights", "val", None)))


def test_validate_demuxes_every_video_of_the_benchmark_and_of_qvhighlights(tmp_path, realdata, template_mp4):
    cfg = benchmark_project(tmp_path, realdata, "tvqa", template_mp4)
    summary = prepare.run(cfg)
    metrics = validate.run(cfg)
    assert metrics == {"success": True, "records": summary["questions"] + 50, "failed": [],
                       "skipped_by_prepare": 0}  # 73 questions + 20 + 30 moments
    # a cut-off file opens (prepare's header probe passes) but fails validate's demux of every packet
    victim = tmp_path / "qvh" / "_6hnl_BrFvs_360.0_510.0.mp4"
    victim.write_bytes(template_mp4[: len(template_mp4) * 2 // 3])
    # the message and the report name the video file, not only the qids (issue 24)
    with pytest.raises(validate.ValidationFailed, match=rf"validation failed \(video_readable: {victim}\); see "):
        validate.run(cfg)
    report = json.loads((Path(cfg.paths.reports) / "validation.json").read_text())
    assert report["unreadable_videos"] == [str(victim)]
    failing = {e["expectation"]: e["failing"] for e in report["expectations"] if not e["success"]}
    assert failing["video_readable"] == sorted(m.qid for m in read_records(
        Path(cfg.paths.processed) / "moments_val.jsonl") if m.video == "_6hnl_BrFvs_360.0_510.0")


def test_the_synthetic_default_is_untouched_by_the_switch(tmp_path):
    cfg = load_config(_write(tmp_path / "params.yaml", {"paths": {"data": str(tmp_path / "d")}}))
    assert cfg.paths.processed == f"{tmp_path / 'd'}/processed/synth"
    assert cfg.video_folder("nextqa") == cfg.video_folder("qvhighlights") == Path("data/raw/synth/videos")


def _write(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def test_official_layout_copies_stay_independent_of_the_pipeline(tmp_path, realdata, template_mp4):
    """The user's own folder works as long as it follows the official layout: a copy of the laid-out videos under
    another root, with nothing else from the rehearsal, prepares the same records."""
    cfg = benchmark_project(tmp_path / "a", realdata, "how2qa", template_mp4)
    prepare.run(cfg)
    shutil.copytree(tmp_path / "a" / "how2qa" / "videos", tmp_path / "mine")
    other = load_config(tmp_path / "a" / "params.yaml", [f"datasets.how2qa.videos={tmp_path / 'mine'}",
                                                         f"paths.data={tmp_path / 'b'}"])
    prepare.run(other)
    for split in FILES["how2qa"]:
        assert (Path(other.paths.processed) / f"{split}.jsonl").read_bytes() == (
            Path(cfg.paths.processed) / f"{split}.jsonl").read_bytes()


def test_the_chain_reads_each_records_videos_from_their_benchmarks_folder(tmp_path, realdata, template_mp4):
    """sevila.stages.common.split_clips on prepared STAR questions and QVHighlights moments: each clip decoded from its own
    benchmark's folder (STAR's window kept), never from the synthetic world's."""
    cfg = benchmark_project(tmp_path, realdata, "star", template_mp4,
                            **{"frames.cache": str(tmp_path / "features"), "frames.n_frames": 4,
                               "frames.n_keyframes": 2, "frames.bad_video": "skip"})
    prepare.run(cfg)
    tok = build_tiny_tokenizer(["a video question"], tmp_path / "tok", vocab_size=64)
    torch.manual_seed(0)
    model = SeViLA(sevila_tiny(len(tok)), tok).eval()
    clips = list(split_clips(cfg, model, read_split(cfg, "val")))
    assert [(c.clip.video, c.clip.start, c.clip.end) for c in clips] == [("6H78U", 11.1, 19.6)]
    # 10 s at 2 fps: the window [11.1, 19.6] lies past the end, so the whole video is sampled and that is said
    assert clips[0].meta.window_fallback and clips[0].features.shape[0] == 4
    moments = list(split_clips(cfg, model, read_split(cfg, "train", moments=True)))
    assert len(moments) == 30 and not any(c.meta.window_fallback for c in moments)
    (tmp_path / "qvh" / "j7rJstUseKg_360.0_510.0.mp4").unlink()  # gone after prepare: frames.bad_video applies
    skipped = SkipLog()
    assert len(list(split_clips(cfg, model, read_split(cfg, "train", moments=True), skip_log=skipped))) == 29
    assert [e["video"] for e in skipped.entries] == ["j7rJstUseKg_360.0_510.0"]


#: Stage training of the tiny chain (as tests/conftest.py TINY_TRAIN): one epoch of global batches of 4.
TINY_TRAIN = {"lr": 1e-3, "epochs": 1, "batch_size": 4, "micro_batch": 4, "checkpoint_every": 2}
CHAIN_VARIANTS = {"f8k2_qvh_sr": {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "qvh_sr"},
                  "uniform_k2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2}}


def test_every_stage_runs_on_nextqa_and_reports_its_metrics(tmp_path, realdata, template_mp4, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    weights = tmp_path / "models" / "tiny"
    cfg = benchmark_project(
        tmp_path, realdata, "nextqa", template_mp4,
        **{"model.weights": str(weights), "frames": {"n_frames": 8, "n_keyframes": 2, "cache": str(tmp_path / "f")},
           "paths.runs": str(tmp_path / "runs"), "evaluate": {"split": "val", "variants": CHAIN_VARIANTS},
           "pretrain_localizer": {"train": TINY_TRAIN}, "refine_localizer": {"train": TINY_TRAIN},
           "finetune_answerer": {"train": TINY_TRAIN}})
    tok = build_tiny_tokenizer(["why did the man how does the girl what is"], tmp_path / "tok", vocab_size=128)
    torch.manual_seed(0)
    save_sevila(SeViLA(sevila_tiny(len(tok)), tok), weights, modules=PARTS)
    prepare.run(cfg)
    assert validate.run(cfg)["success"]
    assert bootstrap.run(cfg) == {"trained": 0}
    assert "val_mr_map" in pretrain_localizer.run(cfg)  # QVHighlights moments, from datasets.qvhighlights.videos
    assert pseudo_label.run(cfg)
    refine_localizer.run(cfg)
    finetune_answerer.run(cfg)
    metrics = evaluate.run(cfg)
    for name in CHAIN_VARIANTS:
        m = metrics[name]
        assert m["count"] == 46 and m["skipped"] == 0  # every question of test.csv's 6 videos
        assert {"Causal", "Temporal", "Descriptive"} <= set(m)
    summary = report.run(cfg)
    assert summary["missing"] == [] and summary["variants"] == 2
    rows = json.loads((Path(cfg.paths.reports) / "ablations.json").read_text())
    assert {r["dataset"] for r in rows} == {"nextqa"} and all("Causal" in r for r in rows)
    assert "| Causal | Temporal | Descriptive |" in (Path(cfg.paths.reports) / "ablations.md").read_text()
    runs = tracking.finished_runs("nextqa", tracking.Phase.EVALUATE)
    assert sorted(runs["variant"]) == sorted(CHAIN_VARIANTS)
    assert set(runs["experiment"]) == {"sevila/nextqa/evaluate"}
