"""MLflow tracking: the only package of sevila that talks to MLflow (docs/design.md §3).

Why a module of our own and not `mlflow.*` calls scattered through the stages: the ablation tables are pivots
over run tags, so every run must carry the same typed tags (`RunTags`), land in a predictable experiment
(`sevila/<dataset>/<phase>`), and record its settings the same way. MLflow's fluent API also keeps a global
"active run" stack that breaks under threads (Prefect tasks) and across processes (DVC stages); here every call
goes through an explicit `MlflowClient` and run id instead.

Store (`configure`, `tracking_uri`), in order of precedence:
1. the URI given to `configure(uri)` (a stage passes its `tracking.uri` setting here),
2. the `MLFLOW_TRACKING_URI` environment variable,
3. the embedded default `sqlite:///<project>/mlflow.db`, where <project> is the nearest directory at or above
   the working directory holding `dvc.yaml` or `params.yaml` (else the working directory).
A plain path is accepted too: `runs/x.db` means `sqlite:///<abs>/runs/x.db`, a directory means `<dir>/mlflow.db`.
For a SQLite store, artifacts go to `mlruns/` next to the database file (`mlruns/sevila/<dataset>/<phase>/
<run id>/artifacts`), never to a `./mlruns` relative to whatever directory a process happens to run in. No
server is needed; telemetry is switched off and MLflow's INFO chatter is silenced unless you set
`MLFLOW_DISABLE_TELEMETRY` / `MLFLOW_LOGGING_LEVEL` yourself.

Experiments and runs: `start_run(dataset, phase, run_name, tags, config)` creates a run in the experiment
`sevila/<dataset>/<phase>` named after the ablation variant (or stage id), with the `RunTags` pivot tags, the
git commit (`git_sha`, `git_dirty`), the run's OWN settings as flattened dotted params (within MLflow's length
limits; sevila/tracking/run_settings.py picks them per stage), the whole resolved config as a `params.yaml` artifact,
and
the files it reads as MLflow datasets (`InputFile`: digest, rows, path, context train/eval). It yields an `MlflowRunLogger` (the training loop's `RunLogger`
protocol of sevila/training/runlog.py, plus `log_dict`/`log_figure`/`log_text`) and ends the run FINISHED, FAILED on an
exception, or KILLED on Ctrl-C or SIGTERM. Each run names its owner process (tag `sevila.owner`); a run whose
process was SIGKILLed is marked KILLED by the next run opened on the store, or by `sevila report`
(`reap_stale_runs`, sevila/tracking/owner.py). The store's schema is created under a file lock, so processes
opening a brand-new SQLite store at once all keep their runs (sevila/tracking/store.py).

Parent runs (grouping a `dvc repro` or a Prefect flow run): `parent_run(name, dataset)` creates a run and, while
its block runs, exports two environment variables:
- `SEVILA_PARENT_RUN_ID`: the parent's run id; every `start_run`/`parent_run` in this process *or any child
  process* (a `dvc repro` started by a flow, a `sevila stage` started by DVC) tags its run with
  `mlflow.parentRunId` = that id, which is how MLflow itself records nesting (the UI shows child runs under the
  parent when both sit in the same experiment; across experiments the tag still links them, and
  `runs_frame()['parent_run_id']` exposes it).
- `MLFLOW_TRACKING_URI`: the resolved store, so the children write to the same store as the parent.
To group a whole `dvc repro` from a shell: `SEVILA_PARENT_RUN_ID=$(...)` works the same way, or wrap the call
in Python: `with parent_run("repro", "synth"): subprocess.run(["dvc", "repro"], check=True)`.

Reading back: `runs_frame`/`finished_runs` give one pandas row per run (typed pivot-tag columns, plus
`params.*`, `metrics.*`, `tags.*` as in `mlflow.search_runs`); `latest_per_variant` keeps the latest FINISHED
run of each variant, which is what sevila.evaluation.tables builds the paper's ablation tables from.

MLflow (about a second to import) is imported inside the functions that need it, so `import sevila.tracking`
stays cheap for code that only builds tags or reads a DataFrame.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from sevila.config import modes

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow import MlflowClient

# The names below are re-exported: `sevila.tracking` stays the one import for everything MLflow.
from sevila.tracking import owner as tracking_owner, views as tracking_views
from sevila.tracking.inputs import InputContext, InputFile, file_digest  # noqa: F401
from sevila.tracking.owner import END_REASON_TAG, OWNER_TAG  # noqa: F401
from sevila.tracking.params import (  # noqa: F401
    MAX_ENTITY_KEY_LENGTH, MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH, MAX_TAG_VAL_LENGTH,
    TRUNCATION_MARK, _parse_bool, _parse_int, _plain, flatten_params, safe_key,
)
from sevila.tracking.store import (  # noqa: F401
    ARTIFACT_DIR_NAME, DEFAULT_DB_NAME, TRACKING_URI_ENV, TrackingError, _experiment_id, _git_tags, client, configure,
    git_state, metric_history, normalize_uri, project_root, sqlite_path, store_lock_path, tracking_uri,
)

PARENT_RUN_ENV = "SEVILA_PARENT_RUN_ID"
EXPERIMENT_PREFIX = "sevila"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag
CONFIG_ARTIFACT = "params.yaml"  # every run's whole resolved config

# Names MLflow accepts for params and metrics (slashes, alphanumerics, _ - . space colon).
_VALID_KEY = re.compile(r"^[/\w.\- :]*$")
_VALID_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------------------------------------
# Typed tags


class Phase(str, enum.Enum):
    """Which part of the pipeline a run belongs to: the last part of its experiment name."""

    PREPARE = "prepare"
    VALIDATE = "validate"
    BOOTSTRAP = "bootstrap"  # the synthetic world's tiny backbone (what BLIP-2 brings pre-trained)
    FEATURES = "features"
    PRETRAIN = "pretrain"  # Localizer pre-training on QVHighlights moments
    PSEUDO_LABEL = "pseudo_label"  # reverse chain: the Answerer labels frames
    REFINE = "refine"  # Localizer self-refinement on pseudo-labels
    FINETUNE = "finetune"  # Answerer fine-tuning on Localizer keyframes (forward chain)
    EVALUATE = "evaluate"
    REPORT = "report"
    PIPELINE = "pipeline"  # parent runs grouping a dvc repro / a Prefect flow run


class Study(str, enum.Enum):
    """Which ablation table a run is a row of."""

    FRAMES = "frames"  # n_frames -> n_keyframes (paper Table 7)
    COMPONENTS = "components"  # Localizer pre-training x self-refinement (paper Tables 3/5)
    BASELINE = "baseline"  # BLIP-2 voting / concat (paper Table 9)
    ORACLE = "oracle"  # any-frame upper bound (paper Table 9)
    ROUND = "round"  # iterated self-refinement rounds




# The values of the frame-selection modes, from their one (torch-free) home.
SELECTOR_VALUES: tuple[str, ...] = tuple(s.value for s in modes.Selector)
FUSION_VALUES: tuple[str, ...] = tuple(f.value for f in modes.Fusion)

# The tag names a table can pivot on, in column order (RunTags fields, then the git state).
PIVOT_TAGS: tuple[str, ...] = (
    "variant", "study", "selector", "fusion", "n_frames", "n_keyframes", "loc_pretrain", "loc_refine",
    "answerer", "round", "seed", "dvc_stage", "git_sha", "git_dirty",
)
INT_TAGS = ("n_frames", "n_keyframes", "round", "seed")
BOOL_TAGS = ("loc_pretrain", "loc_refine", "git_dirty")


def _enum_value(value: Any) -> str:
    return value.value if isinstance(value, enum.Enum) else str(value)


def _tag_value(value: Any) -> str:
    """How a tag value is written: booleans as true/false (what `from_tags` and the readers parse), enums by
    value, anything else as str."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _enum_value(value)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"RunTags.{name}: expected an integer, got {value!r}")
    if isinstance(value, int):
        out = value
    elif isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        out = int(value)
    else:
        raise ValueError(f"RunTags.{name}: expected an integer, got {value!r}")
    if out < 0:
        raise ValueError(f"RunTags.{name}: must be >= 0, got {out}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"RunTags.{name}: expected true/false, got {value!r}")


def _one_of(name: str, value: Any, allowed: Iterable[str]) -> str:
    v = _enum_value(value)
    allowed = tuple(allowed)
    if v not in allowed:
        raise ValueError(f"RunTags.{name}: {v!r} is not one of {list(allowed)}")
    return v


@dataclass(frozen=True)
class RunTags:
    """The pivot tags of one run. Strings and enums from elsewhere (e.g. sevila.model.selection.Selector) are
    accepted and normalised, so `RunTags(variant="f32k4_qvh_sr", selector=Selector.LOCALIZER, n_frames=32)`
    and the same built back from MLflow's string tags (`from_tags`) compare equal.

    variant: the ablation variant (params.yaml key, DVC stage suffix, MLflow run name, output folder).
    loc_pretrain: the Localizer was pre-trained on QVHighlights moments; loc_refine: it was self-refined.
    round: the self-refinement round that produced the run (0 = before any refinement).
    seed: `world.seed` (= `bootstrap.seed` in a seeds study, sevila.experiments.seeds): which world and backbone it ran
    on.
    """

    variant: str
    study: Study | None = None
    selector: str | None = None  # one of SELECTOR_VALUES (sevila.model.selection.Selector)
    fusion: str | None = None  # one of FUSION_VALUES (sevila.model.selection.Fusion)
    n_frames: int | None = None
    n_keyframes: int | None = None
    loc_pretrain: bool | None = None
    loc_refine: bool | None = None
    answerer: modes.AnswererId | None = None  # fine-tuned or zero-shot (paper Table 5)
    round: int | None = None
    seed: int | None = None
    dvc_stage: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise ValueError(f"RunTags.variant: expected a non-empty string, got {self.variant!r}")
        conv: dict[str, Any] = {}
        if self.study is not None:
            conv["study"] = Study(_one_of("study", self.study, [s.value for s in Study]))
        if self.answerer is not None:
            allowed = [a.value for a in modes.AnswererId]
            conv["answerer"] = modes.AnswererId(_one_of("answerer", self.answerer, allowed))
        if self.selector is not None:
            conv["selector"] = _one_of("selector", self.selector, SELECTOR_VALUES)
        if self.fusion is not None:
            conv["fusion"] = _one_of("fusion", self.fusion, FUSION_VALUES)
        for name in INT_TAGS:
            if getattr(self, name) is not None:
                conv[name] = _as_int(name, getattr(self, name))
        for name in ("loc_pretrain", "loc_refine"):
            if getattr(self, name) is not None:
                conv[name] = _as_bool(name, getattr(self, name))
        if self.n_frames is not None and self.n_keyframes is not None and conv["n_keyframes"] > conv["n_frames"]:
            raise ValueError(f"RunTags: n_keyframes={conv['n_keyframes']} > n_frames={conv['n_frames']} "
                             f"(variant {self.variant!r})")
        for k, v in conv.items():
            object.__setattr__(self, k, v)

    def to_tags(self) -> dict[str, str]:
        """MLflow tags (strings; booleans as true/false); unset fields are left out."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = _tag_value(v)
        return out

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RunTags:
        """Back from MLflow's string tags (other tags are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in tags.items() if k in names})


def experiment_name(dataset: str, phase: Phase | str) -> str:
    """`sevila/<dataset>/<phase>`; the dataset must be a plain name (it is also a folder name)."""
    if not isinstance(dataset, str) or not _VALID_DATASET.match(dataset):
        raise ValueError(f"dataset {dataset!r}: expected a plain name (letters, digits, _ . -)")
    return f"{EXPERIMENT_PREFIX}/{dataset}/{_phase(phase).value}"


def parse_experiment_name(name: str) -> tuple[str, str] | None:
    """(dataset, phase) of a `sevila/<dataset>/<phase>` experiment name; None for any other experiment."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != EXPERIMENT_PREFIX:
        return None
    return parts[1], parts[2]


def _phase(phase: Phase | str) -> Phase:
    try:
        return Phase(_enum_value(phase))
    except ValueError:
        raise ValueError(f"phase {phase!r} is not one of {[p.value for p in Phase]}") from None


# ----------------------------------------------------------------------------------------------------------
# Experiments and git state


def _parent_from_env(c: MlflowClient, explicit: str | None) -> str | None:
    parent = explicit or os.environ.get(PARENT_RUN_ENV, "").strip() or None
    if parent is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        c.get_run(parent)
    except MlflowException:
        source = "parent_run_id" if explicit else f"${PARENT_RUN_ENV}"
        raise TrackingError(
            f"parent run {parent!r} (from {source}) does not exist in {c.tracking_uri}; was the parent created "
            f"in another store? Unset {PARENT_RUN_ENV} or point {TRACKING_URI_ENV} at the parent's store") from None
    return parent


# ----------------------------------------------------------------------------------------------------------
# Runs


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


class MlflowRunLogger:
    """One MLflow run, addressed by id: the training loop's `RunLogger` (sevila/training/runlog.py: `log_metrics`,
    `log_params`, `log_artifact`) plus what stages and reports need (`log_dict`, `log_text`, `log_figure`,
    `log_config`, `set_tags`). Holds no global state, so threads and processes can each log to their run."""

    def __init__(self, run_id: str, uri: str | None = None):
        self.run_id = run_id
        self.uri = normalize_uri(uri) if uri is not None else tracking_uri()
        self._client = client(self.uri)

    def __repr__(self) -> str:
        return f"MlflowRunLogger(run_id={self.run_id!r}, uri={self.uri!r})"

    # -- RunLogger protocol
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Numbers at `step` (training: the optimizer step; evaluation: leave it None, stored as step 0).
        Logging a (step, name) again is allowed (a resumed run replays steps); readers take the last value."""
        from mlflow.entities import Metric

        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ValueError(f"run {self.run_id}: step must be a non-negative integer, got {step!r}")
        ts = _now_ms()
        batch = []
        for name, value in metrics.items():
            key = str(name)
            if not _VALID_KEY.match(key) or len(key) > MAX_ENTITY_KEY_LENGTH:
                raise ValueError(f"run {self.run_id}: metric name {key!r} is not accepted by MLflow (letters, "
                                 f"digits, _ - . / : and space, at most {MAX_ENTITY_KEY_LENGTH} characters)")
            if isinstance(value, bool):
                value = float(value)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"run {self.run_id}: metric {key!r} is not a number: {value!r}") from None
            batch.append(Metric(key=key, value=number, timestamp=ts, step=step or 0))
        for part in _chunks(batch, MAX_METRICS_PER_BATCH):
            self._client.log_batch(self.run_id, metrics=part)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Settings, flattened to dotted keys (nested mappings/dataclasses welcome). Repeating a param with the
        same value is fine (resume); a different value for a logged param is an MLflow error."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        items = [Param(k, v) for k, v in flat.items()]
        for part in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, params=part)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or every file of a directory (kept under the directory's name)."""
        p = Path(path)
        if p.is_dir():
            self._client.log_artifacts(self.run_id, str(p), artifact_path=_join(artifact_path, p.name))
        elif p.is_file():
            self._client.log_artifact(self.run_id, str(p), artifact_path=artifact_path)
        else:
            raise FileNotFoundError(f"run {self.run_id}: artifact {p} does not exist")

    # -- extras
    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """A mapping as JSON or YAML, chosen by the file's extension (.json / .yaml / .yml)."""
        self._client.log_dict(self.run_id, _plain(obj), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure, saved as `artifact_file` (e.g. `plots/accuracy.png`)."""
        self._client.log_figure(self.run_id, figure, artifact_file)

    def log_config(self, config: Any) -> None:
        """The whole resolved config (params.yaml with overrides applied) as the `params.yaml` artifact; not as
        params, which hold only the run's own settings."""
        self.log_dict(config, CONFIG_ARTIFACT)

    def log_inputs(self, inputs: Sequence[InputFile]) -> None:
        """Files the run reads, as MLflow datasets (the UI's Datasets column: name, digest, context)."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if inputs:
            self._client.log_inputs(self.run_id, datasets=[
                DatasetInput(i.entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, i.context.value)]) for i in inputs])

    def set_tags(self, tags: Mapping[str, Any] | RunTags) -> None:
        from mlflow.entities import RunTag

        pairs = tags.to_tags() if isinstance(tags, RunTags) else {str(k): _tag_value(v) for k, v in tags.items()}
        items = [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in pairs.items()]
        for part in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=part)


def _join(a: str | None, b: str) -> str:
    return f"{a.rstrip('/')}/{b}" if a else b


@contextlib.contextmanager
def _run(dataset: str, phase: Phase | str, run_name: str, tags: dict[str, str],
         parent_run_id: str | None, uri: str | None, description: str | None) -> Iterator[MlflowRunLogger]:
    c = client(uri)
    exp_id = _experiment_id(c, experiment_name(dataset, phase),
                            tracking_views.experiment_tags(_phase(phase).value, _now_ms()))
    _reap(c)
    all_tags = {"dataset": dataset, "phase": _phase(phase).value, **_git_tags(), **tags,
                OWNER_TAG: tracking_owner.this_process().tag()}
    parent = _parent_from_env(c, parent_run_id)
    if parent is not None:
        all_tags[PARENT_TAG] = parent
    if description:
        all_tags["mlflow.note.content"] = description
    run = c.create_run(exp_id, run_name=run_name, tags={k: v[:MAX_TAG_VAL_LENGTH] for k, v in all_tags.items()})
    logger = MlflowRunLogger(run.info.run_id, c.tracking_uri)
    status = "FAILED"
    with tracking_owner.terminate_as_exit() as termination:
        try:
            yield logger
            status = "FINISHED"
        except BaseException as e:
            # Ctrl-C, SIGTERM, or any other BaseException that is not an Exception (Prefect delivers a cancel as
            # TerminationSignal): stopped from outside, not an error of the run
            if not isinstance(e, Exception) or termination.signalled:
                status = "KILLED"
            raise
        finally:
            c.set_terminated(run.info.run_id, status)


def _reap(c: MlflowClient) -> list[str]:
    return tracking_owner.reap_experiments(c, list(_sevila_experiments(c)))


def reap_stale_runs(uri: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of the store whose process on this host is gone (SIGKILL, OOM); returns
    their ids. Called whenever a run opens and before `sevila report` reads runs (sevila/tracking/owner.py)."""
    return _reap(client(uri))


@contextlib.contextmanager
def start_run(dataset: str, phase: Phase | str, run_name: str | None, tags: RunTags, params: Any = None, *,
              config: Any = None, inputs: Sequence[InputFile] = (), parent_run_id: str | None = None,
              uri: str | None = None, description: str | None = None) -> Iterator[MlflowRunLogger]:
    """A run in `sevila/<dataset>/<phase>` named `run_name` (default: the variant), tagged with `tags`, the
    dataset/phase and the git state, nested under `parent_run_id` or $SEVILA_PARENT_RUN_ID when set. `params`
    (a mapping or config dataclass: the run's own settings) become flattened params; `config` (the whole
    resolved config) the `params.yaml` artifact; `inputs` the run's datasets. Ends FINISHED / FAILED / KILLED."""
    if not isinstance(tags, RunTags):
        raise TypeError(f"start_run: tags must be a RunTags, got {type(tags).__name__}")
    with _run(dataset, phase, run_name or tags.variant, tags.to_tags(), parent_run_id, uri,
              description) as logger:
        if params is not None:
            logger.log_params(params)
        if config is not None:
            logger.log_config(config)
        logger.log_inputs(inputs)
        yield logger


@contextlib.contextmanager
def parent_run(name: str, dataset: str, phase: Phase | str = Phase.PIPELINE, tags: Mapping[str, str] | None = None,
               *, uri: str | None = None) -> Iterator[MlflowRunLogger]:
    """A run that groups the runs made while its block runs, in this process and in child processes: it sets
    $SEVILA_PARENT_RUN_ID (its id) and $MLFLOW_TRACKING_URI (its store) for the block and restores them after.
    Parent runs nest too (a flow run inside a scheduled deployment run)."""
    extra = {"kind": "parent", **{str(k): _tag_value(v) for k, v in (tags or {}).items()}}
    with _run(dataset, phase, name, extra, None, uri, None) as logger:
        saved = {k: os.environ.get(k) for k in (PARENT_RUN_ENV, TRACKING_URI_ENV)}
        os.environ[PARENT_RUN_ENV] = logger.run_id
        os.environ[TRACKING_URI_ENV] = logger.uri
        try:
            yield logger
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


# ----------------------------------------------------------------------------------------------------------
# Reading runs back


BASE_COLUMNS: tuple[str, ...] = (
    "run_id", "run_name", "experiment", "dataset", "phase", "status", "start_time", "end_time", "parent_run_id",
    *PIVOT_TAGS,
)


def _typed_frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd  # lazily, as mlflow: `import sevila.tracking` stays cheap (tested)

    df = pd.DataFrame(rows)
    for col in BASE_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
    for col in INT_TAGS:
        df[col] = df[col].astype("Int64")
    for col in BOOL_TAGS:
        df[col] = df[col].astype("boolean")
    rest = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    return df[list(BASE_COLUMNS) + rest]


def _sevila_experiments(c: MlflowClient, dataset: str | None = None,
                        phase: Phase | str | None = None) -> dict[str, tuple[str, str, str]]:
    """Active `sevila/<dataset>/<phase>` experiments (optionally one dataset / phase): id -> (name, dataset,
    phase)."""
    from mlflow.entities import ViewType

    want_phase = _phase(phase).value if phase is not None else None
    experiments = {}
    token = None
    while True:
        page = c.search_experiments(view_type=ViewType.ACTIVE_ONLY, filter_string=f"name LIKE '{EXPERIMENT_PREFIX}/%'",
                                    max_results=1000, page_token=token)
        for exp in page:
            parsed = parse_experiment_name(exp.name)
            if parsed and (dataset is None or parsed[0] == dataset) and (want_phase is None or parsed[1] == want_phase):
                experiments[exp.experiment_id] = (exp.name, *parsed)
        token = page.token
        if not token:
            return experiments


def runs_frame(dataset: str | None = None, phase: Phase | str | None = None, *, uri: str | None = None,
               statuses: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (non-deleted) run of the `sevila/<dataset>/<phase>` experiments, optionally only one
    dataset / phase / set of statuses. Columns: BASE_COLUMNS (typed pivot tags, read from the run's tags, else
    from its params of the same name: Int64 counts, boolean flags; UTC start/end times), then `metrics.<name>` (last value), `params.<name>`, `tags.<name>` (all tags)."""
    c = client(uri)
    experiments = _sevila_experiments(c, dataset, phase)
    wanted_status = {s.upper() for s in statuses} if statuses is not None else None
    rows: list[dict] = []
    if experiments:
        token = None
        while True:
            page = c.search_runs(list(experiments), max_results=1000, page_token=token)
            for run in page:
                info, data = run.info, run.data
                if wanted_status is not None and info.status not in wanted_status:
                    continue
                name, ds, ph = experiments[info.experiment_id]
                t = data.tags
                row: dict[str, Any] = {
                    "run_id": info.run_id, "run_name": info.run_name, "experiment": name, "dataset": ds,
                    "phase": ph, "status": info.status, "start_time": info.start_time, "end_time": info.end_time,
                    "parent_run_id": t.get(PARENT_TAG),
                }
                for tag in PIVOT_TAGS:  # a run without the tag (logged by hand, say) pivots on its param
                    v = t.get(tag, data.params.get(tag))
                    row[tag] = _parse_int(v) if tag in INT_TAGS else _parse_bool(v) if tag in BOOL_TAGS else v
                if row["variant"] is None:
                    row["variant"] = info.run_name
                row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
                row.update({f"params.{k}": v for k, v in data.params.items()})
                row.update({f"tags.{k}": v for k, v in t.items()})
                rows.append(row)
            token = page.token
            if not token:
                break
    return _typed_frame(rows)


def finished_runs(dataset: str | None = None, phase: Phase | str | None = None, *,
                  uri: str | None = None) -> pd.DataFrame:
    """`runs_frame` restricted to FINISHED runs (what tables and dashboards should read)."""
    return runs_frame(dataset, phase, uri=uri, statuses=("FINISHED",))


def latest_per_variant(df: pd.DataFrame) -> pd.DataFrame:
    """The latest FINISHED run (by start time) of each variant (and seed, where runs carry one) of each experiment;
    failed, killed, running and superseded runs are dropped. Pure pandas: works on any frame with `status`,
    `start_time`, `variant` (missing variant: `run_name`) and optionally `experiment`."""
    if df.empty:
        return df.copy()
    out = df[df["status"] == "FINISHED"].copy()
    if "variant" not in out.columns:
        out["variant"] = out["run_name"]
    elif "run_name" in out.columns:
        out["variant"] = out["variant"].fillna(out["run_name"])
    keys = ["experiment", "variant"] if "experiment" in out.columns else ["variant"]
    if "seed" in out.columns:  # a seeds study keeps each seed's latest run (sevila.experiments.seeds.collapse_seeds)
        keys.append("seed")
    order = ["start_time", "end_time"] if "end_time" in out.columns else ["start_time"]
    out = out.sort_values(order, kind="stable")
    out = out.groupby(keys, sort=False, dropna=False).tail(1)
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
