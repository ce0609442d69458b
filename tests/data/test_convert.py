"""`sevila convert` and SeViLA JSON writing: the golden NExT-QA conversion, round trips, CLI errors."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from sevila.cli import main
from sevila.data.annotations import SourceFormat, read_annotations
from sevila.data.convert import TargetFormat, convert
from sevila.data.records import read_records
from sevila.data.sevila_json import dumps_sevila_json, to_sevila_dict, write_sevila_json

SJ = SourceFormat.SEVILA_JSON


def test_golden_nextqa_conversion_is_byte_identical(realdata, tmp_path):
    """SeViLA's notebook on doc-doc's val.csv + map gives sevila_data/nextqa/val.json (same order: CSV row order)."""
    out = tmp_path / "val.json"
    s = convert("nextqa", realdata / "nextqa/val.csv", out, realdata / "nextqa/map_vid_vidorID.json", target=TargetFormat.SEVILA_JSON)
    assert out.read_bytes() == (realdata / "sevila_data/nextqa/val.json").read_bytes()
    assert (s.n_records, s.n_unlabelled, s.n_missing_window) == (46, 0, 0)


def test_golden_nextqa_conversion_through_the_cli(realdata, tmp_path, capsys):
    out = tmp_path / "nextqa_val.json"
    rc = main(["convert", "nextqa", str(realdata / "nextqa/val.csv"), "--video-map", str(realdata / "nextqa/map_vid_vidorID.json"),
               "--format", "sevila-json", "--out", str(out)])
    assert rc == 0
    assert out.read_bytes() == (realdata / "sevila_data/nextqa/val.json").read_bytes()
    line = capsys.readouterr().out.strip()
    assert "46 records" in line and "0 unlabelled" in line and "0 NaN windows" in line and len(line.splitlines()) == 1


def test_nextqa_official_and_sevila_json_read_the_same(realdata):
    official = read_annotations("nextqa", realdata / "nextqa/val.csv")
    converted = read_annotations("nextqa", realdata / "sevila_data/nextqa/val.json", fmt=SJ)
    assert official == converted


@pytest.mark.parametrize("rel", ["sevila_data/star/val.json", "sevila_data/star/test.json", "sevila_data/nextqa/val.json"])
def test_sevila_json_round_trip_is_byte_identical(realdata, tmp_path, rel):
    dataset = rel.split("/")[1]
    convert(dataset, realdata / rel, tmp_path / "c.jsonl", source=SJ)  # through canonical jsonl on disk
    out = write_sevila_json(tmp_path / "x.json", read_records(tmp_path / "c.jsonl"), dataset)
    assert out.read_bytes() == (realdata / rel).read_bytes()


def test_star_raw_converts_to_the_sevila_record(realdata):
    (raw,) = read_annotations("star", realdata / "star/STAR_val.json")
    first = json.loads((realdata / "sevila_data/star/val.json").read_text())[0]
    assert to_sevila_dict(raw, "star") == first
    assert list(to_sevila_dict(raw, "star")) == list(first)  # key order too


OFFICIAL = [
    ("nextqa", "nextqa/val.csv"),
    ("star", "star/STAR_val.json"),
    ("how2qa", "how2qa/how2QA_test_public_release.csv"),
    ("tvqa", "tvqa/tvqa_test_public.jsonl"),
    ("tvqa", "tvqa/tvqa_plus_val.json"),
    ("vlep", "vlep/vlep_dev_release.jsonl"),
    ("vlep", "vlep/vlep_test_release.jsonl"),
    ("qvhighlights", "qvhighlights/highlight_train_release.jsonl"),
    ("qvhighlights", "qvhighlights/highlight_test_release.jsonl"),
]


@pytest.mark.parametrize("dataset,rel", OFFICIAL, ids=[r for _, r in OFFICIAL])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_canonical_round_trip(realdata, tmp_path, dataset, rel, suffix):
    recs = read_annotations(dataset, realdata / rel)
    out = tmp_path / f"canon{suffix}"
    s = convert(dataset, realdata / rel, out)
    back = read_records(out)
    assert back == recs and s.n_records == len(recs)
    # Types survive too (an int answer must not come back as 2.0, a missing one as NaN).
    for a, b in zip(back, recs):
        for f in dataclasses.fields(a):
            assert type(getattr(a, f.name)) is type(getattr(b, f.name)), (f.name, getattr(a, f.name))


@pytest.mark.parametrize("dataset,rel", OFFICIAL, ids=[r for _, r in OFFICIAL])
def test_official_to_sevila_json_and_back(realdata, tmp_path, dataset, rel):
    """Canonical -> SeViLA JSON -> canonical keeps every field SeViLA's format has room for."""
    recs = read_annotations(dataset, realdata / rel)
    split = recs[0].split
    out = tmp_path / f"{split or 'x'}.json"
    convert(dataset, realdata / rel, out, target=TargetFormat.SEVILA_JSON)
    back = read_annotations(dataset, out, fmt=SJ)
    dropped = {"qtype": None} if dataset in ("tvqa", "how2qa", "vlep") else {}
    if dataset == "qvhighlights":
        dropped = {"relevant_clip_ids": None, "saliency_scores": None}
    assert back == [dataclasses.replace(r, **dropped) for r in recs]


def test_tvqa_sevila_json_keeps_nan_as_the_notebook_does(realdata, tmp_path):
    out = tmp_path / "test.json"
    s = convert("tvqa", realdata / "tvqa/tvqa_test_public.jsonl", out, target=TargetFormat.SEVILA_JSON)
    data = json.loads(out.read_text())
    assert (s.n_records, s.n_unlabelled, s.n_missing_window) == (43, 43, 3)
    nan = [d for d in data if d["start"] == "NaN"]
    assert [d["qid"] for d in nan] == ["TVQA_137648", "TVQA_142453", "TVQA_142977"] and all(d["end"] == "NaN" for d in nan)
    assert data[0] == {
        "video": "s03e21_seg02_clip_08", "num_option": 5, "qid": "TVQA_137292", "a0": "The yogurt manufacturer. ",
        "a1": "The people who make toilet seats.", "a2": "Stan Lee.", "a3": "Leonard's mom.",
        "a4": "The person who didn't make the apartment walls soundproof.",
        "question": "Who does Sheldon say he'll send an email to after coming out of the bathroom?", "start": "48.62", "end": "60.02",
    }
    # "0-10.01" style: integral times are written without ".0", as in the official ts strings.
    assert next(d for d in data if d["qid"] == "TVQA_" + _tvqa_qid_with_ts(realdata, "0-10.01"))["start"] == "0"


def _tvqa_qid_with_ts(realdata, ts):
    for line in (realdata / "tvqa/tvqa_test_public.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d["ts"] == ts:
            return str(d["qid"])
    raise AssertionError(ts)


def test_vlep_and_qvh_sevila_layouts(realdata, tmp_path):
    convert("vlep", realdata / "vlep/vlep_dev_release.jsonl", tmp_path / "v.json", target=TargetFormat.SEVILA_JSON)
    v = json.loads((tmp_path / "v.json").read_text())[0]
    assert v == {"video": "friends_s03e09_seg02_clip_07_ep", "num_option": 2, "qid": "VLEP_20142",
                 "a0": "Ross will stop, turn and point at Monica.", "a1": "Ross will stop and ask Monica why she is pointing at him.",
                 "answer": 0, "start": 38.81, "end": 40.37}
    convert("qvhighlights", realdata / "qvhighlights/highlight_test_with_gt.jsonl", tmp_path / "q.json", target=TargetFormat.SEVILA_JSON)
    q = json.loads((tmp_path / "q.json").read_text())[0]
    assert q == {"video": "_6hnl_BrFvs_360.0_510.0", "qid": "QVHighlight_3158", "query": "A video covering hill and water from a boat",
                 "duration": 150, "relevant_windows": [[70, 110]]}
    convert("qvhighlights", realdata / "qvhighlights/highlight_test_release.jsonl", tmp_path / "t.json", target=TargetFormat.SEVILA_JSON)
    assert "relevant_windows" not in json.loads((tmp_path / "t.json").read_text())[0]


def test_cli_parquet_and_summary_counts(realdata, tmp_path, capsys):
    out = tmp_path / "tvqa.parquet"
    assert main(["convert", "tvqa", str(realdata / "tvqa/tvqa_test_public.jsonl"), "--out", str(out)]) == 0
    assert "43 records" in capsys.readouterr().out
    back = read_records(out)
    assert len(back) == 43 and sum(not r.has_window for r in back) == 3 and all(r.answer is None for r in back)


def test_cli_reports_bad_rows(realdata, tmp_path, capsys):
    lines = (realdata / "how2qa/how2QA_val_release.csv").read_text().splitlines(keepends=True)
    bad = tmp_path / "how2qa_val.csv"
    bad.write_text("".join(lines[:5] + ["x,[1:2],a,b,question\n"] + lines[5:]))
    assert main(["convert", "how2qa", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "how2qa_val.csv, line 6: expected 7 columns" in err and "got 5" in err
    assert not (tmp_path / "o.jsonl").exists()

    data = json.loads((realdata / "star/STAR_val.json").read_text())
    data[0]["answer"] = "The lamp."
    (tmp_path / "STAR_val.json").write_text(json.dumps(data))
    assert main(["convert", "star", str(tmp_path / "STAR_val.json"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "'Interaction_T1_13': answer 'The lamp.' is not among its choices" in capsys.readouterr().err

    shutil.copy(realdata / "nextqa/val.csv", tmp_path / "val.csv")
    vmap = json.loads((realdata / "nextqa/map_vid_vidorID.json").read_text())
    vmap["8132842161"] = "1201/../../8132842161"
    (tmp_path / "m.json").write_text(json.dumps(vmap))
    assert main(["convert", "nextqa", str(tmp_path / "val.csv"), "--video-map", str(tmp_path / "m.json"), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "line 5: record 'CW_8132842161_2': video id '1201/../../8132842161' contains a '..' path part" in capsys.readouterr().err


def test_cli_rejects_unknown_dataset_and_misplaced_map(realdata, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["convert", "msrvtt", "x.csv", "--out", str(tmp_path / "o.jsonl")])
    rc = main(["convert", "vlep", str(realdata / "vlep/vlep_dev_release.jsonl"), "--video-map", "m.json", "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2 and "video map applies only" in capsys.readouterr().err


def test_writer_refuses_mismatched_records(realdata):
    recs = read_annotations("tvqa", realdata / "tvqa/tvqa_plus_val.json")
    with pytest.raises(ValueError, match="is from 'tvqa', not 'star'"):
        dumps_sevila_json(recs, "star")


def _snapshot(path):
    return path.read_bytes(), path.stat().st_ino


@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_out_that_is_the_input_is_refused_and_the_input_kept(realdata, tmp_path, capsys, spelling):
    src = tmp_path / "data" / "tvqa_val.jsonl"
    src.parent.mkdir()
    shutil.copy(realdata / "tvqa/tvqa_test_public.jsonl", src)
    before = _snapshot(src)
    out = {"same": src, "dotdot": tmp_path / "data" / ".." / "data" / "tvqa_val.jsonl",
           "symlink": tmp_path / "link.jsonl", "hardlink": tmp_path / "hard.jsonl"}[spelling]
    if spelling == "symlink":
        out.symlink_to(src)
    elif spelling == "hardlink":
        out.hardlink_to(src)
    assert main(["convert", "tvqa", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sevila convert: error: --out ") and len(err.splitlines()) == 1
    assert str(out) in err and f"is the input file {src}" in err  # both named
    assert _snapshot(src) == before  # the official file is untouched (same bytes, same inode)
    assert sorted(p.name for p in src.parent.iterdir()) == ["tvqa_val.jsonl"]  # no temp file either


def test_out_that_is_the_video_map_is_refused(realdata, tmp_path, capsys):
    vmap = tmp_path / "map.json"
    shutil.copy(realdata / "nextqa/map_vid_vidorID.json", vmap)
    before = vmap.read_bytes()
    assert main(["convert", "nextqa", str(realdata / "nextqa/val.csv"), "--video-map", str(vmap),
                 "--out", str(vmap)]) == 2
    assert f"is the input file {vmap}" in capsys.readouterr().err and vmap.read_bytes() == before


@pytest.mark.parametrize("fmt, name", [("canonical", "tvqa_test_public.jsonl"),
                                       ("sevila-json", "tvqa_test_public.json")])
def test_out_directory_receives_input_stem(realdata, tmp_path, capsys, fmt, name):
    out = tmp_path / "converted"
    out.mkdir()
    src = realdata / "tvqa/tvqa_test_public.jsonl"
    assert main(["convert", "tvqa", str(src), "--out", str(out), "--format", fmt]) == 0
    assert [p.name for p in out.iterdir()] == [name]
    assert f"-> {out / name} ({fmt})" in capsys.readouterr().out
    fresh = tmp_path / f"direct-{name}"
    convert("tvqa", src, fresh, target=fmt)
    assert (out / name).read_bytes() == fresh.read_bytes()


def test_out_directory_that_holds_the_input_is_refused(realdata, tmp_path, capsys):
    src = tmp_path / "tvqa_val.jsonl"
    shutil.copy(realdata / "tvqa/tvqa_test_public.jsonl", src)
    before = src.read_bytes()
    # canonical output of a .jsonl input into its own folder would be the input itself
    assert main(["convert", "tvqa", str(src), "--out", str(tmp_path)]) == 2
    assert "is the input file" in capsys.readouterr().err and src.read_bytes() == before


def test_out_ending_in_a_separator_is_a_folder_made_for_it(realdata, tmp_path, capsys):
    # issue 24: the README's own `--out converted/` wrote a FILE named `converted` (argparse's Path dropped the /)
    out = tmp_path / "converted"
    assert main(["convert", "nextqa", str(realdata / "nextqa/val.csv"), "--out", f"{out}/"]) == 0
    assert out.is_dir() and sorted(p.name for p in out.iterdir()) == ["val.jsonl"]
    assert len((out / "val.jsonl").read_text().splitlines()) == 46  # every question of the excerpt
    assert f"{out / 'val.jsonl'}" in capsys.readouterr().out
