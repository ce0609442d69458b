"""SeViLA model: shapes, sequence layout, scores against manual forward passes, modes, freezing, counts."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sevila.model import chain, prompts
from sevila.cli import main as cli_main
from sevila.model.modeling import SeViLA, build_sevila, parameter_counts
from sevila.model.configuration import SeViLAConfig, sevila_flant5xl, sevila_tiny
from sevila.model.selection import Fusion, Selector, uniform_keyframes, vote
from sevila.model.tokenizer import (
    REQUIRED_SINGLE_TOKENS, TokenIds, build_tiny_tokenizer, load_tokenizer, single_token_id, tokenize_prompts,
)

ATOL = 1e-4

# ---------------------------------------------------------------------------------------------------------------
# Parameter counts (real preset on the meta device: no memory)
# ---------------------------------------------------------------------------------------------------------------

FLANT5XL_PARTS = {
    "vision": 985_949_440,  # ViT-g/14, 39 layers (its final LayerNorm lives on as the modules' ln_vision)
    "t5": 2_849_757_184,  # = google/flan-t5-xl (separate lm_head)
    "localizer.qformer": 105_137_664,  # HF Blip2QFormerModel: no BERT word embeddings (as LAVIS uses it)
    "localizer.query_tokens": 24_576,  # 32 x 768
    "localizer.proj": 1_574_912,  # 768 x 2048 + 2048
    "localizer.ln_vision": 2_816,  # 2 x 1408
    "answerer.qformer": 105_137_664,
    "answerer.query_tokens": 24_576,
    "answerer.proj": 1_574_912,
    "answerer.ln_vision": 2_816,
}
FLANT5XL_TOTAL = 4_049_186_560
FLANT5XL_TRAINABLE = 106_739_968  # per module (paper §4.1: ~106M)


def test_real_preset_counts_on_meta_device():
    model = build_sevila(sevila_flant5xl(), device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing allocated
    counts = parameter_counts(model)
    assert counts.parts == FLANT5XL_PARTS
    assert counts.total == FLANT5XL_TOTAL == sum(FLANT5XL_PARTS.values())
    assert 4.0e9 <= counts.total <= 4.2e9  # paper: 4.1B
    assert counts.trainable == {"localizer": FLANT5XL_TRAINABLE, "answerer": FLANT5XL_TRAINABLE}
    for n in counts.trainable.values():
        assert 0.02 <= n / counts.total <= 0.03  # paper: ~2.5% per module
    # real shapes
    assert model.vision.config.num_hidden_layers == 39 and model.vision.config.hidden_size == 1408
    assert model.config.n_vision_tokens == 257  # (224/14)^2 + CLS
    t5 = model.t5.config
    assert (t5.d_model, t5.num_layers, t5.num_heads, t5.d_ff, t5.vocab_size) == (2048, 24, 32, 5120, 32128)
    assert model.t5.lm_head.weight is not model.t5.shared.weight


def test_model_info_cli_json(capsys):
    assert cli_main(["model-info", "--preset", "flant5xl", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"total": FLANT5XL_TOTAL, "parts": FLANT5XL_PARTS,
                   "trainable": {"localizer": FLANT5XL_TRAINABLE, "answerer": FLANT5XL_TRAINABLE}}
    assert cli_main(["model-info", "--preset", "tiny", "--vocab-size", "300", "--json"]) == 0
    tiny = json.loads(capsys.readouterr().out)
    assert tiny["total"] == parameter_counts(build_sevila(sevila_tiny(300), device="meta")).total
    assert cli_main(["model-info", "--preset", "flant5xl"]) == 0
    assert "4,049,186,560" in capsys.readouterr().out
    assert cli_main(["model-info", "--preset", "flant5xl", "--vocab-size", "9"]) == 2


def test_new_model_is_in_eval_mode_with_frozen_backbone(model_factory):
    m = model_factory()
    assert not any(mod.training for mod in m.modules())  # like from_pretrained: inference unless .train()
    assert not any(p.requires_grad for p in list(m.vision.parameters()) + list(m.t5.parameters()))
    assert all(p.requires_grad for p in list(m.localizer.parameters()) + list(m.answerer.parameters()))


def test_tiny_counts_add_up(tiny_model):
    counts = parameter_counts(tiny_model)
    assert counts.total == sum(p.numel() for p in tiny_model.parameters()) == sum(counts.parts.values())
    assert counts.trainable["localizer"] == sum(p.numel() for p in tiny_model.localizer.parameters())
    assert counts.parts["localizer.query_tokens"] == 8 * 64


def test_config_round_trip_and_validation():
    cfg = sevila_tiny(100)
    assert SeViLAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.t5_config().dense_act_fn == "gelu"  # LAVIS: exact GELU in T5's gated FFN
    assert cfg.qformer_config().encoder_hidden_size == 64
    with pytest.raises(ValueError, match="multiple of the patch size"):
        SeViLAConfig(vision=cfg.vision, qformer=cfg.qformer, t5=cfg.t5, image_size=36)
    with pytest.raises(ValueError, match="n_query"):
        SeViLAConfig(vision=cfg.vision, qformer=cfg.qformer, t5=cfg.t5, n_query=0)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------


def test_required_words_are_single_tokens_and_the_right_pieces(tiny_tokenizer):
    ids = TokenIds.from_tokenizer(tiny_tokenizer)
    pieces = tiny_tokenizer.convert_ids_to_tokens
    assert pieces([ids.yes, ids.no, ids.option]) == ["▁yes", "▁no", "▁Option"]
    assert pieces(list(ids.letters)) == ["▁A", "▁B", "▁C", "▁D", "▁E"]
    assert len(set([ids.yes, ids.no, ids.option, *ids.letters])) == 8
    assert (ids.pad, ids.eos) == (0, 1)  # T5 conventions: <pad> is also the decoder start
    assert tiny_tokenizer.unk_token_id == 2
    for word in REQUIRED_SINGLE_TOKENS:
        assert tiny_tokenizer(word, add_special_tokens=False).input_ids == [single_token_id(tiny_tokenizer, word)]


def test_targets_tokenize_to_the_scored_tokens(tiny_tokenizer):
    ids = TokenIds.from_tokenizer(tiny_tokenizer)
    assert tiny_tokenizer("Option C").input_ids == [ids.option, ids.letters[2], ids.eos]
    assert tiny_tokenizer("yes").input_ids == [ids.yes, ids.eos]
    assert tiny_tokenizer("no").input_ids == [ids.no, ids.eos]
    frame = tiny_tokenizer("Frame: ", add_special_tokens=False).input_ids
    assert tiny_tokenizer.convert_ids_to_tokens(frame)[0] == "▁Frame"


def test_single_token_error_names_the_word(tiny_tokenizer):
    with pytest.raises(ValueError, match="splits 'zebrafish'"):
        single_token_id(tiny_tokenizer, "zebrafish")


def test_tokenizer_directory_round_trip_and_errors(tiny_tokenizer, tmp_path):
    texts = ["a red square", "a blue circle"]
    tok = build_tiny_tokenizer(texts, tmp_path / "t", vocab_size=128)
    again = load_tokenizer(tmp_path / "t")
    prompt = prompts.answerer_prompt("what colour is the square?", ["red", "blue"])
    assert again(prompt).input_ids == tok(prompt).input_ids
    assert len(again) <= 128
    with pytest.raises(FileExistsError):
        build_tiny_tokenizer(texts, tmp_path / "t", vocab_size=128)
    build_tiny_tokenizer(texts + ["a green star"], tmp_path / "t", vocab_size=128, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_tokenize_prompts_matches_hf_truncation_and_counts(tiny_tokenizer, batch):
    texts = batch["qa"] + batch["loc"]
    lengths = [len(tiny_tokenizer(t).input_ids) for t in texts]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the prompts are longer
    got = tokenize_prompts(tiny_tokenizer, texts, limit)
    ref = tiny_tokenizer(texts, truncation=True, max_length=limit, padding="longest", return_tensors="pt")
    assert torch.equal(got.ids, ref.input_ids) and torch.equal(got.mask, ref.attention_mask)
    assert got.truncated.tolist() == [n > limit for n in lengths]
    assert 0 < int(got.truncated.sum()) < len(texts)
    assert (got.ids[got.truncated, limit - 1] == tiny_tokenizer.eos_token_id).all()  # cut text still ends in </s>


# ---------------------------------------------------------------------------------------------------------------
# Vision and sequence layout
# ---------------------------------------------------------------------------------------------------------------


def test_encode_frames_is_the_vit_output_before_its_last_layernorm(tiny_model, batch):
    feats = tiny_model.encode_frames(batch["pixels"][:4])
    assert feats.shape == (4, 17, 64)  # (32/8)^2 patches + CLS, ViT width
    ref = tiny_model.vision(batch["pixels"][:4], output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(feats, ref, atol=1e-6)
    assert not torch.allclose(feats, F.layer_norm(feats, (64,)), atol=1e-3)  # really pre-LN
    assert not feats.requires_grad


def _queries(bridge, frame):  # frame [P, Dv] -> [Q, d], written out from the HF parts
    x = bridge.ln_vision(frame[None])
    out = bridge.qformer(query_embeds=bridge.query_tokens, encoder_hidden_states=x).last_hidden_state
    return bridge.proj(out)[0]


def _embed_text(model, text, special=True):
    ids = model.tokenizer(text, add_special_tokens=special, truncation=special,
                          max_length=model.config.max_text_len).input_ids
    return model.t5.shared(torch.tensor(ids)), len(ids)


def _manual_row(model, bridge, frames, prompt):
    """[Frame i: ][queries i]... [prompt] for one question, built by hand: -> embeds [1, L, d]."""
    parts = []
    for i, prefix in enumerate(prompts.frame_prefixes(len(frames))):
        parts.append(_embed_text(model, prefix, special=False)[0])
        parts.append(_queries(bridge, frames[i]))
    parts.append(_embed_text(model, prompt)[0])
    return torch.cat(parts)[None]


@torch.no_grad()
def test_answerer_sequence_layout(tiny_model, batch):
    feats, qa = batch["features"][:, :3], batch["qa"]
    inputs = tiny_model.answerer_inputs(feats, qa)
    tok = tiny_model.tokenizer
    prefix_lens = [len(tok(p, add_special_tokens=False).input_ids) for p in ["Frame 1: ", "Frame 2: ", "Frame 3: "]]
    assert inputs.visual_len == sum(prefix_lens) + 3 * 8 == tiny_model.visual_len(3)
    text_lens = [len(tok(t).input_ids) for t in qa]
    assert inputs.embeds.shape == (3, inputs.visual_len + max(text_lens), 64)
    assert inputs.mask[:, : inputs.visual_len].all()
    assert inputs.mask[:, inputs.visual_len:].sum(1).tolist() == text_lens
    emb = tiny_model.t5.shared
    pos = 0
    for i in range(3):  # [Frame i+1: ][8 query tokens of frame i]
        ids = tok(f"Frame {i + 1}: ", add_special_tokens=False).input_ids
        assert tok.decode(ids) == f"Frame {i + 1}:"
        assert torch.allclose(inputs.embeds[0, pos:pos + len(ids)], emb(torch.tensor(ids)))
        pos += len(ids)
        assert torch.allclose(inputs.embeds[1, pos:pos + 8], _queries(tiny_model.answerer, feats[1, i]), atol=1e-5)
        pos += 8
    assert pos == inputs.visual_len  # the prompt starts here
    for b in range(3):
        manual = _manual_row(tiny_model, tiny_model.answerer, feats[b], qa[b])
        assert torch.allclose(inputs.embeds[b, : manual.shape[1]], manual[0], atol=1e-5)


@torch.no_grad()
def test_localizer_sequence_layout_one_row_per_frame(tiny_model, batch):
    feats, loc = batch["features"], batch["loc"]
    inputs = tiny_model.per_frame_inputs("localizer", feats, loc)
    frame_ids = tiny_model.tokenizer("Frame: ", add_special_tokens=False).input_ids
    assert inputs.visual_len == len(frame_ids) + 8 == tiny_model.visual_len(1)
    assert inputs.embeds.shape[0] == 3 * 6
    for b, t in [(0, 0), (1, 4), (2, 5)]:
        row = b * 6 + t  # question-major, frame-minor
        manual = _manual_row(tiny_model, tiny_model.localizer, feats[b, t:t + 1], loc[b])
        assert torch.allclose(inputs.embeds[row, : manual.shape[1]], manual[0], atol=1e-5)
        assert int(inputs.mask[row].sum()) == manual.shape[1]


# ---------------------------------------------------------------------------------------------------------------
# Scores against manual forward passes
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_localizer_score_is_the_yes_logit_of_the_first_decoder_step(tiny_model, batch):
    feats, loc = batch["features"], batch["loc"]
    out = tiny_model.localize(feats, loc, n_keyframes=2)
    assert out.scores.shape == (3, 6) and out.keyframes.shape == (3, 2)
    yes = tiny_model.token_ids.yes
    for b, t in [(0, 1), (2, 3)]:
        embeds = _manual_row(tiny_model, tiny_model.localizer, feats[b, t:t + 1], loc[b])
        logits = tiny_model.t5(inputs_embeds=embeds, decoder_input_ids=torch.tensor([[0]])).logits  # one step
        assert torch.allclose(out.scores[b, t], logits[0, 0, yes], atol=ATOL)
    # ... and equals what generate() scores for "yes" at its first step (the official code's route)
    inputs = tiny_model.per_frame_inputs("localizer", feats, loc)
    gen = tiny_model.t5.generate(inputs_embeds=inputs.embeds, attention_mask=inputs.mask, max_new_tokens=1,
                                 do_sample=False, num_beams=1, output_scores=True, return_dict_in_generate=True)
    assert torch.allclose(gen.scores[0][:, yes].view(3, 6), out.scores, atol=ATOL)
    # keyframes: top-2 of each row in temporal order
    for b in range(3):
        best = sorted(sorted(range(6), key=lambda t: -float(out.scores[b, t]))[:2])
        assert out.keyframes[b].tolist() == best
        assert torch.equal(out.keyframe_scores[b], out.scores[b, best])


@torch.no_grad()
def test_answerer_reads_option_letters_after_option(tiny_model, batch):
    feats, qa, n_opt = batch["features"][:, :2], batch["qa"], batch["n_options"]
    out = tiny_model.answer_frames(feats, qa, n_opt)
    assert out.option_logits.shape == (3, 5)
    ids = tiny_model.token_ids
    for b in range(3):
        embeds = _manual_row(tiny_model, tiny_model.answerer, feats[b], qa[b])
        dec = torch.tensor([[0, ids.option]])  # [start, ▁Option] -> read step 1
        logits = tiny_model.t5(inputs_embeds=embeds, decoder_input_ids=dec).logits[0, 1]
        n = n_opt[b]
        assert torch.allclose(out.option_logits[b, :n], logits[list(ids.letters[:n])], atol=ATOL)
        assert torch.isinf(out.option_logits[b, n:]).all()  # letters the question lacks never win
        assert int(out.pred[b]) == int(logits[list(ids.letters[:n])].argmax())
    assert out.pred.tolist()[2] in (0, 1)  # the VLEP item has two options


@torch.no_grad()
def test_per_frame_answers_are_batched_single_frame_answers(tiny_model, batch):
    feats, qa, n_opt = batch["features"][:, :4], batch["qa"], batch["n_options"]
    per = tiny_model.answer_each_frame(feats, qa, n_opt)
    assert per.option_logits.shape == (3, 4, 5) and per.pred.shape == (3, 4)
    for t in (0, 3):
        alone = tiny_model.answer_frames(feats[:, t:t + 1], qa, n_opt)  # one frame: "Frame: " prefix
        assert torch.allclose(per.option_logits[:, t], alone.option_logits, atol=ATOL)


@torch.no_grad()
def test_a_frame_in_k_slots_is_the_answerer_on_that_frame_repeated(tiny_model, batch):
    """frame_slots=k (the oracle of an Answerer fine-tuned on k keyframes): each frame alone, in all k slots, is
    exactly `answer_frames` on k copies of it; over one clip's frames shared by every question (stride 0) too."""
    feats, qa, n_opt = batch["features"][:, :4], batch["qa"], batch["n_options"]
    in3 = tiny_model.answer_each_frame(feats, qa, n_opt, slots=3)
    assert in3.option_logits.shape == (3, 4, 5)
    for t in (0, 2):
        copies = tiny_model.answer_frames(feats[:, [t, t, t]], qa, n_opt)  # "Frame 1: " .. "Frame 3: " prefixes
        assert torch.allclose(in3.option_logits[:, t], copies.option_logits, atol=ATOL)
    shared = feats[:1].expand(3, *feats.shape[1:])  # [3, 4, P, D], stride 0: one clip, three questions
    one_clip = tiny_model.answer_each_frame(shared, qa, n_opt, slots=3)
    assert torch.allclose(one_clip.option_logits[:, 1], tiny_model.answer_frames(
        shared[:, [1, 1, 1]].contiguous(), qa, n_opt).option_logits, atol=ATOL)
    assert not torch.allclose(in3.option_logits, tiny_model.answer_each_frame(feats, qa, n_opt).option_logits,
                              atol=ATOL)  # 3 slots is another input than the official one-frame one
    res = chain.answer(tiny_model, feats, qa, n_opt, selector="oracle", fusion="vote", n_keyframes=4, gold=[0, 1, 0],
                            frame_slots=3)
    assert torch.equal(res.per_frame_logits, in3.option_logits)
    assert res.correct.tolist() == [bool((in3.pred[b] == g).any()) for b, g in enumerate([0, 1, 0])]
    with pytest.raises(ValueError, match="slots must be >= 1"):
        tiny_model.answer_each_frame(feats, qa, n_opt, slots=0)


# ---------------------------------------------------------------------------------------------------------------
# Selector x fusion end to end, against recomputation
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_answer_modes_match_manual_recomputation(tiny_model, batch):
    feats, qa, loc, n_opt = batch["features"], batch["qa"], batch["loc"], batch["n_options"]
    m = tiny_model

    # SeViLA: Localizer keyframes (temporal order) -> Answerer
    res = chain.answer(m, feats, qa, n_opt, selector=Selector.LOCALIZER, fusion=Fusion.CONCAT, n_keyframes=3,
                   loc_prompts=loc)
    scores = m.localize(feats, loc).scores
    expect = [sorted(sorted(range(6), key=lambda t: -float(scores[b, t]))[:3]) for b in range(3)]
    assert res.frames.tolist() == expect
    assert torch.allclose(res.frame_scores, scores)
    manual = m.answer_frames(torch.stack([feats[b, expect[b]] for b in range(3)]), qa, n_opt)
    assert torch.allclose(res.option_logits, manual.option_logits, atol=ATOL)
    assert torch.equal(res.pred, manual.pred)

    # BLIP-2 concat: evenly spaced frames -> Answerer
    res = chain.answer(m, feats, qa, n_opt, selector="uniform", fusion="concat", n_keyframes=2)
    assert res.frames.tolist() == [uniform_keyframes(6, 2)] * 3 == [[1, 4]] * 3
    assert torch.allclose(res.option_logits, m.answer_frames(feats[:, [1, 4]], qa, n_opt).option_logits, atol=ATOL)

    # BLIP-2 voting: every frame alone, majority vote
    res = chain.answer(m, feats, qa, n_opt, selector=Selector.ALL, fusion=Fusion.VOTE, n_keyframes=6)
    per = m.answer_each_frame(feats, qa, n_opt)
    assert torch.allclose(res.per_frame_logits, per.option_logits, atol=ATOL)
    assert torch.equal(res.pred, vote(per.option_logits))

    # Oracle: right iff any single frame is right
    per_pred = per.pred  # [3, 6]
    unused = [[o for o in range(n_opt[b]) if o not in per_pred[b].tolist()] for b in range(3)]
    gold = [int(per_pred[0, 2])] + [unused[b][0] if unused[b] else 0 for b in (1, 2)]  # no frame gives -> wrong
    res = chain.answer(m, feats, qa, n_opt, selector=Selector.ORACLE, fusion=Fusion.VOTE, n_keyframes=6, gold=gold)
    expected = [bool((per_pred[b] == gold[b]).any()) for b in range(3)]
    assert res.correct.tolist() == expected and expected[0]
    assert [int(p) for p in res.pred[torch.tensor(expected)]] == [g for g, e in zip(gold, expected) if e]


def test_forced_per_frame_logits_give_hand_worked_results(tiny_model, batch, monkeypatch):
    """Per-frame letter logits forced by hand (rows question-major, frame-minor): voting and oracle follow."""
    feats, qa, n_opt = batch["features"][:, :4], batch["qa"], [5, 4, 2]
    hand = torch.full((3, 4, 5), -1.0)
    hand[0, :, :] = torch.tensor([[5, 0, 0, 0, 0], [0, 0, 3, 0, 0], [0, 0, 4, 0, 0], [0, 9, 0, 0, 0.]])  # A C C B
    hand[1, :, :] = torch.tensor([[0, 2, 0, 0, 0], [0, 0, 0, 7, 0], [0, 3, 0, 0, 0], [0, 0, 0, 1, 0.]])  # B D B D
    hand[2, :, :] = torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0.]])  # A A A B

    def forced(inputs, n_options):
        assert inputs.embeds.shape[0] == 12 and n_options.tolist() == [5] * 4 + [4] * 4 + [2] * 4
        return hand.reshape(12, 5).clone()

    monkeypatch.setattr(tiny_model, "option_logits", forced)
    res = chain.answer(tiny_model, feats, qa, n_opt, selector="all", fusion="vote", n_keyframes=4, gold=[0, 1, 1])
    # q0: C has 2 votes -> C; q1: B, D tie 2-2, sums B = 2+0+3+0 = 5 < D = 0+7+0+1 = 8 -> D; q2: A (3 votes)
    assert res.pred.tolist() == [2, 3, 0]
    assert res.correct.tolist() == [False, False, False]
    res = chain.answer(tiny_model, feats, qa, n_opt, selector="oracle", fusion="vote", n_keyframes=4, gold=[0, 1, 2])
    # q0: frame 0 says A -> right; q1: frames 0, 2 say B -> right; q2: no frame says C -> wrong (keeps the vote)
    assert res.correct.tolist() == [True, True, False]
    assert res.pred.tolist() == [0, 1, 0]


def test_forced_localizer_logits_pick_hand_worked_keyframes(tiny_model, batch, monkeypatch):
    feats, loc = batch["features"], batch["loc"]
    yes = tiny_model.token_ids.yes
    hand = torch.tensor([[0.5, 3.0, 1.0, 2.0, 0.0, 2.5],
                         [9.0, 8.0, 7.0, 6.0, 5.0, 4.0],
                         [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])

    def forced(inputs, decoder_ids):
        assert decoder_ids.tolist() == [[0]] * 18  # one decoder step from <pad>
        logits = torch.zeros(18, 1, tiny_model.t5.config.vocab_size)
        logits[:, 0, yes] = hand.reshape(18)
        return logits

    monkeypatch.setattr(tiny_model, "decode", forced)
    out = tiny_model.localize(feats, loc, n_keyframes=3)
    assert torch.equal(out.scores, hand)
    assert out.keyframes.tolist() == [[1, 3, 5], [0, 1, 2], [0, 1, 2]]
    assert out.keyframe_scores.tolist() == [[3.0, 2.0, 2.5], [9.0, 8.0, 7.0], [1.0, 1.0, 1.0]]


def test_answer_refuses_ill_posed_modes(tiny_model, batch):
    feats, qa, loc, n_opt = batch["features"], batch["qa"], batch["loc"], batch["n_options"]
    with pytest.raises(ValueError, match="fusion=vote"):
        chain.answer(tiny_model, feats, qa, n_opt, selector="oracle", fusion="concat", n_keyframes=2, gold=[0, 0, 0])
    with pytest.raises(ValueError, match="gold"):
        chain.answer(tiny_model, feats, qa, n_opt, selector="oracle", fusion="vote", n_keyframes=2)
    with pytest.raises(ValueError, match="frame_slots=4 is for frames read alone"):
        chain.answer(tiny_model, feats, qa, n_opt, selector="uniform", fusion="concat", n_keyframes=2, frame_slots=4)
    with pytest.raises(ValueError, match="loc_prompts"):
        chain.answer(tiny_model, feats, qa, n_opt, selector="localizer", fusion="concat", n_keyframes=2)
    with pytest.raises(ValueError, match="n_options out of 1..5"):
        chain.answer(tiny_model, feats, qa, [5, 6, 2], selector="all", fusion="vote", n_keyframes=2)
    with pytest.raises(ValueError, match="cannot pick 7 keyframes"):
        chain.answer(tiny_model, feats, qa, n_opt, selector="uniform", fusion="concat", n_keyframes=7)
    with pytest.raises(ValueError, match="features must be"):
        chain.answer(tiny_model, feats[:, :, :5], qa, n_opt, selector="all", fusion="vote", n_keyframes=2)
    with pytest.raises(ValueError, match="batch of 3"):
        chain.answer(tiny_model, feats, qa[:2], n_opt, selector="all", fusion="vote", n_keyframes=2)
    with pytest.raises(ValueError):
        chain.answer(tiny_model, feats, qa, n_opt, selector="localizer_uniform", fusion="vote", n_keyframes=2)


def test_text_side_needs_a_fitting_tokenizer(tiny_tokenizer, batch):
    bare = SeViLA(sevila_tiny(len(tiny_tokenizer)))
    with pytest.raises(RuntimeError, match="no tokenizer attached"):
        bare.localize(batch["features"], batch["loc"])
    with pytest.raises(ValueError, match="only 16 embeddings"):
        SeViLA(sevila_tiny(16), tiny_tokenizer)


# ---------------------------------------------------------------------------------------------------------------
# Truncation, losses, freezing, learning
# ---------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_truncated_prompts_are_counted(tiny_tokenizer, model_factory, batch):
    lengths = [len(tiny_tokenizer(t).input_ids) for t in batch["qa"]]
    limit = sorted(lengths)[1]  # the longest prompt is cut, the others fit
    model = model_factory(max_text_len=limit)
    res = chain.answer(model, batch["features"], batch["qa"], batch["n_options"], selector="uniform", fusion="concat",
                       n_keyframes=2)
    assert res.qa_truncated.tolist() == [n > limit for n in lengths] and int(res.qa_truncated.sum()) == 1
    inputs = model.answerer_inputs(batch["features"][:, :2], batch["qa"])
    assert inputs.embeds.shape[1] == model.visual_len(2) + limit
    loc_lengths = [len(tiny_tokenizer(t).input_ids) for t in batch["loc"]]
    out = model.localize(batch["features"], batch["loc"])
    assert out.truncated.tolist() == [n > limit for n in loc_lengths]


def test_losses_are_the_lm_loss_of_the_targets(tiny_model, batch):
    feats, qa, loc = batch["features"][:1, :2], batch["qa"][:1], batch["loc"][:1]
    ids = tiny_model.token_ids
    with torch.no_grad():
        loss, truncated = tiny_model.answerer_loss(feats, qa, [3])
        embeds = _manual_row(tiny_model, tiny_model.answerer, feats[0], qa[0])
        dec = torch.tensor([[0, ids.option, ids.letters[3]]])  # [start] + target shifted right
        logits = tiny_model.t5(inputs_embeds=embeds, decoder_input_ids=dec).logits
        manual = F.cross_entropy(logits[0], torch.tensor([ids.option, ids.letters[3], ids.eos]))
        assert torch.allclose(loss, manual, atol=ATOL)
        assert truncated.tolist() == [False]

        labels = torch.tensor([[True, False]])
        loss, _ = tiny_model.localizer_loss(feats, loc, labels)
        terms = []
        for t, target in enumerate([ids.yes, ids.no]):
            embeds = _manual_row(tiny_model, tiny_model.localizer, feats[0, t:t + 1], loc[0])
            lg = tiny_model.t5(inputs_embeds=embeds, decoder_input_ids=torch.tensor([[0, target]])).logits[0]
            terms.append(F.cross_entropy(lg, torch.tensor([target, ids.eos]), reduction="sum"))
        assert torch.allclose(loss, sum(terms) / 4, atol=ATOL)  # mean over the 2 x 2 target tokens
    with pytest.raises(ValueError, match="outside 0..1"):
        tiny_model.answerer_loss(feats, qa, [2], n_options=[2])


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_freezing_only_the_trained_module_gets_gradients(fresh_model, batch):
    m = fresh_model
    m.set_trainable(localizer=True, answerer=False)
    m.train()
    assert not m.vision.training and not m.t5.training  # frozen backbone: eval mode, no dropout
    assert m.localizer.training and not m.answerer.training
    assert parameter_counts(m).requires_grad == parameter_counts(m).trainable["localizer"]
    labels = torch.tensor([[True, False, False, True, False, False]] * 3)
    loss, _ = m.localizer_loss(batch["features"], batch["loc"], labels)
    loss.backward()
    assert all(g is not None for g in _grads(m.localizer))
    assert any(float(g.abs().sum()) > 0 for g in _grads(m.localizer.qformer))
    assert all(g is None for g in _grads(m.answerer) + _grads(m.vision) + _grads(m.t5))
    assert all(not p.requires_grad for p in list(m.vision.parameters()) + list(m.t5.parameters()))

    m.zero_grad(set_to_none=True)
    m.set_trainable(localizer=False, answerer=True)
    loss, _ = m.answerer_loss(batch["features"][:, :2], batch["qa"], [0, 1, 1])
    loss.backward()
    assert all(g is not None for g in _grads(m.answerer))
    assert all(g is None for g in _grads(m.localizer) + _grads(m.vision) + _grads(m.t5))
    assert m.answerer.training and not m.localizer.training
    m.eval()
    assert not any(mod.training for mod in m.modules())


def test_pseudo_labels_are_per_frame_correctness(tiny_model, batch):
    feats, qa, n_opt = batch["features"][:, :4], batch["qa"], batch["n_options"]
    per = tiny_model.answer_each_frame(feats, qa, n_opt).pred
    gold = [int(per[0, 0]), int(per[1, 3]), 1]
    labels = chain.pseudo_labels(tiny_model, feats, qa, n_opt, gold)
    assert labels.tolist() == [[int(p) == g for p in per[b]] for b, g in enumerate(gold)]
    assert labels[0, 0] and labels[1, 3]


def test_localizer_learns_pseudo_labels(fresh_model, batch):
    """A few Adam steps on the Localizer loss move the yes-scores toward the labelled keyframes."""
    m = fresh_model
    m.set_trainable(localizer=True, answerer=False)
    m.train()
    feats, loc = batch["features"], batch["loc"]
    labels = torch.zeros(3, 6, dtype=torch.bool)
    labels[0, 1] = labels[1, 4] = labels[2, 2] = True
    opt = torch.optim.Adam(m.trainable_parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss, _ = m.localizer_loss(feats, loc, labels)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        assert float(m.localizer_loss(feats, loc, labels)[0]) < 0.5 * first
        out = m.localize(feats, loc, n_keyframes=1)
    assert out.keyframes.flatten().tolist() == [1, 4, 2]
