"""Our own model checkpoints: one or more parts of a SeViLA model (`vision`, `t5`, `localizer`, `answerer`) in a
directory that names what it holds (sevila.weights.checkpoint_dir's layout, with the SeViLAConfig in the header and the
tokenizer beside the weights), so a chain stage publishes ONE module and a variant is assembled by overlaying
modules on the backbone, each load reported (docs/design.md §2). Conversions from the official formats live beside
this one, not inside it: sevila.weights.transformers_blip2 (transformers BLIP-2 directories), sevila.weights.lavis (the
official
SeViLA / LAVIS .pth); sevila.weights.load picks the right one for a path.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from sevila.model.configuration import SeViLAConfig
from sevila.model.tokenizer import load_tokenizer
from sevila.weights.apply import (
    BRIDGES, PARTS, KeyPlan, TensorSource, apply_plan, canonical_state, empty_model, part_of,
)
from sevila.weights.checkpoint_dir import (
    TOKENIZER_DIR, CheckpointError, CheckpointKind, Header, WeightsReport, read_header, write_checkpoint_dir,
)

log = logging.getLogger(__name__)


def save_sevila(model: nn.Module, out_dir: str | Path, modules: Sequence[str] = BRIDGES, step: int = 0, *,
                run_config: Mapping[str, Any] | None = None, with_tokenizer: bool = True) -> Path:
    """Save the named parts of `model` (any of "vision", "t5", "localizer", "answerer") to the directory `out_dir`.

    Format = the training loop's (`trainable.safetensors` + `meta.json`), with the SeViLAConfig in the header so
    `load_sevila` can rebuild the model, and the tokenizer in `tokenizer/` when one is attached. Save all four
    parts for a self-contained model (the tiny world); the bridges alone on top of a BLIP-2 backbone.
    """
    parts = tuple(dict.fromkeys(modules))
    bad = [p for p in parts if p not in PARTS]
    if not parts or bad:
        raise ValueError(f"modules must be a non-empty subset of {PARTS}, got {list(modules)}")
    weights = {n: t for n, t in canonical_state(model).items() if part_of(n) in parts}
    meta = {"step": int(step), "modules": list(parts), "config": dict(run_config or {}),
            "model_config": model.config.to_dict(),
            "n_tensors": len(weights), "n_values": sum(t.numel() for t in weights.values())}
    tokenizer = getattr(model, "tokenizer", None)
    extra = None
    if with_tokenizer and tokenizer is not None:
        extra = lambda tmp: tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))  # noqa: E731
    out = write_checkpoint_dir(Path(out_dir), weights, meta, extra_files=extra)
    log.info("saved %s (step %d) to %s", ", ".join(parts), step, out)
    return out


def load_sevila(path: str | Path, model: nn.Module | None = None, *,
                strict: bool = True) -> tuple[nn.Module, WeightsReport]:
    """Load our checkpoint (a directory, or its safetensors file) into `model`, or build the model it describes.

    Without `model`: the SeViLAConfig comes from the header and the tokenizer from `tokenizer/` beside the weights;
    the checkpoint must then hold all four parts (a bridges-only one goes on top of a backbone:
    sevila.weights.load.load_for_inference). Returns (model, report of THIS checkpoint).
    """
    header = read_header(path)
    unknown = [p for p in header.parts if p not in PARTS]
    if unknown:
        raise CheckpointError(f"{header.path}: names parts {unknown} that a SeViLA model does not have ({PARTS})")
    if model is None:
        if header.model_config is None:
            raise CheckpointError(f"{header.path}: holds no model config (a training checkpoint): pass the model "
                                  "it was trained on as `model=`, or load it through load_for_inference with a "
                                  "backbone")
        if not {"vision", "t5"} <= set(header.parts):
            raise CheckpointError(
                f"{header.path}: holds only {', '.join(header.parts)}; the frozen ViT and Flan-T5 must come from "
                "somewhere: load it with a backbone (sevila.weights.load.load_for_inference; CLI: --backbone)")
        # every tensor of a complete checkpoint is overwritten, so the model starts uninitialised
        model = empty_model(SeViLAConfig.from_dict(header.model_config), checkpoint_tokenizer(header))
    with TensorSource.from_files([header.path]) as src:
        plan = KeyPlan()
        for k in src.keys():
            plan.add(k, src.entry(k))
        report = apply_plan(model, plan, str(header.path), CheckpointKind.SEVILA, strict=strict, step=header.step)
    return model, report


def checkpoint_tokenizer(header: Header):
    tok_dir = header.path.parent / TOKENIZER_DIR
    return load_tokenizer(tok_dir) if tok_dir.is_dir() else None


