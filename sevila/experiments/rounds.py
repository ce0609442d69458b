"""Iterated self-refinement (paper §3.2: "rounds can repeat"): the round rules, and `sevila round N`.

    sevila round 2                   # round 2 from round 1's models
    sevila round                     # the next round after the last one on disk (nothing once the rule says stop)
    sevila round --loop --max-rounds 4

Round N runs, with `-o round=N` (and `pseudo_label.answerer=finetuned` from round 2 on, `round_overrides`):
pseudo_label (the round N-1 fine-tuned Answerer labels the frames; round 1: the zero-shot one) -> refine_localizer
(sr / qvh_sr from their round N-1 versions; round 1: from the backbone / the pre-trained one) -> finetune_answerer
(on the new qvh_sr keyframes) -> evaluate of the main variant (the full SeViLA row, `main_variant`). The stages
pick round N-1's models from the round number (sevila.stages.common paths); `plan_round` checks that those inputs
exist before anything runs and says which stage of which round makes a missing one.

DVC and the rounds. The round of params.yaml (`round`, default 1) IS the DVC graph's round: its stages run through
DVC (`dvc repro --single-item`), so dvc.lock stays the truth and a round already built by `sevila repro` reruns
nothing. Any other round N is outside the graph (dvc.yaml's deps for `${round}` name round 1's inputs, not round
N-1's models, so `dvc exp run -S round=N` would record false deps and replace round 1's entries in dvc.lock): its
stages run as dvc.yaml's own `cmd` with `-o round=N ...` (sevila.experiments.dvc_graph.stage_command), then
`rounds/round<N>.dvc` lists every output and metrics file dvc.yaml declares for those stages at round N and
`dvc commit` caches them (`version_round`). dvc.lock is untouched; each later round is versioned by its .dvc file
(commit it to git; `dvc checkout rounds/round2.dvc` restores the round).

Stopping rule (`decide`): stop at `max_rounds`, or when the main variant's accuracy on `evaluate.split` improved by
less than `min_improvement` points over round N-1. Round 1 has nothing to compare with, so only `max_rounds` stops
it. Accuracies are read back from each round's evaluate metrics file, so a scheduled run with no round given
resumes where the last one left off, and once the rule says stop, further runs do nothing.

MLflow: one parent run per round (`refine-round-<N>`, tagged round=N, holding the accuracy and the decision); the
stages' runs nest under it. Who runs a stage is a `StageRunner`: `LocalRunner` here (child processes, output to
the log), Prefect tasks in flows/refine_rounds.py (the same plan, each stage a task in the Prefect UI).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Protocol, Sequence

from sevila.atomic import atomic_write_text
from sevila.config import AnswererId, Config, Fusion, LocalizerId, Selector, load_config
from sevila.errors import BadArgument, UserError
from sevila.experiments import dvc_graph
from sevila.experiments.processes import run_checked

log = logging.getLogger(__name__)

ROUND_STAGES = ("pseudo_label", "refine_localizer", "finetune_answerer")  # then evaluate@<main variant>
DEFAULT_MAX_ROUNDS = 3
DEFAULT_MIN_IMPROVEMENT = 0.5  # accuracy points (metrics are percentages)


class BadRoundMetrics(UserError, ValueError):
    """A round's evaluate metrics file holds no finite accuracy for the stopping rule to read."""


class MissingInputs(UserError, FileNotFoundError):
    """A round starts from outputs that do not exist; the message names each and the stage that makes it."""


@dataclass(frozen=True)
class RoundDecision:
    """What one round did and whether another round is worth running (`proceed`)."""

    round: int | None  # None: nothing ran (the stopping rule had already said stop)
    variant: str
    accuracy: float | None
    previous: float | None  # round N-1's accuracy of the same variant, where known
    proceed: bool
    reason: str
    overrides: tuple[str, ...] = ()  # the settings the round's stages ran with
    mlflow_run_id: str | None = None  # the round's MLflow parent run (its stages' runs nest under it)


@dataclass(frozen=True)
class RoundPlan:
    """Round `round` resolved and checked before anything runs (`plan_round`); `round` None: nothing to do."""

    root: Path
    round: int | None
    variant: str
    why: str
    cfg: Config | None = None  # the round's settings (the overrides applied)
    overrides: tuple[str, ...] = ()
    in_graph: bool = False  # the DVC graph's own round: its stages run through `dvc repro`
    previous: float | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    min_improvement: float = DEFAULT_MIN_IMPROVEMENT

    @property
    def stages(self) -> list[str]:
        return [*ROUND_STAGES, f"evaluate@{self.variant}"]


# ---------------------------------------------------------------------------------------------- the rules


def round_overrides(round_: int) -> list[str]:
    """Settings of round N: its number, and from round 2 on the previous round's fine-tuned Answerer as the
    pseudo-labeller (round 1 has only the zero-shot one)."""
    if round_ < 1:
        raise BadArgument(f"rounds start at 1, got {round_}")
    return [f"round={round_}"] + (["pseudo_label.answerer=finetuned"] if round_ >= 2 else [])


def main_variant(cfg: Config) -> str:
    """The full-SeViLA variant the stopping rule watches: Localizer keyframes (pre-trained and self-refined
    Localizer, fine-tuned Answerer, concatenated frames) at the pipeline's own `frames` n -> k."""
    hits = [name for name, v in cfg.evaluate.variants.items()
            if Selector(v.selector) is Selector.LOCALIZER and Fusion(v.fusion) is Fusion.CONCAT
            and v.localizer is LocalizerId.QVH_SR and v.answerer is AnswererId.FINETUNED
            and (v.n_frames, v.n_keyframes) == (cfg.frames.n_frames, cfg.frames.n_keyframes)]
    if len(hits) != 1:
        raise BadArgument(
            f"cannot tell the main variant from params ({len(hits)} full-SeViLA variants with "
            f"{cfg.frames.n_frames} frames -> {cfg.frames.n_keyframes} keyframes: {hits}); pass variant=NAME")
    return hits[0]


def required_inputs(cfg: Config) -> list[tuple[Path, str]]:
    """(path, what makes it) for everything round `cfg.round` starts from besides the data."""
    from sevila.stages.common import answerer_dir, localizer_dir
    from sevila.stages.refine_localizer import REFINED  # which Localizer each self-refinement start becomes

    n = cfg.round
    needed = [(Path(cfg.model.weights), "the backbone (stage bootstrap, or a local BLIP-2 directory)")]
    if cfg.pseudo_label.answerer.finetuned:
        needed.append((answerer_dir(cfg, cfg.pseudo_label.answerer, n - 1), f"finetune_answerer of round {n - 1}"))
    for start in cfg.refine_localizer.starts:
        start = LocalizerId(start)
        if n == 1 and start is LocalizerId.QVH:
            needed.append((localizer_dir(cfg, start), "pretrain_localizer"))
        elif n > 1:
            needed.append((localizer_dir(cfg, REFINED[start], n - 1), f"refine_localizer of round {n - 1}"))
    return needed


def metrics_file(cfg: Config, round_: int, variant: str) -> Path:
    """Where evaluate writes `variant`'s metrics in round `round_` (the stage's own path, sevila.stages.evaluate)."""
    from sevila.stages.evaluate import metrics_path

    return metrics_path(dataclasses.replace(cfg, round=round_), variant)


def read_accuracy(path: Path) -> float | None:
    """The `accuracy` of an evaluate metrics.json; None when the file does not exist."""
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text(encoding="utf-8"))
    acc = metrics.get("accuracy")
    if not isinstance(acc, (int, float)) or not math.isfinite(acc):
        raise BadRoundMetrics(f"{path}: no finite `accuracy` ({acc!r}); is the evaluate split labelled?")
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


def resolve_round(params: str | Path, round_: int | None, max_rounds: int, min_improvement: float,
                  variant: str | None, overrides: Sequence[str] | None) -> tuple[Config, str, int | None, str]:
    """(settings without the round's overrides, the watched variant, the round to run or None, why)."""
    base = load_config(params, list(overrides or []))
    variant = variant or main_variant(base)
    if variant not in base.evaluate.variants:
        raise BadArgument(f"variant {variant!r} is not in evaluate.variants of {params}")
    if round_ is not None:
        return base, variant, round_, f"round {round_} asked for"
    found, why = next_round(history(base, variant), max_rounds, min_improvement)
    return base, variant, found, why


def plan_round(params: str | Path = dvc_graph.PARAMS_FILE, round_: int | None = None,
               max_rounds: int = DEFAULT_MAX_ROUNDS, min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
               variant: str | None = None, overrides: Sequence[str] | None = None) -> RoundPlan:
    """Round `round_` (None: the next one after those on disk, or nothing once converged), its settings resolved
    and its inputs checked: every mistake is found here, before a stage runs."""
    overrides = list(overrides or [])
    root = dvc_graph.dvc_project(params)
    _, variant, round_, why = resolve_round(params, round_, max_rounds, min_improvement, variant, overrides)
    if round_ is None:
        return RoundPlan(root, None, variant, why, max_rounds=max_rounds, min_improvement=min_improvement)
    ovr = [*overrides, *round_overrides(round_)]
    cfg = load_config(params, ovr)
    graph_cfg = load_config(root / dvc_graph.PARAMS_FILE)
    in_graph = round_ == graph_cfg.round
    if in_graph and cfg != graph_cfg:
        raise BadArgument(f"round {round_} is the DVC graph's round (params.yaml round: {round_}), whose settings "
                          f"come from params.yaml only; {ovr} changes them: edit params.yaml or use dvc exp run -S")
    missing = [f"{p} (made by {what})" for p, what in required_inputs(cfg) if not p.exists()]
    if missing:
        raise MissingInputs(f"round {round_} starts from outputs that do not exist: {'; '.join(missing)}")
    previous = read_accuracy(metrics_file(cfg, round_ - 1, variant)) if round_ > 1 else None
    return RoundPlan(root, round_, variant, why, cfg, tuple(ovr), in_graph, previous, max_rounds, min_improvement)


# ---------------------------------------------------------------------------------------------- running


class StageRunner(Protocol):
    """Runs the stages of a round; each returns the stage's metrics file (as dvc.yaml declares it)."""

    def in_graph(self, stage: str) -> dict: ...

    def outside(self, stage: str, overrides: Sequence[str]) -> dict: ...

    def version(self, round_: int, stages: Sequence[str], overrides: Sequence[str]) -> str: ...


def run_in_graph(root: str | Path, stage: str, log_line: Callable[[str], object]) -> dict:
    """A stage of the DVC graph through DVC (nothing runs when DVC finds it up to date; dvc.lock records what
    ran); returns its metrics file, {} without one."""
    run_checked(dvc_graph.repro_command(stage), root, log_line)
    return dvc_graph.read_metrics(root, dvc_graph.declared(root, stage, dvc_graph.settings(root))[1])


def run_outside(root: str | Path, stage: str, overrides: Sequence[str], log_line: Callable[[str], object]) -> dict:
    """A stage with settings the graph does not have (a round N outside it); returns the metrics file dvc.yaml
    declares for those settings. Versioning is `version_round`'s job."""
    run_checked(dvc_graph.stage_command(root, stage, overrides), root, log_line)
    return dvc_graph.read_metrics(root, dvc_graph.declared(root, stage, dvc_graph.settings(root, overrides))[1])


def version_round(root: str | Path, round_: int, stages: Sequence[str], overrides: Sequence[str],
                  log_line: Callable[[str], object]) -> str:
    """Version a round run outside the graph: `rounds/round<N>.dvc` lists every output and metrics file that
    dvc.yaml declares for `stages` at the round's settings, and `dvc commit` records their hashes and caches
    them. Returns the .dvc file (git-track it to keep the round)."""
    ctx = dvc_graph.settings(root, overrides)
    paths = [p for s in stages for group in dvc_graph.declared(root, s, ctx) for p in group]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise MissingInputs(f"round {round_}: outputs dvc.yaml declares were not written: {missing}")
    path = dvc_graph.round_file(root, round_)
    atomic_write_text(path, dvc_graph.round_dvc_text(root, round_, paths))
    run_checked(dvc_graph.dvc_command("commit", "--force", str(path.relative_to(root))), root, log_line)
    return str(path)


@dataclass(frozen=True)
class LocalRunner:
    """Stages as child processes in the project, their output to `log_line` (`sevila round`)."""

    root: Path
    log_line: Callable[[str], object] = log.info

    def in_graph(self, stage: str) -> dict:
        return run_in_graph(self.root, stage, self.log_line)

    def outside(self, stage: str, overrides: Sequence[str]) -> dict:
        return run_outside(self.root, stage, overrides, self.log_line)

    def version(self, round_: int, stages: Sequence[str], overrides: Sequence[str]) -> str:
        return version_round(self.root, round_, stages, overrides, self.log_line)


@contextlib.contextmanager
def mlflow_parent(name: str, dataset: str, **tags: object) -> Iterator:
    """The round's MLflow parent run (sevila.tracking.parent_run); the stages' runs nest under it."""
    from sevila import tracking

    with tracking.parent_run(name, dataset, tags={k: str(v) for k, v in tags.items() if v is not None}) as run:
        yield run


ParentFactory = Callable[..., ContextManager]


def run_round(plan: RoundPlan, make_runner: Callable[[object], StageRunner] | None = None,
              open_parent: ParentFactory = mlflow_parent) -> RoundDecision:
    """Run a planned round: its stages (through DVC in the graph's round, else outside it and versioned), then
    the stopping rule on the main variant's accuracy, recorded on the round's MLflow parent run.
    `make_runner(parent)` gives the StageRunner (default LocalRunner); `open_parent(name, dataset, **tags)` the
    parent run (an object with `run_id` and `uri`)."""
    if plan.round is None:
        return RoundDecision(None, plan.variant, None, None, False, f"nothing to do: {plan.why}")
    make_runner = make_runner or (lambda parent: LocalRunner(plan.root))
    with open_parent(f"refine-round-{plan.round}", plan.cfg.dataset.value, round=plan.round,
                     main_variant=plan.variant) as parent:
        runner = make_runner(parent)
        metrics: dict = {}
        for name in plan.stages:
            metrics = runner.in_graph(name) if plan.in_graph else runner.outside(name, plan.overrides)
        if not plan.in_graph:
            runner.version(plan.round, plan.stages, plan.overrides)
        accuracy = float(metrics["accuracy"])
        proceed, reason = decide(plan.round, accuracy, plan.previous, plan.max_rounds, plan.min_improvement)
        record_decision(parent, accuracy, plan.previous, proceed, reason)
    return RoundDecision(plan.round, plan.variant, accuracy, plan.previous, proceed, reason, plan.overrides,
                         parent.run_id)


def record_decision(parent, accuracy: float, previous: float | None, proceed: bool, reason: str) -> None:
    """The round's outcome on its MLflow parent run (what the UI shows beside the nested stage runs)."""
    from sevila.tracking import MlflowRunLogger

    run = MlflowRunLogger(parent.run_id, parent.uri)
    run.log_metrics({"accuracy": accuracy} | ({"improvement": accuracy - previous} if previous is not None else {}))
    run.set_tags({"proceed": proceed, "decision": reason})


def refine(params: str | Path = dvc_graph.PARAMS_FILE, round_: int | None = None, *, loop: bool = False,
           max_rounds: int = DEFAULT_MAX_ROUNDS, min_improvement: float = DEFAULT_MIN_IMPROVEMENT,
           variant: str | None = None, overrides: Sequence[str] | None = None) -> list[RoundDecision]:
    """Round `round_` (None: the next one), and with `loop` the rounds after it until the rule says stop."""
    decisions: list[RoundDecision] = []
    while True:
        plan = plan_round(params, round_, max_rounds, min_improvement, variant, overrides)
        decisions.append(d := run_round(plan))
        if not (loop and d.proceed and d.round is not None):
            return decisions
        round_ = d.round + 1


# ---------------------------------------------------------------------------------------------- CLI


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("round", help="run self-refinement round N from round N-1's outputs (no Prefect needed)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("round", type=int, nargs="?", default=None,
                   help="the round to run (default: the next one after those on disk)")
    p.add_argument("-p", "--params", default=dvc_graph.PARAMS_FILE, help="the project's params.yaml")
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-rounds", type=int, default=DEFAULT_MAX_ROUNDS)
    p.add_argument("--min-improvement", type=float, default=DEFAULT_MIN_IMPROVEMENT)
    p.add_argument("--variant", help="the variant the stopping rule watches (default: the full SeViLA one)")
    p.add_argument("--loop", action="store_true", help="keep running rounds until the rule says stop")
    p.set_defaults(func=_cli_round)


def _cli_round(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    decisions = refine(args.params, args.round, loop=args.loop, max_rounds=args.max_rounds,
                       min_improvement=args.min_improvement, variant=args.variant, overrides=args.override)
    print(json.dumps([asdict(d) for d in decisions], indent=2))
    return 0
