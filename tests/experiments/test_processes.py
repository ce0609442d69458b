"""Stage processes (sevila.experiments.processes): output streams line by line, an interrupted stage ends its
whole process group, and `stop_all` ends what other threads started."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from sevila.experiments import processes
from sevila.experiments.processes import StageFailed, run_checked, stream


def test_stream_passes_each_line_as_it_comes():
    lines = []
    rc = stream([sys.executable, "-c", "import sys; print('one'); print('two', file=sys.stderr); sys.exit(3)"],
                ".", lines.append)
    assert rc == 3 and lines == ["one", "two"]


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except FileNotFoundError:
        return None


def test_an_interrupted_stage_ends_its_whole_process_group():
    """Cancelling (or Ctrl-C) while a stage runs ends dvc and the stage under it, not only the direct child."""
    script = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); "
              "time.sleep(60)")
    pids = []

    def log(line):
        pids.append(int(line))
        raise KeyboardInterrupt  # what the flow sees when it is interrupted

    with pytest.raises(KeyboardInterrupt):
        stream([sys.executable, "-c", script], ".", log)
    deadline = time.monotonic() + 10
    while _state(pids[0]) not in (None, "Z") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _state(pids[0]) in (None, "Z")  # the grandchild (`sleep`) is gone too
    assert processes.stop_all() == 0 and not processes._children


def test_stop_all_ends_the_stages_still_running_from_other_threads():
    import threading

    t = threading.Thread(target=lambda: stream(["sleep", "60"], ".", lambda _: None), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not processes._children and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes.stop_all() == 1
    t.join(10)
    assert not t.is_alive() and not processes._children


def test_a_failed_stage_names_its_command_and_folder(tmp_path):
    with pytest.raises(StageFailed, match=r"`-c raise SystemExit\(4\)` exited with status 4 in " + str(tmp_path)):
        run_checked([sys.executable, "-c", "raise SystemExit(4)"], tmp_path, print)
