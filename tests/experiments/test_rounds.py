"""The self-refinement round rules of the library (sevila.experiments.rounds; the Prefect flow and `sevila round`
both follow them): round settings, the main variant, what a round starts from, the stopping rule and where a
scheduled run resumes. No Prefect, no model."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sevila.experiments.rounds import (
    decide, history, main_variant, metrics_file, next_round, read_accuracy, required_inputs, resolve_round,
    round_overrides,
)
from sevila.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_round_overrides_switch_to_the_finetuned_answerer_from_round_2():
    assert round_overrides(1) == ["round=1"]
    assert round_overrides(2) == ["round=2", "pseudo_label.answerer=finetuned"]
    assert round_overrides(7)[1] == "pseudo_label.answerer=finetuned"
    with pytest.raises(ValueError, match="rounds start at 1"):
        round_overrides(0)


def test_main_variant_is_the_full_sevila_row_of_params_yaml():
    cfg = load_config(REPO / "params.yaml")
    assert main_variant(cfg) == "f32k4_qvh_sr"  # frames 32 -> 4, qvh_sr Localizer, fine-tuned Answerer
    assert main_variant(load_config(REPO / "params.yaml", ["frames.n_keyframes=8"])) == "f32k8_qvh_sr"
    with pytest.raises(ValueError, match=r"0 full-SeViLA variants with 32 frames -> 3 keyframes"):
        main_variant(load_config(REPO / "params.yaml", ["frames.n_keyframes=3"]))


@pytest.mark.parametrize("round_,acc,prev,expect,why", [
    (1, 40.0, None, True, "no previous round"),
    (2, 41.0, 40.0, True, "gained +1.00 over round 1"),
    (2, 40.4, 40.0, False, "less than min_improvement=0.5"),
    (2, 39.0, 40.0, False, "gained -1.00"),
    (3, 50.0, 40.0, False, "reached max_rounds=3"),  # max_rounds wins over a large gain
])
def test_stopping_rule(round_, acc, prev, expect, why):
    proceed, reason = decide(round_, acc, prev, max_rounds=3, min_improvement=0.5)
    assert proceed is expect and why in reason


def test_exactly_min_improvement_is_enough():
    assert decide(2, 40.5, 40.0, max_rounds=5, min_improvement=0.5)[0] is True


def test_next_round_resumes_after_the_rounds_on_disk():
    assert next_round({}, 3, 0.5) == (1, "no round on disk yet")
    assert next_round({1: 40.0}, 3, 0.5)[0] == 2
    assert next_round({1: 40.0, 2: 45.0}, 3, 0.5)[0] == 3
    assert next_round({1: 40.0, 2: 40.1}, 3, 0.5)[0] is None  # converged: scheduled runs do nothing
    assert next_round({1: 40.0, 2: 45.0, 3: 50.0}, 3, 0.5) == (None, "round 3 reached max_rounds=3")


@pytest.fixture
def cfg(tmp_path):
    params = {"paths": {k: str(tmp_path / k) for k in ("models", "runs", "reports")},
              "model": {"weights": str(tmp_path / "models" / "backbone")},
              "evaluate": {"variants": {"main": {"study": "components", "n_frames": 32, "n_keyframes": 4}}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


def test_history_reads_each_rounds_metrics_file(cfg):
    c = load_config(cfg)
    for r, acc in ((1, 40.0), (2, 42.5), (4, 44.0)):
        path = metrics_file(c, r, "main")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"accuracy": acc, "count": 10}))
    (Path(c.paths.runs) / "round3").mkdir()  # a round without an evaluation of the variant
    (Path(c.paths.runs) / "train").mkdir()  # not a round folder
    assert history(c, "main") == {1: 40.0, 2: 42.5, 4: 44.0}
    assert history(c, "other") == {}
    assert metrics_file(c, 2, "main") == Path(c.paths.runs) / "round2" / "eval" / "main" / "metrics.json"


def test_read_accuracy_names_a_file_without_one(tmp_path):
    assert read_accuracy(tmp_path / "absent.json") is None
    bad = tmp_path / "metrics.json"
    bad.write_text(json.dumps({"count": 0, "accuracy": math.nan}))
    with pytest.raises(ValueError, match=r"metrics.json: no finite `accuracy`"):
        read_accuracy(bad)


def test_required_inputs_name_the_stage_and_round_that_make_them(cfg):
    r1 = required_inputs(load_config(cfg, round_overrides(1)))
    models = Path(load_config(cfg).paths.models)
    assert [(p.relative_to(models).as_posix(), what) for p, what in r1] == [
        ("backbone", "the backbone (stage bootstrap, or a local BLIP-2 directory)"),
        ("localizer/qvh", "pretrain_localizer")]  # `sr` starts from the backbone's own Q-Former
    r3 = required_inputs(load_config(cfg, round_overrides(3)))
    assert [(p.relative_to(models).as_posix(), what) for p, what in r3] == [
        ("backbone", "the backbone (stage bootstrap, or a local BLIP-2 directory)"),
        ("answerer/finetuned_r2", "finetune_answerer of round 2"),
        ("localizer/sr_r2", "refine_localizer of round 2"),
        ("localizer/qvh_sr_r2", "refine_localizer of round 2")]


def test_a_scheduled_round_resolves_to_the_next_one_on_disk(cfg):
    """What names a `refine_round(round=None)` flow run (refine-round-<N>, as its MLflow parent run)."""
    c = load_config(cfg)
    for r, acc in ((1, 40.0), (2, 42.5)):
        path = metrics_file(c, r, "main")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"accuracy": acc}))
    assert resolve_round(str(cfg), None, 5, 0.5, None, None)[1:3] == ("main", 3)
    assert resolve_round(str(cfg), None, 2, 0.5, None, None)[2] is None  # max_rounds reached: refine-round-none
    assert resolve_round(str(cfg), 7, 2, 0.5, None, None)[2] == 7


# ---------------------------------------------------------------------------------------------- sevila round, end to end


SCRIPT = """\
import json, sys
from sevila.cli import main
rc = main(sys.argv[1:])
print("PREFECT_IMPORTED", "prefect" in sys.modules)
sys.exit(rc)
"""


def test_sevila_round_2_runs_without_prefect(tmp_path):
    """Round 1 built by `dvc repro` alone, then `sevila round 2` in a plain process: the library runs the round
    (outside the graph: dvc.yaml's own commands at round 2, versioned by rounds/round2.dvc) and Prefect is never
    imported; the round's decision is printed, its MLflow parent run nests the stages' runs."""
    from sevila.experiments.repro import child_env

    from ..dvc_projects import MAIN, dvc_status, make_dvc_project

    params = make_dvc_project(tmp_path / "project")
    root = params.parent
    # the venv's bin folder first on PATH, as `sevila repro` gives dvc (its stages run the `sevila` command)
    env = child_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "repro", f"evaluate@{MAIN}"], cwd=root, env=env, check=True, capture_output=True)
    lock = (root / "dvc.lock").read_text()
    out = subprocess.run([sys.executable, "-c", SCRIPT, "round", "2", "-p", str(params), "--max-rounds", "3"],
                         cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PREFECT_IMPORTED False" in out.stdout
    [decision] = json.loads(out.stdout[:out.stdout.index("PREFECT_IMPORTED")])
    assert decision["round"] == 2 and decision["variant"] == MAIN and decision["proceed"] in (True, False)
    assert decision["overrides"] == ["round=2", "pseudo_label.answerer=finetuned"]
    metrics = json.loads((root / "runs" / "round2" / "eval" / MAIN / "metrics.json").read_text())
    assert decision["accuracy"] == metrics["accuracy"]
    assert decision["previous"] == json.loads((root / "runs" / "round1" / "eval" / MAIN / "metrics.json").read_text())[
        "accuracy"]
    assert (root / "models" / "localizer" / "qvh_sr_r2").is_dir()
    assert (root / "models" / "answerer" / "finetuned_r2").is_dir()
    assert (root / "rounds" / "round2.dvc").is_file() and (root / "dvc.lock").read_text() == lock
    assert "rounds/round2.dvc" not in dvc_status(params)  # its outputs are committed to DVC's cache

    from sevila import tracking

    runs = tracking.runs_frame(uri=env["MLFLOW_TRACKING_URI"])
    parent = runs[runs["run_name"] == "refine-round-2"]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    assert parent["metrics.accuracy"].iloc[0] == pytest.approx(decision["accuracy"])
    nested = runs[runs["parent_run_id"] == parent["run_id"].iloc[0]]
    assert sorted(nested["run_name"]) == sorted(
        ["pseudo_label_r2", "refine_sr_r2", "refine_qvh_sr_r2", "finetune_answerer_r2", MAIN])
    assert set(nested["round"]) == {2} and set(nested["status"]) == {"FINISHED"}
