"""Each expectation of the validation suite catches its planted defect and names the failing row."""
import dataclasses
import json

import numpy as np
import pytest

from sevila.cli import main as cli_main
from sevila.data.records import MomentRecord, QARecord, write_records
from sevila.synthetic.render import write_mp4
from sevila.data.validation import build_checks, validate_records

OPTS = ("red", "blue", "green", "white", "black")


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory) -> bytes:
    frames = np.zeros((8, 16, 16, 3), dtype=np.uint8)
    return write_mp4(tmp_path_factory.mktemp("v") / "v.mp4", frames, fps=4).read_bytes()


@pytest.fixture
def clean_world(tmp_path, tiny_mp4):
    videos = tmp_path / "videos"
    for v in ("a/1", "a/2", "a/3"):
        (videos / f"{v}.mp4").parent.mkdir(parents=True, exist_ok=True)
        (videos / f"{v}.mp4").write_bytes(tiny_mp4)
    (videos / "a/cut.mp4").write_bytes(tiny_mp4[: len(tiny_mp4) // 2])
    train = [QARecord("nextqa", "DC_1_0", "a/1", "what colour?", OPTS, 2, split="train", evidence=((1.0, 2.0),)),
             QARecord("nextqa", "DC_2_0", "a/2", "what colour?", OPTS, 0, split="train"),
             MomentRecord("qvhighlights", "10", "a red circle", "a/1", 10.0, ((1.0, 2.0),), split="train")]
    test = [QARecord("nextqa", "DC_3_0", "a/3", "what colour?", OPTS, None, split="test"),
            QARecord("vlep", "vlep_1", "a/3", None, ("x", "y"), 1, 0.5, 4.0, split="test")]
    return lambda: ({"train": list(train), "test": list(test)}, videos)


def failing(report):
    return {r.name: r.failing for r in report.results if not r.success}


def test_clean_records_pass(clean_world):
    splits, videos = clean_world()
    report = validate_records(splits, videos)
    assert report.success, failing(report)
    assert report.n_records == 5
    assert {r.name for r in report.results} == {c.name for c in build_checks()}


def plant(splits, split, i, **changes):
    splits[split][i] = dataclasses.replace(splits[split][i], **changes)


DEFECTS = {
    "option_count": lambda s: plant(s, "train", 0, options=OPTS[:4]),
    "answer_not_negative": lambda s: plant(s, "train", 0, answer=-1),
    "answer_in_range": lambda s: plant(s, "train", 0, answer=5),
    "question_not_empty": lambda s: plant(s, "train", 0, question="  "),
    "video_readable": lambda s: plant(s, "train", 0, video="a/missing"),
    "video_readable/truncated": lambda s: plant(s, "train", 0, video="a/cut"),
    "video_readable/escape": lambda s: plant(s, "train", 0, video="../videos/a/1"),
    "duration_positive": lambda s: plant(s, "train", 2, duration=0.0, windows=None),
    "qid_unique": lambda s: plant(s, "train", 1, qid="DC_1_0"),
    "window_start_not_negative": lambda s: plant(s, "train", 2, windows=((-1.0, 2.0),)),
    "window_start_before_end": lambda s: plant(s, "test", 1, start=4.0, end=0.5),
    "window_inside_duration": lambda s: plant(s, "train", 2, windows=((1.0, 12.0),)),
    "video_in_one_split": lambda s: plant(s, "test", 0, video="a/1"),
}
NAMED = {  # the row each planted defect must be reported under
    "option_count": ["DC_1_0"], "answer_not_negative": ["DC_1_0"], "answer_in_range": ["DC_1_0"],
    "question_not_empty": ["DC_1_0"], "video_readable": ["DC_1_0"], "duration_positive": ["10"],
    "qid_unique": ["DC_1_0"], "window_start_not_negative": ["10"], "window_start_before_end": ["vlep_1"],
    "window_inside_duration": ["10"], "video_in_one_split": ["a/1@test", "a/1@train"],
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_planted_defect_is_caught_and_named(clean_world, name):
    splits, videos = clean_world()
    DEFECTS[name](splits)
    report = validate_records(splits, videos)
    expectation = name.split("/")[0]
    assert failing(report) == {expectation: NAMED[expectation]}


def test_every_expectation_has_a_planted_defect():
    assert {d.split("/")[0] for d in DEFECTS} == {c.name for c in build_checks()}


def test_cli_writes_report_and_exits_nonzero(tmp_path, clean_world, capsys):
    splits, videos = clean_world()
    files = [write_records(tmp_path / f"{k}.jsonl", v) for k, v in splits.items()]
    out = tmp_path / "report.json"
    assert cli_main(["validate", *map(str, files), "--videos", str(videos), "--report", str(out)]) == 0
    assert json.loads(out.read_text())["success"] is True

    DEFECTS["answer_in_range"](splits)
    write_records(files[0], splits["train"])
    assert cli_main(["validate", *map(str, files), "--videos", str(videos), "--report", str(out)]) == 1
    report = json.loads(out.read_text())
    bad = [e for e in report["expectations"] if not e["success"]]
    assert [(e["expectation"], e["failing"]) for e in bad] == [("answer_in_range", ["DC_1_0"])]
    assert "FAILED answer_in_range: 1 row(s): DC_1_0" in capsys.readouterr().err


def test_files_with_one_stem_are_each_validated_and_reported(tmp_path, clean_world, capsys):
    """a/val.jsonl and b/val.jsonl: both are read, keyed by path, and a defect is named under its own file."""
    splits, videos = clean_world()
    a, b = tmp_path / "a" / "val.jsonl", tmp_path / "b" / "val.jsonl"
    write_records(a, splits["train"])
    DEFECTS["answer_in_range"](splits)  # DC_1_0 gets answer 5 of 5 options, only in b
    bad = [dataclasses.replace(r, qid=f"b{r.qid}") for r in splits["train"]]
    write_records(b, bad)
    out = tmp_path / "report.json"
    assert cli_main(["validate", str(a), str(b), "--videos", str(videos), "--report", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["n_records"] == 6
    assert report["sources"] == {
        str(a): {"n_records": 3, "success": True, "failing": {}},
        str(b): {"n_records": 3, "success": False, "failing": {"answer_in_range": ["bDC_1_0"]}},
    }
    err = capsys.readouterr().err.splitlines()
    assert err == [f"ok {a}: 3 records", f"FAILED {b}: 3 records", "  FAILED answer_in_range: 1 row(s): bDC_1_0"]


def test_a_video_in_two_files_of_two_splits_is_named_under_both(tmp_path, clean_world):
    splits, videos = clean_world()
    DEFECTS["video_in_one_split"](splits)
    report = validate_records(splits, videos)
    (leak,) = [r for r in report.results if not r.success]
    assert leak.by_source == {"test": ["a/1@test"], "train": ["a/1@train"]}


def test_no_records_at_all_is_valid_not_a_crash():
    report = validate_records({"train": [], "moments_train": []})
    assert report.success and report.n_records == 0 and report.sources == {"train": 0, "moments_train": 0}


GOOD_LINE = '{"dataset": "nextqa", "qid": "q1", "video": "a/1", "question": "why?", "options": ["a", "b"], "answer": 1}'


@pytest.mark.parametrize("content, message", [
    (b"", "val.jsonl: no records (an empty file)"),
    ((GOOD_LINE + "\n" + GOOD_LINE[:30]).encode(), "val.jsonl, line 2: not valid JSON"),
    ((GOOD_LINE + "\n" + GOOD_LINE.replace("why?", "\xe7a?")).encode("latin-1"),
     "val.jsonl, line 2: not UTF-8 text (byte 0xe7"),
    (f"[{GOOD_LINE}]".encode(), "val.jsonl: a JSON array, not JSON Lines"),
    (GOOD_LINE.replace('"answer": 1', '"answer": "abc"').encode(),
     "val.jsonl, line 1: answer must be an integer or null, got 'abc'"),
])
def test_unreadable_input_is_one_line_naming_the_file(tmp_path, capsys, content, message):
    f = tmp_path / "val.jsonl"
    f.write_bytes(content)
    out = tmp_path / "report.json"
    assert cli_main(["validate", str(f), "--report", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith(f"sevila validate: error: {tmp_path}/{message}") and len(err.splitlines()) == 1, err
    assert captured.out == "" and not out.exists()  # no report for input that could not be read


def test_the_same_file_twice_is_refused(tmp_path, clean_world, capsys):
    splits, _ = clean_world()
    f = write_records(tmp_path / "train.jsonl", splits["train"])
    assert cli_main(["validate", str(f), str(tmp_path / "." / "train.jsonl")]) == 2
    assert "are the same file" in capsys.readouterr().err
