"""Iterated self-refinement (paper §3.2: "rounds can repeat") as Prefect flows.

    python -m flows.refine_rounds --round 2              # one round: round 2 from round 1's models
    python -m flows.refine_rounds                        # the next round after the last one on disk
    python -m flows.refine_rounds --loop --max-rounds 4  # rounds until the accuracy stops improving

Round N (`refine_round`) runs, with `-o round=N` (and `pseudo_label.answerer=finetuned` from round 2 on):
pseudo_label (the round N-1 fine-tuned Answerer labels the frames; round 1: the zero-shot one) ->
refine_localizer (sr / qvh_sr from their round N-1 versions; round 1: from the backbone / the pre-trained one)
-> finetune_answerer (on the new qvh_sr keyframes) -> evaluate of the main variant (the full SeViLA row).
The stages themselves pick round N-1's models from the round number (sevila.chain paths); this flow checks
that those inputs exist before it starts and says which stage of which round makes a missing one.

DVC and the rounds (issue 11 item 4). The round of params.yaml (`round`, default 1) IS the DVC graph's round:
its stages run through DVC (`dvc repro --single-item`, flows.tasks.dvc_stage), so dvc.lock stays the truth and
a round already built by `sevila repro` or flows.pipeline reruns nothing. Any other round N is outside the
graph (dvc.yaml's deps for `${round}` name round 1's inputs, not round N-1's models, so `dvc exp run -S
round=N` would record false deps, and would replace round 1's entries in dvc.lock): its stages run as
`sevila stage NAME -o round=N ...` (flows.tasks.stage_outside), then `rounds/round<N>.dvc` lists every output
and metrics file dvc.yaml declares for those stages at round N (models, pseudo-labels, predictions, metrics)
and `dvc commit` caches them (flows.tasks.version_round). dvc.lock is untouched and still true; each later
round is versioned by its .dvc file (commit it to git; `dvc checkout rounds/round2.dvc` restores the round).

Stopping rule (`decide`): stop at `max_rounds`, or when the main variant's accuracy on `evaluate.split`
improved by less than `min_improvement` points over round N-1. Round 1 has nothing to compare with, so only
`max_rounds` stops it. Accuracies are read back from runs/round<N>/eval/<variant>/metrics.json, so a scheduled
deployment (flows.deploy) with `round=None` resumes where the last run left off, and once the rule says stop,
further scheduled runs do nothing.

MLflow: one parent run per flow run (`refine-round-<N>`, tagged round=N, holding the accuracy and decision);
the stages' runs nest under it with their own `round` tags. `refine_rounds` adds one parent over its rounds.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.graph import PARAMS_FILE, project_root
from flows.tasks import dvc_stage, flow_parent_run, stage_outside, version_round
from sevila.chain import answerer_dir, localizer_dir, round_dir
from sevila.config import AnswererId, Config, LocalizerId, load_config
from sevila.selection import Fusion, Selector
from sevila.stages.refine_localizer import REFINED

ROUND_STAGES = ("pseudo_label", "refine_localizer", "finetune_answerer")  # then evaluate(main variant)
DEFAULT_MAX_ROUNDS = 3
DEFAULT_MIN_IMPROVEMENT = 0.5  # accuracy points (metrics are percentages)


@dataclass(frozen=True)
class RoundDecision:
    """What one `refine_round` did and whether another round is worth running (`proceed`)."""

    round: int | None  # None: nothing ran (the stopping rule had already said stop)
    variant: str
    accuracy: float | None
    previous: float | None  # round N-1's accuracy of the same variant, where known
    proceed: bool
    reason: str
    overrides: tuple[str, ...] = ()  # the settings the round's stages ran with
    mlflow_run_id: str | None = None  # the round's MLflow parent run (its stages' runs nest under it)


# ---------------------------------------------------------------------------------------------- pure helpers


def round_overrides(round_: int) -> list[str]:
    """Settings of round N: its number, and from round 2 on the previous round's fine-tuned Answerer as the
    pseudo-labeller (round 1 has only the zero-shot one)."""
    if round_ < 1:
        raise ValueError(f"rounds start at 1, got {round_}")
    return [f"round={round_}"] + (["pseudo_label.answerer=finetuned"] if round_ >= 2 else [])


def main_variant(cfg: Config) -> str:
    """The full-SeViLA variant the stopping rule watches: Localizer keyframes (pre-trained and self-refined
    Localizer, fine-tuned Answerer, concatenated frames) at the pipeline's own `frames` n -> k."""
    hits = [name for name, v in cfg.evaluate.variants.items()
            if Selector(v.selector) is Selector.LOCALIZER and Fusion(v.fusion) is Fusion.CONCAT
            and v.localizer is LocalizerId.QVH_SR and v.answerer is AnswererId.FINETUNED
            and (v.n_frames, v.n_keyframes) == (cfg.frames.n_frames, cfg.frames.n_keyframes)]
    if len(hits) != 1:
        raise ValueError(
            f"cannot tell the main variant from params ({len(hits)} full-SeViLA variants with "
            f"{cfg.frames.n_frames} frames -> {cfg.frames.n_keyframes} keyframes: {hits}); pass variant=NAME")
    return hits[0]


def required_inputs(cfg: Config) -> list[tuple[Path, str]]:
    """(path, what makes it) for everything round `cfg.round` starts from besides the data."""
    n = cfg.round
    needed = [(Path(cfg.model.weights), "the backbone (stage bootstrap, or a local BLIP-2 directory)")]
    if cfg.pseudo_label.answerer is AnswererId.FINETUNED:
        needed.append((answerer_dir(cfg, n - 1), f"finetune_answerer of round {n - 1}"))
    for start in cfg.refine_localizer.starts:
        start = LocalizerId(start)
        if n == 1 and start is LocalizerId.QVH:
            needed.append((localizer_dir(cfg, start), "pretrain_localizer"))
        elif n > 1:
            needed.append((localizer_dir(cfg, REFINED[start], n - 1), f"refine_localizer of round {n - 1}"))
    return needed


def metrics_file(cfg: Config, round_: int, variant: str) -> Path:
    return round_dir(cfg, round_) / "eval" / variant / "metrics.json"


def read_accuracy(path: Path) -> float | None:
    """The `accuracy` of an evaluate metrics.json; None when the file does not exist."""
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    acc = metrics.get("accuracy")
    if not isinstance(acc, (int, float)) or not math.isfinite(acc):
        raise ValueError(f"{path}: no finite `accuracy` ({acc!r}); is the evaluate split labelled?")
    return float(acc)


def history(cfg: Config, variant: str) -> dict[int, float]:
    """{round: accuracy of `variant`} for every round on disk with an evaluation of it."""
    out = {}
    for d in Path(cfg.paths.runs).glob("round*"):
        suffix = d.name[len("round"):]
        if suffix.isdigit() and int(suffix) >= 1:
            acc = read_accuracy(metrics_file(cfg, int(suffix), variant))
            if acc is not None:
                out[int(suffix)] = acc
    return dict(sorted(out.items()))


def decide(round_: int, accuracy: float, previous: float | None, max_rounds: int,
           min_improvement: float) -> tuple[bool, str]:
    """(run another round?, why). Stop at max_rounds, or when round N gained < min_improvement over N-1."""
    if round_ >= max_rounds:
        return False, f"round {round_} reached max_rounds={max_rounds}"
    if previous is None:
        return True, f"round {round_}: accuracy {accuracy:.2f}, no previous round to compare with"
    gain = accuracy - previous
    if gain < min_improvement:
        return False, (f"round {round_}: accuracy {accuracy:.2f} gained {gain:+.2f} over round {round_ - 1} "
                       f"({previous:.2f}), less than min_improvement={min_improvement}")
    return True, f"round {round_}: accuracy {accuracy:.2f} gained {gain:+.2f} over round {round_ - 1}"


def next_round(done: dict[int, float], max_rounds: int, min_improvement: float) -> tuple[int | None, str]:
    """The round to run after the rounds in `done` ({round: accuracy}), or None with the reason to stop."""
    if not done:
        return 1, "no round on disk yet"
    last = max(done)
    proceed, reason = decide(last, done[last], done.get(last - 1), max_rounds, min_improvement)
    return (last + 1 if proceed else None), reason


def resolve_round(params: str, round_: int | None, max_rounds: int, min_improvement: float,
                  variant: str | None, overrides: list[str] | None) -> tuple[Config, str, int | None, str]:
    """(settings without the round's overrides, the watched variant, the round to run or None, why)."""
    base = load_config(params, list(overrides or []))
    variant = variant or main_variant(base)
    if variant not in base.evaluate.variants:
        raise ValueError(f"variant {variant!r} is not in evaluate.variants of {params}")
    if round_ is not None:
        return base, variant, round_, f"round {round_} asked for"
    found, why = next_round(history(base, variant), max_rounds, min_improvement)
    return base, variant, found, why


def _run_name() -> str:
    """The flow run's name: the round it will run, resolved as the flow does (so the Prefect run and the MLflow
    parent run `refine-round-<N>` share a name); `refine-round-none` when the stopping rule already said stop."""
    p = flow_run.parameters
    round_ = resolve_round(p.get("params", "params.yaml"), p.get("round"), p.get("max_rounds", DEFAULT_MAX_ROUNDS),
                           p.get("min_improvement", DEFAULT_MIN_IMPROVEMENT), p.get("variant"),
                           p.get("overrides"))[2]
    return f"refine-round-{round_ if round_ is not None else 'none'}"


# ---------------------------------------------------------------------------------------------- flows


@flow(name="sevila-refine-round", flow_run_name=_run_name)
def refine_round(round: int | None = None, params: str = "params.yaml", max_rounds: int = DEFAULT_MAX_ROUNDS,
                 min_improvement: float = DEFAULT_MIN_IMPROVEMENT, variant: str | None = None,
                 overrides: list[str] | None = None) -> RoundDecision:
    """Self-refinement round `round` (None: the next one after those on disk, or nothing once converged),
    starting from round N-1's outputs; returns the decision whether to run round N+1."""
    overrides = list(overrides or [])
    root = project_root(params)
    base, variant, round, why = resolve_round(params, round, max_rounds, min_improvement, variant, overrides)
    if round is None:
        return RoundDecision(None, variant, None, None, False, f"nothing to do: {why}")
    ovr = [*overrides, *round_overrides(round)]
    cfg = load_config(params, ovr)
    in_graph = round == load_config(root / PARAMS_FILE).round
    if in_graph and cfg != load_config(root / PARAMS_FILE):
        raise ValueError(f"round {round} is the DVC graph's round (params.yaml round: {round}), whose settings come "
                         f"from params.yaml only; {ovr} changes them: edit params.yaml or use dvc exp run -S")
    missing = [f"{p} (made by {what})" for p, what in required_inputs(cfg) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"round {round} starts from outputs that do not exist: {'; '.join(missing)}")
    previous = read_accuracy(metrics_file(cfg, round - 1, variant)) if round > 1 else None
    stages = [*ROUND_STAGES, f"evaluate@{variant}"]
    with flow_parent_run(f"refine-round-{round}", cfg.dataset.value, round=round,
                         main_variant=variant) as parent:
        for name in stages:
            if in_graph:
                metrics = dvc_stage(name, str(root), parent)
            else:
                metrics = stage_outside(name, str(root), ovr, parent)
        if not in_graph:
            version_round(str(root), round, stages, ovr)
        accuracy = float(metrics["accuracy"])
        proceed, reason = decide(round, accuracy, previous, max_rounds, min_improvement)
        _record(parent, accuracy, previous, proceed, reason)
    return RoundDecision(round, variant, accuracy, previous, proceed, reason, tuple(ovr), parent.run_id)


def _record(parent, accuracy: float, previous: float | None, proceed: bool, reason: str) -> None:
    """The round's outcome on its MLflow parent run (what the UI shows beside the nested stage runs)."""
    from sevila.tracking import MlflowRunLogger

    run = MlflowRunLogger(parent.run_id, parent.uri)
    run.log_metrics({"accuracy": accuracy} | ({"improvement": accuracy - previous} if previous is not None else {}))
    run.set_tags({"proceed": proceed, "decision": reason})


@flow(name="sevila-self-refinement")
def refine_rounds(params: str = "params.yaml", start: int | None = None, max_rounds: int = DEFAULT_MAX_ROUNDS,
                  min_improvement: float = DEFAULT_MIN_IMPROVEMENT, variant: str | None = None,
                  overrides: list[str] | None = None) -> list[RoundDecision]:
    """Rounds from `start` (None: the next one on disk) until `refine_round` says stop."""
    cfg = load_config(params, list(overrides or []))
    decisions: list[RoundDecision] = []
    with flow_parent_run("prefect-self-refinement", cfg.dataset.value):
        n = start
        while True:
            d = refine_round(round=n, params=params, max_rounds=max_rounds, min_improvement=min_improvement,
                             variant=variant, overrides=overrides)
            decisions.append(d)
            if not d.proceed or d.round is None:
                return decisions
            n = d.round + 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.refine_rounds", description=__doc__.split("\n")[0])
    p.add_argument("--round", type=int, help="the round to run (default: the next one after those on disk)")
    p.add_argument("-p", "--params", default="params.yaml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    p.add_argument("--min-improvement", type=float, default=DEFAULT_MIN_IMPROVEMENT)
    p.add_argument("--variant", help="the variant the stopping rule watches (default: the full SeViLA one)")
    p.add_argument("--loop", action="store_true", help="keep running rounds until the rule says stop")
    args = p.parse_args(argv)
    common = dict(params=args.params, max_rounds=args.max_rounds, min_improvement=args.min_improvement,
                  variant=args.variant, overrides=args.override)
    if args.loop:
        out = [asdict(d) for d in refine_rounds(start=args.round, **common)]
    else:
        out = asdict(refine_round(round=args.round, **common))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
