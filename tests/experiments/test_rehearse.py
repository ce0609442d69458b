"""`sevila rehearse`: the miniature is each benchmark's official form (the readers read it, every record's video is
where the official layout puts it and lasts past its window), and the real-data pipeline runs through it end to end
for every benchmark, and on a BLIP-2 directory and videos that this test makes itself."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from sevila import cli
from sevila.data.annotations import read_annotations
from sevila.config import Benchmark
from sevila.data.video import verify_video
from sevila.data import REALDATA
from sevila.experiments.rehearse import MARKER, REPO, check_out
from sevila.experiments.rehearse.miniature import (
    MAX_MOMENT_VIDEOS, MAX_TEST_VIDEOS, MOMENTS, QA_BENCHMARKS, SPECS, split_by_video, star_from_sevila,
)
from sevila.experiments.rehearse.project import VARIANTS, BenchmarkFiles, overrides, run_project, write_params

BENCHMARKS = [d.value for d in QA_BENCHMARKS]


@dataclass(frozen=True)
class Rehearsed:
    """One `sevila rehearse` run: its folder, what it printed, and its project's outputs read right after it (the
    next benchmark's run rewrites the shared project's reports)."""

    out: Path
    printed: str
    ablations: list
    markdown: str
    validation: dict
    marker: dict


@pytest.fixture(scope="module")
def rehearse(tmp_path_factory):
    """`rehearse(benchmark)`: the CLI run once per benchmark, all in ONE folder, as a user switching `dataset` in one
    project has it: each benchmark's runs land in their own experiments of the one MLflow store (whose schema is
    then made once, not five times)."""
    out, done = tmp_path_factory.mktemp("rehearsal"), {}

    def run(benchmark: str) -> Rehearsed:
        if benchmark not in done:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                # no --source: the excerpts shipped inside the package (what a fresh clone has), issue 27
                assert cli.main(["rehearse", benchmark, "--out", str(out)]) == 0
            reports = out / "project" / "reports"
            done[benchmark] = Rehearsed(out, printed.getvalue(), json.loads((reports / "ablations.json").read_text()),
                                        (reports / "ablations.md").read_text(),
                                        json.loads((reports / "validation.json").read_text()),
                                        json.loads((out / MARKER).read_text()))
        return done[benchmark]

    return run


def official_file(dataset: Benchmark, root: Path, record) -> Path:
    """Where the benchmark's own loader looks for a record's video, written out here independently of the code under
    test: `<videos>/<video>.mp4` (NExT-QA's video already mapped to `<dir>/<id>`), VLEP TV clips less `_ep`."""
    video = record.video
    if dataset is Benchmark.VLEP and ":" not in video:
        assert video.endswith("_ep")
        video = video[:-3]
    return root / f"{video}.mp4"


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_miniature_is_the_official_form(rehearse, realdata, benchmark):
    out = rehearse(benchmark).out
    dataset, spec = Benchmark(benchmark), SPECS[Benchmark(benchmark)]
    annotations, videos = out / benchmark / "annotations", out / benchmark / "videos"
    split_records = {}
    for split, name in spec.names.items():
        recs = read_annotations(dataset, annotations / name)  # official format; NExT-QA's map beside its csv
        assert recs
        split_records[split] = recs
        for r in recs:
            n, fps = verify_video(official_file(dataset, videos, r))
            assert n / fps >= (r.end or 0.0), r.qid
    train, val, test = (split_records[s] for s in ("train", "val", "test"))
    # train + val are the whole labelled excerpt, split by video; every question of both is labelled
    source = read_annotations(dataset, realdata / spec.labelled.path, fmt=spec.labelled.fmt,
                              video_map=realdata / spec.video_map if spec.video_map else None)
    key = lambda r: (r.video, r.question or "", r.options, r.answer, r.start, r.end)  # How2QA's qid names its file
    assert sorted(map(key, train + val)) == sorted(map(key, source))
    assert not {r.video for r in train} & {r.video for r in val}
    assert all(r.answer is not None for r in train + val)
    assert len({r.video for r in test}) == MAX_TEST_VIDEOS
    for split, rel in MOMENTS.items():
        moments = read_annotations(Benchmark.QVHIGHLIGHTS, out / "qvhighlights" / "annotations" / Path(rel).name)
        assert len({m.video for m in moments}) == MAX_MOMENT_VIDEOS[split]
        for m in moments:
            n, fps = verify_video(out / "qvhighlights" / "videos" / f"{m.video}.mp4")
            assert n / fps == m.duration


def test_nextqa_layout_goes_through_the_video_map(rehearse):
    annotations = rehearse("nextqa").out / "nextqa" / "annotations"
    vmap = json.loads((annotations / "map_vid_vidorID.json").read_text())
    rows = list(csv.DictReader(open(annotations / "val.csv")))
    assert {r["video"] for r in rows} <= set(vmap)
    for r in rows:  # <videos>/<dir>/<id>.mp4, the dir from map_vid_vidorID.json
        d, vid = vmap[r["video"]].split("/")
        assert vid == r["video"] and (annotations.parent / "videos" / d / f"{vid}.mp4").is_file()


def test_excerpt_rows_are_copied_byte_for_byte(rehearse, realdata):
    annotations = rehearse("how2qa").out / "how2qa" / "annotations"
    source = (realdata / "how2qa" / "how2QA_val_release.csv").read_text().splitlines(keepends=True)
    written = [line for name in ("how2QA_train_release.csv", "how2QA_val_release.csv")
               for line in (annotations / name).read_text().splitlines(keepends=True)]
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
    assert read_annotations(Benchmark.STAR, tmp_path / "back.json") == read_annotations(Benchmark.STAR, tmp_path / "raw.json")
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
    (["nextqa", "--labelled", "{tmp}/none.csv"], "--labelled {tmp}/none.csv: no such file"),
    (["star", "--video-map", "{tmp}/map.json"], "--video-map applies to nextqa only, not star"),
])
def test_bad_arguments_stop_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    (tmp_path / "map.json").write_text("{}")
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) if argv[0] == "qvhighlights" else contextlib.nullcontext():
        assert cli.main(["rehearse", *argv, "--out", str(out)]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not out.exists()


class _LaidOut(Exception):
    """Raised by a stand-in for `lay_out`: what the rehearsal would lay out, before any file is written."""


@pytest.fixture
def laid_out(monkeypatch):
    import sevila.experiments.rehearse as R

    def stop(dataset, out, source, labelled, test, video_map):
        raise _LaidOut(dict(out=out, source=source, labelled=labelled, test=test, video_map=video_map))

    monkeypatch.setattr(R, "lay_out", stop)
    monkeypatch.delenv("SEVILA_REALDATA", raising=False)
    return R


def test_with_no_setting_the_rehearsal_reads_the_shipped_excerpts_into_rehearsals(laid_out, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_LaidOut) as got:
        laid_out.rehearse("nextqa")
    assert got.value.args[0] == dict(out=Path("rehearsals/nextqa"), source=REALDATA, labelled=None, test=None,
                                     video_map=None)
    assert (REALDATA / "nextqa" / "val.csv").is_file() and REALDATA.is_relative_to(REPO / "sevila")  # in the repo


def test_annotations_dir_rehearses_the_users_own_official_files(laid_out, tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    for name in ("val.csv", "test.csv", "map_vid_vidorID.json"):
        (own / name).write_text("x")
    with pytest.raises(_LaidOut) as got:
        laid_out.rehearse("nextqa", tmp_path / "out", annotations=own)
    assert {k: got.value.args[0][k] for k in ("labelled", "test", "video_map")} == {
        "labelled": own / "val.csv", "test": own / "test.csv", "video_map": own / "map_vid_vidorID.json"}
    (own / "test.csv").unlink()  # no test file of their own: the shipped test excerpt is kept
    with pytest.raises(_LaidOut) as got:
        laid_out.rehearse("nextqa", tmp_path / "out", annotations=own)
    assert got.value.args[0]["test"] is None


@pytest.mark.parametrize("remove, message", [
    ("val.csv", "--annotations {own}: no val.csv (the official nextqa val file, which the rehearsal splits"),
    ("map_vid_vidorID.json", "--annotations {own}: no map_vid_vidorID.json (NExT-QA's video map, beside val.csv)"),
])
def test_annotations_dir_missing_a_file_is_one_line_naming_it(tmp_path, capsys, remove, message):
    own = tmp_path / "mine"
    own.mkdir()
    for name in ("val.csv", "test.csv", "map_vid_vidorID.json"):
        (own / name).write_text("x")
    (own / remove).unlink()
    assert cli.main(["rehearse", "nextqa", "--annotations", str(own), "--out", str(tmp_path / "out")]) == 2
    assert message.format(own=own) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ the pipeline, end to end

#: the benchmark's own metric names (sevila.evaluation.qa_metrics.qa_metrics): NExT-QA's groups, STAR's four types and
# their mean
METRICS = {"nextqa": {"accuracy", "Causal", "Temporal", "Descriptive"},
           "star": {"accuracy", "Interaction", "Sequence", "Prediction", "Feasibility", "mean"},
           "how2qa": {"accuracy"}, "tvqa": {"accuracy"}, "vlep": {"accuracy"}}
PHASES = ("evaluate", "finetune", "pretrain", "pseudo_label", "refine", "report")
#: the columns of the markdown tables (sevila.evaluation.tables): the benchmark's own metrics
MARKDOWN_COLUMNS = {"nextqa": ("Accuracy", "Causal", "Temporal", "Descriptive"),
                    "star": ("Mean", "Interaction", "Sequence", "Prediction", "Feasibility"),
                    "how2qa": ("Accuracy",), "tvqa": ("Accuracy",), "vlep": ("Accuracy",)}


def mlflow_runs(uri: str) -> dict[str, set[str]]:
    """experiment name -> the names of its FINISHED runs."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {e.name: {r.info.run_name for r in client.search_runs([e.experiment_id]) if r.info.status == "FINISHED"}
            for e in client.search_experiments() if e.name.startswith("sevila/")}


def check_report(rows: list, markdown: str, benchmark: str, val_file: Path) -> None:
    """The report holds every variant with the benchmark's metric names, scored over every val question."""
    val = read_annotations(benchmark, val_file)
    assert sorted(r["variant"] for r in rows) == sorted(VARIANTS)
    for r in rows:
        assert r["dataset"] == benchmark and METRICS[benchmark] <= set(r), (r["variant"], sorted(r))
        assert r["count"] == len(val) and r["unlabelled"] == 0
    if benchmark == "nextqa":  # the per-type counts are the val file's
        assert {k[6:]: v for k, v in rows[0].items() if k.startswith("count_")} == dict(Counter(r.qtype for r in val))
    assert f"## Dataset `{benchmark}`" in markdown and all(f"| {v} |" in markdown for v in VARIANTS)
    header = next(line for line in markdown.splitlines() if line.startswith("| Answerer |"))
    assert all(f" {m} |" in header for m in MARKDOWN_COLUMNS[benchmark]), header


def test_the_tiny_blip2_sees_its_frames(tmp_path):
    """Its ViT features tell frames apart and survive the fp16 feature cache. transformers draws a BLIP-2 ViT at std
    1e-10 by default (it is always loaded pre-trained): every cached feature was then 0 and the Q-Former's
    LayerNorm (eps 1e-12) gave an infinite gradient at the first training step."""
    import torch

    from sevila.experiments.rehearse.tiny_blip2 import save_tiny_blip2
    from sevila.weights.transformers_blip2 import build_from_blip2_dir

    model, _ = build_from_blip2_dir(save_tiny_blip2(tmp_path / "blip2", ["a question about a frame"]))
    size = model.config.image_size
    torch.manual_seed(0)
    features = model.encode_frames(torch.randn(2, 3, size, size)).half().float()  # [2, P, Dv] as cached
    assert features.std() > 0.1
    assert (features[0] - features[1]).abs().mean() > 0.1  # two frames, two different feature maps


@pytest.mark.parametrize("benchmark", BENCHMARKS)
def test_rehearsal_runs_the_real_pipeline_end_to_end(rehearse, benchmark):
    r = rehearse(benchmark)
    project = r.out / "project"
    assert f"report: {project / 'reports' / 'ablations.md'}" in r.printed
    assert "split rule: train + val = the labelled excerpt split by video" in r.printed
    check_report(r.ablations, r.markdown, benchmark,
                 r.out / benchmark / "annotations" / SPECS[Benchmark(benchmark)].names["val"])
    runs = mlflow_runs(f"sqlite:///{project / 'mlflow.db'}")
    assert {f"sevila/{benchmark}/{phase}" for phase in PHASES} <= set(runs)
    assert all(name.split("/")[1] in BENCHMARKS for name in runs)  # every experiment is one benchmark's
    assert runs[f"sevila/{benchmark}/evaluate"] == set(VARIANTS)
    assert r.validation["success"] is True
    assert r.marker["benchmark"] == benchmark and r.marker["status"] == "done"


# ------------------------------------------------------------------ a user's own BLIP-2 directory and videos


def own_tokenizer(texts: list[str], out: Path):
    """A T5 tokenizer made the plain way: a sentencepiece unigram model trained here, the words the model reads
    scores off (`yes`, `no`, `Option`, `Frame`, A-E) as user symbols, loaded by transformers' T5Tokenizer."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    from sevila.model import prompts
    from sevila.model.tokenizer import REQUIRED_SINGLE_TOKENS

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts + prompts.template_texts() * 3), model_writer=model, model_type="unigram",
        vocab_size=400, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
        user_defined_symbols=["\u2581" + w for w in REQUIRED_SINGLE_TOKENS])
    out.mkdir(parents=True)
    (out / "spiece.model").write_bytes(model.getvalue())
    return T5Tokenizer.from_pretrained(str(out), extra_ids=0)


def own_blip2(out: Path, tokenizer) -> Path:
    """Another tiny BLIP-2 than the rehearsal's: 48 px images in 16 px patches (9, not 16), 4 query tokens (not 8),
    ViT, Q-Former and T5 of width 48 (not 64), T5 heads of 12 (not 16)."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

    text = T5Config(vocab_size=len(tokenizer), d_model=48, d_kv=12, d_ff=96, num_layers=2, num_decoder_layers=2,
                    num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    cfg = Blip2Config(vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                         num_attention_heads=4, patch_size=16, image_size=48,
                                         initializer_range=0.02),  # a BLIP-2's ViT is pre-trained, not ~0
                      qformer_config=dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=96, cross_attention_frequency=2),
                      text_config=text.to_dict(), num_query_tokens=4)
    Blip2ForConditionalGeneration(cfg).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def own_video(path: Path, seconds: float, fps: int) -> None:
    """Noise, 64x48, MPEG-4 part 2, written with PyAV directly."""
    rng = np.random.default_rng(len(path.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(int(seconds * fps)):
            pixels = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def test_the_pipeline_runs_on_a_users_own_blip2_directory_and_videos(tmp_path, realdata):
    """Nothing in the real path depends on how the rehearsal makes its files: NExT-QA's official excerpts as they
    are (test.csv as train, val.csv as val), QVHighlights lines, this test's own videos in the official layout and
    its own BLIP-2 directory and tokenizer go through the same params keys and stages."""
    ann = tmp_path / "nextqa"
    ann.mkdir()
    shutil.copy(realdata / "nextqa" / "test.csv", ann / "train.csv")
    shutil.copy(realdata / "nextqa" / "val.csv", ann / "val.csv")
    shutil.copy(realdata / "nextqa" / "map_vid_vidorID.json", ann / "map_vid_vidorID.json")
    vmap = json.loads((ann / "map_vid_vidorID.json").read_text())
    for vid in vmap.values():  # <videos>/<dir>/<id>.mp4: 6 s at 5 fps
        own_video(tmp_path / "videos" / f"{vid}.mp4", 6, 5)
    moments, texts = {}, []
    for split, n in (("train", 4), ("val", 2)):
        lines = (realdata / MOMENTS[split]).read_text().splitlines(keepends=True)[:n]
        moments[split] = tmp_path / "qvh" / Path(MOMENTS[split]).name
        moments[split].parent.mkdir(exist_ok=True)
        moments[split].write_text("".join(lines))
        for line in lines:
            rec = json.loads(line)
            own_video(tmp_path / "qvh_videos" / f"{rec['vid']}.mp4", rec["duration"], 1)
            texts.append(rec["query"])
    for name in ("train.csv", "val.csv"):
        texts += [" ".join(row) for row in csv.reader(open(ann / name))]
    weights = own_blip2(tmp_path / "my-blip2", own_tokenizer(texts, tmp_path / "spm"))
    files = BenchmarkFiles(Benchmark.NEXTQA, {"train": ann / "train.csv", "val": ann / "val.csv"}, tmp_path / "videos",
                           moments, tmp_path / "qvh_videos", ann / "map_vid_vidorID.json")
    project = tmp_path / "project"
    params = write_params(project, REPO / "params.yaml", overrides(files, weights, project))
    results = run_project(params)
    assert results["prepare"]["splits"]["train"]["questions"] == 46 and results["validate"]["success"]
    reports = project / "reports"
    check_report(json.loads((reports / "ablations.json").read_text()), (reports / "ablations.md").read_text(),
                 "nextqa", ann / "val.csv")
    assert set(mlflow_runs(f"sqlite:///{project / 'mlflow.db'}")) == {f"sevila/nextqa/{p}" for p in PHASES}


def test_a_blip2_directory_without_tokenizer_stops_naming_it_and_keeps_the_outputs(rehearse, tmp_path, capsys):
    project = rehearse("tvqa").out / "project"
    weights = tmp_path / "blip2-no-tokenizer"
    shutil.copytree(rehearse("tvqa").out / "models" / "blip2-flan-t5-tiny", weights,
                    ignore=shutil.ignore_patterns("tokenizer*", "spiece.model", "special_tokens_map.json"))
    before = {p: p.read_bytes() for p in (project / "reports").glob("*.json")}
    for stage in ("validate", "pretrain_localizer"):  # validate says so first (issue 24): before any training
        argv = ["stage", stage, "-p", str(project / "params.yaml"), "-o", f"model.weights={weights}"]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"sevila stage: error: {weights}: this BLIP-2 directory has no usable tokenizer"), err
        assert {p: p.read_bytes() for p in (project / "reports").glob("*.json")} == before  # nothing lost
