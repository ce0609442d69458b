"""MLflow tracking: the only module of sevila that talks to MLflow (DESIGN.md §3).

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
git commit (`git_sha`, `git_dirty`), the resolved config as flattened dotted params (within MLflow's length
limits) and as a `config.yaml` artifact. It yields an `MlflowRunLogger` (the training loop's `RunLogger`
protocol of sevila/runlog.py, plus `log_dict`/`log_figure`/`log_text`) and ends the run FINISHED, FAILED on an
exception, or KILLED on Ctrl-C.

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
run of each variant, which is what sevila.report builds the paper's ablation tables from.

MLflow (about a second to import) is imported inside the functions that need it, so `import sevila.tracking`
stays cheap for code that only builds tags or reads a DataFrame.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import math
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

from sevila import settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from mlflow import MlflowClient

PARENT_RUN_ENV = "SEVILA_PARENT_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_PREFIX = "sevila"
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlruns"  # next to the SQLite file (already git-ignored in this repo)
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own nesting tag

# MLflow's limits (mlflow.utils.validation; a test pins these against the installed MLflow).
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
TRUNCATION_MARK = "...[truncated; full value in config.yaml]"

# Names MLflow accepts for params and metrics (slashes, alphanumerics, _ - . space colon).
_VALID_KEY = re.compile(r"^[/\w.\- :]*$")
_VALID_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TrackingError(RuntimeError):
    """The tracking store or a run cannot be used as asked; the message names the store and the run."""


# ----------------------------------------------------------------------------------------------------------
# Typed tags


class Phase(str, enum.Enum):
    """Which part of the pipeline a run belongs to: the last part of its experiment name."""

    PREPARE = "prepare"
    VALIDATE = "validate"
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


class AnswererMode(str, enum.Enum):
    """Whether the Answerer was fine-tuned on the target dataset (paper Table 5 rows) or used zero-shot."""

    ZERO_SHOT = "zero_shot"
    FINETUNED = "finetuned"


# The values of the frame-selection modes, from their one (torch-free) home.
SELECTOR_VALUES: tuple[str, ...] = tuple(s.value for s in settings.Selector)
FUSION_VALUES: tuple[str, ...] = tuple(f.value for f in settings.Fusion)

# The tag names a table can pivot on, in column order (RunTags fields, then the git state).
PIVOT_TAGS: tuple[str, ...] = (
    "variant", "study", "selector", "fusion", "n_frames", "n_keyframes", "loc_pretrain", "loc_refine",
    "answerer", "round", "dvc_stage", "git_sha", "git_dirty",
)
INT_TAGS = ("n_frames", "n_keyframes", "round")
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
    """The pivot tags of one run. Strings and enums from elsewhere (e.g. sevila.selection.Selector) are
    accepted and normalised, so `RunTags(variant="f32k4_qvh_sr", selector=Selector.LOCALIZER, n_frames=32)`
    and the same built back from MLflow's string tags (`from_tags`) compare equal.

    variant: the ablation variant (params.yaml key, DVC stage suffix, MLflow run name, output folder).
    loc_pretrain: the Localizer was pre-trained on QVHighlights moments; loc_refine: it was self-refined.
    round: the self-refinement round that produced the run (0 = before any refinement).
    """

    variant: str
    study: Study | None = None
    selector: str | None = None  # one of SELECTOR_VALUES (sevila.selection.Selector)
    fusion: str | None = None  # one of FUSION_VALUES (sevila.selection.Fusion)
    n_frames: int | None = None
    n_keyframes: int | None = None
    loc_pretrain: bool | None = None
    loc_refine: bool | None = None
    answerer: AnswererMode | None = None
    round: int | None = None
    dvc_stage: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise ValueError(f"RunTags.variant: expected a non-empty string, got {self.variant!r}")
        conv: dict[str, Any] = {}
        if self.study is not None:
            conv["study"] = Study(_one_of("study", self.study, [s.value for s in Study]))
        if self.answerer is not None:
            conv["answerer"] = AnswererMode(_one_of("answerer", self.answerer, [a.value for a in AnswererMode]))
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
# Params: flattened, dotted, within MLflow's limits


def _plain(obj: Any) -> Any:
    """A config tree as plain YAML/JSON data: dataclasses -> dicts, enums -> values, tuples -> lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def safe_key(key: str) -> str:
    """A name MLflow accepts: characters it rejects become `_`; a name over 250 characters is cut and given a
    hash suffix so two long names cannot collide."""
    key = re.sub(r"[^/\w.\- :]", "_", str(key))
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
        key = key[: MAX_ENTITY_KEY_LENGTH - 9] + "~" + digest
    return key


def flatten_params(config: Any, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> string values: `{"a": {"b": 1, "c": [1, 2]}}` -> `{"a.b": "1", "a.c": "[1, 2]"}`.

    Lists stay one JSON value (a list is one setting), scalars are JSON-encoded (`true`, `null`, `0.5`) except
    strings, which stay as they are, and an empty section is `{}`; a value longer than MLflow's 6000 characters
    is truncated with a mark (the untruncated config is the run's `config.yaml` artifact)."""
    data = _plain(config)
    if not isinstance(data, dict):
        raise ValueError(f"flatten_params: expected a mapping or dataclass at the top, got {type(config).__name__}")
    out: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and (node or not path):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:  # a leaf; an empty section is kept as "{}" so the setting still shows
            out[safe_key(path)] = _param_value(node)

    walk(data, prefix)
    return out


# ----------------------------------------------------------------------------------------------------------
# Store


_configured_uri: str | None = None


def project_root(start: str | Path | None = None) -> Path:
    """The nearest directory at or above `start` (default: the working directory) holding dvc.yaml or
    params.yaml: where `dvc repro` runs, so every stage finds the same default store."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() or (d / "params.yaml").is_file():
            return d
    return here


def normalize_uri(uri: str | Path) -> str:
    """A tracking URI from a URI or a path: `x.db` / `x.sqlite` -> `sqlite:///<abs>/x.db`; another path ->
    `<abs>/mlflow.db`; a relative `sqlite:///` path is made absolute (children may run elsewhere)."""
    text = str(uri).strip()
    if not text:
        raise ValueError("tracking URI is empty")
    if "://" not in text and not text.startswith("file:"):
        p = Path(text).expanduser()
        if p.suffix not in (".db", ".sqlite", ".sqlite3"):
            p = p / DEFAULT_DB_NAME
        return f"sqlite:///{p.resolve()}"
    db = sqlite_path(text)
    if db is not None and not db.is_absolute():
        return f"sqlite:///{db.resolve()}"
    return text


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and for in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def tracking_uri() -> str:
    """The store this process uses now (see the module docstring for the order of precedence)."""
    if _configured_uri is not None:
        return _configured_uri
    env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if env:
        return normalize_uri(env)
    return f"sqlite:///{project_root() / DEFAULT_DB_NAME}"


def configure(uri: str | Path | None = None) -> str:
    """Pin the store for this process (`uri`), or with None go back to MLFLOW_TRACKING_URI / the default.
    Returns the resolved URI. Cheap: nothing is opened until the first run is created or read."""
    global _configured_uri
    _configured_uri = normalize_uri(uri) if uri is not None else None
    return tracking_uri()


def _quiet_offline() -> None:
    """Before MLflow is imported: no telemetry (network), no INFO logs (e.g. the schema migrations printed
    when a new SQLite store is created). Explicit user settings win."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def client(uri: str | None = None) -> MlflowClient:
    """An MlflowClient on `uri` (default: `tracking_uri()`); the directory of a SQLite file is created."""
    _quiet_offline()
    from mlflow import MlflowClient

    uri = normalize_uri(uri) if uri is not None else tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def metric_history(run_id: str, key: str, uri: str | None = None) -> dict[int, float]:
    """A metric's value per step; a resumed run replays steps, and the last value logged for a step wins."""
    history = sorted(client(uri).get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return {m.step: m.value for m in history}


def _artifact_location(uri: str, name: str) -> str | None:
    db = sqlite_path(uri)
    if db is None:
        return None  # a server or another store decides where artifacts go
    return (db.parent.resolve() / ARTIFACT_DIR_NAME / name).as_uri()


def _experiment_id(c: MlflowClient, name: str) -> str:
    """Get or create the experiment; two processes creating it at once is fine (the loser reads it back)."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=_artifact_location(c.tracking_uri, name))
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"experiment {name!r} is deleted in {c.tracking_uri}; restore it (`mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`) or delete it for good (`mlflow gc`) before logging to it")
    return exp.experiment_id


def git_state(cwd: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked or untracked-but-not-ignored files differ from it); (None, None) outside
    a git checkout or without git. Read per run, not cached: a long-lived Prefect worker sees new commits."""
    cwd = str(cwd or project_root())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True,
                                timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (sha or None), bool(status.strip())


def _git_tags() -> dict[str, str]:
    sha, dirty = git_state()
    if sha is None:
        return {}
    return {"git_sha": sha, "git_dirty": "true" if dirty else "false", "mlflow.source.git.commit": sha}


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
    """One MLflow run, addressed by id: the training loop's `RunLogger` (sevila/runlog.py: `log_metrics`,
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
        """The resolved config: flattened dotted params (searchable) and `config.yaml` (the exact tree)."""
        self.log_params(config)
        self.log_dict(config, "config.yaml")

    def set_tags(self, tags: Mapping[str, Any] | RunTags) -> None:
        from mlflow.entities import RunTag

        pairs = tags.to_tags() if isinstance(tags, RunTags) else {str(k): _tag_value(v) for k, v in tags.items()}
        items = [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in pairs.items()]
        for part in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self.run_id, tags=part)


def _join(a: str | None, b: str) -> str:
    return f"{a.rstrip('/')}/{b}" if a else b


@contextlib.contextmanager
def _run(dataset: str, phase: Phase | str, run_name: str, tags: dict[str, str], config: Any,
         parent_run_id: str | None, uri: str | None, description: str | None) -> Iterator[MlflowRunLogger]:
    c = client(uri)
    exp_id = _experiment_id(c, experiment_name(dataset, phase))
    all_tags = {"dataset": dataset, "phase": _phase(phase).value, **_git_tags(), **tags}
    parent = _parent_from_env(c, parent_run_id)
    if parent is not None:
        all_tags[PARENT_TAG] = parent
    if description:
        all_tags["mlflow.note.content"] = description
    run = c.create_run(exp_id, run_name=run_name, tags={k: v[:MAX_TAG_VAL_LENGTH] for k, v in all_tags.items()})
    logger = MlflowRunLogger(run.info.run_id, c.tracking_uri)
    status = "FAILED"
    try:
        if config is not None:
            logger.log_config(config)
        yield logger
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        c.set_terminated(run.info.run_id, status)


@contextlib.contextmanager
def start_run(dataset: str, phase: Phase | str, run_name: str | None, tags: RunTags, config: Any = None, *,
              parent_run_id: str | None = None, uri: str | None = None,
              description: str | None = None) -> Iterator[MlflowRunLogger]:
    """A run in `sevila/<dataset>/<phase>` named `run_name` (default: the variant), tagged with `tags`, the
    dataset/phase and the git state, nested under `parent_run_id` or $SEVILA_PARENT_RUN_ID when set; `config`
    (a mapping or config dataclass) is logged as params and `config.yaml`. Ends FINISHED / FAILED / KILLED."""
    if not isinstance(tags, RunTags):
        raise TypeError(f"start_run: tags must be a RunTags, got {type(tags).__name__}")
    with _run(dataset, phase, run_name or tags.variant, tags.to_tags(), config, parent_run_id, uri,
              description) as logger:
        yield logger


@contextlib.contextmanager
def parent_run(name: str, dataset: str, phase: Phase | str = Phase.PIPELINE, tags: Mapping[str, str] | None = None,
               *, uri: str | None = None) -> Iterator[MlflowRunLogger]:
    """A run that groups the runs made while its block runs, in this process and in child processes: it sets
    $SEVILA_PARENT_RUN_ID (its id) and $MLFLOW_TRACKING_URI (its store) for the block and restores them after.
    Parent runs nest too (a flow run inside a scheduled deployment run)."""
    extra = {"kind": "parent", **{str(k): _tag_value(v) for k, v in (tags or {}).items()}}
    with _run(dataset, phase, name, extra, None, None, uri, None) as logger:
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


def _parse_int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _parse_bool(v: str | None) -> bool | None:
    return {"true": True, "false": False}.get(str(v).lower()) if v is not None else None


def _typed_frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

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


def runs_frame(dataset: str | None = None, phase: Phase | str | None = None, *, uri: str | None = None,
               statuses: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (non-deleted) run of the `sevila/<dataset>/<phase>` experiments, optionally only one
    dataset / phase / set of statuses. Columns: BASE_COLUMNS (typed pivot tags: Int64 counts, boolean flags,
    UTC start/end times), then `metrics.<name>` (last value), `params.<name>`, `tags.<name>` (all tags)."""
    from mlflow.entities import ViewType

    c = client(uri)
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
            break
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
                for tag in PIVOT_TAGS:
                    v = t.get(tag)
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
    """The latest FINISHED run (by start time) of each variant of each experiment; failed, killed, running and
    superseded runs are dropped. Pure pandas: works on any frame with `status`, `start_time`, `variant`
    (missing variant: `run_name`) and optionally `experiment`."""
    if df.empty:
        return df.copy()
    out = df[df["status"] == "FINISHED"].copy()
    if "variant" not in out.columns:
        out["variant"] = out["run_name"]
    elif "run_name" in out.columns:
        out["variant"] = out["variant"].fillna(out["run_name"])
    keys = ["experiment", "variant"] if "experiment" in out.columns else ["variant"]
    order = ["start_time", "end_time"] if "end_time" in out.columns else ["start_time"]
    out = out.sort_values(order, kind="stable")
    out = out.groupby(keys, sort=False, dropna=False).tail(1)
    return out.sort_values(keys, kind="stable").reset_index(drop=True)
