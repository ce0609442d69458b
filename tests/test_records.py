import json
import math

import pytest

from sevila.data.records import MomentRecord, QARecord, read_records, record_to_dict, write_records

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
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        read_records(p)
    p.write_text(json.dumps({**record_to_dict(RECORDS[0]), "colour": 1}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: unknown fields for QARecord: \['colour'\]"):
        read_records(p)


def test_atomic_path_keeps_old_file_when_writer_fails(tmp_path):
    from sevila.io import atomic_path

    p = write_records(tmp_path / "r.jsonl", RECORDS[:1])
    before = p.read_text()
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == before
    assert [f.name for f in tmp_path.iterdir()] == ["r.jsonl"]  # no temp file left behind
