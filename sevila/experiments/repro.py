"""`sevila repro [dvc repro arguments]`: `dvc repro` with every stage's MLflow run grouped under one parent run.

DVC runs each stage as its own `sevila stage NAME` process, so without help each stage's run would stand alone
in MLflow. This opens `tracking.parent_run("dvc-repro", <dataset>)`, which exports
$SEVILA_PARENT_RUN_ID and $MLFLOW_TRACKING_URI, and runs `dvc repro` as a child process: DVC passes its
environment on to the stages, and `tracking.start_run` nests every run it makes under that parent. The parent
ends FINISHED when dvc succeeds and FAILED when it does not (its exit code is returned either way).

Every argument goes to `dvc repro` unchanged (`sevila repro -f report`, `sevila repro --dry`, `sevila repro
--help` shows dvc's help); the settings file is DVC's, params.yaml at the project root.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

PARENT_RUN_NAME = "dvc-repro"


class ReproFailed(RuntimeError):
    """`dvc repro` exited non-zero; raised inside the parent run so that it ends FAILED."""

    def __init__(self, returncode: int):
        super().__init__(f"dvc repro exited with status {returncode}")
        self.returncode = returncode


def dvc_repro_command(args: list[str]) -> list[str]:
    """`dvc repro ARGS` through this interpreter (the venv's dvc, whatever PATH says); a leading `--` is dropped."""
    if args[:1] == ["--"]:
        args = args[1:]
    return [sys.executable, "-m", "dvc", "repro", *args]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for dvc: this interpreter's bin folder first on PATH, so the stages' `sevila` command is
    the one installed beside it (the parent-run variables are already set by tracking.parent_run)."""
    env = dict(os.environ if env is None else env)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")]) if env.get("PATH") else bindir
    return env


def dataset_of(root: Path) -> str:
    """`dataset` of the project's params.yaml (the MLflow experiment `sevila/<dataset>/pipeline`)."""
    from sevila.config import load_config

    params = root / "params.yaml"
    return load_config(params).dataset.value if params.is_file() else "synth"


def repro(args: list[str], root: Path | None = None) -> int:
    """Run `dvc repro ARGS` under one MLflow parent run; returns dvc's exit status."""
    from sevila import tracking

    root = root or tracking.project_root()
    cmd = dvc_repro_command(args)
    try:
        with tracking.parent_run(PARENT_RUN_NAME, dataset_of(root), tags={"dvc_args": " ".join(cmd[4:])}) as run:
            print(f"sevila repro: MLflow parent run {run.run_id} in {run.uri}", file=sys.stderr, flush=True)
            rc = subprocess.run(cmd, cwd=root, env=child_env()).returncode
            if rc != 0:
                raise ReproFailed(rc)
    except ReproFailed as e:
        return e.returncode
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # prefix_chars="+": no option of ours can swallow one of dvc's, so `-f`, `--dry` and `--help` all reach dvc.
    p = sub.add_parser("repro", help="dvc repro, with every stage's MLflow run nested under one parent run",
                       prefix_chars="+", add_help=False)
    p.add_argument("dvc_args", nargs=argparse.REMAINDER, help="arguments for `dvc repro`")
    p.set_defaults(func=_cli_repro)


def _cli_repro(args: argparse.Namespace) -> int:
    return repro(list(args.dvc_args))
