"""`sevila eval-moments GT.jsonl PRED.jsonl [--out FILE]`: QVHighlights moment-retrieval metrics.

Predictions are in the official submission format (one JSON object per line with `qid` and
`pred_relevant_windows` = [[start, end, score], ...], best first); the ground truth is the official
`highlight_{val,test_with_gt}_release.jsonl` (or canonical MomentRecord jsonl). The printed JSON has the
official layout: `brief` with the eight headline MR figures, then `full`/`long`/`middle`/`short`, each with
`MR-mAP` (per IoU threshold and `average`) and `MR-R1`. Highlight detection (HL-*) is not computed.
"""
from __future__ import annotations

import argparse
import json
import sys

from sevila.atomic import atomic_write_json
from sevila.cli import one_line
from sevila.evaluation.moments import (
    MAX_PRED_WINDOWS, evaluate_moments, load_ground_truth, load_predictions, match_qids,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval-moments",
        help="QVHighlights moment-retrieval metrics (official definitions)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("gt", help="ground-truth jsonl (qid, relevant_windows)")
    p.add_argument("pred", help="predictions jsonl (qid, pred_relevant_windows [[start, end, score], ...])")
    p.add_argument("--out", help="also write the metrics JSON here (atomically)")
    p.add_argument(
        "--partial",
        action="store_true",
        help="evaluate only the qids present in both files (the official match_number=False) instead of failing "
        "when some GT qid has no prediction; the counts are reported under 'qids'",
    )
    p.set_defaults(func=_cli_eval_moments)


def _cli_eval_moments(args: argparse.Namespace) -> int:
    try:
        gt = load_ground_truth(args.gt)
        pred = load_predictions(args.pred, ground_truth=gt)
        counts = None
        if args.partial:
            gt, pred, counts = match_qids(gt, pred)
        else:
            missing = [q for q in gt if q not in pred]
            if missing:
                raise ValueError(
                    f"{args.pred}: {len(missing)} ground-truth qid(s) of {args.gt} have no prediction "
                    f"(e.g. {missing[:5]}); pass --partial to evaluate the intersection"
                )
        result = evaluate_moments(gt, pred, max_pred_windows=MAX_PRED_WINDOWS)
    except (OSError, ValueError) as e:  # sevila.evaluation.moments names the file and qid in its ValueErrors
        print(f"sevila eval-moments: error: {one_line(e)}", file=sys.stderr)
        return 2
    if counts is not None:
        result["qids"] = counts
    print(json.dumps(result, indent=4))
    if args.out:
        atomic_write_json(args.out, result, indent=4)
    return 0
