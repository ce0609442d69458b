"""Evaluation: `qa_metrics` (each benchmark's official QA breakdown), `moments` (QVHighlights moment retrieval),
`cli` (`sevila eval-moments`), `tables` (`sevila report`: the paper's ablation tables from the tracked runs)."""
