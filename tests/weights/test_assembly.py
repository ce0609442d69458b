"""One model assembly for the stages (`sevila.stages.common.load_model`) and `sevila answer`
(`sevila.inference.predictor.load_chain`),
the precision the model is held in (frozen ViT/T5 in bf16 where bf16 computes, bridges fp32), and a BLIP-2
directory without a tokenizer refused with its name before any weight is read."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from sevila.weights import load as loading, transformers_blip2 as weights_hf
from sevila.stages.common import answerer_dir, load_model, localizer_dir
from sevila.weights.checkpoint_dir import CheckpointError
from sevila.weights.ours import PARTS, save_sevila
from sevila.cli import main as cli_main
from sevila.config import AnswererId, Config, LocalizerId, Precision, TrainConfig, build
from sevila.synthetic.render import write_mp4
from sevila.inference.features import FeatureCache
from sevila.weights.load import assemble, load_for_inference
from sevila.inference.predictor import load_chain
from sevila.model.precision import hold_frozen, use_bf16
from sevila.training.loop import train

from .test_checkpoints import _tiny_blip2


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_factory):
    """A pipeline's models/ folder: backbone (all parts), localizer qvh_sr_r1 and answerer finetuned_r1, each from a
    differently seeded model (so a module that is not laid over shows in the numbers)."""
    root = tmp_path_factory.mktemp("project")
    cfg = build(Config, {"paths": {"models": str(root / "models")},
                         "model": {"weights": str(root / "models" / "backbone"), "device": "cpu"}}, "")
    backbone = save_sevila(model_factory(seed=0), root / "models" / "backbone", modules=PARTS, step=1)
    loc = save_sevila(model_factory(seed=7), localizer_dir(cfg, LocalizerId.QVH_SR, 1), modules=("localizer",))
    ans = save_sevila(model_factory(seed=9), answerer_dir(cfg, round_=1), modules=("answerer",))
    return cfg, backbone, loc, ans


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def test_stages_and_answer_assemble_the_same_model(models):
    cfg, backbone, loc, ans = models
    staged = load_model(cfg, LocalizerId.QVH_SR, AnswererId.FINETUNED, round_=1)
    answered, reports = load_chain(backbone, loc, ans, device="cpu")
    assert _same(staged, answered)
    assert [str(Path(r.source).parent) for r in reports] == [str(backbone), str(loc), str(ans)]
    for m in (staged, answered):  # on a CPU nothing changes: all fp32, frozen, eval
        assert {p.dtype for p in m.parameters()} == {torch.float32}
        assert not any(p.requires_grad for p in m.parameters()) and not m.training
    zero_shot = load_model(cfg)  # the backbone alone differs from it (the modules were laid over)
    assert not _same(zero_shot, staged) and _same(zero_shot, load_chain(backbone, device="cpu")[0])


def test_weights_over_our_backbone_in_the_stages_too(models):
    """The one difference there was: `model.weights` (a .pth or our checkpoint) laid over OUR backbone checkpoint
    (`model.backbone`), which only `sevila answer` could assemble."""
    cfg, backbone, _, ans = models
    over = build(Config, {"paths": {"models": cfg.paths.models},
                          "model": {"weights": str(ans), "backbone": str(backbone), "device": "cpu"}}, "")
    staged = load_model(over)
    answered, _ = load_chain(backbone, weights=ans, device="cpu")
    assert _same(staged, answered)
    assert _same(staged, load_model(cfg, answerer=AnswererId.FINETUNED, round_=1))  # = the answerer laid over


def test_bf16_policy_is_a_pure_function_of_its_arguments(monkeypatch):
    def no_cuda():
        raise AssertionError("asked torch.cuda although bf16_supported was given")

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_cuda)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert use_bf16(Precision.AUTO, cuda, bf16_supported=True)
    assert not use_bf16(Precision.AUTO, cuda, bf16_supported=False)  # e.g. a V100: fp32
    assert not use_bf16(Precision.AUTO, cpu) and not use_bf16(Precision.AUTO, "cpu", bf16_supported=True)
    assert use_bf16(Precision.BF16, cpu) and not use_bf16(Precision.FP32, cuda, bf16_supported=True)


def test_hold_frozen_on_the_meta_device(model_factory):
    """The dtype of every parameter as a GPU run holds it, checked without a GPU: ViT and T5 in bf16, the two
    bridges (trainable) in fp32, nothing requiring a gradient until a stage switches a module on."""
    with torch.device("meta"):
        model = model_factory(seed=0)
    hold_frozen(model, bf16=True)
    dtypes = {name.split(".")[0]: {p.dtype for n, p in model.named_parameters() if n.startswith(name.split(".")[0])}
              for name, _ in model.named_parameters()}
    assert dtypes == {"vision": {torch.bfloat16}, "t5": {torch.bfloat16}, "localizer": {torch.float32},
                      "answerer": {torch.float32}}
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_assemble_holds_the_frozen_parts_as_precision_says(models):
    _, backbone, loc, _ = models
    model, _ = assemble(backbone, None, [loc], device="cpu", precision=Precision.BF16)
    assert model.vision.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.t5.shared.weight.dtype == torch.bfloat16
    assert model.localizer.proj.weight.dtype == torch.float32 and model.answerer.proj.weight.dtype == torch.float32
    assert next(model.parameters()).device.type == "cpu"


def test_the_chain_runs_with_the_frozen_parts_in_bf16(tmp_path, model_factory):
    """The bf16 path's plumbing, on a CPU (CPU bf16 kernels, not a GPU measurement): the feature cache feeds the
    bf16 ViT, the fp32 bridges feed the bf16 T5, and one Answerer step under bf16 autocast trains the fp32 bridge."""
    model = hold_frozen(model_factory(seed=2), bf16=True)
    rng = np.random.default_rng(0)
    video = write_mp4(tmp_path / "v.mp4", rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8), fps=8)
    feats, _ = FeatureCache(tmp_path / "c", model).get(video, 4)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    qa = "Question: what colour is the square? Option A: red. Option B: blue. Considering the information " \
         "presented in the frame, select the correct answer from the options."
    with torch.no_grad():
        res = model.answer_frames(feats[None, :2], [qa], [2])
    assert res.option_logits.dtype == torch.bfloat16  # the T5's numbers
    assert torch.isfinite(res.option_logits[0, :2]).all() and res.option_logits[0, 2:].isneginf().all()
    model.set_trainable(answerer=True)
    before = model.answerer.proj.weight.detach().clone()
    items = [{"features": feats[:2], "answer": 0}] * 2

    def loss_fn(m, batch):
        return m.answerer_loss(torch.stack([b["features"] for b in batch]), [qa] * len(batch),
                               [b["answer"] for b in batch])[0]

    result = train(model, items, loss_fn, TrainConfig(lr=1e-3, batch_size=2, micro_batch=1, precision="bf16",
                                                      progress=False), tmp_path / "run", collate_fn=list,
                   device="cpu")
    assert result.step == 1 and model.answerer.proj.weight.dtype == torch.float32
    assert not torch.equal(model.answerer.proj.weight, before)
    assert model.t5.shared.weight.dtype == torch.bfloat16 and model.t5.shared.weight.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run it where one is lent)")
def test_on_a_gpu_the_stages_hold_frozen_parts_in_bf16(models, tmp_path):
    """On a GPU with bf16, what `load_model` gives the stages: ViT and T5 in bf16 on the GPU, bridges fp32, and the
    cached features through the Localizer and Answerer give finite numbers."""
    cfg, _, _, _ = models
    gpu = build(Config, {"paths": {"models": cfg.paths.models},
                         "model": {"weights": cfg.model.weights, "device": "cuda"}}, "")
    model = load_model(gpu, LocalizerId.QVH_SR, AnswererId.FINETUNED, round_=1)
    want = torch.bfloat16 if use_bf16(Precision.AUTO, torch.device("cuda")) else torch.float32
    assert model.vision.embeddings.patch_embedding.weight.dtype == want and model.t5.shared.weight.dtype == want
    assert model.answerer.proj.weight.dtype == torch.float32 and model.answerer.proj.weight.is_cuda
    rng = np.random.default_rng(0)
    video = write_mp4(tmp_path / "v.mp4", rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8), fps=8)
    feats, _ = FeatureCache(tmp_path / "c", model).get(video, 4)
    with torch.no_grad():
        scores = model.localize(feats[None].cuda(), ["Question: is it red? Option A: yes. Option B: no."]).scores
    assert scores.shape == (1, 4) and torch.isfinite(scores.float()).all()


# ------------------------------------------------------------------------------- BLIP-2 without a tokenizer


@pytest.fixture(scope="module")
def blip2_without_tokenizer(tmp_path_factory, tiny_tokenizer):
    d = tmp_path_factory.mktemp("user") / "my-blip2"
    hf = _tiny_blip2(len(tiny_tokenizer))
    assert isinstance(hf, Blip2ForConditionalGeneration)
    hf.save_pretrained(str(d))  # weights and config, no tokenizer files
    return d


def _no_weights_read(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("weights were read before the tokenizer was checked")

    monkeypatch.setattr(weights_hf, "load_blip2_weights", refuse)
    monkeypatch.setattr(loading, "load_blip2_weights", refuse)


def test_blip2_dir_without_tokenizer_is_named_before_loading(blip2_without_tokenizer, monkeypatch):
    d = blip2_without_tokenizer
    _no_weights_read(monkeypatch)
    with pytest.raises(CheckpointError) as err:
        load_for_inference(d)
    msg = str(err.value)
    assert msg.startswith(f"{d}: this BLIP-2 directory has no usable tokenizer")
    assert "needs tokenizer.json or spiece.model" in msg and "save_pretrained" in msg


def test_blip2_dir_with_a_tokenizer_config_only_is_named(blip2_without_tokenizer, tmp_path, monkeypatch):
    d = tmp_path / "half"
    d.mkdir()
    for f in blip2_without_tokenizer.iterdir():
        (d / f.name).symlink_to(f)
    (d / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    _no_weights_read(monkeypatch)
    with pytest.raises(CheckpointError, match=f"^{d}: this BLIP-2 directory has no usable tokenizer.*spiece.model"):
        load_for_inference(d)


def test_trainable_checkpoint_over_a_blip2_dir_without_tokenizer(blip2_without_tokenizer, model_factory, tmp_path,
                                                                  monkeypatch):
    """A training checkpoint (bridges only, saved without its tokenizer) over the user's BLIP-2 directory: the
    message names the directory and says the checkpoint had none either."""
    ckpt = save_sevila(model_factory(seed=0), tmp_path / "bridges", modules=("localizer", "answerer"),
                       with_tokenizer=False)
    _no_weights_read(monkeypatch)
    with pytest.raises(CheckpointError, match=f"^{blip2_without_tokenizer}: .*no usable tokenizer, and {ckpt} has "
                                              "no tokenizer/ beside it"):
        load_for_inference(ckpt, blip2_without_tokenizer)


def test_the_answer_command_says_it_in_one_line(blip2_without_tokenizer, tmp_path, capsys):
    rng = np.random.default_rng(0)
    video = write_mp4(tmp_path / "v.mp4", rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8), fps=8)
    argv = ["answer", str(video), "--question", "what is it?", "--option", "a", "--option", "b",
            "--backbone", str(blip2_without_tokenizer), "--n-frames", "4", "--n-keyframes", "2", "--device", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"sevila answer: error: {blip2_without_tokenizer}: this "
                                                         "BLIP-2 directory has no usable tokenizer"), err
