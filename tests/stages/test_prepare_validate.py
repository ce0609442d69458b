"""Stage smoke tests: prepare and validate run on a tiny world and produce the files and metrics they promise."""
import dataclasses
import json

import pytest
import yaml

from sevila.config import load_config
from sevila.data.records import QARecord, read_records, write_records
from sevila.stages import prepare, validate


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    params = {
        "paths": {"world": str(root / "raw"), "processed": str(root / "processed"), "reports": str(root / "reports")},
        "world": {"videos": 8, "seed": 3, "fps": 4, "size": 32},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return load_config(root / "params.yaml")


@pytest.fixture(scope="module")
def prepared(tiny_cfg):
    return prepare.run(tiny_cfg)


def test_prepare_writes_canonical_records_with_evidence(tiny_cfg, prepared):
    processed = tiny_cfg.paths.processed
    assert set(prepared["splits"]) == {"train", "val", "test"}
    assert prepared["questions"] == sum(len(read_records(f"{processed}/{s}.jsonl")) for s in ("train", "val", "test"))
    videos_by_split = {}
    for split in ("train", "val", "test"):
        qa = read_records(f"{processed}/{split}.jsonl")
        moments = read_records(f"{processed}/moments_{split}.jsonl")
        assert qa and all(isinstance(r, QARecord) and r.split == split for r in qa)
        assert all(r.evidence and r.evidence[0][0] < r.evidence[0][1] for r in qa)
        assert all(len(r.options) == 5 and r.answer in range(5) and r.question.endswith("?") for r in qa)
        assert {m.video for m in moments} == {r.video for r in qa}  # one moment query per video
        videos_by_split[split] = {r.video for r in qa}
        assert prepared["splits"][split]["questions"] == len(qa)
    assert not (videos_by_split["train"] & videos_by_split["test"])
    assert json.loads(open(f"{processed}/summary.json").read()) == prepared


def test_validate_passes_on_prepared_world(tiny_cfg, prepared):
    metrics = validate.run(tiny_cfg)
    assert metrics == {"success": True, "records": prepared["questions"] + 8, "failed": []}
    report = json.loads(open(f"{tiny_cfg.paths.reports}/validation.json").read())
    assert report["success"] and report["n_records"] == metrics["records"]


def test_validate_fails_the_stage_on_a_planted_defect(tiny_cfg, prepared):

    path = f"{tiny_cfg.paths.processed}/val.jsonl"
    original = open(path).read()
    recs = read_records(path)
    recs[0] = dataclasses.replace(recs[0], answer=9)
    write_records(path, recs)
    try:
        with pytest.raises(validate.ValidationFailed, match="answer_in_range"):
            validate.run(tiny_cfg)
        report = json.loads(open(f"{tiny_cfg.paths.reports}/validation.json").read())
        bad = {e["expectation"]: e["failing"] for e in report["expectations"] if not e["success"]}
        assert bad == {"answer_in_range": [recs[0].qid]}
    finally:
        open(path, "w").write(original)
