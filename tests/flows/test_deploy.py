"""The scheduled self-refinement deployment builds with its schedule and parameters, without a server."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from flows.deploy import DEFAULT_INTERVAL, build_deployment, deployment_parameters

REPO = Path(__file__).resolve().parents[2]


def test_interval_deployment_runs_the_next_round_of_refine_round():
    d = build_deployment(REPO / "params.yaml", interval=timedelta(hours=2), max_rounds=4, min_improvement=0.25)
    assert d.name == "self-refinement" and d.flow_name == "sevila-refine-round"
    assert d.entrypoint == "flows/refine_rounds.py:refine_round"
    [sched] = d.schedules
    assert sched.schedule.interval == timedelta(hours=2) and sched.active
    assert d.parameters == {"round": None, "params": str((REPO / "params.yaml").resolve()), "max_rounds": 4,
                            "min_improvement": 0.25}
    assert d.concurrency_limit == 1  # round N+1 needs round N's models: never two at once
    assert set(d.tags) == {"sevila", "self-refinement"}


def test_cron_deployment_and_the_default_schedule():
    d = build_deployment(REPO / "params.yaml", cron="0 3 * * *", name="nightly", paused=True)
    assert d.name == "nightly" and d.schedules[0].schedule.cron == "0 3 * * *"
    assert d.paused is True
    default = build_deployment(REPO / "params.yaml")
    assert default.schedules[0].schedule.interval == DEFAULT_INTERVAL


def test_bad_deployment_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_deployment(REPO / "params.yaml", interval=timedelta(hours=1), cron="0 3 * * *")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deployment_parameters(tmp_path / "missing.yaml")
