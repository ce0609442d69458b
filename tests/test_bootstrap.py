"""The synthetic world's backbone bootstrap: example builders pinned on a tiny world, and a fast end-to-end smoke
run whose checkpoint loads back as a complete model with both modules starting from the same Q-Former."""
import json
import random

import pytest
import torch
import yaml

from sevila import prompts
from sevila.bootstrap import (CAPTION_PROMPT, BootstrapSettings, caption_mc_example, pointer_example,
                              text_curriculum, vision_examples)
from sevila.checkpoints import load_sevila
from sevila.config import load_config
from sevila.data.records import read_records
from sevila.data.video import read_frames, resolve_video_path
from sevila.stages import bootstrap, prepare


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("boot")
    params = {
        "paths": {k: str(root / k) for k in ("world", "processed", "reports", "models", "runs")},
        "world": {"videos": 6, "seed": 2, "fps": 4, "size": 32},
        "model": {"weights": str(root / "backbone")},
        "bootstrap": {"n_frames": 6, "text_steps": [2, 2, 2], "vision_steps": 2, "batch_size": 8},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cfg = load_config(root / "params.yaml")
    prepare.run(cfg)
    return cfg


def test_pointer_and_caption_examples_follow_the_official_prompt():
    rng = random.Random(0)
    prompt, target = pointer_example(rng, 2)
    assert prompt.startswith("Question: ") and prompt.count("Option ") == 2 and prompt.endswith(prompts.ANSWERER_SUFFIX)
    letter = target.split()[-1]
    asked = prompt.split("?")[0].removeprefix("Question: ")
    assert f"Option {letter}: {asked}." in prompt  # the target names the option that repeats the question word
    prompt, target = caption_mc_example(rng, seed=1)
    assert prompt.startswith("Frame: a big ") and target in {prompts.answer_target(i) for i in range(5)}


def test_text_curriculum_sizes():
    batches = text_curriculum((3, 2, 4), batch=5, seed=0)
    assert len(batches) == 9 and all(len(b) == 5 for b in batches)
    assert all(p.count("Option ") == 2 for p, _ in batches[0])  # phase 1: 2-option pointers
    assert all(p.count("Option ") == 5 for p, _ in batches[3])  # phase 2: 5-option pointers


def test_vision_examples_caption_every_frame_and_ask_only_on_event_frames(cfg):
    recs = [r for r in read_records(f"{cfg.paths.processed}/train.jsonl")]
    metas = {m["video"]: m for m in map(json.loads, open(f"{cfg.paths.world}/world.jsonl"))}
    samples = {v: read_frames(resolve_video_path(f"{cfg.paths.world}/videos", v), 6, size=32)
               for v in sorted({r.video for r in recs})}
    ex = vision_examples(recs, metas, samples, seed=0)
    captions = [e for e in ex if e[2] == CAPTION_PROMPT]
    assert len(captions) == 6 * len(samples)
    n_event = sum(int(((s.timestamps >= metas[r.video]["event"][0]) & (s.timestamps <= metas[r.video]["event"][1])).sum())
                  for r in recs for s in [samples[r.video]])
    assert len(ex) - len(captions) == 2 * n_event  # each question on each event frame, twice (re-shuffled options)
    index = list(samples)
    for v, j, prompt, target in ex:
        lo, hi = metas[index[v]]["event"]
        inside = lo <= samples[index[v]].timestamps[j] <= hi
        assert prompt == CAPTION_PROMPT or inside  # never a question on a frame outside the event


def test_stage_saves_a_complete_model_with_twin_modules(cfg):
    metrics = bootstrap.run(cfg)
    assert {"val_acc_event_frames", "val_acc_other_frames", "language_steps", "vision_steps"} <= set(metrics)
    assert metrics["language_steps"] == 6
    model, report = load_sevila(cfg.model.weights)
    assert set(report.set_parts) == {"vision", "t5", "localizer", "answerer"}
    for (n1, p1), (n2, p2) in zip(model.localizer.state_dict().items(), model.answerer.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    tok = model.tokenizer
    assert tok.decode(tok("Option C").input_ids, skip_special_tokens=True) == "Option C"
    assert json.loads(open(f"{cfg.paths.reports}/bootstrap.json").read()) == metrics


def test_settings_are_checked_by_key(tmp_path, cfg):
    from sevila.config import ConfigError, build

    with pytest.raises(ConfigError, match="bootstrap: unknown setting"):
        build(BootstrapSettings, {"txt_steps": [1]}, "bootstrap")
