"""The training loop in one process: schedule, parameter groups, accumulation, data order, checkpoints
(content, safety, atomicity), evaluation and best-checkpoint tracking, precision policy."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import default_collate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_toy import Toy, make_dataset, make_eval_fn, mse_loss  # noqa: E402


from sevila.weights.checkpoint_dir import (
    CheckpointError, load_state_file, load_tensors, load_weights, recover_dir, write_checkpoint_dir,
)
from sevila.training.loop import Goal, epoch_batches, lr_at, param_groups, train  # noqa: E402
from sevila.config import Precision, TrainConfig
from sevila.model.precision import use_bf16


class MemoryLogger:
    """A RunLogger that keeps metrics as {step: {name: value}}; a step logged again updates it (the contract)."""

    def __init__(self) -> None:
        self.metrics: dict[int, dict[str, float]] = {}

    def log_metrics(self, metrics, step: int) -> None:
        self.metrics.setdefault(step, {}).update(metrics)

    def log_params(self, params) -> None:
        return None

    def log_artifact(self, path) -> None:
        return None


def cfg(**kw) -> TrainConfig:
    base = dict(lr=1e-2, epochs=1, batch_size=8, micro_batch=2, grad_clip=None, seed=3, progress=False)
    return TrainConfig(**(base | kw))


# ------------------------------------------------------------------------------------------------ schedule

@pytest.mark.parametrize("step, expected", [
    (0, 0.5),          # warm-up: 1.0 * (0 + 1) / 2
    (1, 1.0),          # last warm-up step reaches the peak: 1.0 * 2 / 2
    (2, 1.0),          # cosine starts at the peak: progress 0/8
    (4, 0.86819805),   # progress 2/8: 0.1 + 0.9 * (1 + cos(pi/4)) / 2 = 0.1 + 0.45 * 1.70710678
    (6, 0.55),         # progress 4/8: 0.1 + 0.9 * (1 + 0) / 2
    (9, 0.13425421),   # progress 7/8: 0.1 + 0.45 * (1 + cos(7pi/8)) = 0.1 + 0.45 * 0.07612047
    (10, 0.1),         # at/past the end: the floor, 0.1 * 1.0
])
def test_lr_schedule_pinned(step, expected):
    assert lr_at(step, total_steps=10, base_lr=1.0, warmup_steps=2, min_lr_ratio=0.1) == pytest.approx(expected,
                                                                                                      abs=1e-8)


def test_lr_schedule_no_warmup_no_floor():
    assert lr_at(0, 1, 3e-4, 0) == pytest.approx(3e-4)  # a one-step run uses the peak
    assert lr_at(5, 10, 2.0, 0) == pytest.approx(1.0)  # progress 5/10 of a pure cosine: half the peak
    with pytest.raises(ValueError):
        lr_at(-1, 10, 1.0, 0)


# ------------------------------------------------------------------------------------------ param groups

def test_param_groups_decay_matrices_only_and_skip_frozen():
    model = Toy()
    model.query_tokens = nn.Parameter(torch.zeros(1, 4, 12))  # BLIP-2-style query tokens: 3-d, decayed
    groups = param_groups(model, 0.05)
    by_wd = {g["weight_decay"]: sorted(g["param_names"]) for g in groups}
    assert by_wd == {
        0.05: ["head.0.weight", "head.4.weight", "query_tokens"],
        0.0: ["head.0.bias", "head.1.bias", "head.1.weight", "head.4.bias"],  # biases and the LayerNorm gain
    }
    assert not any(n.startswith("backbone") for g in groups for n in g["param_names"])
    for g in groups:  # names and tensors line up
        named = dict(model.named_parameters())
        assert all(named[n] is p for n, p in zip(g["param_names"], g["params"]))


# ------------------------------------------------------------------------------------------ data order

def test_epoch_batches_reproducible_split_across_ranks_and_resumable():
    one = epoch_batches(40, epoch=2, seed=7, batch_size=8, micro_batch=2)
    assert one == epoch_batches(40, epoch=2, seed=7, batch_size=8, micro_batch=2)
    assert one != epoch_batches(40, epoch=3, seed=7, batch_size=8, micro_batch=2)  # a new order per epoch
    assert len(one) == 5 * 4 and all(len(b) == 2 for b in one)
    assert sorted(i for b in one for i in b) == list(range(40))  # 40 = 5 full batches: every example once
    r0 = epoch_batches(40, 2, 7, 8, 2, rank=0, world_size=2)
    r1 = epoch_batches(40, 2, 7, 8, 2, rank=1, world_size=2)
    for s in range(5):  # each global batch is split between the ranks, together the same 8 examples
        glob = [i for b in one[4 * s:4 * s + 4] for i in b]
        assert [i for b in r0[2 * s:2 * s + 2] for i in b] == glob[:4]
        assert [i for b in r1[2 * s:2 * s + 2] for i in b] == glob[4:]
    assert epoch_batches(40, 2, 7, 8, 2, start_step=3) == one[12:]
    assert len(epoch_batches(43, 0, 7, 8, 2)) == 5 * 4  # the tail of 3 that fills no batch is dropped
    with pytest.raises(ValueError, match="multiple"):
        epoch_batches(40, 0, 7, 8, 4, world_size=3)


# ------------------------------------------------------------------------------------------ accumulation

def test_accumulation_4x2_equals_one_batch_of_8_and_a_hand_made_step(tmp_path):
    data = make_dataset(8)
    # eps=1 makes Adam's update depend on the gradient's size (with eps~0 the first step is ~lr*sign(g), which
    # would hide a wrongly scaled loss); the huge clip logs the exact gradient norm without clipping anything.
    kw = dict(lr=0.1, max_steps=1, eps=1.0, grad_clip=1e9)
    models, results = {}, {}
    for micro in (2, 8):
        models[micro] = Toy()
        results[micro] = train(models[micro], data, mse_loss, cfg(micro_batch=micro, **kw), tmp_path / f"m{micro}")
    ref = Toy()
    opt = torch.optim.AdamW(param_groups(ref, 0.05), lr=0.1, eps=1.0)
    mse_loss(ref, default_collate(data)).backward()
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters() if p.grad is not None]))
    opt.step()
    init = dict(Toy().named_parameters())
    for micro in (2, 8):
        for name, p in ref.named_parameters():
            got = dict(models[micro].named_parameters())[name]
            assert torch.allclose(got, p, atol=1e-6), (micro, name)
            if p.requires_grad:
                assert not torch.allclose(got, init[name], atol=1e-4), name  # it did move
            else:
                assert torch.equal(got, init[name])  # the frozen backbone did not
        (rec,) = results[micro].history
        assert rec["grad_norm"] == pytest.approx(float(ref_norm), rel=1e-5)
        assert rec["loss"] == pytest.approx(float(mse_loss(Toy(), default_collate(data)).detach()), rel=1e-5)


def test_accumulation_equivalence_over_epochs(tmp_path):
    data = make_dataset(24)
    a, b = Toy(), Toy()
    ra = train(a, data, mse_loss, cfg(micro_batch=2, epochs=2, warmup_steps=2, eps=1.0), tmp_path / "a")
    rb = train(b, data, mse_loss, cfg(micro_batch=8, epochs=2, warmup_steps=2, eps=1.0), tmp_path / "b")
    assert ra.step == rb.step == 6  # 24 // 8 = 3 steps per epoch, 2 epochs
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n
    assert [h["lr"] for h in ra.history] == [lr_at(s, 6, 1e-2, 2) for s in range(6)]
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rb.history], rel=1e-5)


def test_batch_size_must_split_evenly_and_dataset_must_fill_a_batch(tmp_path):
    with pytest.raises(ValueError, match="multiple of micro_batch"):
        TrainConfig(lr=1e-3, epochs=1, batch_size=8, micro_batch=3)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(Toy(), make_dataset(5), mse_loss, cfg(), tmp_path)


# ------------------------------------------------------------------------------------------ checkpoints

def test_checkpoint_holds_only_trainable_weights_and_safe_state(tmp_path):
    model = Toy()
    res = train(model, make_dataset(16), mse_loss, cfg(epochs=2, checkpoint_every=3), tmp_path)
    last = res.last_checkpoint
    assert last == tmp_path / "last" and sorted(os.listdir(tmp_path)) == ["last"]
    with safe_open(str(last / "trainable.safetensors"), "pt") as f:
        names, meta = sorted(f.keys()), f.metadata()
    assert names == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert meta["format"] == "sevila.train/1" and meta["step"] == "4"
    assert json.loads(meta["modules"]) == ["head"] and json.loads(meta["config"])["batch_size"] == 8
    state = torch.load(last / "state.pt", weights_only=True)  # plain torch, the safe loader: must just work
    assert (state["step"], state["epoch"], state["position"]) == (4, 2, 0)  # 2 epochs of 2 steps, done
    assert [h["step"] for h in state["history"]] == [1, 2, 3, 4]
    assert set(state["optimizer"]["state"]) == set(range(len(names)))
    assert json.loads((last / "meta.json").read_text())["n_trainable_values"] == 12 * 12 + 12 + 12 + 12 + 12 + 1
    fresh = Toy()
    report = load_weights(fresh, last)
    assert report.set_parts == ("head",) and report.step == 4 and report.n_tensors == 6
    for (n, p), (_, q) in zip(model.named_parameters(), fresh.named_parameters()):
        assert torch.equal(p, q), n


class Payload:
    """Unpickling this runs open(marker, 'w'): code execution, which the safe loader must refuse."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_state_file_with_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "state.pt"
    torch.save({"format": "sevila.train/1", "step": 1, "x": Payload(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_state_file(evil)
    assert not marker.exists()
    torch.save({"format": "sevila.train/1", "step": 1, "rng": [torch.zeros(3)]}, tmp_path / "ok.pt")
    assert load_state_file(tmp_path / "ok.pt")["step"] == 1


def test_load_weights_rejects_a_checkpoint_of_another_model(tmp_path):
    write_checkpoint_dir(tmp_path / "c", {"head.0.weight": torch.zeros(3, 3)},
                         {"step": 1, "modules": ["head"], "config": {}})
    with pytest.raises(CheckpointError, match="missing .*head.0.bias"):
        load_weights(Toy(), tmp_path / "c")


def _meta(step: int) -> dict:
    return {"step": step, "modules": ["head"], "config": {}}


def test_checkpoint_write_is_atomic_old_one_survives_a_failed_write(tmp_path, monkeypatch):
    final = tmp_path / "last"
    w = {"a": torch.ones(2)}
    write_checkpoint_dir(final, w, _meta(1), {"format": "sevila.train/1", "step": 1})

    def failing_save(obj, path):  # dies after the weights of step 2 are written, before the state
        assert json.loads((final / "meta.json").read_text())["step"] == 1  # the new files are elsewhere
        assert Path(path).parent != final
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint_dir(final, {"a": torch.zeros(2)}, _meta(2), {"format": "sevila.train/1", "step": 2})
    assert sorted(os.listdir(tmp_path)) == ["last"]  # no partial directory left anywhere
    assert json.loads((final / "meta.json").read_text())["step"] == 1
    assert torch.equal(load_weights_file_tensor(final), torch.ones(2))


def load_weights_file_tensor(d: Path) -> torch.Tensor:
    return load_tensors(d)["a"]


def test_recovery_after_a_crash_between_the_two_renames(tmp_path):
    final = tmp_path / "last"
    write_checkpoint_dir(final, {"a": torch.ones(2)}, _meta(1))
    os.replace(final, tmp_path / ".last.old")  # the state a crash between the renames leaves
    (tmp_path / ".last.tmp-abc").mkdir()  # and a half-written temp dir of the new one
    recover_dir(final)
    assert sorted(os.listdir(tmp_path)) == ["last"]
    assert json.loads((final / "meta.json").read_text())["step"] == 1
    # both present: the new one was published, the old copy is stale
    write_checkpoint_dir(tmp_path / ".last.old", {"a": torch.zeros(2)}, _meta(0))
    recover_dir(final)
    assert sorted(os.listdir(tmp_path)) == ["last"] and torch.equal(load_weights_file_tensor(final), torch.ones(2))


# ------------------------------------------------------------------------------------ eval, best, logging

def test_eval_best_checkpoint_and_logged_metrics(tmp_path):
    values = iter([0.5, 0.8, 0.7])  # steps 2, 4, 6; step 6 is also the end, evaluated once
    seen_modes = []

    def eval_fn(model):
        seen_modes.append((model.training, torch.is_grad_enabled()))
        return {"acc": next(values)}

    log = MemoryLogger()
    res = train(Toy(), make_dataset(24), mse_loss, cfg(epochs=2, eval_every=2), tmp_path / "run",
                logger=log, eval_fn=eval_fn, best_metric="acc")
    assert seen_modes == [(False, False)] * 3  # eval mode, no autograd
    assert (res.best_step, res.best_value) == (4, 0.8)
    assert res.final_metrics == {"acc": 0.7}
    best_meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert (best_meta["step"], best_meta["best_value"], best_meta["best_metric"]) == (4, 0.8, "acc")
    assert not (tmp_path / "run" / "best" / "state.pt").exists()  # weights to use, not to resume from
    logged = log.metrics
    assert list(logged) == [1, 2, 3, 4, 5, 6]
    assert logged[4]["acc"] == 0.8 and set(logged[3]) == {"loss", "lr"}
    assert logged[6]["lr"] == pytest.approx(lr_at(5, 6, 1e-2, 0))
    train_keys, eval_keys = ["loss", "lr"], ["acc"]
    assert [(h["step"], sorted(k for k in h if k != "step")) for h in res.history] == [
        (1, train_keys), (2, train_keys), (2, eval_keys), (3, train_keys), (4, train_keys), (4, eval_keys),
        (5, train_keys), (6, train_keys), (6, eval_keys)]


def test_best_goal_min_and_missing_metric(tmp_path):
    values = iter([0.5, 0.2, 0.3])
    res = train(Toy(), make_dataset(24), mse_loss, cfg(epochs=1, eval_every=1), tmp_path / "a",
                eval_fn=lambda m: {"loss": next(values)}, best_metric="loss", best_goal=Goal.MIN)
    assert (res.best_step, res.best_value) == (2, 0.2)
    with pytest.raises(KeyError, match="'acc'"):
        train(Toy(), make_dataset(24), mse_loss, cfg(), tmp_path / "b", eval_fn=lambda m: {"f1": 1.0},
              best_metric="acc")


def test_evaluation_does_not_change_the_training_trajectory(tmp_path):
    # dropout draws from the global RNG during training and eval_fn draws from it too: the loop saves and
    # restores the RNGs around evaluation, so evaluating often or never gives the same weights
    data, ev = make_dataset(24), make_eval_fn(make_dataset(8, seed=9), noisy=True)
    a, b = Toy(dropout=0.3), Toy(dropout=0.3)
    train(a, data, mse_loss, cfg(epochs=2, eval_every=1), tmp_path / "a", eval_fn=ev)
    train(b, data, mse_loss, cfg(epochs=2), tmp_path / "b", eval_fn=ev)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


def test_non_finite_loss_stops_before_the_update(tmp_path):
    model = Toy()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="optimizer step 1"):
        train(model, make_dataset(8), lambda m, b: mse_loss(m, b) * float("nan"), cfg(), tmp_path)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_non_finite_gradient_stops_before_the_update(tmp_path):
    # issue 9's rehearsal: a tiny BLIP-2 went to all-nan Localizer scores one step after a finite loss
    model = Toy()
    before = {n: p.clone() for n, p in model.named_parameters()}

    def loss(m, b):  # finite value (0 added), infinite gradient: d sqrt(|w - w'|) / dw at 0
        w = m.head[0].weight
        return mse_loss(m, b) + (w - w.detach()).abs().sqrt().sum()

    with pytest.raises(FloatingPointError, match="gradient norm is nan at optimizer step 1"):
        train(model, make_dataset(8), loss, cfg(), tmp_path)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_loss_must_be_a_scalar(tmp_path):
    with pytest.raises(TypeError, match="scalar"):
        train(Toy(), make_dataset(8), lambda m, b: (m(b["x"]) - b["y"]) ** 2, cfg(), tmp_path)


# ------------------------------------------------------------------------------------------ precision

def test_precision_policy_on_cpu(tmp_path):
    cpu = torch.device("cpu")
    assert use_bf16(Precision.AUTO, cpu) is False  # CPU stays fp32 unless asked
    assert use_bf16(Precision.BF16, cpu) is True and use_bf16(Precision.FP32, cpu) is False
    seen = []

    def loss_fn(model, batch):
        out = model.head[0](model.backbone(batch["x"]))
        seen.append(out.dtype)
        return mse_loss(model, batch)

    train(Toy(), make_dataset(8), loss_fn, cfg(max_steps=1, micro_batch=8), tmp_path / "auto")
    train(Toy(), make_dataset(8), loss_fn, cfg(max_steps=1, micro_batch=8, precision=Precision.BF16), tmp_path / "bf")
    assert seen == [torch.float32, torch.bfloat16]
    assert TrainConfig(lr=1, epochs=1, batch_size=1, micro_batch=1, precision="bf16").precision is Precision.BF16
