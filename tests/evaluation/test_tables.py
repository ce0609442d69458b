"""sevila.evaluation.tables: the ablation tables on a hand-made runs frame (pinned markdown/JSON), and `sevila report`
on a
real embedded MLflow store under tmp_path (files written, PNGs valid, report logged back to MLflow)."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sevila.evaluation import tables as R
from sevila import tracking as tr
from sevila.config import AnswererId
from sevila.tracking import Phase, RunTags, Study

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(run_id, variant, study, acc, *, t=1, status="FINISHED", dataset="synth", kis=None, **tags):
    row = {"run_id": run_id, "run_name": variant, "experiment": f"sevila/{dataset}/evaluate", "dataset": dataset,
           "phase": "evaluate", "status": status, "start_time": pd.Timestamp(t, unit="s", tz="UTC"),
           "variant": variant, "study": study, "metrics.accuracy": acc}
    if kis is not None:
        row["metrics.keyframe_in_span"] = kis
    row.update(tags)
    return row


LOC = dict(selector="localizer", fusion="concat", n_frames=32, n_keyframes=4)
RUNS = pd.DataFrame([
    # components (Tables 3/5); f32k4_qvh_sr has an older run and a newer FAILED one: the middle run counts
    _row("c1", "f32k4_qvh_sr", "components", 55.0, t=1, answerer="finetuned", loc_pretrain=True, loc_refine=True,
         **LOC),
    _row("c2", "f32k4_qvh_sr", "components", 63.42, t=5, kis=71.05, answerer="finetuned", loc_pretrain=True,
         loc_refine=True, **LOC),
    _row("c3", "f32k4_qvh_sr", "components", 99.0, t=9, status="FAILED", answerer="finetuned", loc_pretrain=True,
         loc_refine=True, **LOC),
    _row("c4", "f32k4", "components", 58.0, kis=52.5, answerer="finetuned", loc_pretrain=False, loc_refine=False,
         **LOC),
    _row("c5", "f32k4_qvh", "components", 60.0, kis=64.0, answerer="finetuned", loc_pretrain=True,
         loc_refine=False, **LOC),
    _row("c6", "u4_ft", "components", 57.25, answerer="finetuned", selector="uniform", fusion="concat",
         n_frames=32, n_keyframes=4),
    _row("c7", "zs_f32k4_qvh", "components", 51.0, answerer="zero_shot", loc_pretrain=True, loc_refine=False,
         **LOC),
    # frames (Table 7)
    _row("f1", "f32k8", "frames", 62.0, selector="localizer", n_frames=32, n_keyframes=8),
    _row("f2", "f16k4", "frames", 59.5, selector="localizer", n_frames=16, n_keyframes=4),
    _row("f3", "f16k2", "frames", 57.0, selector="localizer", n_frames=16, n_keyframes=2),
    # voting / concat / oracle (Table 9)
    _row("b1", "oracle32", "oracle", 81.0, selector="oracle", n_frames=32, answerer="zero_shot"),
    _row("b2", "concat4", "baseline", 56.0, selector="uniform", fusion="concat", n_frames=32, n_keyframes=4),
    _row("b3", "vote32", "baseline", 54.5, selector="all", fusion="vote", n_frames=32),
    # self-refinement rounds
    _row("r2", "sr_r2", "round", 61.0, kis=60.0, round=2),
    _row("r0", "sr_r0", "round", 58.0, kis=50.0, round=0),
    _row("r1", "sr_r1", "round", 60.0, round=1),
    # no study tag: in the JSON only; a killed run: nowhere
    _row("n1", "adhoc", None, 10.0),
    _row("k1", "killed", "frames", 1.0, status="KILLED", n_frames=8, n_keyframes=2),
    # a second dataset
    _row("x1", "f32k4_qvh_sr", "components", 70.0, dataset="star", answerer="finetuned", loc_pretrain=True,
         loc_refine=True, **LOC),
])

EXPECTED_MD = """\
# SeViLA ablation tables

Built by `sevila report` from the latest FINISHED `evaluate` run of each variant. Metrics are percentages; – marks a value the run did not log.

## Dataset `star`

### Localizer pre-training × self-refinement (paper Tables 3 and 5)

| Answerer | Frame selector | Loc. pre-training | Self-refinement | Variant | Accuracy |
|---|---|---|---|---|---:|
| fine-tuned | localizer | ✓ | ✓ | f32k4_qvh_sr | 70.0 |

### Frames: n_frames → n_keyframes (paper Table 7)

| Frames | Keyframes | Variant | Accuracy |
|---:|---:|---|---:|
| 32 | 4 | f32k4_qvh_sr | 70.0 |

## Dataset `synth`

### Localizer pre-training × self-refinement (paper Tables 3 and 5)

| Answerer | Frame selector | Loc. pre-training | Self-refinement | Variant | Accuracy | Keyframes in span |
|---|---|---|---|---|---:|---:|
| zero-shot | localizer | ✓ | ✗ | zs_f32k4_qvh | 51.0 | – |
| fine-tuned | uniform | – | – | u4_ft | 57.2 | – |
| fine-tuned | localizer | ✗ | ✗ | f32k4 | 58.0 | 52.5 |
| fine-tuned | localizer | ✓ | ✗ | f32k4_qvh | 60.0 | 64.0 |
| fine-tuned | localizer | ✓ | ✓ | f32k4_qvh_sr | 63.4 | 71.0 |

### Frames: n_frames → n_keyframes (paper Table 7)

| Frames | Keyframes | Variant | Accuracy | Keyframes in span |
|---:|---:|---|---:|---:|
| 16 | 2 | f16k2 | 57.0 | – |
| 16 | 4 | f16k4 | 59.5 | – |
| 32 | 4 | f32k4_qvh_sr | 63.4 | 71.0 |
| 32 | 8 | f32k8 | 62.0 | – |

### BLIP-2 voting / concat and the oracle (paper Table 9)

| Method | Frame selector | Fusion | Frames | Keyframes | Answerer | Variant | Accuracy |
|---|---|---|---:|---:|---|---|---:|
| BLIP-2 voting | all | vote | 32 | – | – | vote32 | 54.5 |
| BLIP-2 concat | uniform | concat | 32 | 4 | – | concat4 | 56.0 |
| Oracle (any single frame) | oracle | – | 32 | – | zero-shot | oracle32 | 81.0 |

### Self-refinement rounds

| Round | Variant | Accuracy | Keyframes in span |
|---:|---|---:|---:|
| 0 | sr_r0 | 58.0 | 50.0 |
| 1 | sr_r1 | 60.0 | – |
| 2 | sr_r2 | 61.0 | 60.0 |
"""


def test_markdown_tables_are_pinned():
    assert R.build_markdown(RUNS) == EXPECTED_MD


def _obj(variant, study, run_id, dataset="synth", **fields):
    base = {"dataset": dataset, "variant": variant, "study": study, "selector": None, "fusion": None,
            "n_frames": None, "n_keyframes": None, "loc_pretrain": None, "loc_refine": None, "answerer": None,
            "round": None, "seed": None, "dvc_stage": None, "git_sha": None, "git_dirty": None, "run_id": run_id,
            "seeds": []}
    metrics = {k: fields.pop(k) for k in ("accuracy", "keyframe_in_span") if k in fields}
    return base | fields | metrics


def test_json_records_are_pinned():
    loc = dict(selector="localizer", fusion="concat", n_frames=32, n_keyframes=4)
    ft = dict(answerer="finetuned", **loc)
    assert R.report_records(RUNS) == [
        _obj("f32k4_qvh_sr", "components", "x1", dataset="star", loc_pretrain=True, loc_refine=True, accuracy=70.0,
             **ft),
        _obj("f16k2", "frames", "f3", selector="localizer", n_frames=16, n_keyframes=2, accuracy=57.0),
        _obj("f16k4", "frames", "f2", selector="localizer", n_frames=16, n_keyframes=4, accuracy=59.5),
        _obj("f32k8", "frames", "f1", selector="localizer", n_frames=32, n_keyframes=8, accuracy=62.0),
        _obj("f32k4", "components", "c4", loc_pretrain=False, loc_refine=False, accuracy=58.0,
             keyframe_in_span=52.5, **ft),
        _obj("f32k4_qvh", "components", "c5", loc_pretrain=True, loc_refine=False, accuracy=60.0,
             keyframe_in_span=64.0, **ft),
        _obj("f32k4_qvh_sr", "components", "c2", loc_pretrain=True, loc_refine=True, accuracy=63.42,
             keyframe_in_span=71.05, **ft),
        _obj("u4_ft", "components", "c6", answerer="finetuned", selector="uniform", fusion="concat", n_frames=32,
             n_keyframes=4, accuracy=57.25),
        _obj("zs_f32k4_qvh", "components", "c7", answerer="zero_shot", loc_pretrain=True, loc_refine=False,
             accuracy=51.0, **loc),
        _obj("concat4", "baseline", "b2", selector="uniform", fusion="concat", n_frames=32, n_keyframes=4,
             accuracy=56.0),
        _obj("vote32", "baseline", "b3", selector="all", fusion="vote", n_frames=32, accuracy=54.5),
        _obj("oracle32", "oracle", "b1", selector="oracle", n_frames=32, answerer="zero_shot", accuracy=81.0),
        _obj("sr_r0", "round", "r0", round=0, accuracy=58.0, keyframe_in_span=50.0),
        _obj("sr_r1", "round", "r1", round=1, accuracy=60.0),
        _obj("sr_r2", "round", "r2", round=2, accuracy=61.0, keyframe_in_span=60.0),
        _obj("adhoc", None, "n1", accuracy=10.0),
    ]
    json.dumps(R.report_records(RUNS), allow_nan=False)  # plain JSON: no NaN, no numpy types


def test_frames_table_borrows_the_full_sevila_components_row():
    """Table 7's 32 -> 4 row is the full model of Tables 3/5 (f32k4_qvh_sr, study `components`): the frames table
    takes components runs with a pre-trained AND self-refined Localizer, and no other components run."""
    synth = R.latest(RUNS[RUNS["dataset"].eq("synth")])
    table = R.frames_table(synth)
    assert [row[2] for row in table.rows] == ["f16k2", "f16k4", "f32k4_qvh_sr", "f32k8"]  # by frames, keyframes
    assert table.rows[2] == ("32", "4", "f32k4_qvh_sr", "63.4", "71.0")  # the latest FINISHED run (c2)
    assert set(R.frames_rows(synth)["variant"]) == {"f16k2", "f16k4", "f32k8", "f32k4_qvh_sr"}
    # pre-trained only (f32k4_qvh, zs_f32k4_qvh), neither (f32k4) or untagged (u4_ft): not Table 7 rows
    only_components = synth[synth["study"].eq("components")]
    assert list(R.frames_table(only_components).rows) == [("32", "4", "f32k4_qvh_sr", "63.4", "71.0")]
    no_full = only_components[~only_components["variant"].eq("f32k4_qvh_sr")]
    assert R.frames_table(no_full) is None
    # the accuracy-vs-keyframes plot draws the same rows: 32 frames now has two points (4 and 8 keyframes)
    assert sorted(R.frames_rows(synth).query("n_frames == 32")["n_keyframes"].tolist()) == [4, 8]


def test_missing_studies_are_absent_and_extra_metrics_opt_in():
    only_frames = RUNS[RUNS["study"].eq("frames") & RUNS["dataset"].eq("synth")].assign(**{"metrics.Causal": 40.0})
    md = R.build_markdown(only_frames, metrics=("accuracy", "keyframe_in_span", "Causal"))
    assert "### Frames" in md and "Tables 3 and 5" not in md and "Table 9" not in md and "rounds" not in md
    assert "| Frames | Keyframes | Variant | Accuracy | Causal |" in md
    assert "| 16 | 2 | f16k2 | 57.0 | 40.0 |" in md
    no_study = R.build_markdown(RUNS[RUNS["variant"].eq("adhoc")])
    assert "No run of `synth` carries a study tag" in no_study
    assert R.components_table(RUNS.iloc[0:0]) is None


def test_empty_frame_gives_a_clear_message_not_a_crash(tmp_path):
    empty = tr.latest_per_variant(pd.DataFrame(columns=list(tr.BASE_COLUMNS)))
    md = R.build_markdown(empty, source="sqlite:///x.db")
    assert "No finished `evaluate` runs found in `sqlite:///x.db`." in md
    files = R.write_report(empty, tmp_path / "out")
    assert json.loads(files.json.read_text()) == [] and files.plots == {}


@pytest.mark.parametrize("selector,fusion,method", [
    ("all", "vote", "BLIP-2 voting"), ("uniform", "concat", "BLIP-2 concat"), ("all", "concat", "BLIP-2 concat"),
    ("localizer", "concat", "SeViLA"), ("oracle", None, "Oracle (any single frame)"), (None, None, "–"),
])
def test_baseline_method_names(selector, fusion, method):
    assert R.baseline_method(selector, fusion) == method


def test_a_bad_tag_column_is_named():
    bad = RUNS.assign(n_frames=["many"] * len(RUNS))
    with pytest.raises(ValueError, match="column 'n_frames' must hold Int64"):
        R.build_markdown(bad)


# ----------------------------------------------------------------------------------------------------------
# `sevila report` on a real store


@pytest.fixture
def store(tmp_path, tmp_path_factory, monkeypatch) -> str:
    """A private embedded store for one test (the freshly migrated schema is made once and copied)."""
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(tr.PARENT_RUN_ENV, raising=False)
    template = tmp_path_factory.getbasetemp() / "report-template" / "mlflow.db"
    if not template.exists():
        template.parent.mkdir(exist_ok=True)
        tr.client(f"sqlite:///{template}").search_experiments()
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template, db)
    yield tr.configure(db)
    tr.configure(None)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sevila")
    R.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _log(variant: str, acc: float, *, fail: bool = False, **tags) -> None:
    try:
        with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant=variant, **tags)) as run:
            run.log_metrics({"accuracy": acc, "keyframe_in_span": acc / 2})
            if fail:
                raise RuntimeError("crash")
    except RuntimeError:
        pass


def test_report_cli_writes_tables_plots_and_logs_them(store, tmp_path, capsys):
    _log("f32k4_qvh_sr", 62.0, study=Study.COMPONENTS, selector="localizer", n_frames=32, n_keyframes=4,
         loc_pretrain=True, loc_refine=True, answerer=AnswererId.FINETUNED)
    _log("f32k4_qvh_sr", 90.0, fail=True, study=Study.COMPONENTS, loc_pretrain=True, loc_refine=True)
    _log("f16k4", 58.0, study=Study.FRAMES, selector="localizer", n_frames=16, n_keyframes=4)
    _log("f32k8", 60.0, study=Study.FRAMES, selector="localizer", n_frames=32, n_keyframes=8)
    _log("vote32", 50.0, study=Study.BASELINE, selector="all", fusion="vote", n_frames=32)
    _log("sr_r0", 56.0, study=Study.ROUND, round=0)
    _log("sr_r1", 59.0, study=Study.ROUND, round=1)
    out = tmp_path / "reports"
    assert _cli(["report", "--dataset", "synth", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "7 variants" not in printed and "6 variants" in printed

    md = (out / "ablations.md").read_text(encoding="utf-8")
    assert "| fine-tuned | localizer | ✓ | ✓ | f32k4_qvh_sr | 62.0 | 31.0 |" in md  # not the failed 90.0
    assert "| 16 | 4 | f16k4 | 58.0 | 29.0 |" in md and "| BLIP-2 voting | all | vote | 32 | – | – | vote32 |" in md
    assert "| 1 | sr_r1 | 59.0 | 29.5 |" in md
    records = json.loads((out / "ablations.json").read_text())
    assert [r["variant"] for r in records] == ["f16k4", "f32k8", "f32k4_qvh_sr", "vote32", "sr_r0", "sr_r1"]
    assert records[2]["accuracy"] == 62.0 and records[2]["keyframe_in_span"] == 31.0
    assert records[2]["git_sha"] is None or len(records[2]["git_sha"]) == 40
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["accuracy_vs_keyframes_synth.png", "accuracy_vs_round_synth.png"]
    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries

    reports = tr.finished_runs("synth", Phase.REPORT)
    assert list(reports["run_name"]) == ["ablations"] and list(reports["params.variants"]) == ["6"]
    c = tr.client(store)
    rid = reports["run_id"].iloc[0]
    top = sorted(f.path for f in c.list_artifacts(rid))
    assert top == ["ablations.json", "ablations.md", "plots"]
    assert sorted(f.path for f in c.list_artifacts(rid, "plots")) == [
        "plots/accuracy_vs_keyframes_synth.png", "plots/accuracy_vs_round_synth.png"]
    logged = Path(c.download_artifacts(rid, "ablations.md", str(tmp_path / "dl")))
    assert logged.read_text(encoding="utf-8") == md

    # a second report reads only evaluate runs: the report run itself is no table row
    assert _cli(["report", "--out", str(out), "--no-log"]) == 0
    assert len(json.loads((out / "ablations.json").read_text())) == 6
    assert len(tr.finished_runs("synth", Phase.REPORT)) == 1


def test_report_cli_on_an_empty_store_says_so(store, tmp_path, capsys):
    out = tmp_path / "reports"
    assert _cli(["report", "--dataset", "nextqa", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no finished 'evaluate' runs of dataset 'nextqa' in sqlite:///" in err
    assert "No finished `evaluate` runs found" in (out / "ablations.md").read_text(encoding="utf-8")
    assert json.loads((out / "ablations.json").read_text()) == []
    assert tr.runs_frame().empty  # nothing was logged


def test_report_pivots_on_the_variant_settings_the_evaluate_runs_log_as_params(store, tmp_path):
    """Evaluate runs logged through run_settings.stage_run carry the variant's settings as params. The report
    reads a pivot column from the tag, else from the param of the same name, so even runs without pivot tags
    land in the right table row, with the variant's frames (8, 16), never params.yaml's frames.n_frames (32)."""
    import yaml

    from sevila.config import load_config
    from sevila.tracking.run_settings import stage_run

    processed = tmp_path / "processed"
    processed.mkdir()
    (processed / "test.jsonl").write_text('{"qid": "q1"}\n')
    params = {"paths": {"processed": str(processed)}, "frames": {"n_frames": 32, "n_keyframes": 4},
              "evaluate": {"variants": {"f8k1_qvh_sr": {"study": "frames", "n_frames": 8, "n_keyframes": 1},
                                        "f16k4_qvh_sr": {"study": "frames", "n_frames": 16, "n_keyframes": 4}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(tmp_path / "params.yaml")
    for name, acc in (("f8k1_qvh_sr", 40.0), ("f16k4_qvh_sr", 45.0)):
        with stage_run(cfg, "evaluate", Phase.EVALUATE, name, RunTags(variant=name), variant=name) as run:
            run.log_metrics({"accuracy": acc})
    out = tmp_path / "reports"
    assert _cli(["report", "--out", str(out), "--no-log"]) == 0
    md = (out / "ablations.md").read_text(encoding="utf-8")
    assert "| 8 | 1 | f8k1_qvh_sr | 40.0 |" in md and "| 16 | 4 | f16k4_qvh_sr | 45.0 |" in md
    records = {r["variant"]: r for r in json.loads((out / "ablations.json").read_text())}
    assert {v: (r["study"], r["n_frames"], r["n_keyframes"], r["selector"]) for v, r in records.items()} == {
        "f8k1_qvh_sr": ("frames", 8, 1, "localizer"), "f16k4_qvh_sr": ("frames", 16, 4, "localizer")}
    assert (out / "accuracy_vs_keyframes_synth.png").read_bytes()[:8] == PNG_MAGIC
