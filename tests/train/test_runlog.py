"""The logging interface: the protocol, the JSONL backend (atomic appends, torn tail, replayed steps)."""
from __future__ import annotations

import math

import pytest

from sevila.runlog import JsonlLogger, NullLogger, RunLogger, read_jsonl, read_metrics
from sevila.train import Precision


def test_backends_satisfy_the_protocol():
    assert isinstance(NullLogger(), RunLogger)
    assert isinstance(JsonlLogger("/tmp/unused.jsonl"), RunLogger)
    assert not isinstance(object(), RunLogger)


def test_jsonl_records_and_replayed_steps(tmp_path):
    path = tmp_path / "sub" / "m.jsonl"
    lg = JsonlLogger(path)
    lg.log_params({"lr": 1e-4, "precision": Precision.BF16, "betas": (0.9, 0.999), "clip": None,
                   "bad": float("nan")})
    lg.log_metrics({"loss": 2.0, "lr": 1e-5}, step=1)
    lg.log_metrics({"loss": 1.5}, step=2)
    lg.log_metrics({"val/acc": 0.25}, step=2)
    lg.log_metrics({"loss": 1.25}, step=2)  # a resumed run replays step 2: the last value wins
    lg.log_artifact(tmp_path / "x.txt")
    recs = read_jsonl(path)
    assert recs[0] == {"params": {"lr": 1e-4, "precision": "bf16", "betas": [0.9, 0.999], "clip": None,
                                  "bad": "nan"}}
    assert recs[-1] == {"artifact": str((tmp_path / "x.txt").resolve())}
    assert read_metrics(path) == {1: {"loss": 2.0, "lr": 1e-5}, 2: {"loss": 1.25, "val/acc": 0.25}}
    assert len(path.read_text().splitlines()) == 6  # one line per call
    with pytest.raises(ValueError, match="step"):
        lg.log_metrics({"loss": 1.0}, step=-1)


def test_torn_last_line_is_ignored_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    lg = JsonlLogger(path)
    lg.log_metrics({"loss": 1.0}, step=1)
    with open(path, "a") as f:
        f.write('{"step": 2, "metr')  # a crash mid-write
    assert read_metrics(path) == {1: {"loss": 1.0}}
    with open(path, "a") as f:
        f.write("\n")
    lg.log_metrics({"loss": math.inf}, step=3)
    with pytest.raises(ValueError, match=r"m.jsonl:2: not a JSON record"):
        read_jsonl(path)
