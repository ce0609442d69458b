"""Where sevila's MLflow runs are stored, and opening that store safely (part of the sevila.tracking package,
whose __init__ re-exports every public name here; see its docstring for the order of precedence of the store).

Opening a brand-new SQLite store creates MLflow's schema and runs its migrations. MLflow does that without any
lock, so two processes that open the same new file at once (two DVC stages, two Prefect tasks) race, and the
loser fails with `table ... already exists` and loses its run. `client` therefore creates a store's schema once
per process under an exclusive file lock (`<db>.lock`, next to the database file), and retries when a process
that does not take the lock (e.g. `mlflow ui`) races it anyway. (Measured with MLflow 3.17 before the lock:
two processes opening one new store at once failed with an Alembic "expected to match one row" error.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlruns"  # next to the SQLite file (already git-ignored in this repo)
LOCK_SUFFIX = ".lock"  # the schema-creation lock file: <db>.lock
INIT_ATTEMPTS = 5  # tries to open a new store that an unlocked process may be creating at the same time


class TrackingError(RuntimeError):
    """The tracking store or a run cannot be used as asked; the message names the store and the run."""

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



_ready: set[str] = set()  # stores whose schema this process has created or checked
_ready_guard = threading.Lock()


def store_lock_path(db: Path) -> Path:
    """The lock file that serialises creating the schema of SQLite store `db`."""
    return db.with_name(db.name + LOCK_SUFFIX)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` for the block; without one where the folder is read-only (a store shared
    for reading: nothing is created there, so there is nothing to serialise)."""
    try:
        fh = open(path, "a+")
    except OSError:
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _open_store(uri: str, db: Path) -> None:
    """Create (or migrate) the schema of SQLite store `db` under its file lock; once per process and store.

    The first process to take the lock creates the schema; the others wait, then find it complete. A process
    outside sevila that creates the schema without the lock can still collide with us (MLflow then reports a
    table that "already exists", or Alembic a version row it did not expect): we try again, by which time the
    schema is there; a store that still fails after INIT_ATTEMPTS tries raises the last error."""
    from mlflow import MlflowClient

    with _ready_guard:
        if uri in _ready:
            return
        db.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(store_lock_path(db)):
            for attempt in range(INIT_ATTEMPTS):
                try:
                    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
                    break
                except Exception:  # noqa: BLE001  (SQLAlchemy, Alembic and MLflow each raise their own)
                    if attempt == INIT_ATTEMPTS - 1:
                        raise
                    time.sleep(0.5 * (attempt + 1))
        _ready.add(uri)


def client(uri: str | None = None) -> MlflowClient:
    """An MlflowClient on `uri` (default: `tracking_uri()`); a SQLite store's directory and schema are created
    first, safely under concurrency (see the module docstring)."""
    _quiet_offline()
    from mlflow import MlflowClient

    uri = normalize_uri(uri) if uri is not None else tracking_uri()
    db = sqlite_path(uri)
    if db is not None:
        _open_store(uri, db)
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


def _experiment_id(c: MlflowClient, name: str, tags: dict[str, str]) -> str:
    """Get or create the experiment; two processes creating it at once is fine (the loser reads it back). Of
    `tags` (sevila/tracking/views.py: the UI's experiment kind and saved views) those it lacks are set."""
    from mlflow.exceptions import MlflowException

    exp = c.get_experiment_by_name(name)
    if exp is None:
        try:
            return c.create_experiment(name, artifact_location=_artifact_location(c.tracking_uri, name),
                                       tags=tags)
        except MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = c.get_experiment_by_name(name)
    if exp.lifecycle_stage != "active":
        raise TrackingError(
            f"experiment {name!r} is deleted in {c.tracking_uri}; restore it (`mlflow experiments restore "
            f"--experiment-id {exp.experiment_id}`) or delete it for good (`mlflow gc`) before logging to it")
    for key, value in tags.items():  # an experiment made before sevila set these; never overwrite an edit
        if key not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def _git_tags() -> dict[str, str]:
    sha, dirty = git_state()
    if sha is None:
        return {}
    return {"git_sha": sha, "git_dirty": "true" if dirty else "false", "mlflow.source.git.commit": sha}
