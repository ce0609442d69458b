"""Tiny DVC projects the flow and experiment tests drive through DVC: `make_dvc_project` (the repo's dvc.yaml and
params.yaml with tiny values: tiny world, tiny random backbone; every path absolute, so no test depends on the
cwd) and `mini_project` (a two-stage graph of shell commands templated like the real one, for tests that run in
seconds). `tiny_dvc_yaml` is the repo's dvc.yaml with two changes: no `sevila/` code deps (the code is not in the
tiny project and does not change during a test) and a `bootstrap` stage that writes a random tiny backbone
(tests/flows/tiny_backbone.py) instead of training one for minutes."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import tiny_settings

REPO = Path(__file__).resolve().parents[1]
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
