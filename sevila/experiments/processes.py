"""Stage processes: a child process whose output streams line by line to a logger, and ending it with everything
it started (its own process group: `dvc` and the `sevila stage` under it), so no stage trains on after the run
that asked for it is gone. Used by `sevila round` (sevila.experiments.rounds) and the Prefect tasks (flows/)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable

from sevila.experiments.repro import child_env

STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long

_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()


class StageFailed(RuntimeError):
    """A stage's process exited non-zero (its output went to the log before this)."""


def stop(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """End `proc` and everything it started (its own process group): SIGTERM, then SIGKILL after `grace` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_all() -> int:
    """End every stage process this process started that still runs; returns how many there were."""
    with _children_lock:
        procs = [p for p in _children if p.poll() is None]
    for p in procs:
        stop(p)
    return len(procs)


def stream(cmd: list[str], cwd: str | Path, log: Callable[[str], object]) -> int:
    """Run `cmd` in `cwd`, passing each line of its output (stdout and stderr) to `log` as it comes; returns the
    exit status. Interrupted (cancellation, Ctrl-C), it ends the child's process group before re-raising."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    with _children_lock:
        _children.add(proc)
    try:
        for line in proc.stdout:
            log(line.rstrip("\n"))
        return proc.wait()
    except BaseException:
        stop(proc)
        raise
    finally:
        proc.stdout.close()
        with _children_lock:
            _children.discard(proc)


def run_checked(cmd: list[str], cwd: str | Path, log: Callable[[str], object]) -> None:
    """`stream`, raising StageFailed (naming the command and folder) when the process exits non-zero."""
    rc = stream(cmd, cwd, log)
    if rc != 0:
        raise StageFailed(f"`{' '.join(cmd[1:])}` exited with status {rc} in {cwd}")
