"""Experiment tags that make MLflow 3's UI readable for sevila's experiments (used by sevila.tracking).

- `mlflow.experimentKind = custom_model_development`: the UI opens the experiment in its "Model training" view
  (runs table, Chart view of per-step metrics) instead of asking or guessing GenAI (traces).
- For `sevila/<dataset>/evaluate`, a saved view "Ablation table" (the UI's Views menu; also opened by
  `#/experiments/<id>/runs?viewStateShareKey=sevila-ablation-table`): the runs table shows accuracy and the
  variant's settings (study, n_frames, n_keyframes, localizer, selector, fusion, answerer, round) as columns,
  grouped by `study` and sorted by accuracy, i.e. the runs table IS the ablation table.

MLflow stores a saved view as the experiment tag `mlflow.sharedViewState.<id>` holding
`{"name", "createdAt", "updatedAt", "state"}`, where `state` is the JSON of the runs page's search facets and UI
state (column keys `metrics.\\`accuracy\\``, group-by `{"aggregateFunction", "groupByKeys": [{"mode": "param",
"groupByData": "study"}]}`), as read by the UI bundled with MLflow 3.17 (server/js). The tags are only set where
missing, so a view a person edits and saves under the same id is never overwritten.
"""
from __future__ import annotations

import json

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # MLflow 3's "Model training" (vs genai_development)
SAVED_VIEW_PREFIX = "mlflow.sharedViewState."
ABLATION_VIEW_ID = "sevila-ablation-table"
ABLATION_VIEW_NAME = "Ablation table"
# The evaluate runs' settings (params of the same names as their pivot tags, sevila/tracking/run_settings.py), in the
# order of the paper's tables, then the metrics.
ABLATION_PARAMS = ("study", "n_frames", "n_keyframes", "localizer", "selector", "fusion", "answerer", "round")
ABLATION_METRICS = ("accuracy", "keyframe_in_span")
GROUP_BY = "study"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"


def ablation_view_state() -> dict:
    return {
        "selectedColumns": [_column("metrics", m) for m in ABLATION_METRICS]
                           + [_column("params", p) for p in ABLATION_PARAMS],
        "groupBy": {"aggregateFunction": "average", "groupByKeys": [{"mode": "param", "groupByData": GROUP_BY}]},
        "orderByKey": _column("metrics", "accuracy"),
        "orderByAsc": False,
    }


def saved_view(name: str, state: dict, created_ms: int) -> str:
    return json.dumps({"name": name, "createdAt": created_ms, "updatedAt": created_ms,
                       "state": json.dumps(state, separators=(",", ":"))}, separators=(",", ":"))


def experiment_tags(phase: str, created_ms: int) -> dict[str, str]:
    """The tags an experiment of `phase` (a tracking.Phase value) should carry."""
    tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    if phase == "evaluate":
        tags[SAVED_VIEW_PREFIX + ABLATION_VIEW_ID] = saved_view(ABLATION_VIEW_NAME, ablation_view_state(), created_ms)
    return tags
