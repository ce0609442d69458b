"""The synthetic world's backbone bootstrap (sevila/bootstrap.py): example builders pinned on a tiny generated world,
the rules that keep the reverse chain honest (no answer on a frame outside the event, no Localizer prompt), and a
fast end-to-end run whose checkpoint loads back as a complete model with both modules starting from the same
Q-Former."""
import random
import re

import pytest
import torch
import yaml

from sevila import prompts
from sevila.bootstrap import (CAPTION_PROMPT, MATCH_WORDS, BootstrapLoss, BootstrapSettings, Example, Phase,
                              PhaseData, Task, TaskSpec, bootstrap_backbone, caption_examples, curriculum,
                              event_rows, frame_qa_example, frame_qa_pool, load_frame_table, match_example,
                              subset_options, text_metas, text_qa_example, world_model_config, _metas_by_video)
from sevila.checkpoints import load_sevila, read_header
from sevila.config import ConfigError, build, load_config
from sevila.data import synth
from sevila.data.records import read_records
from sevila.model import SeViLA
from sevila.stages import prepare
from sevila.tokenizer import build_tiny_tokenizer

N_FRAMES = 6  # frames per training video in these tests


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 6-video world (4 train / 1 val / 1 test videos) at 32x32, 4 fps, read back into canonical records."""
    root = tmp_path_factory.mktemp("boot")
    params = {"paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
              "world": {"videos": 6, "seed": 2, "fps": 4, "size": 32}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    prepare.run(cfg)
    return cfg


@pytest.fixture(scope="module")
def train_table(world):
    recs = read_records(f"{world.paths.processed}/train.jsonl")
    return recs, load_frame_table(f"{world.paths.world}/videos", [r.video for r in recs], N_FRAMES, 32)


# ------------------------------------------------------------------------------------------- text builders


def test_match_example_names_the_option_that_repeats_the_frame_word():
    rng = random.Random(0)
    for n in (2, 3, 5):
        for _ in range(20):
            ex = match_example(rng, n)
            m = re.fullmatch(r"Frame: (\w+)\. (.*)", ex.prompt)
            assert m, ex.prompt
            word, listed = m.groups()
            options = re.findall(r"Option ([A-E]): (\w+)\.", listed)
            assert [letter for letter, _ in options] == list("ABCDE"[:n])
            words = [w for _, w in options]
            assert len(set(words)) == n and set(words) <= set(MATCH_WORDS)
            assert ex.target == f"Option {'ABCDE'[words.index(word)]}" and ex.task is Task.MATCH and ex.frame == -1
            assert listed == prompts.lettered_options([w + "." for w in words])  # the official option format


def test_subset_options_keeps_the_answer():
    rng = random.Random(1)
    opts = ["a.", "b.", "c.", "d.", "e."]
    for n in range(1, 6):
        for answer in range(5):
            sub, new = subset_options(opts, answer, n, rng)
            assert len(sub) == n == len(set(sub)) and sub[new] == opts[answer]
    with pytest.raises(ValueError, match="n_options 6"):
        subset_options(opts, 0, 6, rng)
    with pytest.raises(ValueError, match="answer 5"):
        subset_options(opts, 5, 2, rng)


def test_text_qa_example_writes_the_event_caption_and_the_official_answerer_prompt():
    metas = text_metas(30, seed=7)
    assert all(m["index"] >= 10_000_000 for m in metas)  # never a video of a generated world
    rng = random.Random(2)
    for meta in metas:
        ex = text_qa_example(rng, meta, 5)
        tg = meta["target"]
        head = f"Frame: a big {tg['colour']} {tg['shape']}. Question: "
        assert ex.prompt.startswith(head) and ex.prompt.endswith(prompts.ANSWERER_SUFFIX)
        options = re.findall(r"Option [A-E]: (.*?\.)(?= Option| Considering)", ex.prompt)
        assert len(options) == 5
        chosen = options["ABCDE".index(ex.target[-1])]
        question = ex.prompt[len(head):ex.prompt.index("? Option A")]
        qtype = next(q["type"] for q in meta["questions"] if q["question"] == question)
        # the right option names what the event frame shows: its colour (DO: its shape)
        assert (tg["shape"] if qtype == "DO" else tg["colour"]) in chosen
    two = text_qa_example(random.Random(3), metas[0], 2)
    assert two.prompt.count("Option ") == 2


# ------------------------------------------------------------------------------------------- frame builders


def test_frame_table_and_captions_cover_every_sampled_frame(world, train_table):
    recs, table = train_table
    videos = sorted({r.video for r in recs})
    assert len(videos) == 4 and len(table) == 4 * N_FRAMES  # pinned: 4 training videos x 6 frames
    assert table.pixels.shape == (24, 3, 32, 32)
    metas = _metas_by_video(synth.Path(world.paths.world))
    caps = caption_examples(table, metas)
    assert len(caps) == 24 and all(c.task is Task.CAPTION and c.prompt == CAPTION_PROMPT for c in caps)
    assert [c.frame for c in caps] == list(range(24))
    for c in caps:
        meta = metas[table.videos[c.frame]]
        s, e = meta["event"]
        inside = s <= table.times[c.frame] <= e
        assert c.target.startswith("a big ") == inside  # the event frame shows the big target, others do not


def test_frame_qa_uses_only_frames_inside_the_event(world, train_table):
    recs, table = train_table
    metas = _metas_by_video(synth.Path(world.paths.world))
    pool = frame_qa_pool(table, recs)
    # expected count from the world's own metadata (event span in world.jsonl, not the records' evidence)
    expected = 0
    for r in recs:
        s, e = metas[r.video]["event"]
        expected += sum(s <= table.times[row] <= e for row in table.rows[r.video])
    assert len(pool) == expected > 0
    for rec, row in pool:
        s, e = metas[rec.video]["event"]
        assert table.videos[row] == rec.video and s <= table.times[row] <= e
        assert row in event_rows(table, rec)
    rng = random.Random(0)
    for rec, row in pool:
        ex = frame_qa_example(rng, rec, row)
        options = re.findall(r"Option [A-E]: (.*?\.)(?= Option| Considering)", ex.prompt)
        assert sorted(options) == sorted(rec.options)  # all options, re-shuffled
        assert options["ABCDE".index(ex.target[-1])] == rec.options[rec.answer]
        assert ex.prompt.startswith(f"Question: {rec.question} ") and ex.frame == row


def test_phase_data_is_deterministic_follows_the_mix_and_never_asks_the_localizer(world, train_table):
    recs, table = train_table
    metas = _metas_by_video(synth.Path(world.paths.world))
    caps, pool = caption_examples(table, metas), frame_qa_pool(table, recs)
    text_pool = text_metas(10, seed=1)
    allowed_qa_rows = {row for _, row in pool}
    for phase in curriculum(BootstrapSettings(match_steps=2, text_steps=2, joint_steps=2)):
        data = PhaseData(phase, 40, 0, text_pool, caps, pool)
        again = PhaseData(phase, 40, 0, text_pool, caps, pool)
        items = [data[i] for i in range(len(data))]
        assert items == [again[i] for i in range(40)]
        assert [e.task for e in items] == [phase.mix[i % len(phase.mix)].task for i in range(40)]
        for e in items:
            assert prompts.LOCALIZER_SUFFIX not in e.prompt and "Frame 1:" not in e.prompt
            if e.task is Task.FRAME_QA:
                assert e.frame in allowed_qa_rows
    with pytest.raises(IndexError):
        data[40]
    with pytest.raises(ValueError, match="frame_qa has no examples"):
        PhaseData(Phase("x", 1, (TaskSpec(Task.FRAME_QA),)), 4, 0, text_pool, caps, [])


def test_curriculum_starts_with_two_option_matching_and_adds_frames_last():
    phases = curriculum(BootstrapSettings())
    assert [p.name for p in phases] == ["match", "text", "joint"]
    assert {(t.task, t.min_options, t.max_options) for t in phases[0].mix} == {(Task.MATCH, 2, 2)}
    assert all(t.task is not Task.FRAME_QA for p in phases[:2] for t in p.mix)
    assert any(t.task is Task.FRAME_QA for t in phases[2].mix)
    assert phases[0].constant_lr and not phases[-1].constant_lr


# ------------------------------------------------------------------------------------------- model and loss


def test_world_model_config_sizes():
    cfg = world_model_config(300, 48, d_model=32, t5_heads=8, t5_layers=3, n_query=4)
    t5 = cfg.t5_config()
    assert (t5.d_model, t5.num_heads, t5.d_kv, t5.num_layers, t5.num_decoder_layers) == (32, 8, 4, 3, 3)
    assert (t5.relative_attention_num_buckets, t5.relative_attention_max_distance) == (32, 128)
    assert t5.vocab_size == 300 and cfg.image_size == 48 and cfg.n_query == 4
    assert cfg.n_vision_tokens == (48 // 8) ** 2 + 1
    assert cfg.qformer_config().encoder_hidden_size == cfg.vision_config().hidden_size == 32


def test_loss_trains_vision_only_through_frame_tasks(tmp_path, train_table):
    recs, table = train_table
    tok = build_tiny_tokenizer(synth.world_text() + [prompts.answerer_prompt(r.question, r.options) for r in recs],
                               tmp_path / "tok", vocab_size=200)
    torch.manual_seed(0)
    model = SeViLA(world_model_config(len(tok), 32, d_model=16, t5_heads=2, n_query=2), tok)
    model.vision.requires_grad_(True)
    model.t5.requires_grad_(True)
    model.set_trainable(answerer=True)
    model.train()
    loss_fn = BootstrapLoss(table.pixels)
    text = [match_example(random.Random(i), 2) for i in range(3)]
    loss = loss_fn(model, text)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(p.grad is None for p in model.vision.parameters())  # text alone never reaches the ViT
    model.zero_grad(set_to_none=True)
    pool = frame_qa_pool(table, recs)
    frames = [Example(Task.CAPTION, CAPTION_PROMPT, "a grey background", 0),
              frame_qa_example(random.Random(0), *pool[0])]
    loss = loss_fn(model, text + frames)
    loss.backward()
    assert model.vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.localizer.proj.weight.grad is None  # the Localizer slot is never trained here
    # per-example mean over tasks: equal to the count-weighted mean of the per-task losses
    with torch.no_grad():
        model.eval()
        whole = loss_fn(model, text + frames)
        parts = [loss_fn(model, text), loss_fn(model, frames[:1]), loss_fn(model, frames[1:])]
    assert torch.allclose(whole, (3 * parts[0] + parts[1] + parts[2]) / 5, atol=1e-5)


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="bootstrap: unknown setting"):
        build(BootstrapSettings, {"txt_steps": 1}, "bootstrap")
    built = build(BootstrapSettings, {"match_steps": 5, "lr": 0.01, "eval_every": None}, "bootstrap")
    assert built == BootstrapSettings(match_steps=5, lr=0.01)
    with pytest.raises(ValueError, match="not a multiple of t5_heads"):
        BootstrapSettings(d_model=60, t5_heads=8)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        BootstrapSettings(batch_size=0)


# ------------------------------------------------------------------------------------------- end to end

TINY = BootstrapSettings(d_model=16, t5_heads=2, n_query=2, vocab_size=256, batch_size=8, match_steps=2, text_steps=2,
                         joint_steps=2, warmup_steps=1, frames_per_video=N_FRAMES, n_eval_frames=16, n_text_metas=20,
                         n_eval_text=10)


def test_bootstrap_saves_a_complete_frozen_model_with_twin_modules(world, tmp_path):
    out = tmp_path / "backbone"
    metrics = bootstrap_backbone(world.paths.world, world.paths.processed, out, TINY, progress=False)
    assert {"train_seconds", "steps", "caption_loss", "val_acc_event", "val_acc_outside", "val_text_acc",
            "val_match_acc", "val_n_event_frames", "val_n_outside_frames"} <= set(metrics)
    assert metrics["steps"] == 6
    assert metrics["val_n_event_frames"] > 0
    assert metrics["val_n_event_frames"] + metrics["val_n_outside_frames"] == 16 * len(
        read_records(f"{world.paths.processed}/val.jsonl"))  # every val question x 16 frames
    assert 0.0 <= metrics["val_acc_event"] <= 1.0 and metrics["caption_loss"] > 0
    assert not (tmp_path / "backbone.work").exists()  # intermediate files are cleaned up

    header = read_header(out)
    assert set(header.parts) == {"vision", "t5", "localizer", "answerer"} and header.step == 6
    assert header.run_config["bootstrap"]["match_steps"] == 2
    model, report = load_sevila(out)
    assert set(report.set_parts) == {"vision", "t5", "localizer", "answerer"}
    assert model.config == world_model_config(len(model.tokenizer), 32, d_model=16, t5_heads=2, n_query=2)
    loc, ans = model.localizer.state_dict(), model.answerer.state_dict()
    assert list(loc) == list(ans) and all(torch.equal(loc[k], ans[k]) for k in loc)
    assert not any(p.requires_grad for part in (model.vision, model.t5) for p in part.parameters())  # frozen
    tok = model.tokenizer
    for text in ("Option C", "a big red circle", prompts.answerer_prompt("what colour is the big shape?", ["red."])):
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text
