"""One entry point for any weights: tell the formats apart by their files and build a ready model
(`load_for_inference`), every load reported. The formats: ours (sevila.weights.ours), transformers BLIP-2
directories (sevila.weights.transformers_blip2), official SeViLA / LAVIS .pth files (sevila.weights.lavis)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from sevila.config import Precision
from sevila.model.configuration import SeViLAConfig
from sevila.model.precision import hold_frozen, use_bf16
from sevila.weights.apply import empty_model
from sevila.weights.checkpoint_dir import (
    TOKENIZER_DIR, WEIGHTS_FILE, CheckpointError, CheckpointKind, WeightsReport, read_header,
)
from sevila.weights.lavis import LavisLayout, load_lavis_checkpoint
from sevila.weights.ours import checkpoint_tokenizer, load_sevila
from sevila.weights.transformers_blip2 import (
    Numerics, blip2_dir_tokenizer, build_from_blip2_dir, config_from_blip2, load_blip2_weights, read_blip2_config,
)


def detect_kind(path: str | Path) -> CheckpointKind:
    """Tell the three formats apart by their files (never by guessing from names inside)."""
    path = Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return CheckpointKind.SEVILA
        if (path / "config.json").is_file():
            return CheckpointKind.HF_BLIP2
        raise CheckpointError(f"{path}: neither a SeViLA checkpoint ({WEIGHTS_FILE}) nor a transformers BLIP-2 "
                              "directory (config.json)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.suffix == ".safetensors":
        return CheckpointKind.SEVILA
    if path.suffix in (".pth", ".pt", ".bin"):
        return CheckpointKind.LAVIS
    raise CheckpointError(f"{path}: unknown checkpoint file type {path.suffix!r} (expected a directory, "
                          ".safetensors, or a LAVIS .pth)")


def check_real_weights(weights: str | Path, backbone: str | Path | None = None) -> None:
    """A pre-flight of real weights, in seconds and without reading a tensor: a BLIP-2 directory has a BLIP-2 T5
    config and a usable tokenizer; a LAVIS/SeViLA .pth has a BLIP-2 `backbone` directory that has them. Stage
    `validate` runs it, so a directory without a tokenizer stops there, before any training (issue 24), naming
    the directory and what to save into it."""
    kind = detect_kind(weights)
    if kind is CheckpointKind.LAVIS:
        if backbone is None:
            raise CheckpointError(f"{weights}: a LAVIS/SeViLA .pth holds only trained parameters; set model.backbone "
                                  "to the BLIP-2 Flan-T5 directory it was trained on")
        weights = backbone
    if detect_kind(weights) is CheckpointKind.HF_BLIP2:
        read_blip2_config(weights)
        blip2_dir_tokenizer(weights)


def load_for_inference(weights: str | Path, backbone: str | Path | None = None, *,
                       layout: LavisLayout = LavisLayout.SEVILA, numerics: Numerics = Numerics.LAVIS
                       ) -> tuple[nn.Module, list[WeightsReport]]:
    """A ready model from `weights` (our checkpoint dir, an HF BLIP-2 dir, or a LAVIS .pth), with `backbone` (an
    HF BLIP-2 dir) supplying whatever the weights do not hold. Every part ends up loaded (never left random), and the
    reports say from where, in load order."""
    kind = detect_kind(weights)
    reports: list[WeightsReport] = []
    if kind is CheckpointKind.HF_BLIP2:
        if backbone is not None:
            raise CheckpointError(f"{weights} is a complete BLIP-2 directory; a backbone is not needed")
        model, rep = build_from_blip2_dir(weights, numerics=numerics)
        reports.append(rep)
    elif kind is CheckpointKind.SEVILA:
        header = read_header(weights)
        if backbone is None:
            model, rep = load_sevila(weights)
            reports.append(rep)
        else:
            if header.model_config is not None:
                config = SeViLAConfig.from_dict(header.model_config)
            else:  # a training checkpoint: the backbone directory gives the sizes
                config = config_from_blip2(read_blip2_config(backbone), numerics)
            model, rep = with_backbone(config, checkpoint_tokenizer(header), backbone, weights)
            reports += [rep, load_sevila(weights, model)[1]]
    else:
        if backbone is None:
            raise CheckpointError(f"{weights}: a LAVIS/SeViLA .pth holds the bridges (and maybe the ViT/T5) in LAVIS "
                                  "form; give the BLIP-2 backbone directory as well (CLI: --backbone)")
        model, rep = build_from_blip2_dir(backbone, numerics=numerics)
        reports += [rep, load_lavis_checkpoint(model, weights, layout)]
    if getattr(model, "tokenizer", None) is None:
        raise CheckpointError(f"{weights}: no tokenizer found (expected {TOKENIZER_DIR}/ beside our checkpoint)")
    return model, reports


def assemble(weights: str | Path, backbone: str | Path | None = None, modules: Sequence[str | Path] = (), *,
             layout: LavisLayout = LavisLayout.SEVILA, device: str | torch.device | None = None,
             precision: Precision = Precision.AUTO) -> tuple[nn.Module, list[WeightsReport]]:
    """The model SeViLA runs with, assembled one way for every stage (sevila.stages.common.load_model) and for
    `sevila answer` (sevila.inference.predictor.load_chain); a report per load, in load order.

    The base: `weights` as `load_for_inference` reads it (our checkpoint, a BLIP-2 directory, or a .pth with
    `backbone` = the BLIP-2 directory), or, when `backbone` is OUR complete checkpoint (models/backbone), that
    checkpoint with `weights` (our checkpoint or an official .pth) laid over it. Then each module checkpoint of
    `modules` (models/localizer/<id>, models/answerer/<id>) in order. Frozen, in eval mode, on `device` (default:
    cuda when available), the frozen ViT and T5 held in bf16 where `precision` computes in bf16 (`hold_frozen`)."""
    if backbone is not None and detect_kind(backbone) is CheckpointKind.SEVILA:
        kind = detect_kind(weights)
        if kind is CheckpointKind.HF_BLIP2:
            raise CheckpointError(f"{weights}: a complete BLIP-2 directory is a backbone, not weights to lay over "
                                  f"{backbone}; give one of them as the backbone")
        model, reports = load_for_inference(backbone)
        reports.append(load_sevila(weights, model)[1] if kind is CheckpointKind.SEVILA
                       else load_lavis_checkpoint(model, weights, layout))
    else:
        model, reports = load_for_inference(weights, backbone, layout=layout)
    for path in modules:
        reports.append(load_sevila(path, model)[1])
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    hold_frozen(model, use_bf16(Precision(precision), device))
    return model.to(device).eval(), reports


def with_backbone(config, tokenizer, backbone: str | Path, weights: str | Path) -> tuple[nn.Module, WeightsReport]:
    """A model of `config` whose every part is first loaded from the BLIP-2 directory `backbone`; the tokenizer is
    `tokenizer` (the one saved with `weights`) or else the directory's, looked up before any weight is read."""
    if tokenizer is None:
        tokenizer = blip2_dir_tokenizer(backbone, also_looked=f", and {weights} has no {TOKENIZER_DIR}/ beside it")
    model = empty_model(config, tokenizer)
    return model, load_blip2_weights(model, backbone)


