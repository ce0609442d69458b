"""The DVC graph as the library reads it (docs/design.md §3: DVC owns the graph of stages and their outputs).

Everything here asks DVC itself, never a copy of its rules: the stages and their upstream stages come from DVC's
index (`upstream`), a stage's command, outputs and metrics files from DVC's own resolver of dvc.yaml's `${...}`
templates and `foreach` (`resolved`, rendered with any settings, so a round outside the graph knows exactly which
files it writes), and a stage in the graph runs as `dvc repro --single-item STAGE` (`repro_command`), so DVC checks
its hashes, runs its `cmd` only when something changed, and writes dvc.lock.

Used by `sevila round N` (sevila.experiments.rounds) and by the Prefect flows (flows/), which add only scheduling.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from sevila.config import apply_override, read_yaml
from sevila.errors import BadArgument

PARAMS_FILE = "params.yaml"  # DVC's default params file: the only settings `dvc repro` reads
DVC_FILE = "dvc.yaml"
ROUNDS_DIR = "rounds"  # where the .dvc files of rounds outside the graph live (tracked in git)


def dvc_project(params: str | Path) -> Path:
    """The DVC project whose params.yaml is `params`: DVC reads only that file, so no other one is accepted."""
    path = Path(params).resolve()
    if path.name != PARAMS_FILE or not (path.parent / DVC_FILE).is_file():
        raise BadArgument(f"{params}: the stages run through DVC, which reads {PARAMS_FILE} beside {DVC_FILE}; "
                          f"give the project's {PARAMS_FILE} (one-off settings: dvc exp run -S KEY=VALUE)")
    return path.parent


def upstream(root: str | Path) -> dict[str, list[str]]:
    """{stage: the stages it needs}, every stage of the project's graph, upstream stages first (dvc.yaml order
    among stages that could run in either order, as `dvc repro` runs them)."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        # an edge stage -> a stage whose outputs it depends on; .dvc files (rounds/) are in it too, as nameless
        # stages with nothing to run: only dvc.yaml's stages are listed
        graph = repo.index.graph.subgraph(s for s in repo.index.graph if isinstance(s, PipelineStage))
        position = {s: i for i, s in enumerate(repo.index.stages)}
        order = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=lambda s: position[s])
        return {s.name: sorted(d.name for d in graph.successors(s)) for s in order}


def settings(root: str | Path, overrides: Sequence[str] = ()) -> dict:
    """params.yaml as DVC templates dvc.yaml with it (read with sevila's loader, which refuses duplicate keys),
    with `overrides` applied as `sevila stage -o` applies them."""
    raw = read_yaml(Path(root) / PARAMS_FILE) or {}
    for item in overrides:
        apply_override(raw, item)
    return raw


def resolved(root: str | Path, stage: str, context: Mapping[str, Any]) -> dict:
    """Stage `stage` (`name` or `name@key` of a foreach) of dvc.yaml as DVC renders it with `context` (the settings
    of `settings`): its cmd, deps, outs and metrics with every `${...}` filled in by DVC's own resolver."""
    from dvc.parsing import DataResolver, EntryNotFound
    from dvc.parsing.context import Context
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        resolver = DataResolver(repo, repo.root_dir, read_yaml(Path(root) / DVC_FILE))
        resolver.context.merge_update(Context(dict(context)), overwrite=True)
        try:
            return resolver.resolve_one(stage)[stage]
        except EntryNotFound:
            raise KeyError(f"{DVC_FILE} has no stage {stage!r}") from None


def _paths(entries: list | None) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def declared(root: str | Path, stage: str, context: Mapping[str, Any]) -> tuple[list[Path], list[Path]]:
    """(outputs, metrics files) of `stage` as dvc.yaml declares them, rendered with `context`; absolute paths."""
    spec = resolved(root, stage, context)
    return [Path(root, p) for p in _paths(spec.get("outs"))], [Path(root, p) for p in _paths(spec.get("metrics"))]


def dvc_command(*args: str) -> list[str]:
    """`dvc ARGS` through this interpreter (the venv's dvc, whatever PATH says), queueing on DVC's repo lock."""
    return [sys.executable, "-m", "dvc", "--wait-for-lock", *args]


def repro_command(stage: str) -> list[str]:
    """A stage of the graph through DVC: `--single-item` because the caller already ordered the upstream stages,
    `--wait-for-lock` because DVC runs one command per workspace at a time (concurrent callers queue)."""
    return dvc_command("repro", "--single-item", stage)


def stage_command(root: str | Path, stage: str, overrides: Sequence[str] = ()) -> list[str]:
    """A stage with settings the graph does not have (a round N outside it): the `cmd` dvc.yaml gives the stage
    (`sevila stage NAME`, with evaluate@<variant>'s own `-o evaluate.only=[...]`), through this interpreter, with
    the project's params.yaml and `overrides` added."""
    cmd = shlex.split(resolved(root, stage, settings(root, overrides))["cmd"])
    if cmd[:2] != ["sevila", "stage"]:
        raise ValueError(f"{DVC_FILE}: stage {stage!r} runs {cmd[:2]}, not `sevila stage`")
    extra = [a for o in overrides for a in ("-o", o)]
    return [sys.executable, "-m", "sevila", *cmd[1:], "-p", str(Path(root, PARAMS_FILE)), *extra]


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
    import yaml

    where = round_file(root, round_).parent
    outs = [{"path": Path(os.path.relpath(p, where)).as_posix()} for p in dict.fromkeys(paths)]
    return yaml.safe_dump({"outs": outs}, sort_keys=False)
