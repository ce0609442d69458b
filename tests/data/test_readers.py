"""Readers of the six benchmarks' official files and of SeViLA's JSON, on the real excerpts in sevila/data/realdata."""
from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sevila.config import Benchmark
from sevila.data.annotations import (
    AnnotationError,
    SourceFormat,
    check_video_id,
    count_missing_windows,
    count_unlabelled,
    parse_answer,
    read_annotations,
    split_from_name,
)
from sevila.data.how2qa import correct_position
from sevila.data.records import MomentRecord, QARecord

OFF, SJ = SourceFormat.OFFICIAL, SourceFormat.SEVILA_JSON

# dataset, file, format, records, unlabelled, NaN windows: the counts SOURCES.md states.
COUNTS = [
    ("nextqa", "nextqa/val.csv", OFF, 46, 0, 0),
    ("nextqa", "nextqa/test.csv", OFF, 46, 0, 0),
    ("star", "star/STAR_val.json", OFF, 1, 0, 0),
    ("star", "star/sample_question.json", OFF, 1, 0, 0),
    ("how2qa", "how2qa/how2QA_val_release.csv", OFF, 40, 0, 0),
    ("how2qa", "how2qa/how2QA_test_public_release.csv", OFF, 19, 0, 0),
    ("tvqa", "tvqa/tvqa_test_public.jsonl", OFF, 43, 43, 3),
    ("tvqa", "tvqa/tvqa_plus_val.json", OFF, 30, 0, 0),
    ("vlep", "vlep/vlep_dev_release.jsonl", OFF, 40, 0, 0),
    ("vlep", "vlep/vlep_test_release.jsonl", OFF, 20, 20, 0),
    ("qvhighlights", "qvhighlights/highlight_val_release.jsonl", OFF, 1550, 0, 0),
    ("qvhighlights", "qvhighlights/highlight_train_release.jsonl", OFF, 30, 0, 0),
    ("qvhighlights", "qvhighlights/highlight_test_release.jsonl", OFF, 20, 20, 0),
    ("qvhighlights", "qvhighlights/highlight_test_with_gt.jsonl", OFF, 20, 0, 0),
    ("nextqa", "sevila_data/nextqa/val.json", SJ, 46, 0, 0),
    ("star", "sevila_data/star/val.json", SJ, 40, 0, 0),
    ("star", "sevila_data/star/test.json", SJ, 20, 20, 0),
]


@pytest.mark.parametrize("dataset,rel,fmt,n,n_unlabelled,n_nan", COUNTS, ids=[c[1] for c in COUNTS])
def test_every_real_file_loads_with_stated_counts(realdata, dataset, rel, fmt, n, n_unlabelled, n_nan):
    recs = read_annotations(dataset, realdata / rel, fmt=fmt)
    assert len(recs) == n
    assert count_unlabelled(recs) == n_unlabelled
    assert count_missing_windows(recs) == n_nan
    kind = MomentRecord if dataset == "qvhighlights" else QARecord
    assert all(isinstance(r, kind) and r.dataset == dataset for r in recs)
    assert len({r.qid for r in recs}) == n


# ------------------------------------------------------------------------------------------------ NExT-QA


def test_nextqa_follows_sevila_conventions(realdata):
    recs = read_annotations(Benchmark.NEXTQA, realdata / "nextqa/val.csv", realdata / "nextqa/map_vid_vidorID.json")
    r = recs[0]
    assert r == QARecord(
        dataset="nextqa", qid="CH_4010069381_6", video="1106/4010069381",
        question="how do the two man play the instrument?",
        options=("roll the handle.", "tap their feet.", "strum the string.", "hit with sticks.", "pat with hand."),
        answer=0, qtype="CH", split="val",
    )
    assert set(r.qtype for r in recs) == {"CW", "CH", "TN", "TC", "TP", "DL", "DC", "DO"}
    assert all(r.qid.startswith(r.qtype + "_") for r in recs)
    assert {r.video for r in recs} == {"1106/4010069381", "1104/4882821564", "0063/2435100235", "1201/8132842161", "1106/4260763967"}
    assert recs[-1].qid == "CW_4882821564_0" and recs[-1].answer == 4


def test_nextqa_test_split_and_default_map(realdata):
    # No video_map: the official layout keeps map_vid_vidorID.json next to the CSVs.
    recs = read_annotations("nextqa", realdata / "nextqa/test.csv")
    assert recs[0].qid == "TN_2574374895_8" and recs[0].video == "1101/2574374895" and recs[0].answer == 2
    assert recs[0].split == "test" and len({r.video for r in recs}) == 6


def test_nextqa_without_map_is_an_error(realdata, tmp_path):
    shutil.copy(realdata / "nextqa/val.csv", tmp_path / "val.csv")
    with pytest.raises(FileNotFoundError, match="video map"):
        read_annotations("nextqa", tmp_path / "val.csv")


def test_nextqa_unmapped_video_names_row(realdata, tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"4010069381": "1106/4010069381"}))
    with pytest.raises(AnnotationError, match=r"val\.csv, line 3: record 'CW_4882821564_1': video '4882821564' is not in the video map"):
        read_annotations("nextqa", realdata / "nextqa/val.csv", tmp_path / "map.json")


def _planted_nextqa(realdata: Path, tmp_path: Path, edit) -> Path:
    lines = (realdata / "nextqa/val.csv").read_text().splitlines(keepends=True)
    lines = edit(lines)
    out = tmp_path / "val.csv"
    out.write_text("".join(lines))
    shutil.copy(realdata / "nextqa/map_vid_vidorID.json", tmp_path / "map_vid_vidorID.json")
    return out


def test_nextqa_wrong_column_count_names_line(realdata, tmp_path):
    def drop_last_column(lines):
        lines[4] = lines[4].rstrip("\n").rsplit(",", 1)[0] + "\n"
        return lines

    path = _planted_nextqa(realdata, tmp_path, drop_last_column)
    with pytest.raises(AnnotationError, match=r"val\.csv, line 5: expected 13 columns, got 12"):
        read_annotations("nextqa", path)


def test_nextqa_answer_out_of_range(realdata, tmp_path):
    def bad_answer(lines):
        cols = lines[2].split(",")
        cols[5] = "7"
        lines[2] = ",".join(cols)
        return lines

    path = _planted_nextqa(realdata, tmp_path, bad_answer)
    with pytest.raises(AnnotationError, match=r"line 3: answer 7 out of range for 5 options"):
        read_annotations("nextqa", path)


def test_nextqa_dotdot_video_id_rejected(realdata, tmp_path):
    shutil.copy(realdata / "nextqa/val.csv", tmp_path / "val.csv")
    vmap = json.loads((realdata / "nextqa/map_vid_vidorID.json").read_text())
    vmap["4010069381"] = "../../etc/4010069381"
    (tmp_path / "map_vid_vidorID.json").write_text(json.dumps(vmap))
    with pytest.raises(AnnotationError, match=r"line 2: record 'CH_4010069381_6': video id '\.\./\.\./etc/4010069381' contains a '\.\.'"):
        read_annotations("nextqa", tmp_path / "val.csv")


# ------------------------------------------------------------------------------------------------ STAR


def test_star_raw_and_sevila_json_give_the_same_record(realdata):
    raw = read_annotations("star", realdata / "star/STAR_val.json")
    converted = read_annotations("star", realdata / "sevila_data/star/val.json", fmt=SJ)
    assert raw[0] == converted[0]
    assert raw[0].answer == 2 and raw[0].options[2] == "The clothes."
    assert (raw[0].start, raw[0].end, raw[0].qtype, raw[0].video) == (11.1, 19.6, "Interaction", "6H78U")


def test_star_sevila_types_and_unlabelled_test(realdata):
    val = read_annotations("star", realdata / "sevila_data/star/val.json", fmt=SJ)
    assert Counter(r.qtype for r in val) == {"Interaction": 10, "Sequence": 10, "Prediction": 10, "Feasibility": 10}
    test = read_annotations("star", realdata / "sevila_data/star/test.json", fmt=SJ)
    assert Counter(r.qtype for r in test) == {"Interaction": 5, "Sequence": 5, "Prediction": 5, "Feasibility": 5}
    assert all(r.answer is None for r in test)
    assert test[0].qid == "Interaction_T1_0" and test[0].start == 12.1 and test[0].end == 18.0


def test_star_single_object_file(realdata):
    (r,) = read_annotations("star", realdata / "star/sample_question.json")
    assert r.qid == "Interaction_T1_3772" and r.video == "WBS4I" and r.answer == 0
    assert r.options[0] == "The closet/cabinet." and r.split is None


def test_star_test_split_without_answer_is_unlabelled(realdata, tmp_path):
    data = json.loads((realdata / "star/STAR_val.json").read_text())
    del data[0]["answer"]
    (tmp_path / "STAR_test.json").write_text(json.dumps(data))
    (r,) = read_annotations("star", tmp_path / "STAR_test.json")
    assert r.answer is None and r.split == "test"


def test_star_answer_not_among_choices_names_question(realdata, tmp_path):
    data = json.loads((realdata / "star/STAR_val.json").read_text())
    data[0]["answer"] = "The sofa."
    (tmp_path / "STAR_val.json").write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match=r"record 1: question 'Interaction_T1_13': answer 'The sofa\.' is not among its choices"):
        read_annotations("star", tmp_path / "STAR_val.json")


# ------------------------------------------------------------------------------------------------ How2QA


def test_how2qa_quoted_fields_and_answer_is_the_last_column(realdata):
    path = realdata / "how2qa/how2QA_val_release.csv"
    recs = read_annotations("how2qa", path)
    rows = list(csv.reader(path.open(newline="")))
    for r, row in zip(recs, rows):
        assert r.options[r.answer] == row[6]
        assert sorted(r.options) == sorted(row[2:5] + [row[6]])
        # wrong answers keep their file order
        assert [o for i, o in enumerate(r.options) if i != r.answer] == row[2:5]
    first = recs[0]
    assert (first.qid, first.video, first.start, first.end) == ("how2qa_how2QA_val_release_0", "NOuQuofjk44", 7.2, 18.0)
    assert first.question == "how many knife is there?" and first.options[first.answer] == "1"
    quoted = next(r for r in recs if r.video == "dnUFgR92F8M")
    assert quoted.question == "How poisonous are poinsettias, based on the clip?"
    assert quoted.options[quoted.answer] == "not poisonous" and (quoted.start, quoted.end) == (22.21, 39.62)
    channel = next(r for r in recs if r.video == "DUEyiEnMVj4" and r.start == 12.6)
    assert channel.options[channel.answer] == 'his channel is called "whatsdev"'


def test_how2qa_option_order_is_deterministic_and_not_constant(realdata, tmp_path):
    path = realdata / "how2qa/how2QA_val_release.csv"
    recs = read_annotations("how2qa", path)
    counts = Counter(r.answer for r in recs)
    assert set(counts) == {0, 1, 2, 3} and max(counts.values()) <= 20
    # The position depends on the row's content only: a renamed copy gives the same options and answers.
    shutil.copy(path, tmp_path / "copy_val.csv")
    again = read_annotations("how2qa", tmp_path / "copy_val.csv")
    assert [(r.options, r.answer) for r in again] == [(r.options, r.answer) for r in recs]
    # Pinned: sha256 of the first row's fields.
    assert correct_position(["NOuQuofjk44", "[7.2:18.0]", "10", "12", "16", "how many knife is there?", "1"]) == recs[0].answer == 0


def test_how2qa_crlf_test_file(realdata):
    path = realdata / "how2qa/how2QA_test_public_release.csv"
    assert b"\r\n" in path.read_bytes()
    recs = read_annotations("how2qa", path)
    assert not any("\r" in s or "\n" in s for r in recs for s in (r.question, r.video, *r.options))
    assert recs[0].split == "test" and (recs[0].video, recs[0].start, recs[0].end) == ("iPV4xMkwFwU", 67.57, 95.13)
    assert recs[0].options[recs[0].answer] == "replace car stereo system"


def test_how2qa_bad_rows_name_the_line(realdata, tmp_path):
    lines = (realdata / "how2qa/how2QA_val_release.csv").read_text().splitlines(keepends=True)
    bad = tmp_path / "h.csv"
    bad.write_text("".join(lines[:3] + ["NOuQuofjk44,[7.2:18.0],10,12,how many?,1\n"]))
    with pytest.raises(AnnotationError, match=r"h\.csv, line 4: expected 7 columns .* got 6"):
        read_annotations("how2qa", bad)
    bad.write_text("".join(lines[:1] + ["NOuQuofjk44,[7.2-18.0],10,12,16,how many?,1\n"]))
    with pytest.raises(AnnotationError, match=r"line 2: bad timestamp '\[7\.2-18\.0\]'"):
        read_annotations("how2qa", bad)


# ------------------------------------------------------------------------------------------------ TVQA / TVQA+


def test_tvqa_nan_windows_are_none_and_counted(realdata):
    recs = read_annotations("tvqa", realdata / "tvqa/tvqa_test_public.jsonl")
    nan = [r for r in recs if not r.has_window]
    assert {r.qid for r in nan} == {"137648", "142453", "142977"}
    assert all(r.start is None and r.end is None for r in nan)
    r = recs[0]
    assert (r.qid, r.video, r.start, r.end, r.qtype, r.answer) == ("137292", "s03e21_seg02_clip_08", 48.62, 60.02, "The Big Bang Theory", None)
    assert len(r.options) == 5 and r.options[0] == "The yogurt manufacturer. "  # verbatim, trailing space kept
    assert next(x for x in recs if x.qid == "137294").qtype == "Castle"


def test_tvqa_plus_string_answers_and_list_ts(realdata):
    recs = read_annotations("tvqa", realdata / "tvqa/tvqa_plus_val.json")
    r = recs[0]
    assert (r.qid, r.answer, r.start, r.end, r.video) == ("133290", 3, 0.0, 5.4, "s01e02_seg02_clip_12")
    assert r.options[3] == "Raj had become excited and did not want Penny to know ."
    assert [x.answer for x in recs[:5]] == [3, 2, 3, 4, 0]


def test_tvqa_variant_detected_from_contents_not_extension(realdata, tmp_path):
    plus = realdata / "tvqa/tvqa_plus_val.json"
    shutil.copy(plus, tmp_path / "tvqa_plus_val.jsonl")
    assert read_annotations("tvqa", tmp_path / "tvqa_plus_val.jsonl") == read_annotations("tvqa", plus)
    plain = realdata / "tvqa/tvqa_test_public.jsonl"
    shutil.copy(plain, tmp_path / "tvqa_test_public.json")
    assert read_annotations("tvqa", tmp_path / "tvqa_test_public.json") == read_annotations("tvqa", plain)


def test_tvqa_planted_defects(realdata, tmp_path):
    line = json.loads((realdata / "tvqa/tvqa_test_public.jsonl").read_text().splitlines()[0])
    good = json.dumps(line)
    bad = tmp_path / "tvqa_val.jsonl"
    bad.write_text(good + "\n" + json.dumps({**line, "qid": 1, "answer_idx": 5}) + "\n")
    with pytest.raises(AnnotationError, match=r"tvqa_val\.jsonl, line 2: answer 5 out of range for 5 options"):
        read_annotations("tvqa", bad)
    bad.write_text(json.dumps({**line, "ts": "12.5"}) + "\n")
    with pytest.raises(AnnotationError, match=r"line 1: bad timestamp '12\.5'"):
        read_annotations("tvqa", bad)
    bad.write_text(good + "\n" + json.dumps({**line, "qid": 2, "vid_name": "/abs/clip"}) + "\n")
    with pytest.raises(AnnotationError, match=r"line 2: record '2': video id '/abs/clip' is an absolute path"):
        read_annotations("tvqa", bad)
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(AnnotationError, match=r"duplicate qid '137292'"):
        read_annotations("tvqa", bad)
    bad.write_text(good + "\n{not json\n")
    with pytest.raises(AnnotationError, match=r"line 2: not valid JSON"):
        read_annotations("tvqa", bad)


# ------------------------------------------------------------------------------------------------ VLEP


def test_vlep_has_no_question_and_two_events(realdata):
    dev = read_annotations("vlep", realdata / "vlep/vlep_dev_release.jsonl")
    assert all(r.question is None and len(r.options) == 2 and r.split == "dev" for r in dev)
    assert sum(":" in r.video for r in dev) == 20  # 20 YouTube, 20 TV clips
    r = dev[0]
    assert (r.qid, r.video, r.answer, r.start, r.end) == ("20142", "friends_s03e09_seg02_clip_07_ep", 0, 38.81, 40.37)
    assert r.options[1] == "Ross will stop and ask Monica why she is pointing at him."
    preds = [json.loads(x) for x in (realdata / "vlep/sample_dev_submission.jsonl").read_text().splitlines()]
    assert {str(p["example_id"]) for p in preds} == {r.qid for r in dev}
    test = read_annotations("vlep", realdata / "vlep/vlep_test_release.jsonl")
    assert all(r.answer is None and r.split == "test" for r in test) and test[0].qid == "24534"


# ------------------------------------------------------------------------------------------------ QVHighlights


def test_qvhighlights_windows_and_saliency(realdata):
    val = read_annotations("qvhighlights", realdata / "qvhighlights/highlight_val_release.jsonl")
    # Counted from the file (SOURCES.md's "up to 4 windows" undercounts: one query has 25).
    n_windows = Counter(len(r.windows) for r in val)
    assert n_windows[1] == 1020 and n_windows[4] == 40 and max(n_windows) == 25
    assert all(len(r.relevant_clip_ids) == len(r.saliency_scores) for r in val)
    r = val[0]
    assert (r.qid, r.video, r.duration, r.windows) == ("2579", "NUsG9BgSes0_210.0_360.0", 150.0, ((82.0, 150.0),))
    assert r.relevant_clip_ids[:3] == (41, 42, 43) and r.saliency_scores[0] == (1, 1, 2)
    train = read_annotations("qvhighlights", realdata / "qvhighlights/highlight_train_release.jsonl")
    assert sum(len(r.windows) > 1 for r in train) == 17


def test_qvhighlights_test_is_unlabelled_and_gt_matches(realdata):
    test = read_annotations("qvhighlights", realdata / "qvhighlights/highlight_test_release.jsonl")
    gt = read_annotations("qvhighlights", realdata / "qvhighlights/highlight_test_with_gt.jsonl")
    assert all(r.windows is None and r.relevant_clip_ids is None and r.saliency_scores is None for r in test)
    assert [r.qid for r in test] == [r.qid for r in gt]
    assert gt[0].qid == "3158" and gt[0].windows == ((70.0, 110.0),) and len(gt[0].relevant_clip_ids) == 20


# ------------------------------------------------------------------------------------------------ shared checks


@pytest.mark.parametrize("vid", ["../x", "a/../../b", "/etc/passwd", "C:\\videos\\x", "..\\x", "", "\\\\server\\x"])
def test_check_video_id_rejects_escapes(vid):
    with pytest.raises(AnnotationError):
        check_video_id(vid, "f.json", "line 1", "q1")


@pytest.mark.parametrize("vid", ["1106/4010069381", "6H78U", "abc_00:01:02_ep", "a..b"])
def test_check_video_id_accepts_relative_ids(vid):
    assert check_video_id(vid, "f.json", "line 1") == vid


def test_parse_answer_forms():
    assert parse_answer("3", 5, "f", "line 1") == 3 and parse_answer(0, 2, "f", "line 1") == 0
    assert parse_answer(None, 5, "f", "line 1") is None
    for bad in (True, 2.0, "x", -1, 5):
        with pytest.raises(AnnotationError):
            parse_answer(bad, 5, "f", "line 1")


def test_split_from_name():
    assert [split_from_name(n) for n in ("how2QA_test_public_release.csv", "vlep_dev_release.jsonl", "STAR_val.json",
                                          "highlight_train_release.jsonl", "sample_question.json")] == ["test", "dev", "val", "train", None]


def test_video_map_only_for_nextqa(realdata):
    with pytest.raises(ValueError, match="video map applies only"):
        read_annotations("star", realdata / "star/STAR_val.json", video_map=realdata / "nextqa/map_vid_vidorID.json")


# ------------------------------------------------------------------------------------------- long CSV fields

LONG = "why " * 50_000  # 200,000 characters: over csv's default field_size_limit of 131,072


def test_nextqa_reads_a_200000_character_question(realdata, tmp_path):
    """A generated row (the real header and map) whose question holds 200,000 characters, quoted with a comma."""
    def long_row(lines):
        return lines[:2] + [f'4010069381,369,640,480,"{LONG}, then?",0,9,CH,a,b,c,d,e\n']

    path = _planted_nextqa(realdata, tmp_path, long_row)
    limit = csv.field_size_limit()
    first, rec = read_annotations("nextqa", path)
    assert rec.question == LONG + ", then?" + "?" and len(rec.question) == 200_008
    assert rec.qid == "CH_4010069381_9" and rec.options == ("a.", "b.", "c.", "d.", "e.") and rec.answer == 0
    assert csv.field_size_limit() == limit  # the process-wide limit is restored


def test_how2qa_reads_a_200000_character_question(realdata, tmp_path):
    lines = (realdata / "how2qa/how2QA_val_release.csv").read_text().splitlines(keepends=True)
    path = tmp_path / "how2QA_val_release.csv"
    path.write_text(lines[0] + f'NOuQuofjk44,[7.2:18.0],10,12,16,"{LONG}",1\n')
    limit = csv.field_size_limit()
    first, rec = read_annotations("how2qa", path)
    assert rec.question == LONG and rec.options[rec.answer] == "1" and (rec.start, rec.end) == (7.2, 18.0)
    assert csv.field_size_limit() == limit


@pytest.mark.parametrize("dataset, name, reader_line", [
    ("how2qa", "how2QA_val_release.csv", "NOuQuofjk44,[7.2:18.0],10,12,16,caf\xe9?,1\n"),
    ("tvqa", "tvqa_val.jsonl", '{"q": "caf\xe9"}\n'),
])
def test_non_utf8_annotation_file_is_named(tmp_path, dataset, name, reader_line):
    path = tmp_path / name
    path.write_bytes(reader_line.encode("latin-1"))
    with pytest.raises(AnnotationError, match=rf"{name}: not UTF-8 text \(byte 0xe9"):
        read_annotations(dataset, path)


@pytest.mark.parametrize("benchmark, name, line", [("nextqa", "nextqa/val.csv", 2),
                                                   ("how2qa", "how2qa/how2QA_val_release.csv", 2)])
def test_a_stray_quote_is_named_on_its_own_line(tmp_path, realdata, benchmark, name, line):
    # issue 24: a stray `"` on line 2 of a CSV was blamed on line 28, where the csv module closed the quote
    lines = (realdata / name).read_text().splitlines(keepends=True)
    lines[line - 1] = lines[line - 1].replace(",", ',"', 1)
    bad = tmp_path / Path(name).name
    bad.write_text("".join(lines))
    if benchmark == "nextqa":
        (tmp_path / "map_vid_vidorID.json").write_text((realdata / "nextqa/map_vid_vidorID.json").read_text())
    with pytest.raises(AnnotationError, match=rf"{bad}, line {line}: a quoted field runs on to line \d+: an unclosed"):
        read_annotations(benchmark, bad)
