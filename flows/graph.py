"""DVC's side of the flows (issue 11 item 4: one owner of the pipeline graph, DVC).

- `upstream(root)`: the stages of dvc.yaml and the stages each one needs, read from DVC's own index, so the Prefect
  tasks mirror DVC's graph instead of a hand-kept copy of it.
- `repro_command(stage)`: how a task runs one stage THROUGH DVC: `dvc repro --single-item <stage>` in a child
  process. DVC checks the stage's hashes, runs its `cmd` only when something changed, and writes dvc.lock, so
  after a flow run `dvc status` is clean. `--single-item` because the flow's task dependencies already order
  the upstream stages (each its own task in the Prefect UI); `--wait-for-lock` because DVC runs one command per
  workspace at a time and concurrent tasks must queue, not fail. A child process, not `dvc.repo.Repo.reproduce`
  in-process: its output streams line by line into the Prefect run log, a cancelled run can end it (and the
  stage under it) by its process group, and the stage's memory (torch) is freed when it ends.
- `declared(root, stage, params)`: a stage's outputs and metrics files as dvc.yaml declares them, rendered from
  the given settings: the task's result is the stage's metrics file, and a round outside the graph (round N >=
  2: same stage code, other `${round}` paths) knows exactly which files it wrote.
- `version_round`: a round outside the graph is versioned as `rounds/round<N>.dvc` (see refine_rounds).
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import networkx as nx
import yaml
from dvc.repo import Repo
from dvc.stage import PipelineStage

from sevila.config import apply_override

PARAMS_FILE = "params.yaml"  # DVC's default params file: the only settings `dvc repro` reads
DVC_FILE = "dvc.yaml"
ROUNDS_DIR = "rounds"  # where the .dvc files of rounds outside the graph live (tracked in git)
_REF = re.compile(r"\$\{([^}]+)\}")


def project_root(params: str | Path) -> Path:
    """The DVC project whose params.yaml is `params`: DVC reads only that file, so no other one is accepted."""
    path = Path(params).resolve()
    if path.name != PARAMS_FILE or not (path.parent / DVC_FILE).is_file():
        raise ValueError(f"{params}: the flows run the stages through DVC, which reads {PARAMS_FILE} beside "
                         f"{DVC_FILE}; give the project's {PARAMS_FILE} (one-off settings: dvc exp run -S KEY=VALUE)")
    return path.parent


def upstream(root: str | Path) -> dict[str, list[str]]:
    """{stage: the stages it needs}, every stage of the project's graph, upstream stages first (dvc.yaml order
    among stages that could run in either order, as `dvc repro` runs them)."""
    with Repo(str(root)) as repo:
        # an edge stage -> a stage whose outputs it depends on; .dvc files (rounds/) are in it too, as nameless
        # stages with nothing to run: only dvc.yaml's stages are tasks
        graph = repo.index.graph.subgraph(s for s in repo.index.graph if isinstance(s, PipelineStage))
        position = {s: i for i, s in enumerate(repo.index.stages)}
        order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: position[s])
        return {s.name: sorted(d.name for d in graph.successors(s)) for s in order}


def dvc_command(*args: str) -> list[str]:
    """`dvc ARGS` through this interpreter (the venv's dvc, whatever PATH says), queueing on DVC's repo lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def repro_command(stage: str) -> list[str]:
    return dvc_command("repro", "--single-item", stage)


def stage_command(name: str, params: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> list[str]:
    """`sevila stage NAME -p PARAMS -o ...`: a stage outside the graph (what dvc.yaml's cmd runs, other settings)."""
    return [sys.executable, "-m", "sevila", "stage", name, "-p", str(params), *(a for o in overrides for a in ("-o", o))]


def settings(root: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """params.yaml as DVC templates dvc.yaml with it, with `overrides` applied as `sevila stage -o` would."""
    raw = yaml.safe_load((Path(root) / PARAMS_FILE).read_text(encoding="utf-8")) or {}
    for item in overrides:
        apply_override(raw, item)
    return raw


def render(text: str, context: Mapping[str, Any]) -> str:
    """dvc.yaml's `${a.b}` interpolation over `context`; an unknown name is an error that names it."""
    def value(m: re.Match) -> str:
        node: Any = context
        for part in m.group(1).strip().split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise KeyError(f"{DVC_FILE}: ${{{m.group(1)}}} is not set in {PARAMS_FILE}")
            node = node[part]
        return str(node)
    return _REF.sub(value, text)


def _paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def declared(root: str | Path, stage: str, context: Mapping[str, Any]) -> tuple[list[Path], list[Path]]:
    """(outputs, metrics files) of `stage` (`name` or `name@key` of a foreach) as dvc.yaml declares them,
    rendered with `context` (see `settings`); absolute paths."""
    name, _, key = stage.partition("@")
    stages = yaml.safe_load((Path(root) / DVC_FILE).read_text(encoding="utf-8"))["stages"]
    if name not in stages:
        raise KeyError(f"{DVC_FILE} has no stage {name!r}")
    spec = stages[name]["do"] if key else stages[name]
    ctx = {**context, "key": key} if key else context
    def absolute(entries: list | None) -> list[Path]:
        return [Path(root, render(p, ctx)) for p in _paths(entries)]
    return absolute(spec.get("outs")), absolute(spec.get("metrics"))


def read_metrics(root: str | Path, files: list[Path]) -> dict:
    """A stage's result: its one metrics file's contents, or {relative path: contents} when it declares several."""
    found = {f: json.loads(f.read_text(encoding="utf-8")) for f in files}
    if len(found) == 1:
        return next(iter(found.values()))
    return {os.path.relpath(f, root): m for f, m in found.items()}


def round_file(root: str | Path, round_: int) -> Path:
    return Path(root, ROUNDS_DIR, f"round{round_}.dvc")


def round_dvc_text(root: str | Path, round_: int, paths: list[Path]) -> str:
    """The .dvc file that versions a round's outputs (`dvc commit` fills in their hashes and caches them)."""
    where = round_file(root, round_).parent
    outs = [{"path": Path(os.path.relpath(p, where)).as_posix()} for p in dict.fromkeys(paths)]
    return yaml.safe_dump({"outs": outs}, sort_keys=False)
