"""Resuming: a run killed with SIGKILL and rerun on the same out_dir ends with the same weights, optimizer state
and metric history, bit for bit, as a run that was never interrupted; and resuming refuses what it must."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _jsonl_log import JsonlLogger, read_jsonl, read_metrics  # noqa: E402
from _train_toy import Toy, make_dataset, make_eval_fn, mse_loss  # noqa: E402

from sevila.weights.checkpoint_dir import CheckpointError, load_state_file, load_tensors, read_header  # noqa: E402
from sevila.training.loop import train  # noqa: E402
from sevila.config import TrainConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORKER = HERE / "_train_worker.py"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def _worker(out: Path, *extra: str) -> subprocess.Popen:
    # 48 examples, batch 8 (4 micro-batches of 2): 6 steps per epoch, 3 epochs = 18 steps; checkpoints every
    # 4 steps; dropout 0.1 (so restoring the RNG matters); eval every 3 steps with an RNG-drawing eval_fn
    args = [sys.executable, str(WORKER), "--out", str(out), "--result", str(out / "result.json"),
            "--dropout", "0.1", "--eval-every", "3", "--checkpoint-every", "4", *extra]
    return subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def _assert_same_run(a: Path, b: Path) -> None:
    wa, meta_a = load_tensors(a / "last"), read_header(a / "last")
    wb, meta_b = load_tensors(b / "last"), read_header(b / "last")
    assert sorted(wa) == sorted(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert (meta_a.step, meta_a.parts, meta_a.run_config) == (meta_b.step, meta_b.parts, meta_b.run_config)
    sa, sb = load_state_file(a / "last" / "state.pt"), load_state_file(b / "last" / "state.pt")
    for i, st in sa["optimizer"]["state"].items():
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[k], sb["optimizer"]["state"][i][k]), (i, k)
    assert sa["history"] == sb["history"]
    best_a, best_b = load_tensors(a / "best"), load_tensors(b / "best")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


@pytest.mark.timeout(180)
def test_sigkilled_run_resumes_to_the_same_weights_and_metrics(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    procs = [_worker(straight), _worker(killed, "--die-after-step", "4")]  # the two run side by side
    (rc_a, out_a), (rc_b, out_b) = (_finish(p) for p in procs)
    assert rc_a == 0, out_a
    assert rc_b == -signal.SIGKILL, out_b
    # killed during step 6: step 4 was checkpointed, step 5 done and logged, never checkpointed
    assert load_state_file(killed / "last" / "state.pt")["step"] == 4
    assert not (killed / "result.json").exists()
    steps_logged = [r["step"] for r in read_jsonl(killed / "metrics.rank0.jsonl") if "metrics" in r]
    assert max(steps_logged) == 5

    rc_c, out_c = _finish(_worker(killed))
    assert rc_c == 0, out_c
    ra = json.loads((straight / "result.json").read_text())
    rc = json.loads((killed / "result.json").read_text())
    assert (ra["resumed_from"], rc["resumed_from"]) == (None, 4)
    assert rc["step"] == ra["step"] == 18
    assert rc["history"] == ra["history"]  # every loss, lr, grad norm and eval value, exactly
    assert (rc["best_step"], rc["best_value"]) == (ra["best_step"], ra["best_value"])
    _assert_same_run(straight, killed)
    # the log: step 5 was logged twice (before the kill and on replay), with identical values
    rows = [r for r in read_jsonl(killed / "metrics.rank0.jsonl") if r.get("step") == 5]
    assert len(rows) == 2 and rows[0] == rows[1]
    assert read_metrics(killed / "metrics.rank0.jsonl") == read_metrics(straight / "metrics.rank0.jsonl")


class Interrupt(Exception):
    pass


def _interrupting(after_calls: int):
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        if calls > after_calls:
            raise Interrupt
        return mse_loss(model, batch)

    return loss_fn


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**(dict(lr=2e-2, epochs=3, batch_size=8, micro_batch=4, warmup_steps=2, seed=11, grad_clip=None,
                               checkpoint_every=2, progress=False) | kw))


def _run_kw() -> dict:
    return dict(eval_fn=make_eval_fn(make_dataset(8, seed=4), noisy=True), best_metric="val/mse", best_goal="min")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    model = Toy(dropout=0.2)
    return out, model, train(model, make_dataset(24), mse_loss, _cfg(eval_every=2), out, **_run_kw())


# 24 examples / batch 8: 3 steps per epoch; checkpoints at steps 2, 4, 6, 8. Interrupted after step 3 the run
# resumes mid-epoch 0 (step 2), after 5 mid-epoch 1 (step 4), after 6 at the boundary of epochs 1 and 2.
@pytest.mark.parametrize("stop_after_step", [3, 5, 6])
def test_interrupted_in_process_resumes_exactly(tmp_path, uninterrupted, stop_after_step):
    ref_dir, ref, r_ref = uninterrupted
    data, out = make_dataset(24), tmp_path / "run"
    with pytest.raises(Interrupt):  # dies during the step after `stop_after_step` (2 micro-steps a step)
        train(Toy(dropout=0.2), data, _interrupting(2 * stop_after_step), _cfg(eval_every=2), out, **_run_kw())
    model = Toy(dropout=0.2)  # a fresh process would build the model from scratch
    r = train(model, data, mse_loss, _cfg(eval_every=2), out, **_run_kw())
    assert r.resumed_from == stop_after_step // 2 * 2  # the last checkpoint at or before the interruption
    assert r.history == r_ref.history
    assert (r.best_step, r.best_value, r.final_metrics) == (r_ref.best_step, r_ref.best_value, r_ref.final_metrics)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    _assert_same_run(ref_dir, out)


def test_rerun_of_a_finished_run_trains_nothing(tmp_path):
    data = make_dataset(16)
    first = train(Toy(), data, mse_loss, _cfg(epochs=1), tmp_path)
    model = Toy()
    again = train(model, data, mse_loss, _cfg(epochs=1), tmp_path, logger=JsonlLogger(tmp_path / "m.jsonl"))
    assert again.resumed_from == again.step == first.step == 2
    assert again.history == first.history
    weights = load_tensors(tmp_path / "last")
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert read_metrics(tmp_path / "m.jsonl") == {}  # nothing new was trained, so nothing logged


def test_resume_refuses_a_changed_config_but_not_operational_settings(tmp_path):
    data = make_dataset(24)
    train(Toy(), data, mse_loss, _cfg(max_steps=3), tmp_path)
    with pytest.raises(CheckpointError, match=r"config changed \(lr: 0.02 -> 0.05\)"):
        train(Toy(), data, mse_loss, _cfg(max_steps=3, lr=5e-2), tmp_path)
    r = train(Toy(), data, mse_loss, _cfg(max_steps=3, checkpoint_every=1, num_workers=0), tmp_path)
    assert r.resumed_from == 3


def test_existing_run_is_not_overwritten_without_resume(tmp_path):
    data = make_dataset(16)
    train(Toy(), data, mse_loss, _cfg(epochs=1), tmp_path)
    with pytest.raises(FileExistsError, match="resume=False"):
        train(Toy(), data, mse_loss, _cfg(epochs=1), tmp_path, resume=False)


def test_resume_into_a_model_with_other_trainable_parameters_fails_clearly(tmp_path):
    data = make_dataset(16)
    train(Toy(), data, mse_loss, _cfg(epochs=1), tmp_path)
    other = Toy()
    other.backbone.requires_grad_(True)  # now the backbone trains too: the checkpoint lacks it
    with pytest.raises(CheckpointError, match="missing .*backbone.0.bias"):
        train(other, data, mse_loss, _cfg(epochs=1), tmp_path)
