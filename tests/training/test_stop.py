"""The loop's stop condition: `should_stop(step, metrics)` after each evaluation ends the run at that step with a
consistent `last/`, and a rerun on the same directory returns the stopped run instead of training on."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_toy import Toy, make_dataset, make_eval_fn, mse_loss  # noqa: E402

from sevila.weights.checkpoint_dir import load_state_file, load_tensors  # noqa: E402
from sevila.training.loop import train  # noqa: E402
from sevila.config import TrainConfig

# 24 examples / batch 4 = 6 steps per epoch, 2 epochs = 12 steps; evaluated every 2 steps
CFG = TrainConfig(lr=1e-2, epochs=2, batch_size=4, micro_batch=2, eval_every=2, checkpoint_every=5, grad_clip=None,
                  seed=3, progress=False)


def test_stops_at_the_step_the_condition_first_holds(tmp_path):
    asked = []

    def should_stop(step, metrics):
        asked.append((step, sorted(metrics)))
        return step >= 6

    model = Toy()
    res = train(model, make_dataset(24), mse_loss, CFG, tmp_path, eval_fn=make_eval_fn(make_dataset(8, seed=9)),
                should_stop=should_stop)
    assert asked == [(2, ["val/mse", "val/neg_mse"]), (4, ["val/mse", "val/neg_mse"]),
                     (6, ["val/mse", "val/neg_mse"])]
    assert (res.step, res.total_steps, res.stopped) == (6, 12, True)
    assert [h["step"] for h in res.history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    # last/ is written AT the stop (checkpoint_every=5 alone would have left it at step 5) and holds the model
    state = load_state_file(tmp_path / "last" / "state.pt")
    assert (state["step"], state["stopped"]) == (6, True)
    saved = load_tensors(tmp_path / "last")
    assert all(torch.equal(saved[n], p) for n, p in model.named_parameters() if p.requires_grad)


def test_a_stop_on_a_metric_keeps_the_weights_that_met_it(tmp_path):
    ev = make_eval_fn(make_dataset(8, seed=9))
    full = train(Toy(), make_dataset(24), mse_loss, CFG, tmp_path / "full", eval_fn=ev)
    mse = {h["step"]: h["val/mse"] for h in full.history if "val/mse" in h}
    target = mse[8]  # stop the first time validation MSE reaches step 8's value
    model = Toy()
    res = train(model, make_dataset(24), mse_loss, CFG, tmp_path / "stop", eval_fn=ev,
                should_stop=lambda step, m: m["val/mse"] <= target)
    first = min(s for s, v in mse.items() if v <= target)
    assert res.step == first and res.final_metrics["val/mse"] == mse[first]
    with torch.no_grad():
        assert ev(model)["val/mse"] == mse[first]


def test_rerun_after_a_stop_does_not_train_on(tmp_path, caplog):
    data, ev = make_dataset(24), make_eval_fn(make_dataset(8, seed=9))
    first = Toy()
    stopped = train(first, data, mse_loss, CFG, tmp_path, eval_fn=ev, should_stop=lambda step, m: step >= 4)
    again = Toy()  # a fresh process: the initial weights, then the resume
    with caplog.at_level(logging.INFO, logger="sevila.training.loop"):
        res = train(again, data, mse_loss, CFG, tmp_path, eval_fn=ev)  # no stop condition this time
    assert (res.step, res.stopped, res.resumed_from) == (4, True, 4)
    assert res.history == stopped.history and res.final_metrics == stopped.final_metrics
    assert all(torch.equal(p, q) for p, q in zip(first.parameters(), again.parameters()))
    assert "resuming at step 4/12" in caplog.text and "nothing left to train" in caplog.text


def test_should_stop_needs_an_eval_fn(tmp_path):
    with pytest.raises(ValueError, match="should_stop .* needs an eval_fn"):
        train(Toy(), make_dataset(24), mse_loss, CFG, tmp_path, should_stop=lambda step, m: True)
