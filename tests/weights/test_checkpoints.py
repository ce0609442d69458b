"""Weights in and out: our checkpoints, transformers BLIP-2 directories, official SeViLA / LAVIS .pth files.

Every loader is checked by outputs, not only by names: a model loaded from a checkpoint must compute the same
Localizer scores and Answerer option logits as the model (or the HF BLIP-2 model) the checkpoint was made from.
All weights are randomised first (no LayerNorm left at 1/0, no zero bias), so a swapped or misplaced tensor shows.
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Blip2Config, Blip2ForConditionalGeneration, T5Config

from sevila.model import prompts
from sevila.weights.checkpoint_dir import (
    CheckpointError, CheckpointKind, read_header, trainable_state, write_checkpoint_dir,
)
from sevila.weights.ours import PARTS, load_sevila, save_sevila
from sevila.weights.load import detect_kind, load_for_inference
from sevila.weights.apply import canonical_state
from sevila.weights.transformers_blip2 import Numerics, build_from_blip2_dir
from sevila.weights.lavis import LavisLayout, load_lavis_checkpoint
from sevila.model.tokenizer import prefix_ids, tokenize_prompts

from ..conftest import QUESTIONS

# ---------------------------------------------------------------------------------------------------- helpers


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every tensor random (norm weights around 1), so no mapping error can hide behind default 0/1 values.
    The ViT's qkv key-bias third stays 0: EVA (LAVIS) has no key bias, so only such a ViT has a LAVIS form."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.05
            is_norm_weight = name.endswith("weight") and p.dim() == 1
            p.copy_(noise + 1.0 if is_norm_weight else noise)
            if name.endswith("qkv.bias"):
                d = p.shape[0] // 3
                p[d:2 * d] = 0.0
    return module


def outputs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(Localizer scores [B, T], Answerer option logits on 2 frames [B, C]) of a model on the batch's pixels."""
    with torch.no_grad():
        feats = model.encode_frames(batch["pixels"]).view(3, 6, *model.encode_frames(batch["pixels"][:1]).shape[1:])
        scores = model.localize(feats, batch["loc"]).scores
        logits = model.answer_frames(feats[:, [1, 4]], batch["qa"], batch["n_options"]).option_logits
    return scores, logits


def assert_same_outputs(a, b, batch) -> None:
    sa, la = outputs(a, batch)
    sb, lb = outputs(b, batch)
    assert torch.equal(sa, sb)
    assert torch.equal(la, lb)


def state_equal(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


# ------------------------------------------------------------------------------------------- our checkpoints


def test_full_checkpoint_rebuilds_the_same_model(tmp_path, model_factory, batch):
    src = randomize(model_factory(seed=3), 30)
    out = save_sevila(src, tmp_path / "ckpt", modules=PARTS, step=7, run_config={"lr": 1e-4})
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "tokenizer", "trainable.safetensors"]
    header = read_header(out)
    assert header.parts == PARTS and header.step == 7 and header.run_config == {"lr": 1e-4}
    assert header.model_config == src.config.to_dict()
    with safe_open(str(out / "trainable.safetensors"), "pt") as f:
        names = set(f.keys())
    assert names == set(canonical_state(src))  # tied T5 embeddings stored once, lm_head stored (Flan-T5)
    assert "t5.lm_head.weight" in names and "t5.encoder.embed_tokens.weight" not in names

    model, report = load_sevila(out)  # no model given: config + tokenizer from the checkpoint
    assert report.set_parts == PARTS and report.untouched == () and report.step == 7
    assert report.n_tensors == len(names)
    assert state_equal(model, src)
    assert model.t5.encoder.embed_tokens.weight is model.t5.shared.weight  # ties survive the empty-model build
    assert_same_outputs(model, src, batch)
    assert "set:       vision, t5, localizer, answerer" in report.summary()


def test_bridge_checkpoint_sets_only_its_module_and_says_so(tmp_path, model_factory, batch):
    src = randomize(model_factory(seed=3), 31)
    save_sevila(src, tmp_path / "loc", modules=("localizer",), step=2)
    dst = model_factory(seed=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    _, report = load_sevila(tmp_path / "loc" / "trainable.safetensors", dst)  # the file itself works too
    assert report.set_parts == ("localizer",)
    assert report.untouched == ("vision", "t5", "answerer")
    assert state_equal(dst, src, "localizer.")
    after = dst.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in after if not k.startswith("localizer."))
    # without a model, a bridge-only checkpoint cannot be used on its own: the backbone must come from somewhere
    with pytest.raises(CheckpointError, match="holds only localizer.*backbone"):
        load_sevila(tmp_path / "loc")


def test_training_checkpoint_loads_its_module(tmp_path, model_factory):
    """A `last/`/`best/` directory of the training loop (Localizer trained, Answerer frozen) loads the same way."""
    src = randomize(model_factory(seed=3), 32)
    src.set_trainable(localizer=True, answerer=False)
    weights = trainable_state(src)
    assert {n.split(".")[0] for n in weights} == {"localizer"}
    write_checkpoint_dir(tmp_path / "best", weights, {"step": 40, "modules": ["localizer"], "config": {"lr": 1}})
    dst = model_factory(seed=4)
    _, report = load_sevila(tmp_path / "best", dst)
    assert report.set_parts == ("localizer",) and report.step == 40
    assert state_equal(dst, src, "localizer.")
    with pytest.raises(CheckpointError, match="no model config"):
        load_sevila(tmp_path / "best")


def test_incomplete_module_is_refused_and_nothing_is_copied(tmp_path, model_factory):
    src = randomize(model_factory(seed=3), 33)
    weights = {n: t for n, t in canonical_state(src).items() if n.startswith("answerer.")}
    dropped = "answerer.qformer.encoder.layer.1.output_query.dense.weight"
    del weights[dropped]
    meta = {"step": 1, "modules": ["answerer"], "config": {}, "model_config": src.config.to_dict()}
    write_checkpoint_dir(tmp_path / "c", weights, meta)
    dst = model_factory(seed=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=f"incomplete parts \\['answerer'\\].*{re.escape(dropped)}"):
        load_sevila(tmp_path / "c", dst)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())  # no half load
    _, report = load_sevila(tmp_path / "c", dst, strict=False)
    assert report.partial == ("answerer",) and report.missing == (dropped,) and report.set_parts == ()
    assert torch.equal(dst.answerer.query_tokens, src.answerer.query_tokens)


def test_shape_mismatch_names_the_tensor(tmp_path, model_factory):
    src = model_factory(seed=3, n_query=4)  # 4 query tokens instead of 8
    save_sevila(src, tmp_path / "c", modules=("answerer",))
    with pytest.raises(CheckpointError, match=r"answerer.query_tokens has shape \(1, 4, 64\).*\(1, 8, 64\)"):
        load_sevila(tmp_path / "c", model_factory(seed=4))


def test_detect_kind(tmp_path, model_factory):
    save_sevila(model_factory(), tmp_path / "ours", modules=("answerer",))
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "x.pth").write_bytes(b"")
    assert detect_kind(tmp_path / "ours") is CheckpointKind.SEVILA
    assert detect_kind(tmp_path / "ours" / "trainable.safetensors") is CheckpointKind.SEVILA
    assert detect_kind(tmp_path / "hf") is CheckpointKind.HF_BLIP2
    assert detect_kind(tmp_path / "x.pth") is CheckpointKind.LAVIS
    with pytest.raises(CheckpointError, match="no such file"):
        detect_kind(tmp_path / "absent")
    with pytest.raises(CheckpointError, match="model_type None, expected 'blip-2'"):
        load_for_inference(tmp_path / "hf")


# ---------------------------------------------------------------------------------- transformers BLIP-2 dirs


def _tiny_blip2(vocab: int):
    """An HF Blip2ForConditionalGeneration with sevila_tiny's shapes and a Flan-T5-style (unscaled) T5."""
    text = T5Config(vocab_size=vocab, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4,
                    relative_attention_num_buckets=8, relative_attention_max_distance=32,
                    feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                    pad_token_id=0, eos_token_id=1)
    cfg = Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           patch_size=8, image_size=32, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True),
        qformer_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            cross_attention_frequency=2, hidden_act="gelu", layer_norm_eps=1e-12),
        text_config=text.to_dict(), num_query_tokens=8)
    torch.manual_seed(0)
    return randomize(Blip2ForConditionalGeneration(cfg), 40).eval()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tiny_tokenizer):
    hf = _tiny_blip2(len(tiny_tokenizer))
    d = tmp_path_factory.mktemp("hf") / "blip2-tiny"
    hf.save_pretrained(str(d))
    tiny_tokenizer.save_pretrained(str(d))
    return d, hf


def _hf_queries(hf, pixels: torch.Tensor) -> torch.Tensor:
    """BLIP-2's visual tokens for T5, computed by the HF model itself: [N, Q, d]."""
    vis = hf.vision_model(pixel_values=pixels).last_hidden_state  # includes post_layernorm
    q = hf.qformer(query_embeds=hf.query_tokens.expand(pixels.shape[0], -1, -1), encoder_hidden_states=vis)
    return hf.language_projection(q.last_hidden_state)


def _hf_encoder_inputs(hf, tok, queries: torch.Tensor, prefixes: list[str], text: str):
    """[prefix_1][q_1]...[prefix_k][q_k][text </s>] for one row, embedded with the HF language model."""
    embed = hf.language_model.get_input_embeddings()
    blocks = []
    for prefix, q in zip(prefixes, queries):
        blocks += [embed(torch.tensor(prefix_ids(tok, prefix))), q]
    ids = tokenize_prompts(tok, [text], 77).ids[0]
    blocks.append(embed(ids))
    return torch.cat(blocks).unsqueeze(0)


def test_hf_blip2_dir_gives_hf_numbers_in_both_modules(hf_dir, tiny_tokenizer):
    d, hf = hf_dir
    model, report = build_from_blip2_dir(d, numerics=Numerics.HF)
    assert report.kind is CheckpointKind.HF_BLIP2 and report.set_parts == PARTS and report.dropped == ()
    assert any("lm_head" in n for n in report.notes)  # transformers 5 saved T5's lm_head tied to shared
    assert model.config.n_query == 8 and model.config.n_vision_tokens == 17
    assert model.config.t5_dense_act_fn == "gelu_new" and model.config.ln_vision_eps == 1e-6  # what HF computes
    assert model.t5.config.d_model == 64 and model.tokenizer is not None

    torch.manual_seed(5)
    pixels = torch.randn(4, 3, 32, 32)
    tol = dict(atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        want = _hf_queries(hf, pixels)  # [4, 8, 64]
        feats = model.encode_frames(pixels)
        torch.testing.assert_close(model.answerer(feats), want, **tol)
        torch.testing.assert_close(model.localizer(feats), want, **tol)  # both Q-Formers start as BLIP-2's

        # Answerer: frames 0 and 2 of a question in one sequence, letter logits after "Option"
        q, opts = QUESTIONS[0]
        qa, loc = prompts.qa_prompts(q, opts)
        ids = model.token_ids
        enc = _hf_encoder_inputs(hf, tiny_tokenizer, want[[0, 2]], ["Frame 1: ", "Frame 2: "], qa)
        logits = hf.language_model(inputs_embeds=enc, decoder_input_ids=torch.tensor([[0, ids.option]])).logits
        got = model.answer_frames(feats.view(1, 4, 17, 64)[:, [0, 2]], [qa], [5]).option_logits
        torch.testing.assert_close(got[0], logits[0, 1, list(ids.letters)], **tol)

        # Localizer: frame 3 alone, logit of "yes" at the first decoder step
        enc = _hf_encoder_inputs(hf, tiny_tokenizer, want[[3]], ["Frame: "], loc)
        yes = hf.language_model(inputs_embeds=enc, decoder_input_ids=torch.tensor([[0]])).logits[0, 0, ids.yes]
        score = model.localize(feats.view(1, 4, 17, 64), [loc]).scores[0, 3]
        torch.testing.assert_close(score, yes, **tol)

    lavis_cfg = build_from_blip2_dir(d)[0].config  # default: SeViLA's own numerics
    assert lavis_cfg.t5_dense_act_fn == "gelu" and lavis_cfg.ln_vision_eps == 1e-5


def test_hf_dir_sharded_with_separate_lm_head(hf_dir, tmp_path, tiny_tokenizer):
    """Real BLIP-2 Flan-T5 checkpoints are sharded and store Flan-T5's own lm_head: both must load."""
    d, hf = hf_dir
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    head = torch.randn(tensors["language_model.shared.weight"].shape, generator=torch.Generator().manual_seed(9))
    tensors["language_model.lm_head.weight"] = head
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k].contiguous() for k in part}, str(sharded / fname), metadata={"format": "pt"})
        weight_map |= {k: fname for k in part}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (sharded / "config.json").write_text((d / "config.json").read_text())
    tiny_tokenizer.save_pretrained(str(sharded))
    model, report = build_from_blip2_dir(sharded)
    assert report.set_parts == PARTS and not any("lm_head" in n for n in report.notes)
    assert torch.equal(model.t5.lm_head.weight, head)
    assert not torch.equal(model.t5.lm_head.weight, model.t5.shared.weight)
    assert torch.equal(model.answerer.proj.weight, hf.language_projection.weight)


def test_bridges_on_a_backbone_for_inference(hf_dir, tmp_path):
    d, _ = hf_dir
    base, _ = build_from_blip2_dir(d)
    randomize(base.localizer, 50)
    randomize(base.answerer, 51)
    save_sevila(base, tmp_path / "bridges", modules=("localizer", "answerer"), step=3)
    model, reports = load_for_inference(tmp_path / "bridges", backbone=d)
    assert [r.kind for r in reports] == [CheckpointKind.HF_BLIP2, CheckpointKind.SEVILA]
    assert reports[0].set_parts == PARTS and reports[1].set_parts == ("localizer", "answerer")
    assert reports[1].untouched == ("vision", "t5")
    assert state_equal(model, base)
    with pytest.raises(CheckpointError, match="backbone"):
        load_for_inference(tmp_path / "bridges")
    # the same bridges as an official .pth on the same backbone
    torch.save({"model": to_lavis(base, backbone=False)}, tmp_path / "bridges.pth")
    model, reports = load_for_inference(tmp_path / "bridges.pth", backbone=d)
    assert [r.kind for r in reports] == [CheckpointKind.HF_BLIP2, CheckpointKind.LAVIS]
    assert reports[1].set_parts == ("localizer", "answerer") and state_equal(model, base)
    with pytest.raises(CheckpointError, match="give the BLIP-2 backbone"):
        load_for_inference(tmp_path / "bridges.pth")
    # a BLIP-2 directory alone is a complete model (both modules = BLIP-2), tokenizer included
    model, reports = load_for_inference(d)
    assert [r.set_parts for r in reports] == [PARTS] and model.tokenizer is not None


# ---------------------------------------------------------------------------------------- LAVIS / official


def to_lavis(model, *, answerer: bool = True, localizer: bool = True, backbone: bool = True) -> dict:
    """Our model as the official SeViLA state dict (written independently of the loader's rules, from LAVIS's
    module names: Qformer.bert.*, query_tokens, t5_proj, ln_vision, *_loc, visual_encoder (EVA), t5_model)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    bridges = [("answerer", "", answerer), ("localizer", "_loc", localizer)]
    for ours, suffix, wanted in bridges:
        if not wanted:
            continue
        qf = f"Qformer{suffix}.bert."
        out[f"query_tokens{suffix}"] = sd[f"{ours}.query_tokens"]
        for p in ("weight", "bias"):
            out[f"t5_proj{suffix}.{p}"] = sd[f"{ours}.proj.{p}"]
            out[f"ln_vision{suffix}.{p}"] = sd[f"{ours}.ln_vision.{p}"]
            out[f"{qf}embeddings.LayerNorm.{p}"] = sd[f"{ours}.qformer.layernorm.{p}"]
        for k, v in sd.items():
            m = re.fullmatch(rf"{ours}\.qformer\.encoder\.layer\.(\d+)\.(.+)", k)
            if m is None:
                continue
            layer, rest = m.groups()
            rest = rest.replace("attention.attention.", "attention.self.")  # also crossattention.attention.
            out[f"{qf}encoder.layer.{layer}.{rest}"] = v
        # what LAVIS checkpoints also carry and BLIP-2-T5 does not use
        out[f"{qf}embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
        out[f"{qf}embeddings.word_embeddings.weight"] = torch.zeros(30523, 64)
        out[f"{qf}encoder.layer.0.intermediate.dense.weight"] = torch.zeros(128, 64)
        out[f"Qformer{suffix}.cls.predictions.bias"] = torch.zeros(30523)
    if backbone:
        ve = "visual_encoder."
        out[ve + "cls_token"] = sd["vision.embeddings.class_embedding"]
        out[ve + "pos_embed"] = sd["vision.embeddings.position_embedding"]
        for p in ("weight", "bias"):
            out[f"{ve}patch_embed.proj.{p}"] = sd[f"vision.embeddings.patch_embedding.{p}"]
        for i in range(model.vision.config.num_hidden_layers):
            hf = f"vision.encoder.layers.{i}."
            blk = f"{ve}blocks.{i}."
            for p in ("weight", "bias"):
                out[f"{blk}norm1.{p}"] = sd[f"{hf}layer_norm1.{p}"]
                out[f"{blk}norm2.{p}"] = sd[f"{hf}layer_norm2.{p}"]
                out[f"{blk}attn.proj.{p}"] = sd[f"{hf}self_attn.projection.{p}"]
                out[f"{blk}mlp.fc1.{p}"] = sd[f"{hf}mlp.fc1.{p}"]
                out[f"{blk}mlp.fc2.{p}"] = sd[f"{hf}mlp.fc2.{p}"]
            out[f"{blk}attn.qkv.weight"] = sd[f"{hf}self_attn.qkv.weight"]
            q, k, v = sd[f"{hf}self_attn.qkv.bias"].chunk(3)
            assert not k.any()  # EVA has no key bias
            out[f"{blk}attn.q_bias"], out[f"{blk}attn.v_bias"] = q, v
        out[f"{ve}blocks.{model.vision.config.num_hidden_layers}.norm1.weight"] = torch.ones(64)  # EVA's dropped block
        for k, v in sd.items():
            if k.startswith("t5."):
                out["t5_model." + k[3:]] = v  # LAVIS keeps shared AND encoder/decoder.embed_tokens
    return out


def test_official_checkpoint_loads_every_part_with_identical_outputs(tmp_path, model_factory, batch):
    src = randomize(model_factory(seed=3), 60)
    sd = to_lavis(src)
    assert "Qformer.bert.encoder.layer.0.crossattention.self.key.weight" in sd  # the LAVIS names we target
    assert "Qformer_loc.bert.encoder.layer.1.output_query.LayerNorm.bias" in sd
    path = tmp_path / "sevila_pretrained.pth"
    torch.save({"model": sd, "epoch": 9, "config": {"run": {"task": "qa"}}}, path)
    dst = model_factory(seed=4)
    report = load_lavis_checkpoint(dst, path)
    assert report.kind is CheckpointKind.LAVIS and report.set_parts == PARTS and report.unexpected == ()
    assert set(report.dropped) == {
        *(f"Qformer{s}.bert.embeddings.position_ids" for s in ("", "_loc")),
        *(f"Qformer{s}.bert.embeddings.word_embeddings.weight" for s in ("", "_loc")),
        *(f"Qformer{s}.bert.encoder.layer.0.intermediate.dense.weight" for s in ("", "_loc")),
        *(f"Qformer{s}.cls.predictions.bias" for s in ("", "_loc")),
        "visual_encoder.blocks.2.norm1.weight",
    }
    assert state_equal(dst, src)
    assert_same_outputs(dst, src, batch)


def test_localizer_only_official_checkpoint(tmp_path, model_factory, batch):
    src = randomize(model_factory(seed=3), 61)
    path = tmp_path / "loc.pth"
    torch.save({"model": to_lavis(src, answerer=False, backbone=False)}, path)
    dst = model_factory(seed=4)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    report = load_lavis_checkpoint(dst, path)
    assert report.set_parts == ("localizer",) and report.untouched == ("vision", "t5", "answerer")
    assert state_equal(dst, src, "localizer.")
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items() if not k.startswith("localizer."))
    # same Localizer + same backbone -> same scores
    dst.vision.load_state_dict(src.vision.state_dict())
    dst.t5.load_state_dict(src.t5.state_dict())
    assert torch.equal(outputs(dst, batch)[0], outputs(src, batch)[0])


def test_lavis_blip2_checkpoint_initialises_both_modules(tmp_path, model_factory):
    src = randomize(model_factory(seed=3), 62)
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": to_lavis(src, localizer=False)}, path)
    dst = model_factory(seed=4)
    report = load_lavis_checkpoint(dst, path, LavisLayout.BLIP2)
    assert report.set_parts == PARTS
    for name, p in src.answerer.named_parameters():
        assert torch.equal(dst.answerer.get_parameter(name), p) and torch.equal(dst.localizer.get_parameter(name), p)
    torch.save({"model": to_lavis(src)}, tmp_path / "sevila.pth")
    with pytest.raises(CheckpointError, match="Localizer keys.*layout=sevila"):
        load_lavis_checkpoint(dst, tmp_path / "sevila.pth", LavisLayout.BLIP2)


def test_unknown_keys_are_errors_unless_not_strict(tmp_path, model_factory):
    src = model_factory(seed=3)
    sd = to_lavis(src, localizer=False, backbone=False) | {"Qformer.bert.encoder.layer.0.mystery.weight": torch.ones(2)}
    torch.save(sd, tmp_path / "bare.pth")  # a bare state dict (no "model" key) is accepted too
    with pytest.raises(CheckpointError, match="1 unexpected keys.*mystery"):
        load_lavis_checkpoint(model_factory(seed=4), tmp_path / "bare.pth")
    report = load_lavis_checkpoint(model_factory(seed=4), tmp_path / "bare.pth", strict=False)
    assert report.set_parts == ("answerer",) and report.unexpected == ("Qformer.bert.encoder.layer.0.mystery.weight",)


class Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_pth_is_refused(tmp_path, model_factory):
    marker = tmp_path / "pwned"
    torch.save({"model": {"query_tokens": torch.zeros(1, 8, 64)}, "x": Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_lavis_checkpoint(model_factory(), tmp_path / "evil.pth")
    assert not marker.exists()
