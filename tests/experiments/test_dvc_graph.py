"""The DVC graph as the library reads it (sevila.experiments.dvc_graph): the stages and their upstream stages
are DVC's, a stage's command, outputs and metrics come from DVC's own resolver of dvc.yaml for any settings
(a round outside the graph), and only the project's params.yaml is accepted. Tiny DVC projects: seconds."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from sevila.config import ConfigError
from sevila.experiments import rounds
from sevila.experiments.dvc_graph import declared, dvc_project, resolved, settings, stage_command, upstream

from ..dvc_projects import REPO, make_dvc_project, mini_project

CHAIN = ["prepare", "validate", "bootstrap", "pretrain_localizer", "pseudo_label", "refine_localizer",
         "finetune_answerer", "finetune_answerer_uniform"]


def test_the_task_graph_is_dvcs(tmp_path):
    params = make_dvc_project(tmp_path / "p")
    needs = upstream(params.parent)
    variants = yaml.safe_load(params.read_text())["evaluate"]["variants"]
    assert list(needs) == CHAIN + [f"evaluate@{v}" for v in variants] + ["report"]  # dvc.yaml's order
    assert needs["prepare"] == [] and needs["validate"] == ["prepare"]
    assert needs["refine_localizer"] == ["bootstrap", "prepare", "pretrain_localizer", "pseudo_label"]
    assert needs["finetune_answerer"] == ["bootstrap", "prepare", "refine_localizer"]
    assert needs["finetune_answerer_uniform"] == ["bootstrap", "prepare"]  # no Localizer: beside the chain
    assert needs["report"] == sorted(f"evaluate@{v}" for v in variants)


def test_declared_renders_dvc_yamls_paths_for_any_round():
    ctx = settings(REPO, ["round=3"])
    outs, metrics = declared(REPO, "refine_localizer", ctx)
    assert outs == [REPO / "models/localizer/sr_r3", REPO / "models/localizer/qvh_sr_r3"]
    assert metrics == [REPO / "reports/refine_localizer_r3.json"]
    outs, metrics = declared(REPO, "evaluate@f8k1_qvh_sr", ctx)
    assert outs == [REPO / "runs/round3/eval/f8k1_qvh_sr/predictions.jsonl"]
    assert metrics == [REPO / "runs/round3/eval/f8k1_qvh_sr/metrics.json"]
    assert declared(REPO, "prepare", ctx)[1] == []
    with pytest.raises(KeyError, match="dvc.yaml has no stage 'nope'"):
        declared(REPO, "nope", ctx)


def test_only_the_projects_params_yaml_is_accepted(tmp_path):
    params = mini_project(tmp_path / "p")
    assert dvc_project(params) == params.parent
    other = tmp_path / "p" / "other.yaml"
    other.write_text("round: 1\n")
    with pytest.raises(ValueError, match=r"other.yaml: the stages run through DVC"):
        dvc_project(other)


def test_a_stage_outside_the_graph_runs_dvc_yamls_own_command_with_the_overrides():
    params = REPO / "params.yaml"
    assert stage_command(REPO, "refine_localizer", ["round=2"]) == [
        sys.executable, "-m", "sevila", "stage", "refine_localizer", "-p", str(params), "-o", "round=2"]
    # evaluate@<variant>: dvc.yaml's own `-o evaluate.only=[...]`, never a copy of it here
    assert stage_command(REPO, "evaluate@f8k1_qvh_sr", ["round=2"]) == [
        sys.executable, "-m", "sevila", "stage", "evaluate", "-o", "evaluate.only=[f8k1_qvh_sr]", "-p", str(params),
        "-o", "round=2"]


def test_run_outside_returns_the_metrics_file_dvc_yaml_declares_for_the_round(tmp_path, monkeypatch):
    params = mini_project(tmp_path / "p")
    root = params.parent
    ran = []

    def shell(cmd, cwd, log):  # the mini project's stages are shell commands: run dvc.yaml's, rendered at round 2
        ran.append(cmd)
        subprocess.run(resolved(root, stage, settings(root, ["round=2"]))["cmd"], shell=True, cwd=cwd, check=True)

    monkeypatch.setattr(rounds, "run_checked", shell)
    monkeypatch.setattr(rounds.dvc_graph, "stage_command", lambda root, stage, overrides: [stage, *overrides])
    for stage, want in (("make", {"round": 2, "made": 1}), ("score@b", {"accuracy": 50.0})):
        assert rounds.run_outside(root, stage, ["round=2"], print) == want
    assert ran == [["make", "round=2"], ["score@b", "round=2"]]
    assert (root / "runs" / "make_r2.json").is_file() and not (root / "dvc.lock").exists()  # not DVC's run


def test_settings_refuse_a_duplicate_key(tmp_path):
    params = mini_project(tmp_path / "p")
    params.write_text("round: 1\nround: 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line 2: duplicate key 'round' \(first at line 1\)"):
        settings(params.parent)  # DVC rejects such a file too: never read it another way
