"""Stage `validate`: Great Expectations suites over the canonical records of every split at once (so a video
shared between splits is caught), with each record's video checked on disk. Writes `reports/validation.json`;
fails the pipeline when an expectation fails and `validate.fail_on_error` is set."""
from __future__ import annotations

from pathlib import Path

from sevila.config import Config
from sevila.data.records import read_records
from sevila.io import atomic_write_json
from sevila.validation import validate_records


class ValidationFailed(RuntimeError):
    pass


def run(cfg: Config) -> dict:
    processed = Path(cfg.paths.processed)
    splits = {}
    for split in cfg.prepare.splits:
        splits[split] = read_records(processed / f"{split}.jsonl")
        splits[f"moments_{split}"] = read_records(processed / f"moments_{split}.jsonl")
    # prepare stamps each record with its split, so QA and moment files of one split count as one split.
    report = validate_records(splits, videos=Path(cfg.paths.world) / "videos")
    out = Path(cfg.paths.reports) / "validation.json"
    atomic_write_json(out, report.to_dict())
    failed = [r.name for r in report.results if not r.success]
    if failed and cfg.validate.fail_on_error:
        raise ValidationFailed(f"validation failed ({', '.join(failed)}); see {out}")
    return {"success": report.success, "records": report.n_records, "failed": failed}

