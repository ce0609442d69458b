"""`sevila report`: the paper's ablation tables, built from the tracked evaluation runs.

Input is the runs DataFrame of `sevila.tracking.finished_runs` (one row per run, typed pivot-tag columns and
`metrics.<name>` columns); every function here but `main`/`_cli_report` is pure over that frame, so tables are tested
on hand-made frames without MLflow. Of each variant only the latest FINISHED run counts
(`tracking.latest_per_variant`): rerunning a variant replaces its row, a failed rerun does not.

Tables, one set per dataset, each from the runs whose `study` tag names it (a study with no runs is absent):
- components (paper Tables 3 and 5): Answerer zero-shot / fine-tuned x frame selector x Localizer pre-training
  (QVHighlights) x self-refinement;
- frames (paper Table 7): n_frames sampled -> n_keyframes kept, including the full-SeViLA components row (its
  32 -> 4 configuration is defined once in params.yaml, as `f32k4_qvh_sr` of study `components`);
- baselines (paper Table 9): BLIP-2 voting, BLIP-2 concat, SeViLA and the oracle upper bound;
- self-refinement rounds.
Metric columns: `accuracy` always, `keyframe_in_span` (and any extra metric asked for) where some row has it, and
each benchmark's own (BENCHMARK_METRICS: NExT-QA Causal/Temporal/Descriptive, STAR its four types and their mean);
values are percentages as sevila.evaluation.qa_metrics computes them (0-100), shown with one decimal.

Outputs (atomic writes): `<out>/ablations.md`, `<out>/ablations.json` (one object per variant: dataset,
variant, study, the pivot tags, run_id and every metric), and PNG plots `accuracy_vs_keyframes_<dataset>.png`,
`accuracy_vs_round_<dataset>.png`; then, unless `--no-log`, one run per dataset in `sevila/<dataset>/report`
holding them as artifacts.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from sevila.atomic import atomic_path, atomic_write_json, atomic_write_text
from sevila.config import AnswererId
from sevila.config.modes import Benchmark
from sevila.evaluation.qa_metrics import NEXTQA_GROUPS, STAR_TYPES
from sevila.experiments.seeds import STD_SUFFIX, collapse_seeds
from sevila.tracking import (
    BOOL_TAGS, INT_TAGS, PIVOT_TAGS, SELECTOR_VALUES, Phase, RunTags, Study, finished_runs, latest_per_variant,
    normalize_uri, reap_stale_runs, start_run, tracking_uri,
)

DEFAULT_METRICS: tuple[str, ...] = ("accuracy", "keyframe_in_span")
METRIC_LABELS: dict[str, str] = {"accuracy": "Accuracy", "keyframe_in_span": "Keyframes in span", "mean": "Mean"}
# Each benchmark's own columns besides accuracy (sevila.evaluation.qa_metrics.qa_metrics logs them): NExT-QA's question
# groups
# (paper Table 1), STAR's four types and their unweighted mean (its headline); How2QA, TVQA, VLEP report accuracy.
BENCHMARK_METRICS: dict[str, tuple[str, ...]] = {
    Benchmark.NEXTQA.value: tuple(NEXTQA_GROUPS),
    Benchmark.STAR.value: (*STAR_TYPES, "mean"),
}
MISSING = "–"  # en dash: a value the run did not log
YES, NO = "✓", "✗"
MD_NAME, JSON_NAME = "ablations.md", "ablations.json"
# Columns every table builder reads; a hand-made frame may omit any of them.
_NEEDED = ("dataset", "run_id", "status", "start_time", *PIVOT_TAGS)


@dataclass(frozen=True)
class Table:
    """One rendered table: display strings, ready for markdown. `numeric` columns are right-aligned."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: frozenset[str] = field(default_factory=frozenset)

    def markdown(self) -> str:
        def cell(s: str) -> str:
            return s.replace("|", "\\|")

        head = "| " + " | ".join(cell(c) for c in self.columns) + " |"
        rule = "|" + "|".join("---:" if c in self.numeric else "---" for c in self.columns) + "|"
        body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return "\n".join([head, rule, *body])


# ----------------------------------------------------------------------------------------------------------
# Pure helpers over the runs frame


def _isna(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _num(v: Any) -> str:
    return MISSING if _isna(v) else f"{float(v):.1f}"


def _int(v: Any) -> str:
    return MISSING if _isna(v) else str(int(v))


def _flag(v: Any) -> str:
    return MISSING if _isna(v) else (YES if bool(v) else NO)


def _text(v: Any) -> str:
    return MISSING if _isna(v) else str(v)


def _answerer(v: Any) -> str:
    return {"zero_shot": "zero-shot", "finetuned": "fine-tuned"}.get(_text(v), _text(v))


def normalize(runs: pd.DataFrame) -> pd.DataFrame:
    """The frame with every column the tables read (absent ones as missing values)."""
    df = runs.copy()
    for col in _NEEDED:
        if col not in df.columns:
            df[col] = None
    if df["dataset"].isna().all() and "experiment" in df.columns:
        df["dataset"] = df["experiment"].map(lambda e: str(e).split("/")[1] if str(e).count("/") == 2 else None)
    # Counts as nullable ints and flags as nullable booleans (a hand-made or concatenated frame may hold floats
    # with NaN or objects), so tables print "32" not "32.0" and JSON holds 32 / true.
    for col, dtype in [(c, "Int64") for c in INT_TAGS] + [(c, "boolean") for c in BOOL_TAGS]:
        try:
            df[col] = df[col].astype(dtype)
        except (TypeError, ValueError) as e:
            bad = [v for v in df[col].dropna().unique()][:5]
            raise ValueError(f"runs frame: column {col!r} must hold {dtype} values, got e.g. {bad} ({e})") from None
    return df


def latest(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows the tables are made of: the latest FINISHED run per (dataset, variant, seed), then one row per
    (dataset, variant) whose metrics are the mean over its seeds, with the spread beside them (sevila.experiments.seeds)."""
    df = normalize(runs)
    if "experiment" not in df.columns:
        df["experiment"] = df["dataset"]
    return collapse_seeds(latest_per_variant(df))


def _metric_cell(r: pd.Series, metric: str) -> str:
    """`75.0`, or `75.0 ± 2.1` where the value is a mean over several seeds."""
    mean = _num(r.get(f"metrics.{metric}"))
    std = r.get(f"metrics.{metric}{STD_SUFFIX}")
    if mean == MISSING or _isna(r.get("n_seeds")) or int(r["n_seeds"]) < 2 or _isna(std):
        return mean
    return f"{mean} ± {float(std):.1f}"


def _metric_columns(rows: pd.DataFrame, metrics: Sequence[str]) -> list[str]:
    """`accuracy` always; every other metric only where some row of this table logged it."""
    out = []
    for m in metrics:
        col = f"metrics.{m}"
        if m == "accuracy" or (col in rows.columns and rows[col].notna().any()):
            out.append(m)
    return out


def _table(key: str, title: str, rows: pd.DataFrame, lead: list[tuple[str, Any]], metrics: Sequence[str],
           numeric_lead: Sequence[str] = ()) -> Table:
    """lead: (column label, row -> display string); then one column per metric."""
    mcols = _metric_columns(rows, metrics)
    labels = [label for label, _ in lead] + [METRIC_LABELS.get(m, m) for m in mcols]
    out = []
    for _, r in rows.iterrows():
        vals = [fn(r) for _, fn in lead] + [_metric_cell(r, m) for m in mcols]
        out.append(tuple(vals))
    numeric = frozenset(list(numeric_lead) + [METRIC_LABELS.get(m, m) for m in mcols])
    return Table(key, title, tuple(labels), tuple(out), numeric)


def _study_rows(df: pd.DataFrame, *studies: Study) -> pd.DataFrame:
    return df[df["study"].isin([s.value for s in studies])]


def _order(values: Sequence[str]):
    """Sort key for a categorical column: the given order first, anything else after, missing last."""
    rank = {v: i for i, v in enumerate(values)}
    return lambda v: len(values) + 1 if _isna(v) else rank.get(str(v), len(values))


def _sorted(rows: pd.DataFrame, keys: list[tuple[str, Any]]) -> pd.DataFrame:
    """Sort rows by (column, key function) pairs, then by variant (a deterministic order for ties)."""
    if rows.empty:
        return rows
    tuples = [tuple(fn(r[col]) for col, fn in keys) + (str(r["variant"]),) for _, r in rows.iterrows()]
    order = sorted(range(len(tuples)), key=lambda i: tuples[i])
    return rows.iloc[order]


def _bool_key(v: Any) -> int:
    return 2 if _isna(v) else int(bool(v))


def _int_key(v: Any) -> float:
    return math.inf if _isna(v) else int(v)


def components_table(rows: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> Table | None:
    """Paper Tables 3/5: what the Localizer's pre-training and self-refinement add, zero-shot and fine-tuned."""
    rows = _study_rows(rows, Study.COMPONENTS)
    if rows.empty:
        return None
    rows = _sorted(rows, [("answerer", _order([a.value for a in AnswererId])), ("selector", _order(SELECTOR_VALUES)),
                          ("loc_pretrain", _bool_key), ("loc_refine", _bool_key)])
    return _table("components", "Localizer pre-training × self-refinement (paper Tables 3 and 5)", rows, [
        ("Answerer", lambda r: _answerer(r["answerer"])),
        ("Frame selector", lambda r: _text(r["selector"])),
        ("Loc. pre-training", lambda r: _flag(r["loc_pretrain"])),
        ("Self-refinement", lambda r: _flag(r["loc_refine"])),
        ("Variant", lambda r: _text(r["variant"])),
    ], metrics)


def frames_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 7's rows: the `frames` study, plus the full-SeViLA components run(s) (Localizer pre-trained AND
    self-refined). The paper's 32 -> 4 row of Table 7 is the same configuration as the full model of Tables 3/5,
    so params.yaml defines it once (`f32k4_qvh_sr`, study `components`) and the table borrows it here rather
    than evaluating it twice under two names."""
    study = rows["study"]
    full = (study.eq(Study.COMPONENTS.value) & rows["loc_pretrain"].eq(True).fillna(False)
            & rows["loc_refine"].eq(True).fillna(False))
    return rows[(study.eq(Study.FRAMES.value) | full).astype(bool)]


def frames_table(rows: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> Table | None:
    """Paper Table 7: how many frames the Localizer sees and how many keyframes it keeps (`frames_rows`)."""
    rows = frames_rows(rows)
    if rows.empty:
        return None
    rows = _sorted(rows, [("n_frames", _int_key), ("n_keyframes", _int_key)])
    return _table("frames", "Frames: n_frames → n_keyframes (paper Table 7)", rows, [
        ("Frames", lambda r: _int(r["n_frames"])),
        ("Keyframes", lambda r: _int(r["n_keyframes"])),
        ("Variant", lambda r: _text(r["variant"])),
    ], metrics, numeric_lead=("Frames", "Keyframes"))


BASELINE_METHODS: tuple[str, ...] = ("BLIP-2 voting", "BLIP-2 concat", "SeViLA", "Oracle (any single frame)")


def baseline_method(selector: Any, fusion: Any) -> str:
    """The paper's name for a (selector, fusion) pair: voting = every frame answered alone then a majority
    vote; concat = uniform (or all) frames read together without the Localizer; oracle = correct if any single
    frame is; SeViLA = Localizer keyframes read together."""
    sel, fus = (None if _isna(selector) else str(selector)), (None if _isna(fusion) else str(fusion))
    if sel == "oracle":
        return BASELINE_METHODS[3]
    if fus == "vote":
        return BASELINE_METHODS[0]
    if sel == "localizer":
        return BASELINE_METHODS[2]
    if sel in ("uniform", "all"):
        return BASELINE_METHODS[1]
    return MISSING


def baselines_table(rows: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> Table | None:
    """Paper Table 9: BLIP-2 voting and concat against SeViLA, and the oracle upper bound."""
    rows = _study_rows(rows, Study.BASELINE, Study.ORACLE)
    if rows.empty:
        return None
    rows = rows.assign(_method=[baseline_method(s, f) for s, f in zip(rows["selector"], rows["fusion"])])
    rows = _sorted(rows, [("_method", _order(BASELINE_METHODS)), ("n_frames", _int_key),
                          ("n_keyframes", _int_key)])
    return _table("baselines", "BLIP-2 voting / concat and the oracle (paper Table 9)", rows, [
        ("Method", lambda r: r["_method"]),
        ("Frame selector", lambda r: _text(r["selector"])),
        ("Fusion", lambda r: _text(r["fusion"])),
        ("Frames", lambda r: _int(r["n_frames"])),
        ("Keyframes", lambda r: _int(r["n_keyframes"])),
        ("Answerer", lambda r: _answerer(r["answerer"])),
        ("Variant", lambda r: _text(r["variant"])),
    ], metrics, numeric_lead=("Frames", "Keyframes"))


def rounds_table(rows: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS) -> Table | None:
    """Iterated self-refinement: each round's Localizer (pseudo-labels from the previous round's Answerer)."""
    rows = _study_rows(rows, Study.ROUND)
    if rows.empty:
        return None
    rows = _sorted(rows, [("round", _int_key)])
    return _table("rounds", "Self-refinement rounds", rows, [
        ("Round", lambda r: _int(r["round"])),
        ("Variant", lambda r: _text(r["variant"])),
    ], metrics, numeric_lead=("Round",))


TABLE_BUILDERS = (components_table, frames_table, baselines_table, rounds_table)


def dataset_tables(latest_rows: pd.DataFrame, dataset: str, metrics: Sequence[str] = DEFAULT_METRICS) -> list[Table]:
    """The tables of one dataset: `metrics`, then the benchmark's own columns (BENCHMARK_METRICS)."""
    rows = latest_rows[latest_rows["dataset"] == dataset]
    metrics = tuple(dict.fromkeys([*metrics, *BENCHMARK_METRICS.get(dataset, ())]))
    return [t for t in (b(rows, metrics) for b in TABLE_BUILDERS) if t is not None]


def datasets(latest_rows: pd.DataFrame) -> list[str]:
    return sorted(str(d) for d in latest_rows["dataset"].dropna().unique())


def build_markdown(runs: pd.DataFrame, *, phase: str = Phase.EVALUATE.value, source: str | None = None,
                   metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """The whole `ablations.md`: one section per dataset, one table per study present."""
    rows = latest(runs)
    where = f" in `{source}`" if source else ""
    lines = ["# SeViLA ablation tables", ""]
    if rows.empty:
        lines += [f"No finished `{phase}` runs found{where}.", ""]
        return "\n".join(lines)
    lines += [f"Built by `sevila report` from the latest FINISHED `{phase}` run of each variant{where}. "
              f"Metrics are percentages; {MISSING} marks a value the run did not log.", ""]
    seeds = sorted({s for v in rows["seeds"].dropna() for s in str(v).split(",")}, key=int)
    if (rows["n_seeds"].fillna(1) > 1).any():
        lines += [f"Seeds study: each value is the mean ± sample standard deviation over the seeds that ran the "
                  f"variant (seeds {', '.join(seeds)}; `world.seed` = `bootstrap.seed`), from each seed's latest run.",
                  ""]
    for ds in datasets(rows):
        lines += [f"## Dataset `{ds}`", ""]
        tables = dataset_tables(rows, ds, metrics)
        if not tables:
            lines += [f"No run of `{ds}` carries a study tag ({', '.join(s.value for s in Study)}).", ""]
        for t in tables:
            lines += [f"### {t.title}", "", t.markdown(), ""]
    return "\n".join(lines)


def _json_value(v: Any) -> Any:
    if _isna(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_STUDY_ORDER = _order([s.value for s in Study])


def report_records(runs: pd.DataFrame) -> list[dict]:
    """`ablations.json`: one object per variant (latest FINISHED run), ordered by dataset, study, variant:
    dataset, the pivot tags, run_id, then every metric the run logged (flat; a metric whose name clashes with a
    field gets a `metric_` prefix)."""
    rows = latest(runs)
    if rows.empty:
        return []
    rows = _sorted(rows, [("dataset", str), ("study", _STUDY_ORDER)])
    metric_cols = sorted(c for c in rows.columns if c.startswith("metrics."))
    out = []
    for _, r in rows.iterrows():
        obj: dict[str, Any] = {"dataset": _json_value(r["dataset"])}
        obj.update({t: _json_value(r[t]) for t in PIVOT_TAGS})
        obj["run_id"] = _json_value(r["run_id"])
        obj["seeds"] = [int(x) for x in str(r["seeds"]).split(",")] if not _isna(r.get("seeds")) else []
        for col in metric_cols:
            v = _json_value(r[col])
            if v is None:
                continue
            name = col[len("metrics."):]
            obj["metric_" + name if name in obj else name] = float(v)
        out.append(obj)
    return out


# ----------------------------------------------------------------------------------------------------------
# Plots (matplotlib's Agg canvas through Figure directly: no pyplot, no global backend switch)


def _save_png(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def plot_frames(latest_rows: pd.DataFrame, path: str | Path) -> Path | None:
    """Accuracy vs number of keyframes, one line per number of sampled frames (the rows of `frames_rows`)."""
    from matplotlib.figure import Figure

    rows = frames_rows(latest_rows)
    rows = rows[rows["n_frames"].notna() & rows["n_keyframes"].notna()]
    if "metrics.accuracy" not in rows.columns or rows["metrics.accuracy"].notna().sum() == 0:
        return None
    rows = rows[rows["metrics.accuracy"].notna()]
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for n, grp in rows.groupby("n_frames"):
        grp = grp.sort_values("n_keyframes")
        ax.plot(grp["n_keyframes"].astype(int), grp["metrics.accuracy"].astype(float), marker="o",
                label=f"{int(n)} frames")
    ax.set_xticks(sorted(int(k) for k in rows["n_keyframes"].unique()))
    ax.set_xlabel("keyframes kept (n_keyframes)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs keyframes")
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, Path(path))


def plot_rounds(latest_rows: pd.DataFrame, path: str | Path) -> Path | None:
    """Accuracy (and keyframes in span, when logged) per self-refinement round."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = _study_rows(latest_rows, Study.ROUND)
    rows = rows[rows["round"].notna()].sort_values("round")
    if "metrics.accuracy" not in rows.columns or rows["metrics.accuracy"].notna().sum() == 0:
        return None
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    for m in DEFAULT_METRICS:
        col = f"metrics.{m}"
        if col in rows.columns and rows[col].notna().any():
            ok = rows[rows[col].notna()]
            ax.plot(ok["round"].astype(int), ok[col].astype(float), marker="o", label=METRIC_LABELS[m])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("self-refinement round")
    ax.set_ylabel("%")
    ax.set_title("Self-refinement rounds")
    ax.legend()
    fig.tight_layout()
    return _save_png(fig, Path(path))


@dataclass
class ReportFiles:
    markdown: Path
    json: Path
    plots: dict[str, list[Path]]  # dataset -> its PNGs
    records: list[dict]


def write_report(runs: pd.DataFrame, out_dir: str | Path, *, phase: str = Phase.EVALUATE.value,
                 source: str | None = None, metrics: Sequence[str] = DEFAULT_METRICS) -> ReportFiles:
    """Write ablations.md, ablations.json and the plots under `out_dir` (atomically); nothing is logged."""
    out = Path(out_dir)
    records = report_records(runs)
    md = atomic_write_text(out / MD_NAME, build_markdown(runs, phase=phase, source=source, metrics=metrics))
    js = atomic_write_json(out / JSON_NAME, records)
    rows = latest(runs)
    plots: dict[str, list[Path]] = {}
    for ds in datasets(rows) if not rows.empty else []:
        mine = rows[rows["dataset"] == ds]
        made = [plot_frames(mine, out / f"accuracy_vs_keyframes_{ds}.png"),
                plot_rounds(mine, out / f"accuracy_vs_round_{ds}.png")]
        plots[ds] = [p for p in made if p is not None]
    return ReportFiles(md, js, plots, records)


def log_report(files: ReportFiles, *, uri: str | None = None) -> list[str]:
    """One run per dataset in `sevila/<dataset>/report` holding the report files; returns the run ids."""
    run_ids = []
    for ds, pngs in files.plots.items():
        n = sum(1 for r in files.records if r["dataset"] == ds)
        with start_run(ds, Phase.REPORT, "ablations", RunTags(variant="ablations"), uri=uri) as run:
            run.log_params({"variants": n})
            run.log_artifact(files.markdown)
            run.log_artifact(files.json)
            for p in pngs:
                run.log_artifact(p, artifact_path="plots")
            run_ids.append(run.run_id)
    return run_ids


# ----------------------------------------------------------------------------------------------------------
# CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="build the paper's ablation tables from the tracked MLflow runs")
    p.add_argument("--dataset", help="only this dataset (default: every dataset with runs)")
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--phase", default=Phase.EVALUATE.value, choices=[ph.value for ph in Phase],
                   help="which runs are the table rows (default: evaluate)")
    p.add_argument("--uri", help="tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="another metric column, e.g. --metric Causal (repeatable)")
    p.add_argument("--no-log", action="store_true", help="write the files only; log nothing to MLflow")
    p.set_defaults(func=_cli_report)


def _cli_report(args: argparse.Namespace) -> int:
    # The store is resolved without pinning it (configure) so that calling this in-process changes nothing.
    uri = normalize_uri(args.uri) if args.uri else tracking_uri()
    reap_stale_runs(uri)  # a run whose process was killed shows KILLED, not RUNNING, from now on
    runs = finished_runs(args.dataset, args.phase, uri=uri)
    metrics = tuple(dict.fromkeys([*DEFAULT_METRICS, *args.metric]))
    files = write_report(runs, args.out, phase=args.phase, source=uri, metrics=metrics)
    if not files.records:
        which = f" of dataset {args.dataset!r}" if args.dataset else ""
        print(f"sevila report: no finished {args.phase!r} runs{which} in {uri}; wrote an empty report to "
              f"{files.markdown}", file=sys.stderr)
        return 0
    print(f"wrote {files.markdown}, {files.json} ({len(files.records)} variants)")
    for ds, pngs in files.plots.items():
        for p in pngs:
            print(f"wrote {p}")
    if not args.no_log:
        ids = log_report(files, uri=uri)
        print(f"logged to MLflow runs {', '.join(ids)} in {uri}")
    return 0
