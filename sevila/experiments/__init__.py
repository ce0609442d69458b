"""Experiments over the pipeline: `repro` (`sevila repro`: dvc repro under one MLflow parent run), `seeds` (the
seeds study), `rounds` (`sevila round N`: self-refinement rounds), `rehearse` (the real-data path on a miniature)."""
