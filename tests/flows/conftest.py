"""Fixtures of the flow tests: one temporary Prefect server per session (prefect_test_harness, ~10-20 s) and
one tiny DVC project (tiny world, tiny random backbone) that the flows drive through DVC. Its params.yaml is the
repo's with tiny values (every path absolute, so no test depends on the cwd; DVC accepts absolute paths inside
the project), and its dvc.yaml is the repo's (`tiny_dvc_yaml`) with two changes: no `sevila/` code deps (the
code is not in the tiny project and does not change during a test) and a `bootstrap` stage that writes a random
tiny backbone (tests/flows/tiny_backbone.py) instead of training one for minutes."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sevila import tracking

from ..conftest import tiny_settings

REPO = Path(__file__).resolve().parents[2]
MAIN = "f8k2_qvh_sr"  # the full-SeViLA variant at the tiny config's 8 -> 2 frames (the stopping rule's metric)
BACKBONE_ONLY = {"localizer": "none", "answerer": "zero_shot"}  # these evaluate before any round has run
VARIANTS = {
    MAIN: {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "qvh_sr"},
    "f8k2_none": {"study": "components", "n_frames": 8, "n_keyframes": 2, "localizer": "none"},
    "uniform_k2": {"study": "baseline", "selector": "uniform", "n_frames": 8, "n_keyframes": 2, **BACKBONE_ONLY},
    "voting": {"study": "baseline", "selector": "all", "fusion": "vote", "n_frames": 8, **BACKBONE_ONLY},
}


def tiny_params(root: Path) -> dict:
    """The repo's params.yaml with the tiny world, tiny training and the tiny variants (every key a dvc.yaml stage
    lists must exist for DVC)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in tiny_settings(root).items():
        params[section] = {**params.get(section, {}), **values}
    params["evaluate"]["variants"] = copy.deepcopy(VARIANTS)
    return params


def tiny_dvc_yaml() -> dict:
    """The repo's dvc.yaml for the tiny project (see the module docstring)."""
    graph = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for spec in graph["stages"].values():
        body = spec.get("do", spec)
        body["deps"] = [d for d in body.get("deps", []) if not str(d).startswith("sevila/")]
    graph["stages"]["bootstrap"].update(
        cmd=f"{sys.executable} {REPO / 'tests' / 'flows' / 'tiny_backbone.py'}", params=["model.weights"])
    graph.pop("plots", None)
    return graph


def make_dvc_project(root: Path) -> Path:
    """A tiny DVC project at `root` (nothing built yet); returns its params.yaml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root), sort_keys=False))
    (root / "dvc.yaml").write_text(yaml.safe_dump(tiny_dvc_yaml(), sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], cwd=root, check=True)
    return root / "params.yaml"


def dvc_status(params: Path) -> dict:
    """`dvc status --json` of the tiny project: {} when every stage and .dvc file is up to date."""
    import json

    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=params.parent, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


# A two-stage graph templated like the real one: `make` writes a model and a metrics file for ${round}, `score`
# reads the model and writes its metrics; both print a line the log tests look for.
MINI_DVC = {"stages": {
    "make": {"cmd": "mkdir -p models/m_r${round} runs && echo weights > models/m_r${round}/w && "
                    "echo '{\"round\": ${round}, \"made\": 1}' > runs/make_r${round}.json && echo stage says hello",
             "params": ["round"], "outs": ["models/m_r${round}"],
             "metrics": [{"runs/make_r${round}.json": {"cache": False}}]},
    "score": {"foreach": {"a": 1, "b": 2},
              "do": {"cmd": "mkdir -p runs/${key} && echo '{\"accuracy\": 50.0}' > runs/${key}/metrics.json",
                     "deps": ["models/m_r${round}"], "outs": [],
                     "metrics": [{"runs/${key}/metrics.json": {"cache": False}}]}},
}}


def mini_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"round": 1}))
    (root / "dvc.yaml").write_text(yaml.safe_dump(MINI_DVC, sort_keys=False))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    return root / "params.yaml"



@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    mp = pytest.MonkeyPatch()
    mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls from the temporary server
    with prefect_test_harness(server_startup_timeout=120):
        yield
    mp.undo()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, prefect_server) -> dict:
    """The tiny project built by the pipeline flow, i.e. by DVC (every stage of round 1, every variant, the
    report): {"params": its params.yaml, "result": the flow's return value, "runs_before": the MLflow run ids
    that existed before it (the session's store is shared: other tests' flows have parent runs there too)}."""
    from flows.pipeline import pipeline

    before = tracking.runs_frame()
    params = make_dvc_project(tmp_path_factory.mktemp("flows") / "project")
    return {"params": params, "result": pipeline(params=str(params)),
            "runs_before": set(before["run_id"]) if not before.empty else set()}


@pytest.fixture(scope="session")
def tiny_project(pipeline_run) -> Path:
    return pipeline_run["params"]
