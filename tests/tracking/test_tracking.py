"""sevila.tracking against a real (embedded SQLite) MLflow store under tmp_path; never the repo's mlflow.db."""
from __future__ import annotations

import dataclasses
import enum
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from sevila import tracking as tr
from sevila.config import AnswererId
from sevila.tracking import Phase, RunTags, Study

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def _empty_db(tmp_path_factory) -> Path:
    """A freshly migrated empty store, made once (creating MLflow's schema takes ~1.5 s); tests copy it."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    tr.client(f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def store(tmp_path, _empty_db, monkeypatch) -> str:
    """A private store for one test, pinned for this process; env vars that could redirect runs are cleared."""
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    monkeypatch.delenv(tr.PARENT_RUN_ENV, raising=False)
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(_empty_db, db)
    uri = tr.configure(db)
    assert uri == f"sqlite:///{db}"
    yield uri
    tr.configure(None)


FULL_TAGS = RunTags(variant="f32k4_qvh_sr", study=Study.COMPONENTS, selector="localizer", fusion="concat",
                    n_frames=32, n_keyframes=4, loc_pretrain=True, loc_refine=True, answerer=AnswererId.FINETUNED,
                    round=2, dvc_stage="evaluate@f32k4_qvh_sr")


def test_run_lands_in_named_experiment_with_tags_params_config_and_metrics(store, tmp_path):
    config = {"model": {"n_frames": 32, "lr": 1e-4, "freeze_vit": True, "name": None},
              "data": {"splits": ["train", "val"], "notes": "x" * 7000}}
    whole = {"paths": {"data": "data"}, **config}
    with tr.start_run("synth", Phase.EVALUATE, None, FULL_TAGS, config, config=whole) as run:
        run.log_metrics({"accuracy": 61.5, "keyframe_in_span": 70.25})
    c = tr.client(store)
    got = c.get_run(run.run_id)
    exp = c.get_experiment(got.info.experiment_id)
    assert exp.name == "sevila/synth/evaluate"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow 3 UI: "Model training"
    # the evaluate experiment carries the UI's saved view "Ablation table" (format of MLflow 3.17's UI)
    view = json.loads(exp.tags["mlflow.sharedViewState.sevila-ablation-table"])
    assert view["name"] == "Ablation table" and view["createdAt"] == view["updatedAt"] > 0
    state = json.loads(view["state"])
    assert state["selectedColumns"] == [
        "metrics.`accuracy`", "metrics.`keyframe_in_span`", "params.`study`", "params.`n_frames`",
        "params.`n_keyframes`", "params.`localizer`", "params.`selector`", "params.`fusion`", "params.`answerer`",
        "params.`round`"]
    assert state["groupBy"] == {"aggregateFunction": "average",
                                "groupByKeys": [{"mode": "param", "groupByData": "study"}]}
    assert state["orderByKey"] == "metrics.`accuracy`" and state["orderByAsc"] is False
    assert got.info.run_name == "f32k4_qvh_sr"
    assert got.info.status == "FINISHED"
    tags = got.data.tags
    assert {k: tags[k] for k in FULL_TAGS.to_tags()} == {
        "variant": "f32k4_qvh_sr", "study": "components", "selector": "localizer", "fusion": "concat",
        "n_frames": "32", "n_keyframes": "4", "loc_pretrain": "true", "loc_refine": "true",
        "answerer": "finetuned", "round": "2", "dvc_stage": "evaluate@f32k4_qvh_sr"}
    assert tags["dataset"] == "synth" and tags["phase"] == "evaluate"
    assert tr.PARENT_TAG not in tags
    # git state of the checkout the tests run in
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    if sha:
        assert tags["git_sha"] == sha == tags["mlflow.source.git.commit"]
        assert tags["git_dirty"] in ("true", "false")
    params = got.data.params
    assert {k: v for k, v in params.items() if k != "data.notes"} == {
        "model.n_frames": "32", "model.lr": "0.0001", "model.freeze_vit": "true", "model.name": "null",
        "data.splits": '["train", "val"]'}
    assert len(params["data.notes"]) == tr.MAX_PARAM_VAL_LENGTH
    assert params["data.notes"].endswith(tr.TRUNCATION_MARK)
    assert got.data.metrics == {"accuracy": 61.5, "keyframe_in_span": 70.25}
    # the whole resolved config is an artifact (params hold only the run's own settings: no `paths.*`)
    local = c.download_artifacts(run.run_id, "params.yaml", str(tmp_path))
    assert yaml.safe_load(Path(local).read_text()) == whole
    # artifacts sit next to the database, not in the working directory
    art = Path(store[len("sqlite:///"):]).parent / "mlruns" / "sevila" / "synth" / "evaluate" / run.run_id
    assert (art / "artifacts" / "params.yaml").is_file()


def test_training_metrics_keep_their_per_step_history(store):
    from sevila.training.runlog import RunLogger

    with tr.start_run("synth", "refine", "f32k4_sr_r1", RunTags(variant="f32k4_sr", round=1)) as run:
        assert isinstance(run, RunLogger)  # the training loop's protocol
        logger: RunLogger = run
        logger.log_params({"lr": 3e-5, "steps": 5})
        logger.log_params({"lr": 3e-5, "steps": 5})  # a resumed run repeats its params: accepted
        for step in range(1, 6):
            logger.log_metrics({"loss": 1.0 / step, "lr": 3e-5}, step=step)
    hist = tr.client(store).get_metric_history(run.run_id, "loss")
    assert [m.step for m in hist] == [1, 2, 3, 4, 5]
    assert [m.value for m in hist] == pytest.approx([1.0, 0.5, 1 / 3, 0.25, 0.2])
    got = tr.client(store).get_run(run.run_id)
    assert got.info.run_name == "f32k4_sr_r1"  # a stage id can name the run instead of the variant
    assert got.data.params == {"lr": "3e-05", "steps": "5"}
    assert tr.client(store).get_experiment(got.info.experiment_id).name == "sevila/synth/refine"


def test_failed_and_interrupted_runs_are_marked(store):
    with pytest.raises(RuntimeError, match="boom"):
        with tr.start_run("synth", Phase.FINETUNE, None, RunTags(variant="v")) as run:
            raise RuntimeError("boom")
    assert tr.client(store).get_run(run.run_id).info.status == "FAILED"
    with pytest.raises(KeyboardInterrupt):
        with tr.start_run("synth", Phase.FINETUNE, None, RunTags(variant="v")) as run2:
            raise KeyboardInterrupt
    assert tr.client(store).get_run(run2.run_id).info.status == "KILLED"

    class TerminationSignal(BaseException):  # how Prefect delivers a cancel: not an Exception
        pass

    with pytest.raises(TerminationSignal):
        with tr.start_run("synth", Phase.PIPELINE, None, RunTags(variant="v")) as run3:
            raise TerminationSignal
    assert tr.client(store).get_run(run3.run_id).info.status == "KILLED"


def test_artifacts_files_directories_dicts_and_figures(store, tmp_path):
    from matplotlib.figure import Figure

    d = tmp_path / "keyframes"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("[1]")
    (d / "sub" / "b.json").write_text("[2]")
    preds = tmp_path / "predictions.jsonl"
    preds.write_text('{"qid": "q1", "pred": 2}\n')
    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")) as run:
        run.log_artifact(preds)
        run.log_artifact(d)
        run.log_dict({"x": [1, 2]}, "extra/summary.json")
        run.log_figure(fig, "plots/line.png")
        with pytest.raises(FileNotFoundError, match="nothing.txt"):
            run.log_artifact(tmp_path / "nothing.txt")
        run.set_tags({"cached_features": True, "study": Study.ROUND})
    c = tr.client(store)
    tags = c.get_run(run.run_id).data.tags
    assert (tags["cached_features"], tags["study"]) == ("true", "round")

    def files(path=None):
        out = []
        for f in c.list_artifacts(run.run_id, path):
            out += files(f.path) if f.is_dir else [f.path]
        return out

    assert sorted(files()) == ["extra/summary.json", "keyframes/a.json", "keyframes/sub/b.json", "plots/line.png",
                               "predictions.jsonl"]


def test_metric_values_and_names_are_checked(store):
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")) as run:
        with pytest.raises(TypeError, match="'accuracy' is not a number"):
            run.log_metrics({"accuracy": "high"})
        with pytest.raises(ValueError, match="acc@1"):
            run.log_metrics({"acc@1": 1.0})
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            run.log_metrics({"loss": 1.0}, step=-1)
        run.log_metrics({"done": True})
    assert tr.client(store).get_run(run.run_id).data.metrics == {"done": 1.0}


def test_parent_run_nests_runs_in_process_and_in_a_subprocess(store, tmp_path):
    child = textwrap.dedent("""
        from sevila.tracking import RunTags, start_run
        with start_run("synth", "evaluate", None, RunTags(variant="from_subprocess", study="frames")) as r:
            r.log_metrics({"accuracy": 42.0})
        print(r.run_id)
    """)
    env_before = {k: os.environ.get(k) for k in (tr.PARENT_RUN_ENV, tr.TRACKING_URI_ENV)}
    with tr.parent_run("dvc-repro", "synth", tags={"prefect_flow_run": "f-1"}) as parent:
        assert os.environ[tr.PARENT_RUN_ENV] == parent.run_id
        assert os.environ[tr.TRACKING_URI_ENV] == store
        with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="in_process")) as inner:
            pass
        with tr.parent_run("round-2", "synth", Phase.REFINE) as nested_parent:  # parents nest too
            pass
        # a dvc stage is a child process: it sees only the environment
        out = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
        assert out.returncode == 0, out.stderr
        sub_id = out.stdout.strip().splitlines()[-1]
    assert {k: os.environ.get(k) for k in env_before} == env_before  # restored
    c = tr.client(store)
    assert c.get_experiment(c.get_run(parent.run_id).info.experiment_id).name == "sevila/synth/pipeline"
    assert c.get_run(parent.run_id).info.status == "FINISHED"
    assert c.get_run(parent.run_id).data.tags["prefect_flow_run"] == "f-1"
    for rid in (inner.run_id, nested_parent.run_id, sub_id):
        assert c.get_run(rid).data.tags[tr.PARENT_TAG] == parent.run_id
    frame = tr.runs_frame("synth", "evaluate")
    assert set(frame["variant"]) == {"in_process", "from_subprocess"}
    assert set(frame["parent_run_id"]) == {parent.run_id}
    # after the block, new runs are top-level again
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="later")) as later:
        pass
    assert tr.PARENT_TAG not in c.get_run(later.run_id).data.tags


def test_a_parent_id_from_another_store_is_an_error(store, monkeypatch):
    monkeypatch.setenv(tr.PARENT_RUN_ENV, "0123456789abcdef0123456789abcdef")
    with pytest.raises(tr.TrackingError, match="does not exist in sqlite.*SEVILA_PARENT_RUN_ID"):
        with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")):
            pass


def test_a_deleted_experiment_is_reported_not_recreated(store):
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")):
        pass
    c = tr.client(store)
    c.delete_experiment(c.get_experiment_by_name("sevila/synth/evaluate").experiment_id)
    with pytest.raises(tr.TrackingError, match="'sevila/synth/evaluate' is deleted"):
        with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")):
            pass


def test_runs_frame_and_latest_finished_run_per_variant(store):
    def run(ds, variant, acc, fail=False, phase=Phase.EVALUATE, **tags):
        try:
            with tr.start_run(ds, phase, None, RunTags(variant=variant, **tags)) as r:
                r.log_metrics({"accuracy": acc})
                if fail:
                    raise RuntimeError("stage crashed")
        except RuntimeError:
            pass
        return r.run_id

    run("synth", "f32k4", 50.0, study="frames", n_frames=32, n_keyframes=4, loc_pretrain=False)
    newest = run("synth", "f32k4", 60.0, study="frames", n_frames=32, n_keyframes=4, loc_pretrain=False)
    run("synth", "f32k4", 99.0, fail=True, study="frames", n_frames=32, n_keyframes=4)  # later, but failed
    run("synth", "only_failed", 70.0, fail=True)
    other_ds = run("nextqa", "f32k4", 40.0, study="frames")
    run("synth", "f32k4", 10.0, phase=Phase.FINETUNE)  # another phase

    allruns = tr.runs_frame()
    assert len(allruns) == 6
    assert list(allruns.columns[: len(tr.BASE_COLUMNS)]) == list(tr.BASE_COLUMNS)
    synth = tr.runs_frame("synth", Phase.EVALUATE)
    assert sorted(synth["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert str(synth["n_frames"].dtype) == "Int64" and str(synth["loc_pretrain"].dtype) == "boolean"
    assert str(synth["start_time"].dtype).startswith("datetime64") and "UTC" in str(synth["start_time"].dtype)
    assert len(tr.finished_runs("synth", "evaluate")) == 2

    best = tr.latest_per_variant(tr.runs_frame(phase="evaluate"))
    assert [(r.dataset, r.variant, r.run_id) for r in best.itertuples()] == [
        ("nextqa", "f32k4", other_ds), ("synth", "f32k4", newest)]
    row = best[best["dataset"] == "synth"].iloc[0]
    assert row["metrics.accuracy"] == 60.0 and row["n_frames"] == 32 and not row["loc_pretrain"]
    assert row["study"] == "frames"


def test_empty_store_gives_an_empty_frame_with_the_columns(store):
    df = tr.finished_runs("synth", "evaluate")
    assert df.empty and list(df.columns) == list(tr.BASE_COLUMNS)
    assert tr.latest_per_variant(df).empty


def test_latest_per_variant_on_a_hand_made_frame():
    import pandas as pd

    df = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e"],
        "run_name": ["v1", "v1", "v1", "x", "v2"],
        "variant": ["v1", "v1", "v1", None, "v2"],
        "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED", "RUNNING"],
        "start_time": pd.to_datetime([1, 3, 5, 2, 9], unit="s", utc=True),
    })
    out = tr.latest_per_variant(df)
    assert list(out["run_id"]) == ["b", "d"]  # v1: latest finished; x: variant from run name; v2: not finished
    assert list(out["variant"]) == ["v1", "x"]


# ----------------------------------------------------------------------------------------------------------
# Pure parts: tags, params, URIs


def test_run_tags_are_typed_and_validated():
    assert RunTags.from_tags(FULL_TAGS.to_tags() | {"unrelated": "x"}) == FULL_TAGS
    assert FULL_TAGS.study is Study.COMPONENTS and FULL_TAGS.answerer is AnswererId.FINETUNED

    class Sel(str, enum.Enum):  # someone else's enum with the same values
        LOCALIZER = "localizer"

    assert RunTags(variant="v", selector=Sel.LOCALIZER).selector == "localizer"
    with pytest.raises(ValueError, match="RunTags.selector: 'topk' is not one of"):
        RunTags(variant="v", selector="topk")
    with pytest.raises(ValueError, match="RunTags.study"):
        RunTags(variant="v", study="table7")
    with pytest.raises(ValueError, match="n_keyframes=8 > n_frames=4"):
        RunTags(variant="v", n_frames=4, n_keyframes=8)
    with pytest.raises(ValueError, match="RunTags.n_frames: expected an integer"):
        RunTags(variant="v", n_frames=True)
    with pytest.raises(ValueError, match="RunTags.loc_refine: expected true/false"):
        RunTags(variant="v", loc_refine="yes")
    with pytest.raises(ValueError, match="RunTags.variant"):
        RunTags(variant="")
    with pytest.raises(TypeError, match="tags must be a RunTags"):
        with tr.start_run("synth", "evaluate", None, {"variant": "v"}):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="phase 'train' is not one of"):
        tr.experiment_name("synth", "train")
    with pytest.raises(ValueError, match="dataset 'a/b'"):
        tr.experiment_name("a/b", "evaluate")


def test_selector_and_fusion_values_match_sevila_selection():
    selection = pytest.importorskip("sevila.model.selection")  # imports torch; the tag module must not
    assert tr.SELECTOR_VALUES == tuple(s.value for s in selection.Selector)
    assert tr.FUSION_VALUES == tuple(f.value for f in selection.Fusion)
    assert RunTags(variant="v", selector=selection.Selector.ORACLE, fusion=selection.Fusion.VOTE).to_tags() == {
        "variant": "v", "selector": "oracle", "fusion": "vote"}


def test_flatten_params_pinned():
    class Mode(enum.Enum):
        A = "a"

    @dataclasses.dataclass(frozen=True)
    class Inner:
        k: int = 4
        mode: Mode = Mode.A

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner = Inner()
        path: Path = Path("data/x")
        frames: tuple[int, ...] = (8, 16)
        empty: dict = dataclasses.field(default_factory=dict)

    assert tr.flatten_params(Outer()) == {"inner.k": "4", "inner.mode": "a", "path": "data/x", "frames": "[8, 16]",
                                          "empty": "{}"}
    assert tr.flatten_params({}) == {}
    assert tr.flatten_params({"a b": {"c=d": 1.5}, "nan": float("nan")}) == {"a b.c_d": "1.5", "nan": "nan"}
    long_key = "k" * 300
    (key,) = tr.flatten_params({long_key: 1})
    assert len(key) == 250 and key.startswith("k" * 241 + "~")
    assert tr.flatten_params({long_key + "x": 1}).keys() != {key}  # no collision between two long keys
    with pytest.raises(ValueError, match="expected a mapping"):
        tr.flatten_params([1, 2])


def test_limits_match_the_installed_mlflow():
    from mlflow.utils import validation as v

    assert tr.MAX_PARAM_VAL_LENGTH == v.MAX_PARAM_VAL_LENGTH
    assert tr.MAX_TAG_VAL_LENGTH == v.MAX_TAG_VAL_LENGTH
    assert tr.MAX_ENTITY_KEY_LENGTH == v.MAX_ENTITY_KEY_LENGTH
    assert tr.MAX_PARAMS_TAGS_PER_BATCH == v.MAX_PARAMS_TAGS_PER_BATCH
    assert tr.MAX_METRICS_PER_BATCH == v.MAX_METRICS_PER_BATCH


def test_tracking_uri_precedence_and_forms(tmp_path, monkeypatch):
    monkeypatch.delenv(tr.TRACKING_URI_ENV, raising=False)
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project / "sub")
    try:
        assert tr.configure() == f"sqlite:///{project / 'mlflow.db'}"  # default: the project root, not the cwd
        monkeypatch.setenv(tr.TRACKING_URI_ENV, "sqlite:///rel/env.db")
        assert tr.tracking_uri() == f"sqlite:///{project / 'sub' / 'rel' / 'env.db'}"  # made absolute
        monkeypatch.setenv(tr.TRACKING_URI_ENV, "http://tracking.example:5000")
        assert tr.tracking_uri() == "http://tracking.example:5000"
        assert tr.configure(tmp_path / "s") == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"  # explicit wins
        assert tr.tracking_uri() == f"sqlite:///{tmp_path / 's' / 'mlflow.db'}"
        assert tr.configure("runs/x.sqlite") == f"sqlite:///{project / 'sub' / 'runs' / 'x.sqlite'}"
    finally:
        tr.configure(None)
    assert tr.tracking_uri() == "http://tracking.example:5000"
    assert tr.parse_experiment_name("sevila/synth/evaluate") == ("synth", "evaluate")
    assert tr.parse_experiment_name("Default") is None


def test_git_state_outside_a_checkout(tmp_path):
    assert tr.git_state(tmp_path) == (None, None)


def test_import_is_cheap():
    code = "import sys, sevila.tracking; print(sorted(m for m in ('mlflow', 'pandas', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_experiment_ui_tags_are_added_once_and_never_overwrite_an_edit(store):
    c = tr.client(store)
    exp_id = c.create_experiment("sevila/synth/evaluate")  # made before sevila tagged its experiments
    key = "mlflow.sharedViewState.sevila-ablation-table"
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")):
        pass
    tags = c.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development" and key in tags
    c.set_experiment_tag(exp_id, key, "edited by a person")
    with tr.start_run("synth", Phase.EVALUATE, None, RunTags(variant="v")):
        pass
    assert c.get_experiment(exp_id).tags[key] == "edited by a person"
    with tr.start_run("synth", Phase.REFINE, None, RunTags(variant="r")) as run:
        pass
    refine = c.get_experiment(c.get_run(run.run_id).info.experiment_id).tags
    assert refine["mlflow.experimentKind"] == "custom_model_development" and key not in refine
