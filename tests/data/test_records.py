import json
import math

import numpy as np
import pytest

from sevila.data.records import AnnotationError, MomentRecord, QARecord, read_records, record_to_dict, write_records

RECORDS = [
    QARecord("nextqa", "CW_1_2", "0001/1", "why?", ("a.", "b.", "c.", "d.", "e."), 3, None, None, "CW", "val",
             ((1.0, 2.5),)),
    QARecord("tvqa", "tvqa_7", "s01e01_seg01_clip_00", "who?", ("a", "b", "c", "d", "e"), None, math.nan, math.nan),
    QARecord("vlep", "vlep_3", "friends_x_ep", None, ("go", "stay"), 1, 3.5, 9.0),
    MomentRecord("qvhighlights", "12", "a man talks", "abc_60.0_210.0", 150.0, ((0.0, 4.0), (10.0, 20.0)),
                 (0, 1), ((1, 2, 3), (4, 4, 4))),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip(tmp_path, suffix):
    path = write_records(tmp_path / f"r{suffix}", RECORDS)
    back = read_records(path)
    assert [type(r) for r in back] == [type(r) for r in RECORDS]
    # NaN windows come back as None (unusable either way) and are told apart by has_window
    assert back[1].start is None and not back[1].has_window and back[2].has_window
    assert back[0] == RECORDS[0] and back[2] == RECORDS[2] and back[3] == RECORDS[3]
    # a column mixing None and ints must give ints back, not 1.0
    assert [type(r.answer) for r in back[:3]] == [int, type(None), int]


def test_unlabelled_is_none_not_zero(tmp_path):
    back = read_records(write_records(tmp_path / "r.jsonl", RECORDS))
    assert back[1].answer is None
    assert record_to_dict(RECORDS[1])["answer"] is None


def test_bad_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(record_to_dict(RECORDS[0])) + "\n{not json\n")
    with pytest.raises(AnnotationError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_records(p)
    p.write_text(json.dumps({**record_to_dict(RECORDS[0]), "colour": 1}) + "\n")
    with pytest.raises(AnnotationError, match=r"bad.jsonl, line 1: unknown fields for QARecord: \['colour'\]"):
        read_records(p)


GOOD = json.dumps(record_to_dict(RECORDS[0]))


@pytest.mark.parametrize("content, message", [
    # a half-written last line (a writer killed mid-line)
    ((GOOD + "\n" + GOOD[:40]).encode(), r"bad.jsonl, line 2: not valid JSON \(.*\); the last line is cut off"),
    # Latin-1 bytes
    ((GOOD + "\n" + GOOD.replace("why?", "pourquoi \xe7a?")).encode("latin-1"),
     r"bad.jsonl, line 2: not UTF-8 text \(byte 0xe7 at column \d+\)"),
    # a JSON array (SeViLA's own JSON layout), on one line or pretty-printed
    (f"[{GOOD}, {GOOD}]".encode(), r"bad.jsonl: a JSON array, not JSON Lines"),
    (f"[\n  {GOOD}\n]\n".encode(), r"bad.jsonl: a JSON array, not JSON Lines"),
    # a JSON value that is not an object
    (b'"just a string"\n', r"bad.jsonl, line 1: expected one JSON object per line, got str"),
])
def test_unreadable_files_name_file_and_line(tmp_path, content, message):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content)
    with pytest.raises(AnnotationError, match=message):
        read_records(p)


def test_empty_file_is_no_records_and_a_bom_is_allowed(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b"")
    assert read_records(p) == []
    p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode() + b"\n")
    assert read_records(p) == [RECORDS[0]]


def test_a_raw_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    rec = QARecord("nextqa", "q1", "v/1", "why\u2028now?", ("a", "b"), 1)
    assert read_records(write_records(tmp_path / "r.jsonl", [rec])) == [rec]


@pytest.mark.parametrize("field, value, message", [
    ("answer", "abc", r"line 1: answer must be an integer or null, got 'abc'"),
    ("answer", "2", r"line 1: answer must be an integer or null, got '2'"),
    ("answer", 1.5, r"line 1: answer must be an integer or null, got 1.5"),
    ("answer", True, r"line 1: answer must be an integer or null, got True"),
    ("question", 7, r"line 1: question must be a string or null, got 7"),
    ("options", "abcde", r"line 1: options must be a list of strings"),
    ("options", ["a", 2], r"line 1: options\[1\] must be a string, got 2"),
    ("start", "1.5", r"line 1: start must be a number or null, got '1.5'"),
    ("evidence", [[1.0, 2.0, 3.0]], r"line 1: evidence\[0\] must be a \[start, end\] pair"),
])
def test_wrong_field_types_are_refused_not_coerced(tmp_path, field, value, message):
    p = tmp_path / "val.jsonl"
    p.write_text(json.dumps({**record_to_dict(RECORDS[0]), field: value}) + "\n")
    with pytest.raises(AnnotationError, match=r"val.jsonl, " + message):
        read_records(p)


def test_moment_fields_are_checked(tmp_path):
    d = record_to_dict(RECORDS[3])
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({**d, "windows": [["0", 4]]}) + "\n")
    with pytest.raises(AnnotationError, match=r"m.jsonl, line 1: windows\[0\] must be a number, got '0'"):
        read_records(p)
    p.write_text(json.dumps({**d, "duration": None}) + "\n")
    with pytest.raises(AnnotationError, match=r"line 1: duration must be a number, got None"):
        read_records(p)


def test_numpy_integers_are_integers():
    assert QARecord("nextqa", "q", "v", "why?", ("a", "b"), np.int64(1)).answer == 1
    assert type(QARecord("nextqa", "q", "v", "why?", ("a", "b"), np.int64(1)).answer) is int


def test_not_a_parquet_file_is_named(tmp_path):
    p = tmp_path / "r.parquet"
    p.write_text(GOOD)
    with pytest.raises(AnnotationError, match=r"r.parquet: not a readable parquet file"):
        read_records(p)


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    from sevila.atomic import atomic_path

    p = write_records(tmp_path / "r.jsonl", RECORDS[:1])
    before = p.read_text()
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["r.jsonl"]  # no temp file left behind
