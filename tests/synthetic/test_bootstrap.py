"""The synthetic world's backbone bootstrap (sevila/synthetic/bootstrap.py; its examples:
sevila/synthetic/bootstrap_examples.py),
pinned on a tiny generated world:

- the example builders (MATCH, TEXT_QA on 1-4 frames, YES_NO, GROUND, FRAME_QA, FRAME_MATCH) and the slot words a
  frame is grounded in, checked against the world's own metadata (`visible_objects`, the event span);
- the key invariant of the design: a text task writes the frame as exactly the tokens whose embeddings the
  Answerer's queries are trained to hit, so the text layout IS the frame layout once the queries are exact;
- the rules that keep the reverse chain honest (QA only on event frames, no Localizer prompt);
- the curriculum, the losses and accuracies (pinned with a bridge that returns the slot embeddings exactly), the
  settings, and a fast end-to-end run whose checkpoint loads back complete, frozen, with twin Q-Formers.
"""
import contextlib
import dataclasses
import random
import re
from pathlib import Path

import pytest
import torch
import yaml

from sevila.synthetic import bootstrap as boot, world as synth
from sevila.model import prompts
from sevila.synthetic.bootstrap import (
    YES_NO_TASKS, BootstrapLoss, BootstrapSettings, HeldOut, Verdict, bootstrap_backbone, bootstrap_trainable,
    choice_accuracy, curriculum, gate_verdict, ground_accuracy, ground_loss, phase_verdict, slot_ids, text_inputs,
    world_model_config, yes_no_accuracy, _metas_by_video, _world_tokenizer_texts,
)
from sevila.synthetic.bootstrap_examples import (
    EMPTY_SLOTS, IMAGE_META_OFFSET, MATCH_WORDS, SLOT_WORDS, TEXT_META_OFFSET, Context, Gate, CurriculumPhase, PhaseData,
    Pools, Task, TaskSpec, caption_images, concat_tables, event_frame_pool, event_rows, event_slots,
    frame_match_example, frame_qa_example, frame_qa_pool, frames_text, ground_examples, load_frame_table,
    localize_example, match_example, outside_slots, shows_event, slot_text, slot_words, subset_options, text_metas,
    text_qa_example, yes_no_example,
)
from sevila.weights.ours import load_sevila, read_header
from sevila.config import ConfigError, build, load_config
from sevila.data.records import read_records
from sevila.synthetic.render import COLOURS, render_frame, visible_objects
from sevila.data.video import to_pixels
from sevila.model.modeling import SeViLA
from sevila.stages import prepare
from sevila.model.tokenizer import build_tiny_tokenizer, prefix_ids

N_FRAMES = 6  # frames per training video in these tests
REPO = Path(__file__).resolve().parents[2]
OPTION_RE = re.compile(r"Option ([A-E]): (.*?\.)(?= Option| Considering|$)")


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


@pytest.fixture(scope="module")
def metas(world):
    return _metas_by_video(Path(world.paths.world))


@pytest.fixture(scope="module")
def text_pool():
    return text_metas(20, seed=2)


@pytest.fixture(scope="module")
def tok(tmp_path_factory, train_table, text_pool):
    """The world's tokenizer as the stage builds it (`_world_tokenizer_texts`), at the tiny run's vocab size."""
    recs, _ = train_table
    return build_tiny_tokenizer(_world_tokenizer_texts(recs, text_pool), tmp_path_factory.mktemp("tok") / "t", 256)


def _model(tok, seed: int = 0) -> SeViLA:
    torch.manual_seed(seed)
    return SeViLA(world_model_config(len(tok), 32, d_model=16, t5_heads=2), tok)


@pytest.fixture(scope="module")
def model(tok):
    """A fresh world model (read-only in the tests that share it)."""
    return _model(tok)


def _split_frames(prompt: str) -> tuple[list[str], list[tuple[str, ...]], str]:
    """A text task's prompt -> (frame prefixes, each frame's slot words, the rest of the prompt)."""
    frame = re.compile(r"(Frame(?: \d+)?: )([a-z]+(?: [a-z]+)*)\. ")
    prefixes, slots, pos = [], [], 0
    while m := frame.match(prompt, pos):
        prefixes.append(m[1])
        slots.append((*m[2].split(), "."))
        pos = m.end()
    return prefixes, slots, prompt[pos:]


class FixedQueries(torch.nn.Module):
    """A bridge that ignores the frames and returns given queries [n, Q, d]: an exact Q-Former, to pin the maths."""

    def __init__(self, queries: torch.Tensor) -> None:
        super().__init__()
        self.queries = queries

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        assert features.shape[0] == self.queries.shape[0]
        return self.queries


@contextlib.contextmanager
def exact_answerer(model: SeViLA, queries: torch.Tensor):
    """Swap the Answerer bridge for FixedQueries(queries) (pytest's monkeypatch cannot restore a submodule)."""
    real = model.answerer
    model.answerer = FixedQueries(queries)
    try:
        yield
    finally:
        model.answerer = real


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
            assert len(set(words)) == n and set(words) <= set(MATCH_WORDS) and word in words
            assert ex.target == f"Option {'ABCDE'[words.index(word)]}" and ex.task is Task.MATCH and ex.frame == -1
            assert listed == prompts.lettered_options([w + "." for w in words])  # the official option format
    two_words = {w for _ in range(50) for w in re.findall(r"\w+(?=\.)", match_example(rng, 2, MATCH_WORDS[:2]).prompt)}
    assert two_words == set(MATCH_WORDS[:2])  # the vocab phase's pool: the first two words only
    with pytest.raises(ValueError):
        match_example(rng, 3, MATCH_WORDS[:2])  # more options than distinct words


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


def test_slot_words_name_what_the_frame_shows(metas, train_table):
    _, table = train_table
    n_inside = 0
    for row, (video, t) in enumerate(zip(table.videos, table.times)):
        meta, t = metas[video], float(t)
        words = slot_words(meta, t)
        assert len(words) == SLOT_WORDS and words[-1] == "."
        s, e = meta["event"]
        if s <= t <= e:  # the big target alone
            n_inside += 1
            tg = meta["target"]
            assert words == ("big", tg["colour"], tg["shape"], ".") == event_slots(meta)
        else:
            shown = visible_objects(meta, t)
            first = ("small", shown[0]["colour"], shown[0]["shape"], ".") if shown else EMPTY_SLOTS
            assert words == first and words[0] != "big"
    assert n_inside == 3  # pinned: at 6 frames per video, 3 of the 24 training frames fall in an event

    # a frame with nothing on screen (a distractor gone, outside the event)
    bare = {"event": [5.0, 6.0], "target": {"colour": "red", "shape": "circle"},
            "distractors": [{"colour": "blue", "shape": "square", "span": [0.0, 1.0]}]}
    assert slot_words(bare, 3.0) == EMPTY_SLOTS == ("a", "grey", "background", ".")
    assert slot_words(bare, 0.5) == ("small", "blue", "square", ".")
    assert slot_words(bare, 5.0) == slot_words(bare, 6.0) == ("big", "red", "circle", ".")  # ends inclusive

    assert slot_text(("big", "red", "circle", ".")) == "big red circle."
    assert slot_text(EMPTY_SLOTS) == "a grey background."
    assert frames_text([("big", "red", "circle", ".")]) == "Frame: big red circle. "
    assert frames_text([EMPTY_SLOTS, ("small", "blue", "square", ".")]) == (
        "Frame 1: a grey background. Frame 2: small blue square. ")


def test_outside_slots_are_a_distractor_or_nothing():
    meta = text_metas(1, seed=3)[0]
    allowed = {("small", d["colour"], d["shape"], ".") for d in meta["distractors"]} | {EMPTY_SLOTS}
    rng = random.Random(0)
    draws = [outside_slots(rng, meta) for _ in range(500)]
    assert set(draws) <= allowed and all(len(d) == SLOT_WORDS for d in draws)
    assert 0.12 < draws.count(EMPTY_SLOTS) / 500 < 0.28  # one time in five
    assert len(set(draws)) == len(allowed)  # every distractor turns up


def test_text_qa_example_writes_slot_frames_and_the_official_answerer_prompt():
    metas = text_metas(30, seed=7)
    assert all(m["index"] >= TEXT_META_OFFSET for m in metas)  # never a video of a generated world
    rng = random.Random(2)
    event_places = {1: set(), 2: set(), 4: set()}
    for meta in metas:
        tg = meta["target"]
        distractors = {("small", d["colour"], d["shape"], ".") for d in meta["distractors"]}
        for n_frames in (1, 2, 4):
            ex = text_qa_example(rng, meta, 5, n_frames)
            assert ex.task is Task.TEXT_QA and ex.frame == -1
            prefixes, slots, rest = _split_frames(ex.prompt)
            assert prefixes == prompts.frame_prefixes(n_frames)  # `Frame: ` alone, `Frame i: ` for several
            assert ex.prompt == frames_text(slots) + rest
            assert all(len(s) == SLOT_WORDS for s in slots)
            big = [i for i, s in enumerate(slots) if s[0] == "big"]
            assert len(big) == 1 and slots[big[0]] == event_slots(meta)  # exactly one frame in the event
            assert all(s == EMPTY_SLOTS for i, s in enumerate(slots) if i != big[0])  # Context.EMPTY: no distractor
            event_places[n_frames].add(big[0])

            options = OPTION_RE.findall(rest)
            assert [letter for letter, _ in options] == list("ABCDE")
            question = rest[len("Question: "):rest.index(" Option A")]
            assert rest == prompts.answerer_prompt(question, [o for _, o in options])  # the official prompt
            q = next(q for q in meta["questions"] if q["question"] + "?" == question)
            chosen = dict(options)[ex.target[-1]]
            assert sorted(o[:-1] for _, o in options) == sorted(q["options"])
            # the right option names what the event frame shows: its colour (DO: its shape)
            if q["type"] == "DC":
                assert chosen == tg["colour"] + "."
            elif q["type"] == "DO":
                assert chosen == tg["shape"] + "."
            else:
                assert f"big {tg['colour']} {tg['shape']}" in chosen
    assert event_places == {1: {0}, 2: {0, 1}, 4: {0, 1, 2, 3}}  # the event frame is anywhere among the others
    two = text_qa_example(random.Random(3), metas[0], 2)
    assert two.prompt.count("Option ") == 2


def test_keyframes_context_shows_one_to_all_event_frames_among_outside_ones():
    metas = text_metas(40, seed=8)
    rng = random.Random(5)
    n_event, fillers = set(), set()
    for meta in metas:
        distractors = {("small", d["colour"], d["shape"], ".") for d in meta["distractors"]}
        ex = text_qa_example(rng, meta, 5, 4, Context.KEYFRAMES)
        prefixes, slots, rest = _split_frames(ex.prompt)
        assert prefixes == prompts.frame_prefixes(4) and ex.prompt == frames_text(slots) + rest
        inside = [s for s in slots if s == event_slots(meta)]
        assert all(s in distractors or s == EMPTY_SLOTS for s in slots if s != event_slots(meta))
        n_event.add(len(inside))
        fillers |= {"distractor" if s in distractors else "empty" for s in slots if s != event_slots(meta)}
        q = next(q for q in meta["questions"] if rest.startswith(f"Question: {q['question']}?"))
        # the answer is what the event frames show, however many there are
        chosen = dict(OPTION_RE.findall(rest))[ex.target[-1]]
        assert chosen[:-1] == q["options"][q["answer"]]
    assert n_event == {1, 2, 3, 4} and fillers == {"distractor", "empty"}


def test_yes_no_example_says_yes_exactly_when_the_frame_shows_the_word():
    metas = text_metas(20, seed=5)
    rng = random.Random(4)
    answers = []
    for i in range(400):
        ex = yes_no_example(rng, metas[i % 20])
        prefixes, slots, rest = _split_frames(ex.prompt)
        assert ex.task is Task.YES_NO and prefixes == ["Frame: "] and len(slots[0]) == SLOT_WORDS
        m = re.fullmatch(r"Question: is there a (\w+)( shape)?\?", rest)
        assert m, ex.prompt
        word, colour = m[1], bool(m[2])
        assert word in (COLOURS if colour else synth.SHAPES)
        assert ex.target == (prompts.YES if word in slots[0] else prompts.NO)
        answers.append(ex.target)
    assert 0.3 < answers.count(prompts.YES) / 400 < 0.6  # both answers, yes a little under half the time


def test_localize_example_asks_the_localizer_prompt_and_says_yes_on_any_object():
    """LOCALIZE: the Localizer's own prompts (a question with its options, or the QVHighlights query), `yes` exactly
    when the frame shows an object: the event's target, a distractor of the same video, or nothing (a third each)."""
    metas = text_metas(20, seed=5)
    rng = random.Random(8)
    kinds, asked = [], set()
    for i in range(600):
        meta = metas[i % 20]
        ex = localize_example(rng, meta)
        prefixes, slots, rest = _split_frames(ex.prompt)
        assert ex.task is Task.LOCALIZE and prefixes == ["Frame: "] and len(slots[0]) == SLOT_WORDS
        questions = {prompts.localizer_prompt(q["question"] + "?", [o + "." for o in q["options"]])
                     for q in meta["questions"]}
        assert rest in questions | {prompts.qvh_localizer_prompt(meta["query"])}, rest
        asked.add("qvh" if "Option A: yes." in rest else "qa")
        target = slots[0]
        distractors = {("small", d["colour"], d["shape"], ".") for d in meta["distractors"]}
        kind = ("event" if target == event_slots(meta) else "distractor" if target in distractors
                else "empty" if target == EMPTY_SLOTS else None)
        assert kind, slots
        assert ex.target == (prompts.NO if kind == "empty" else prompts.YES)
        kinds.append(kind)
    assert asked == {"qa", "qvh"}
    assert all(0.27 < kinds.count(k) / 600 < 0.4 for k in ("event", "distractor", "empty"))


# ------------------------------------------------------------------------------------------- frame builders


def test_ground_examples_cover_every_frame_with_its_slot_words(metas, train_table):
    recs, table = train_table
    assert len({r.video for r in recs}) == 4 and len(table) == 4 * N_FRAMES  # pinned: 4 training videos x 6
    assert table.pixels.shape == (24, 3, 32, 32)
    ground = ground_examples(table, metas)
    assert [e.frame for e in ground] == list(range(24)) and all(e.task is Task.GROUND for e in ground)
    inside = []
    for e in ground:
        meta, t = metas[table.videos[e.frame]], float(table.times[e.frame])
        s, end = meta["event"]
        assert e.slots == slot_words(meta, t) and e.prompt == e.target == ""
        assert shows_event(e) == (s <= t <= end)
        inside += [e] if s <= t <= end else []
    pools = Pools([], ground, [], event_frame_pool(table, metas))
    assert pools.ground_event == inside and len(inside) == 3
    assert sorted(row for _, row in pools.frame_match) == [e.frame for e in inside]  # same event frames
    with pytest.raises(KeyError, match="no entry in world.jsonl"):
        ground_examples(table, {})


def test_caption_images_are_fresh_scenes_alternately_inside_their_event(metas):
    table, scenes = caption_images(6, seed=2, image_size=16, fps=4, size=32)
    assert table.pixels.shape == (6, 3, 16, 16) and len(table) == 6
    assert list(table.rows.values()) == [(i,) for i in range(6)] and tuple(table.rows) == table.videos
    assert not set(scenes) & set(metas)  # no world video: other indices
    assert [m["index"] for m in scenes.values()] == [IMAGE_META_OFFSET + i for i in range(6)]
    ground = ground_examples(table, scenes)
    assert [shows_event(e) for e in ground] == [True, False] * 3  # every other one inside its event
    for row, (video, t) in enumerate(zip(table.videos, table.times)):
        meta = scenes[video]
        assert (meta["size"], meta["fps"]) == (32, 4)
        frame = round(float(t) * meta["fps"])
        assert frame == float(t) * meta["fps"]  # a frame of the scene, not a time between frames
        # rendered straight and resized like a decoded frame
        assert torch.equal(table.pixels[row], to_pixels(render_frame(meta, frame)[None], 16)[0])
    assert ground[0].slots == event_slots(scenes[table.videos[0]])
    again, _ = caption_images(6, seed=2, image_size=16, fps=4, size=32)
    other, _ = caption_images(6, seed=3, image_size=16, fps=4, size=32)
    assert torch.equal(again.pixels, table.pixels) and not torch.equal(other.pixels, table.pixels)


def test_concat_tables_renumbers_rows(train_table):
    _, videos = train_table
    images, _ = caption_images(3, seed=2, image_size=32, fps=4, size=32)
    both = concat_tables(videos, images)
    assert len(both) == len(videos) + 3 and torch.equal(both.pixels[len(videos):], images.pixels)
    assert {v: both.rows[v] for v in videos.rows} == dict(videos.rows)  # the first table's rows stay
    assert [both.rows[v] for v in images.videos] == [(len(videos) + i,) for i in range(3)]
    assert both.videos == videos.videos + images.videos and both.times.tolist() == [*videos.times, *images.times]
    with pytest.raises(ValueError, match="in two frame tables"):
        concat_tables(videos, videos)


def test_frame_qa_uses_only_frames_inside_the_event(metas, train_table):
    recs, table = train_table
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
        options = [o for _, o in OPTION_RE.findall(ex.prompt)]
        assert sorted(options) == sorted(rec.options)  # all options, re-shuffled
        assert options["ABCDE".index(ex.target[-1])] == rec.options[rec.answer]
        assert ex.prompt == prompts.answerer_prompt(rec.question, options) and ex.frame == row


def test_frame_match_names_the_event_frames_colour_or_shape(metas, train_table):
    _, table = train_table
    pool = event_frame_pool(table, metas)
    rng = random.Random(5)
    kinds = set()
    for i in range(100):
        meta, row = pool[i % len(pool)]
        n = 2 + i % 4
        ex = frame_match_example(rng, meta, row, n)
        assert ex.task is Task.FRAME_MATCH and ex.frame == row
        words = [o[:-1] for _, o in OPTION_RE.findall(ex.prompt)]
        assert ex.prompt == prompts.lettered_options([w + "." for w in words])  # bare options, no frame text
        assert len(words) == n == len(set(words))
        right = words["ABCDE".index(ex.target[-1])]
        kind = COLOURS if right == meta["target"]["colour"] else synth.SHAPES
        assert right in (meta["target"]["colour"], meta["target"]["shape"]) and set(words) <= set(kind)
        kinds.add(kind is synth.SHAPES)
    assert kinds == {False, True}  # colours and shapes both asked


# ------------------------------------------------------------------------------------------- the key invariant


@pytest.mark.parametrize("n_frames", [1, 2, 4])
def test_text_layout_equals_the_frame_layout(model, text_pool, n_frames):
    """`Frame: big red circle. Question: ...` as text is token for token the Answerer's input on a frame whose
    query tokens are the embeddings of its slot words: what the T5 learns on text holds on frames."""
    tok = model.tokenizer
    for k in range(6):
        ex = text_qa_example(random.Random(k), text_pool[k], 5, n_frames)
        prefixes, slots, rest = _split_frames(ex.prompt)
        assert len(slots) == n_frames
        ids = slot_ids(model, slots)  # [K, Q]
        assert ids.shape == (n_frames, SLOT_WORDS) and (ids != tok.pad_token_id).all()  # one token per word

        text = text_inputs(model, [ex.prompt])
        answerer_text = model.tokenize([rest])
        assert not text.truncated.any() and not answerer_text.truncated.any()
        # token ids: prefixes and slot words where the visual tokens go, then the answerer prompt
        expected = [i for p, row in zip(prefixes, ids.tolist()) for i in prefix_ids(tok, p) + row]
        assert tok(ex.prompt).input_ids == expected + answerer_text.ids[0].tolist()

        frame = model.assemble(model.embed(ids).unsqueeze(0), answerer_text)  # queries [1, K, Q, d]
        assert frame.visual_len == model.visual_len(n_frames) == len(expected)
        assert text.embeds.shape == frame.embeds.shape and torch.equal(text.embeds, frame.embeds)
        assert torch.equal(text.mask, frame.mask)


def test_frame_path_with_exact_queries_reads_the_same_text(model, metas, train_table):
    """Through the real per-frame path of BootstrapLoss / choice_accuracy: a bridge whose queries are exactly the
    slot-word embeddings gives the encoder input of the text prompt `Frame: <slot words>. <answerer prompt>`."""
    recs, table = train_table
    pool = frame_qa_pool(table, recs)[:4]
    exs = [frame_qa_example(random.Random(i), rec, row) for i, (rec, row) in enumerate(pool)]
    slots = [slot_words(metas[table.videos[e.frame]], float(table.times[e.frame])) for e in exs]
    with torch.no_grad(), exact_answerer(model, model.embed(slot_ids(model, slots))):
        feats = model.vision_features(table.pixels[[e.frame for e in exs]])
        frame = model.per_frame_inputs("answerer", feats.unsqueeze(1), [e.prompt for e in exs])
        text = text_inputs(model, [frames_text([s]) + e.prompt for s, e in zip(slots, exs)])
    assert torch.equal(frame.embeds, text.embeds) and torch.equal(frame.mask, text.mask)


# ------------------------------------------------------------------------------------------- phases and data


def test_phase_data_is_deterministic_follows_the_mix_and_asks_the_localizer_only_its_prior(metas, train_table,
                                                                                          text_pool):
    recs, table = train_table
    pools = Pools(text_pool, ground_examples(table, metas), frame_qa_pool(table, recs),
                  event_frame_pool(table, metas))
    event = {e.frame for e in pools.ground_event}
    assert event and {row for _, row in pools.frame_qa} <= event
    for phase in curriculum(BootstrapSettings()):
        data = PhaseData(phase, 40, 0, pools)
        again = PhaseData(phase, 40, 0, pools)
        items = [data[i] for i in range(len(data))]
        assert items == [again[i] for i in range(40)]
        assert items != [PhaseData(phase, 40, 1, pools)[i] for i in range(40)]  # the seed matters
        for i, e in enumerate(items):
            spec = phase.mix[i % len(phase.mix)]
            assert e.task is spec.task
            # the Localizer's prompt only in LOCALIZE, whose answer is blind to the event (test above)
            assert (prompts.LOCALIZER_SUFFIX in e.prompt) == (e.task is Task.LOCALIZE)
            if e.task in (Task.FRAME_QA, Task.FRAME_MATCH):
                assert e.frame in event  # QA only ever on frames inside the event
                assert not e.prompt.startswith("Frame")  # the frame comes as query tokens, not text
            if e.task in (Task.MATCH, Task.FRAME_MATCH, Task.TEXT_QA):
                assert spec.min_options <= e.prompt.count("Option ") <= spec.max_options
            if e.task is Task.TEXT_QA:
                assert len(_split_frames(e.prompt)[0]) == spec.n_frames
            if e.task is Task.MATCH and spec.n_words:
                assert set(re.findall(r"\w+(?=\.)", e.prompt)) <= set(MATCH_WORDS[:spec.n_words])
        with pytest.raises(IndexError):
            data[40]

    ground_only = PhaseData(CurriculumPhase("see", 400, (TaskSpec(Task.GROUND),)), 400, 0, pools)
    drawn = [ground_only[i] for i in range(400)]
    assert all(e in pools.ground for e in drawn)
    share = sum(shows_event(e) for e in drawn) / 400
    expected = 0.5 + 0.5 * len(pools.ground_event) / len(pools.ground)  # half from events, half from all: 0.5625
    assert 0.35 < share < 0.65 and abs(share - expected) < 0.08  # drawn in proportion it would be 0.125

    with pytest.raises(ValueError, match="frame_qa has no examples"):
        PhaseData(CurriculumPhase("x", 1, (TaskSpec(Task.FRAME_QA),)), 4, 0, dataclasses.replace(pools, frame_qa=[]))
    with pytest.raises(ValueError, match="yes_no has no examples"):
        PhaseData(CurriculumPhase("x", 1, (TaskSpec(Task.YES_NO),)), 4, 0, dataclasses.replace(pools, text=[]))


def test_curriculum_starts_with_two_word_matching_and_adds_frames_last(world, metas):
    s = BootstrapSettings(gate=0.8)
    phases = curriculum(s)
    assert [p.name for p in phases] == PHASES
    assert [p.steps for p in phases] == [s.vocab_steps, s.match_steps, s.options_steps, s.questions_steps,
                                         s.context_steps, s.see_steps, s.frames_steps]
    assert phases[0].mix == (TaskSpec(Task.MATCH, 2, 2, n_words=2),) and phases[0].gate is None
    assert phases[1].mix == (TaskSpec(Task.MATCH, 2, 2),)
    assert not any(p.uses_frames for p in phases[:5])  # no frame task before "see"
    assert {t.task for t in phases[3].mix} == {Task.TEXT_QA, Task.MATCH}
    assert {t.n_frames for t in phases[3].mix if t.task is Task.TEXT_QA} == {1}  # one frame first ...
    assert {t.task for t in phases[4].mix} == {Task.TEXT_QA, Task.YES_NO, Task.LOCALIZE, Task.MATCH}
    assert {t.n_frames for t in phases[4].mix if t.task is Task.TEXT_QA} == {1, 2, 4}  # ... then several
    assert [t.n_frames for t in phases[4].mix if t.context is Context.KEYFRAMES] == [4]  # and the Answerer's input
    assert all(t.context is Context.EMPTY for p in phases[:4] for t in p.mix)
    assert phases[5].mix == (TaskSpec(Task.GROUND),)
    assert {t.task for t in phases[6].mix} == {Task.FRAME_QA, Task.FRAME_MATCH, Task.GROUND}
    assert [p.train_t5 for p in phases] == [True] * 5 + [False, False]
    assert [p.gate for p in phases] == [None, Gate("match2_acc", 0.8), Gate("match_acc", 0.8),
                                        Gate("text_acc", 0.8, s.stall_steps, s.stall_rise), Gate("multi_acc", 0.8),
                                        None, Gate("frame_qa_acc", 0.8, restart=False)]
    assert [p.lr for p in phases] == [None, None, None, s.late_lr, s.late_lr, None, s.late_lr]
    # every gate reads a metric the held-out evaluation computes
    val_recs = read_records(f"{world.paths.processed}/val.jsonl")
    val_table = load_frame_table(f"{world.paths.world}/videos", [r.video for r in val_recs], 8, 32)
    held = HeldOut(BootstrapSettings(n_eval_text=5), 2, val_table, metas, val_recs)
    assert {p.gate.metric for p in phases if p.gate} <= set(held.names)
    assert set(held.names) == {"match2_acc", "match_acc", "text_acc", "multi_acc", "keyframes_acc", "yes_no_acc",
                               "localize_acc", "frame_qa_acc", "ground_acc", "ground_event_acc"}
    assert all(e.task is Task.FRAME_QA for e in held.sets["frame_qa_acc"])
    # the yes/no sets are read by yes/no accuracy because of their examples' task, not their names
    assert {n for n, exs in held.sets.items() if exs[0].task in YES_NO_TASKS} == {"yes_no_acc", "localize_acc"}


# ------------------------------------------------------------------------------------------- model and loss


def test_world_model_config_sizes():
    cfg = world_model_config(300, 48, d_model=32, t5_heads=8, t5_layers=3)
    t5 = cfg.t5_config()
    assert (t5.d_model, t5.num_heads, t5.d_kv, t5.num_layers, t5.num_decoder_layers) == (32, 8, 4, 3, 3)
    assert (t5.relative_attention_num_buckets, t5.relative_attention_max_distance) == (32, 128)
    assert t5.dropout_rate == 0.0
    assert t5.vocab_size == 300 and cfg.image_size == 48 and cfg.n_query == SLOT_WORDS == 4
    assert cfg.n_vision_tokens == (48 // 8) ** 2 + 1
    assert cfg.qformer_config().encoder_hidden_size == cfg.vision_config().hidden_size == 32


def _mixed_batch(metas, table, recs, text_pool):
    ground = ground_examples(table, metas)
    qa = frame_qa_pool(table, recs)
    meta, row = event_frame_pool(table, metas)[0]
    text = [match_example(random.Random(0), 2), text_qa_example(random.Random(1), text_pool[0], 5, 2),
            yes_no_example(random.Random(2), text_pool[1]), match_example(random.Random(3), 5)]
    frames = [frame_qa_example(random.Random(4), *qa[0]), ground[0],
              frame_match_example(random.Random(5), meta, row, 3), ground[7], ground[17]]  # ground[7]: an event frame
    return text, frames


@torch.no_grad()
def test_z_loss_adds_the_first_step_log_normaliser_only_while_the_t5_trains(tok, metas, train_table, text_pool):
    """z_loss: + c * mean (log Z)^2 of the first decoder step (the step the Localizer's raw `yes` logit is read at),
    pinned against `decode`; a frozen T5 (phase `see` on) gets none."""
    recs, table = train_table
    model = _model(tok)
    text, _ = _mixed_batch(metas, table, recs, text_pool)
    inputs, targets = text_inputs(model, [e.prompt for e in text]), [e.target for e in text]
    first = model.decode(inputs, model.start_ids(len(text)))[:, 0, :]  # [N, V]
    expected = model.lm_loss(inputs, targets) + 0.01 * (first.logsumexp(-1) ** 2).mean()
    assert model.lm_loss(inputs, targets, z_loss=0.01) == pytest.approx(float(expected), rel=1e-5)
    assert float((first.logsumexp(-1) ** 2).mean()) > 0.1  # the term is not vanishing here
    bootstrap_trainable(model, train_t5=True)
    assert BootstrapLoss(table.pixels, 0.01)(model, text) > BootstrapLoss(table.pixels)(model, text)
    bootstrap_trainable(model, train_t5=False)
    assert BootstrapLoss(table.pixels, 0.01)(model, text) == BootstrapLoss(table.pixels)(model, text)


def test_loss_trains_vision_only_through_frame_tasks(tok, metas, train_table, text_pool):
    recs, table = train_table
    model = _model(tok)
    bootstrap_trainable(model, train_t5=True)
    assert not any(p.requires_grad for p in model.localizer.parameters())  # the Localizer's bridge never trains
    model.train()
    loss_fn = BootstrapLoss(table.pixels)
    text, frames = _mixed_batch(metas, table, recs, text_pool)

    loss = loss_fn(model, text)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    assert all(p.grad is None for p in model.vision.parameters())  # text alone never reaches the ViT ...
    assert all(p.grad is None for p in model.answerer.parameters())  # ... nor the bridge
    assert model.t5.shared.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)

    ground = [e for e in frames if e.task is Task.GROUND]
    model.t5.requires_grad_(False)  # phase "see": the T5 frozen
    loss = loss_fn(model, ground)
    loss.backward()
    assert model.vision.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    assert model.answerer.proj.weight.grad.abs().sum() > 0 and model.answerer.query_tokens.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.localizer.parameters())  # the Localizer slot is never trained here
    assert all(p.grad is None for p in model.t5.parameters())
    model.zero_grad(set_to_none=True)

    loss_fn(model, text + frames).backward()
    assert all(p.grad is None for p in model.localizer.parameters())


def test_batch_loss_is_the_count_weighted_mean_of_the_task_losses(model, metas, train_table, text_pool):
    recs, table = train_table
    loss_fn = BootstrapLoss(table.pixels)
    text, frames = _mixed_batch(metas, table, recs, text_pool)
    batch = [frames[0], text[0], frames[1], text[1], frames[2], text[2], frames[3], text[3], frames[4]]  # interleaved
    model.eval()
    with torch.no_grad():
        whole = loss_fn(model, batch)
        by_task = {}
        for e in batch:
            by_task.setdefault(e.task, []).append(e)
        parts = {task: loss_fn(model, exs) for task, exs in by_task.items()}
        # GROUND is per example (one loss per frame): the group's loss is the mean of its examples' losses
        singles = torch.stack([loss_fn(model, [e]) for e in by_task[Task.GROUND]])
    assert len(by_task) == 6
    expected = sum(len(by_task[t]) * parts[t] for t in by_task) / len(batch)
    assert torch.allclose(whole, expected, atol=1e-5)
    assert torch.allclose(parts[Task.GROUND], singles.mean(), atol=1e-5)


def test_ground_loss_and_accuracy_with_exact_queries(tok, metas, train_table):
    _, table = train_table
    model = _model(tok, seed=1)  # its own: the bridge is swapped and the embeddings scaled below
    ground = ground_examples(table, metas)
    feats = torch.zeros(len(ground), model.config.n_vision_tokens, model.vision.config.hidden_size)
    target = slot_ids(model, [e.slots for e in ground])  # [N, Q]
    with torch.no_grad():
        exact = model.embed(target)  # [N, Q, d]
        model.answerer = FixedQueries(exact)
        loss = ground_loss(model, feats, ground)  # [N]
        # by hand: the target's logit is 0, every other word's is minus its squared distance over sqrt(d)
        table_w = model.t5.shared.weight
        d2 = ((exact[:, :, None, :] - table_w[None, None]) ** 2).sum(-1)  # [N, Q, V]
        by_hand = torch.logsumexp(-d2 / table_w.shape[1] ** 0.5, dim=-1).mean(1)  # [N]
        assert loss.shape == (len(ground),) and torch.allclose(loss, by_hand, atol=1e-4)
        assert ground_accuracy(model, table.pixels, ground) == 1.0

        # nearest but off by delta: the squared distance over d is added (the queries must BE the embeddings)
        delta = torch.zeros_like(exact)
        delta[..., 0] = 0.5
        model.answerer = FixedQueries(exact + delta)
        off = ground_loss(model, feats, ground)
        d2 = ((exact[:, :, None, :] + delta[:, :, None, :] - table_w[None, None]) ** 2).sum(-1)  # [N, Q, V]
        ce = (torch.logsumexp(-d2 / table_w.shape[1] ** 0.5, dim=-1)
              - (-(delta ** 2).sum(-1) / table_w.shape[1] ** 0.5)).mean(1)  # minus the target's logit
        assert 0.5 ** 2 / table_w.shape[1] > 1e-3  # the term is well above the tolerance
        assert torch.allclose(off, ce + 0.5 ** 2 / table_w.shape[1], atol=1e-5)
        assert ground_accuracy(model, table.pixels, ground) == 1.0

        # queries of the wrong frames: right exactly where the two frames' slot words agree
        shifted = list(range(1, len(ground))) + [0]
        model.answerer = FixedQueries(exact[shifted])
        agree = sum(ground[j].slots == e.slots for e, j in zip(ground, shifted))
        assert ground_accuracy(model, table.pixels, ground) == agree / len(ground) < 1.0

        # embeddings far apart: exact queries leave no loss at all (both terms)
        model.t5.shared.weight.mul_(10.0)
        model.answerer = FixedQueries(model.embed(target))
        assert ground_loss(model, feats, ground).max() < 1e-6
        model.answerer = FixedQueries(torch.zeros_like(exact))
        assert ground_loss(model, feats, ground).min() > 1.0  # no information: far from zero


def test_accuracies_read_the_argmax_of_each_example(model, metas, train_table, text_pool):
    """choice_accuracy / yes_no_accuracy (batched) equal the per-example decision read off the model directly."""
    recs, table = train_table
    mc = [text_qa_example(random.Random(i), text_pool[i], 2 + i % 4, 1 + i % 2) for i in range(7)]
    frame = [frame_qa_example(random.Random(i), *p) for i, p in enumerate(frame_qa_pool(table, recs))]
    yn = [yes_no_example(random.Random(i), text_pool[i]) for i in range(7)]
    yn += [localize_example(random.Random(i), text_pool[i]) for i in range(7)]
    _, ids = model.require_tokenizer()
    with torch.no_grad():
        def right(e):
            if e.task.uses_frame:
                feats = model.encode_frames(table.pixels[[e.frame]]).unsqueeze(1)
                inputs = model.per_frame_inputs("answerer", feats, [e.prompt])
            else:
                inputs = text_inputs(model, [e.prompt])
            logits = model.option_logits(inputs, torch.tensor([e.prompt.count("Option ")]))[0]
            assert torch.isinf(logits[e.prompt.count("Option "):]).all()  # letters past the options never win
            return "ABCDE"[int(logits.argmax())] == e.target[-1]

        def said_yes(e):
            first = model.decode(text_inputs(model, [e.prompt]), model.start_ids(1))[0, 0]
            return (first[ids.yes] > first[ids.no]) == (e.target == prompts.YES)

        assert choice_accuracy(model, mc, batch=3) == sum(map(right, mc)) / len(mc)
        assert choice_accuracy(model, frame, table.pixels, batch=2) == sum(map(right, frame)) / len(frame)
        assert yes_no_accuracy(model, yn, batch=3) == sum(map(said_yes, yn)) / len(yn)
    assert choice_accuracy(model, []) == 0.0


# ------------------------------------------------------------------------------------------- settings


def test_settings_are_checked_and_named_by_their_dotted_key(tmp_path):
    with pytest.raises(ConfigError, match=r"bootstrap: unknown setting\(s\) \['text_steps'\]"):
        build(BootstrapSettings, {"text_steps": 1}, "bootstrap")  # the old recipe's keys are gone
    with pytest.raises(ConfigError, match=r"bootstrap: unknown setting\(s\) \['n_query'\]"):
        build(BootstrapSettings, {"n_query": 4}, "bootstrap")  # fixed: one query per slot word
    built = build(BootstrapSettings, {"match_steps": 5, "lr": 0.01, "see_steps": 0}, "bootstrap")
    assert built == BootstrapSettings(match_steps=5, lr=0.01, see_steps=0)
    # each bad value, as params.yaml would give it, is a ConfigError naming bootstrap.<key> before anything runs
    params = tmp_path / "params.yaml"
    params.write_text("bootstrap:\n  seed: 3\n")
    for override, message in [
        ("bootstrap.d_model=60", "bootstrap.d_model: 60 must be a multiple of t5_heads=8"),
        ("bootstrap.batch_size=0", "bootstrap.batch_size: 0 must be >= 1"),
        ("bootstrap.frames_steps=-1", "bootstrap.frames_steps: -1 must be >= 0"),
        ("bootstrap.gate=0.0", "bootstrap.gate: 0.0 must be in (0, 1]"),
        ("bootstrap.gate=-0.5", "bootstrap.gate: -0.5 must be in (0, 1]"),
        ("bootstrap.gate=1.01", "bootstrap.gate: 1.01 must be in (0, 1]"),
        ("bootstrap.late_lr=0", "bootstrap.late_lr: 0.0 must be > 0"),
        ("bootstrap.grad_clip=0", "bootstrap.grad_clip: 0.0 must be > 0"),
        ("bootstrap.weight_decay=-0.1", "bootstrap.weight_decay: -0.1 must be >= 0"),
        ("bootstrap.lr=fast", "bootstrap.lr: expected a number, got 'fast'"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(params, [override])
        assert str(err.value) == message
    assert load_config(params, ["bootstrap.gate=1.0"]).bootstrap == BootstrapSettings(seed=3, gate=1.0)


def test_params_yaml_bootstrap_section_builds():
    section = yaml.safe_load((REPO / "params.yaml").read_text())["bootstrap"]
    settings = load_config(REPO / "params.yaml").bootstrap
    assert type(settings) is BootstrapSettings
    assert {k: settings.to_dict()[k] for k in section} == section
    assert [p.name for p in curriculum(settings) if p.steps == 0] == ["frames"]  # off by default (bootstrap.py)


# ------------------------------------------------------------------------------------------- end to end

TINY = BootstrapSettings(d_model=16, t5_heads=2, vocab_size=256, batch_size=8, vocab_steps=2, match_steps=2,
                         options_steps=2, questions_steps=2, context_steps=2, see_steps=2, frames_steps=2,
                         warmup_steps=1, phase_warmup_steps=1, gate_every=1, frames_per_video=N_FRAMES,
                         n_eval_frames=16, n_text_metas=20, n_eval_text=10, caption_images=8,
                         restarts=0)  # a tiny run misses its gates: no restarts
PHASES = ["vocab", "match", "options", "questions", "context", "see", "frames"]


def test_bootstrap_saves_a_complete_frozen_model_with_twin_modules(world, tmp_path, monkeypatch):
    out = tmp_path / "backbone"
    work = tmp_path / "backbone.work"
    seen = {}
    real_save = boot.save_sevila

    world_dir, records_dir = Path(world.paths.world), Path(world.paths.processed)
    run_id = boot._run_id(TINY, world_dir, records_dir)

    def spy(model, out_dir, **kw):  # the work dir just before the final save (it is removed afterwards)
        seen["work"] = sorted(p.name for p in work.iterdir())
        seen["phases"] = sorted(p.name for p in (work / run_id).iterdir())
        return real_save(model, out_dir, **kw)

    class SpyLoss(BootstrapLoss):
        def __init__(self, pixels, z_loss):
            seen["pixel_rows"], seen["z_loss"] = len(pixels), z_loss
            super().__init__(pixels, z_loss)

    monkeypatch.setattr(boot, "save_sevila", spy)
    monkeypatch.setattr(boot, "BootstrapLoss", SpyLoss)
    metrics = bootstrap_backbone(world.paths.world, world.paths.processed, out, TINY, progress=False)
    n_train_videos = len({r.video for r in read_records(f"{world.paths.processed}/train.jsonl")})
    assert seen["pixel_rows"] == n_train_videos * N_FRAMES + TINY.caption_images  # the videos' frames + the images
    assert seen["z_loss"] == TINY.z_loss  # the setting reaches the loss

    assert {"train_seconds", "steps", "val_match_acc", "val_match2_acc", "val_text_acc", "val_multi_acc",
            "val_yes_no_acc", "val_localize_acc", "val_ground_acc", "val_ground_event_acc", "val_frame_qa_acc",
            "val_acc_event",
            "val_acc_outside", "val_n_event_frames", "val_n_outside_frames"} <= set(metrics)
    assert {f"steps_{p}" for p in PHASES} <= set(metrics)
    assert metrics["steps"] == sum(metrics[f"steps_{p}"] for p in PHASES)
    assert metrics["steps_vocab"] == metrics["steps_see"] == 2  # ungated phases run all their steps
    assert all(1 <= metrics[f"steps_{p}"] <= 2 for p in PHASES)
    assert metrics["val_n_event_frames"] > 0
    assert metrics["val_n_event_frames"] + metrics["val_n_outside_frames"] == 16 * len(
        read_records(f"{world.paths.processed}/val.jsonl"))  # every val question x 16 frames
    for k in ("val_match_acc", "val_text_acc", "val_multi_acc", "val_yes_no_acc", "val_localize_acc", "val_ground_acc",
              "val_acc_event", "val_acc_outside"):
        assert 0.0 <= metrics[k] <= 1.0, k

    # tokenizer and phase checkpoints live under a directory keyed by the settings and the data, so other settings
    # or another world never resume them
    assert boot._run_id(dataclasses.replace(TINY, match_steps=3), world_dir, records_dir) != run_id
    other_records = tmp_path / "records"
    other_records.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        lines = (records_dir / name).read_text().splitlines()
        (other_records / name).write_text("\n".join(lines[:-1] if name == "val.jsonl" else lines) + "\n")
    assert boot._run_id(TINY, world_dir, other_records) != run_id
    assert seen["work"] == [run_id]
    assert seen["phases"] == sorted(["tokenizer"] + [f"{k}_{p}" for k, p in enumerate(PHASES)])
    assert not work.exists()  # intermediate files are cleaned up

    header = read_header(out)
    assert set(header.parts) == {"vision", "t5", "localizer", "answerer"} and header.step == metrics["steps"]
    assert header.run_config["bootstrap"] == TINY.to_dict()
    assert [h["phase"] for h in header.run_config["phases"]] == PHASES
    model, report = load_sevila(out)
    assert set(report.set_parts) == {"vision", "t5", "localizer", "answerer"}
    assert model.config == world_model_config(len(model.tokenizer), 32, d_model=16, t5_heads=2)
    loc, ans = model.localizer.state_dict(), model.answerer.state_dict()
    assert list(loc) == list(ans) and all(torch.equal(loc[k], ans[k]) for k in loc)
    assert not any(p.requires_grad for part in (model.vision, model.t5) for p in part.parameters())  # frozen
    tok = model.tokenizer
    for text in ("Option C", "big red circle.", prompts.answerer_prompt("what colour is the big shape?", ["red."])):
        assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


# ------------------------------------------------------------------------------------------- stalls and restarts


@pytest.mark.parametrize("seen, verdict", [
    ([], Verdict.RUNNING),
    ([(100, 0.2), (500, 0.86)], Verdict.OPEN),  # the gate opens, whatever the stall rule says
    ([(100, 0.2), (1200, 0.29)], Verdict.RUNNING),  # 1,100 steps after the first evaluation: not yet judged
    ([(100, 0.2), (700, 0.25), (1300, 0.29)], Verdict.STALLED),  # 1,200 steps on, never 0.1 above 0.2
    ([(100, 0.2), (700, 0.31), (1300, 0.29)], Verdict.RUNNING),  # it rose once (0.31 >= 0.3): a climb, not a stall
    ([(1100, 0.2), (2300, 0.2)], Verdict.STALLED),  # after a resume the window starts at its first evaluation
])
def test_gate_verdict(seen, verdict):
    assert gate_verdict(Gate("text_acc", 0.85, stall_steps=1200, stall_rise=0.1), seen) is verdict


def test_gate_verdict_without_a_stall_rule_never_stalls():
    assert gate_verdict(Gate("match_acc", 0.85), [(100, 0.2), (5000, 0.2)]) is Verdict.RUNNING
    assert gate_verdict(None, [(100, 1.0)]) is Verdict.RUNNING  # an ungated phase runs its steps


def test_phase_verdict_reads_a_stop_below_the_gate_as_a_stall():
    phase = CurriculumPhase("questions", 10, (TaskSpec(Task.TEXT_QA),), Gate("text_acc", 0.85, stall_steps=5))
    assert phase_verdict(phase, True, {"text_acc": 0.9}) is Verdict.OPEN
    assert phase_verdict(phase, True, {"text_acc": 0.2}) is Verdict.STALLED  # also a resumed, already stopped attempt
    assert phase_verdict(phase, False, {"text_acc": 0.2}) is Verdict.MISSED
    assert phase_verdict(dataclasses.replace(phase, gate=None), False, {}) is Verdict.OPEN


def test_a_stalled_phase_restarts_the_bootstrap_from_new_weights_with_other_data(world, tmp_path, monkeypatch):
    # every other gate opens at once (0.01); the questions' cannot (1.0) and a rise of 1.0 is impossible, so the
    # questions phase stalls at its second evaluation in every attempt
    settings = dataclasses.replace(TINY, gate=0.01, stall_steps=1, stall_rise=1.0, restarts=2, see_steps=0,
                                   frames_steps=0)
    real_curriculum, real_train = boot.curriculum, boot.train

    def curriculum(s):
        return tuple(dataclasses.replace(p, gate=Gate("text_acc", 1.0, 1, 1.0)) if p.name == "questions" else p
                     for p in real_curriculum(s))

    starts, data, folders = [], [], []

    def spy(model, dataset, loss_fn, cfg, out_dir, **kw):
        if out_dir.name == "0_vocab":
            starts.append({k: v.clone() for k, v in model.state_dict().items()})
        if out_dir.name == "3_questions":
            data.append([dataset[i].prompt for i in range(4)])
            folders.append(out_dir.parent.name)
        return real_train(model, dataset, loss_fn, cfg, out_dir, **kw)

    monkeypatch.setattr(boot, "curriculum", curriculum)
    monkeypatch.setattr(boot, "train", spy)
    metrics = bootstrap_backbone(world.paths.world, world.paths.processed, tmp_path / "backbone", settings,
                                 progress=False)
    run_id = boot._run_id(settings, Path(world.paths.world), Path(world.paths.processed))
    assert folders == [run_id, "restart1", "restart2"]  # each attempt in its own folder: a rerun resumes it
    assert len(starts) == 3 and all(any(not torch.equal(v, a[k]) for k, v in b.items())
                                    for a, b in [(starts[0], starts[1]), (starts[1], starts[2])])  # new weights
    assert data[0] != data[1] != data[2]  # ... and another data order
    assert metrics["restarts"] == 2 and metrics["steps_questions"] == 3 * 2  # two steps per attempt, all counted
    assert metrics["gates_missed"] == 1  # the last attempt's questions
    phases = read_header(tmp_path / "backbone").run_config["phases"]
    assert [(h["attempt"], h["phase"]) for h in phases] == [
        (a, p) for a in (0, 1) for p in PHASES[:4]] + [(2, p) for p in PHASES[:5]]  # the last attempt goes on
    assert [h["verdict"] for h in phases if h["phase"] == "questions"] == ["stalled"] * 3


def test_a_missed_frames_gate_does_not_restart_the_bootstrap(world, tmp_path, monkeypatch):
    # the last vision phase's gate only ends it early: missing it leaves the frozen T5 and the run as they are
    settings = dataclasses.replace(TINY, gate=0.01, restarts=2)
    real_curriculum = boot.curriculum

    def curriculum(s):
        return tuple(dataclasses.replace(p, gate=dataclasses.replace(p.gate, threshold=1.01)) if p.name == "frames"
                     else p for p in real_curriculum(s))

    monkeypatch.setattr(boot, "curriculum", curriculum)
    metrics = bootstrap_backbone(world.paths.world, world.paths.processed, tmp_path / "backbone", settings,
                                 progress=False)
    assert (metrics["restarts"], metrics["gates_missed"]) == (0, 1)
    phases = read_header(tmp_path / "backbone").run_config["phases"]
    assert [h["phase"] for h in phases] == PHASES and phases[-1]["verdict"] == "missed"
