"""The seeds study (issue 10): seed order, the dvc command per seed, and mean/spread over seeds in the report."""
from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest

from sevila.evaluation import tables as report
from sevila.experiments import seeds
from sevila.experiments.seeds import collapse_seeds, exp_command, run_seeds, seed_order
from sevila.tracking import RunTags, latest_per_variant


def test_seed_order_runs_the_default_seed_last_and_each_seed_once():
    assert seed_order([0, 1, 2], default=0) == [1, 2, 0]
    assert seed_order([2, 1, 2, 1], default=0) == [2, 1]
    with pytest.raises(ValueError):
        seed_order([], default=0)


def test_exp_command_varies_world_and_bootstrap_seed_together():
    assert exp_command(3)[1:] == ["-m", "dvc", "exp", "run", "--name", "seed3",
                                  "-S", "world.seed=3", "-S", "bootstrap.seed=3"]
    assert exp_command(3)[0] == sys.executable


def test_seed_is_an_int_pivot_tag():
    assert RunTags(variant="v", seed=2).to_tags()["seed"] == "2"
    assert RunTags.from_tags({"variant": "v", "seed": "2"}).seed == 2


def _run(variant, seed, start, acc, span=None, status="FINISHED"):
    row = {"experiment": "sevila/synth/evaluate", "dataset": "synth", "variant": variant, "study": "components",
           "seed": seed, "start_time": start, "status": status, "run_id": f"{variant}-{seed}-{start}",
           "metrics.accuracy": acc}
    if span is not None:
        row["metrics.keyframe_in_span"] = span
    return row


def runs_frame():
    return pd.DataFrame([
        _run("f32k4_qvh_sr", 0, 1, 70.0, 90.0),
        _run("f32k4_qvh_sr", 1, 2, 80.0, 100.0),
        _run("f32k4_qvh_sr", 2, 3, 50.0, 10.0, status="FAILED"),  # a failed seed-2 rerun does not count ...
        _run("f32k4_qvh_sr", 2, 0, 75.0, 95.0),  # ... its earlier finished run does
        _run("f32k4_qvh_sr", 1, 0, 10.0, 10.0),  # superseded by seed 1's later run
        _run("uniform_k4", 0, 1, 40.0),
    ])


def test_latest_run_per_seed_then_mean_and_sample_std_over_seeds():
    rows = collapse_seeds(latest_per_variant(runs_frame())).set_index("variant")
    sevila = rows.loc["f32k4_qvh_sr"]
    assert sevila["n_seeds"] == 3 and sevila["seeds"] == "0,1,2"
    assert sevila["metrics.accuracy"] == pytest.approx(75.0)
    assert sevila["metrics.accuracy__std"] == pytest.approx(5.0)  # 70, 80, 75: sample std 5
    assert sevila["metrics.keyframe_in_span"] == pytest.approx(95.0)
    uniform = rows.loc["uniform_k4"]
    assert uniform["n_seeds"] == 1 and uniform["metrics.accuracy"] == 40.0
    assert math.isnan(uniform["metrics.accuracy__std"])  # one seed: no spread measured


def test_report_shows_mean_and_spread_and_lists_the_seeds():
    md = report.build_markdown(runs_frame())
    assert "seeds 0, 1, 2" in md
    assert "75.0 ± 5.0" in md and "95.0 ± 5.0" in md
    assert "| 40.0 |" in md.replace("40.0 ±", "x")  # the one-seed variant shows its value alone
    records = {r["variant"]: r for r in report.report_records(runs_frame())}
    assert records["f32k4_qvh_sr"]["seeds"] == [0, 1, 2]
    assert records["f32k4_qvh_sr"]["accuracy"] == pytest.approx(75.0)
    assert records["f32k4_qvh_sr"]["accuracy__std"] == pytest.approx(5.0)
    assert "accuracy__std" not in records["uniform_k4"]


def test_run_seeds_runs_each_seed_default_last_and_restores_params(tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    text = "world:\n  seed: 1   # the default world\nbootstrap:\n  seed: 1\n"
    params.write_text(text)
    calls, real_run = [], subprocess.run

    def fake_run(cmd, **kwargs):
        if cmd[1:3] != ["-m", "dvc"]:  # git, called by the MLflow parent run
            return real_run(cmd, **kwargs)
        calls.append(cmd[3:])
        params.write_text("world: {seed: 9}\n")  # what `dvc exp run -S` leaves behind
        return subprocess.CompletedProcess(cmd, 3 if cmd[-1] == "bootstrap.seed=7" else 0)

    monkeypatch.setattr(seeds.subprocess, "run", fake_run)
    assert run_seeds([1, 0], tmp_path) == 0
    runs = [c for c in calls if c[1] == "run"]
    assert [c[3] for c in runs] == ["seed0", "seed1"]  # the default seed (1) last
    assert [c for c in calls if c[1] == "remove"] == [["exp", "remove", "seed0"], ["exp", "remove", "seed1"]]
    assert params.read_text() == text  # comments and all
    assert run_seeds([7, 2], tmp_path) == 3  # a failing seed stops the study and is the exit status
    assert [c[3] for c in calls if c[1] == "run"][-1] == "seed7" and params.read_text() == text
