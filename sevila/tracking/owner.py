"""Which process owns a RUNNING run, and ending the runs whose process is gone (used by sevila.tracking).

MLflow marks a run FINISHED/FAILED/KILLED only when the process that made it says so. A process killed with
SIGKILL (the OOM killer, `kill -9`, a cancelled CI job) says nothing, and its run would stay RUNNING forever,
looking like work in progress in the UI and in `runs_frame`. So every run records its owner as the tag
`sevila.owner` = `<host>:<pid>:<process start time>`, and `reap_experiments` marks KILLED every RUNNING run
whose owner is on this host and no longer alive (the start time tells a reused pid from the original
process). It runs when a run or a parent run is opened and when `sevila report` reads the runs. Runs owned by
another host are left alone: from here we cannot tell whether their process is alive.

SIGTERM (what `kill`, Prefect cancellation and `timeout` send) is turned into an orderly exit while a run is
open in the main thread: `terminate_as_exit` makes the run end KILLED and the process exit with status 143.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

OWNER_TAG = "sevila.owner"
END_REASON_TAG = "sevila.end_reason"
SIGTERM_EXIT = 128 + signal.SIGTERM  # the shell's status of a process ended by SIGTERM


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: str  # the process start time in clock ticks since boot (/proc/<pid>/stat field 22); "" if unknown

    def tag(self) -> str:
        return f"{self.host}:{self.pid}:{self.started}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        parts = text.rsplit(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit():
            return None
        return cls(host=parts[0], pid=int(parts[1]), started=parts[2])


def process_start(pid: int) -> str:
    """The start time of process `pid` (clock ticks since boot), "" where /proc cannot tell (not Linux, gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def this_process() -> Owner:
    pid = os.getpid()
    return Owner(socket.gethostname(), pid, process_start(pid))


def is_alive(owner: Owner) -> bool:
    """Whether `owner` (a process on this host) still runs: the pid exists and, where known, started at the
    same time (else the pid was reused by another process)."""
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to another user
        pass
    now = process_start(owner.pid)
    return not (owner.started and now and now != owner.started)


def reap_experiments(c: MlflowClient, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED every RUNNING run of `experiment_ids` whose owner process on this host is gone; returns
    their ids. Two processes reaping the same run at once both write KILLED: harmless."""
    from mlflow.entities import RunTag

    if not experiment_ids:
        return []
    host = socket.gethostname()
    reaped = []
    token = None
    while True:
        page = c.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000, page_token=token)
        for run in page:
            owner = Owner.parse(run.data.tags.get(OWNER_TAG, ""))
            if owner is None or owner.host != host or is_alive(owner):
                continue
            c.log_batch(run.info.run_id, tags=[RunTag(END_REASON_TAG, f"process {owner.pid} on {host} ended "
                                                                       "without closing the run (killed)")])
            c.set_terminated(run.info.run_id, "KILLED")
            reaped.append(run.info.run_id)
        token = page.token
        if not token:
            return reaped


class Termination:
    """Set by the SIGTERM handler of `terminate_as_exit`: the run was ended by a signal, not by an error."""

    def __init__(self) -> None:
        self.signalled = False


@contextlib.contextmanager
def terminate_as_exit() -> Iterator[Termination]:
    """While the block runs in the main thread, SIGTERM raises SystemExit(143) (after any handler installed
    before, e.g. Prefect's, has run) so the open run is closed KILLED instead of being left RUNNING. Elsewhere
    (a worker thread cannot install handlers) this does nothing and `reap_stale_runs` cleans up later."""
    state = Termination()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:  # the process chose to ignore SIGTERM: keep it that way
        yield state
        return

    def handler(signum, frame):
        state.signalled = True
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(SIGTERM_EXIT)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)
