"""The seeds study: the whole pipeline rebuilt on several seeds, each variant reported as mean and spread.

A figure from one seed of a small model trained on two CPU cores is one trajectory, not a property of the method
(issue 10): `world.seed` (the generated videos and questions) and `bootstrap.seed` (the tiny backbone's training)
vary TOGETHER, so seed N is a new world and a new backbone, and every stage after them reruns.

    sevila seeds 0 1 2          # dvc exp run -S world.seed=N -S bootstrap.seed=N per seed, the default seed last
    sevila report               # tables of the latest run per (variant, seed); `seeds` table: mean ± std over seeds

Each seed is one DVC experiment named `seed<N>` (`dvc exp show` lists them with their metrics), and every MLflow run
of the study carries the `seed` tag and sits under the parent run `seeds-study`. The seed params.yaml already holds
runs last, so the workspace, dvc.lock and the default outputs end as `dvc repro` would leave them, and params.yaml
is put back byte for byte (`dvc exp run -S` rewrites it).

`collapse_seeds` is pure over the runs frame (one row per run: variant, seed, `metrics.*` columns), so it is tested
on hand-made frames without MLflow or DVC; `sevila report` shows its means and spreads.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from sevila import tracking
from sevila.config import load_config
from sevila.experiments.repro import child_env

PARENT_RUN_NAME = "seeds-study"
SEED_PARAMS = ("world.seed", "bootstrap.seed")  # varied together: a new world and a new backbone per seed


def seed_order(seeds: Sequence[int], default: int) -> list[int]:
    """The seeds once each, in the order given, with `default` (params.yaml's seed) moved last when present."""
    out = list(dict.fromkeys(int(s) for s in seeds))
    if not out:
        raise ValueError("give at least one seed")
    if default in out:
        out.remove(default)
        out.append(default)
    return out


def exp_command(seed: int, extra: Sequence[str] = ()) -> list[str]:
    """`dvc exp run` for one seed, through this interpreter's dvc (the venv's, whatever PATH says)."""
    sets = [arg for key in SEED_PARAMS for arg in ("-S", f"{key}={seed}")]
    return [sys.executable, "-m", "dvc", "exp", "run", "--name", exp_name(seed), *sets, *extra]


def exp_name(seed: int) -> str:
    return f"seed{seed}"


STD_SUFFIX = "__std"  # metrics.<name>__std: the spread over seeds beside metrics.<name>, the mean


def collapse_seeds(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (experiment, variant) from the latest run per (experiment, variant, seed): every `metrics.*`
    column becomes the mean over the seeds that logged it, with `metrics.<name>__std` beside it (sample standard
    deviation, ddof=1; missing with one seed: no spread was measured), `n_seeds` and `seeds` (e.g. "0,1,2"). The other
    columns come from the
    latest seed's run. Rows without a seed tag (runs from before the study) count as one seed of their own."""
    if rows.empty:
        return rows.assign(n_seeds=pd.Series(dtype="Int64"), seeds=pd.Series(dtype=object))
    keys = [k for k in ("experiment", "dataset", "variant") if k in rows.columns]
    metric_cols = [c for c in rows.columns if c.startswith("metrics.") and not c.endswith(STD_SUFFIX)]
    order = "start_time" if "start_time" in rows.columns else None
    out = []
    for _, group in rows.groupby(keys, sort=False, dropna=False):
        group = group.sort_values(order, kind="stable") if order else group
        row = group.iloc[-1].copy()
        seeds = group["seed"].dropna() if "seed" in group.columns else pd.Series(dtype=float)
        row["n_seeds"] = len(group)
        row["seeds"] = ",".join(str(int(s)) for s in sorted(seeds)) if len(seeds) else None
        for col in metric_cols:
            vals = pd.to_numeric(group[col], errors="coerce").dropna()
            row[col] = float(vals.mean()) if len(vals) else float("nan")
            row[col + STD_SUFFIX] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)


def run_seeds(seeds: Sequence[int], root: Path, extra: Sequence[str] = ()) -> int:
    """Run the study: one `dvc exp run` per seed under the MLflow parent run `seeds-study`; returns the first
    non-zero exit status (the remaining seeds are not run: a broken stage would fail them all the same)."""
    params = root / "params.yaml"
    cfg = load_config(params)
    original = params.read_bytes()  # `dvc exp run -S` rewrites the file (its YAML formatting too)
    order = seed_order(seeds, cfg.world.seed)
    try:
        with tracking.parent_run(PARENT_RUN_NAME, cfg.dataset.value, tags={"seeds": ",".join(map(str, order))}):
            for seed in order:
                # A rerun replaces the seed's experiment (`dvc exp run --force` would also rerun unchanged stages).
                subprocess.run([sys.executable, "-m", "dvc", "exp", "remove", exp_name(seed)], cwd=root,
                               env=child_env(), capture_output=True)
                cmd = exp_command(seed, extra)
                print(f"sevila seeds: seed {seed}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
                rc = subprocess.run(cmd, cwd=root, env=child_env()).returncode
                if rc != 0:
                    print(f"sevila seeds: seed {seed} failed (exit {rc}); later seeds not run", file=sys.stderr)
                    return rc
    finally:
        params.write_bytes(original)  # the user's params.yaml as it was, comments and all
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seeds", help="the seeds study: dvc exp run per seed (world.seed = bootstrap.seed = N)")
    p.add_argument("seeds", nargs="+", type=int, metavar="N", help="seeds to run, e.g. 0 1 2")
    p.add_argument("--root", type=Path, default=Path("."), help="project root (holds params.yaml and dvc.yaml)")
    p.set_defaults(func=_cli_seeds)


def _cli_seeds(args: argparse.Namespace) -> int:
    rc = run_seeds(args.seeds, args.root.resolve())
    if rc == 0:
        print("sevila seeds: done; `sevila report` shows each variant's mean and spread, `dvc exp show` the "
              "experiments", file=sys.stderr)
    return rc
