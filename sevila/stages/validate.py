"""Stage `validate`: Great Expectations suites over the canonical records of every split at once (so a video
shared between splits is caught), with each record's video checked on disk (it exists in its benchmark's folder
and every packet demuxes). Writes `reports/validation.json`; fails the pipeline when an expectation fails and
`validate.fail_on_error` is set. For a real benchmark the report also counts the questions prepare left out for a
missing video (`prepare.bad_video: skip`, listed in the records folder's skipped.json)."""
from __future__ import annotations

import json
from pathlib import Path

from sevila.atomic import atomic_write_json
from sevila.config import Benchmark, Config, real_weights
from sevila.data.benchmarks import SKIPPED_FILE
from sevila.data.records import read_records
from sevila.data.validation import root_of, validate_records
from sevila.data.video import video_path_of
from sevila.weights.load import check_real_weights


class ValidationFailed(RuntimeError):
    pass


def unreadable_videos(report, splits: dict, videos) -> list[str]:
    """The video files behind a failed `video_readable` check (issue 24: the report named only qids), sorted."""
    bad = next((r for r in report.results if r.name == "video_readable" and not r.success), None)
    if bad is None:
        return []
    qids = set(bad.failing)
    return sorted({str(video_path_of(root_of(videos, r.dataset), r.video)) for records in splits.values()
                   for r in records if r.qid in qids})


def run(cfg: Config) -> dict:
    if cfg.dataset.real and real_weights(cfg.model.weights):
        check_real_weights(cfg.model.weights, cfg.model.backbone)  # before the data checks: seconds, not hours
    processed = Path(cfg.paths.processed)
    splits = {}
    for split in cfg.prepare.splits:
        splits[split] = read_records(processed / f"{split}.jsonl")
        splits[f"moments_{split}"] = read_records(processed / f"moments_{split}.jsonl")
    # prepare stamps each record with its split, so QA and moment files of one split count as one split.
    if cfg.dataset.real:
        videos = {b: cfg.video_folder(b) for b in (cfg.dataset.value, Benchmark.QVHIGHLIGHTS.value)}
    else:
        videos = cfg.video_folder(cfg.dataset.value)
    report = validate_records(splits, videos=videos)
    out = Path(cfg.paths.reports) / "validation.json"
    payload = report.to_dict()
    skipped = processed / SKIPPED_FILE
    if cfg.dataset.real:
        payload["skipped_by_prepare"] = json.loads(skipped.read_text())["n_skipped"] if skipped.is_file() else 0
    unreadable = unreadable_videos(report, splits, videos)
    if unreadable:
        payload["unreadable_videos"] = unreadable
    atomic_write_json(out, payload)
    failed = [r.name for r in report.results if not r.success]
    if failed and cfg.validate.fail_on_error:
        more = f" (+{len(unreadable) - 3} more)" if len(unreadable) > 3 else ""
        named = [f"video_readable: {', '.join(unreadable[:3])}{more}" if f == "video_readable" and unreadable else f
                 for f in failed]
        raise ValidationFailed(f"validation failed ({'; '.join(named)}); see {out}")
    metrics = {"success": report.success, "records": report.n_records, "failed": failed}
    if cfg.dataset.real:
        metrics["skipped_by_prepare"] = payload["skipped_by_prepare"]
    return metrics

