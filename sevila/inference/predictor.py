"""SeViLA on one video from Python, with the models the pipeline trains (paper §3.1, the forward chain).

    from sevila.inference.predictor import predict
    p = predict("video.mp4", "why did the boy run?", ["to hide.", "to eat.", ...],
                backbone="models/backbone", localizer="models/localizer/qvh_sr_r1",
                answerer="models/answerer/finetuned_r1")
    p.answer, p.answer_text, p.keyframe_timestamps, p.frame_scores

The model is assembled as the pipeline's stages assemble it (sevila.weights.load.assemble): the backbone (a transformers
BLIP-2 directory, or our complete checkpoint such as `models/backbone`), optionally `weights` laid over it (an
official SeViLA/LAVIS .pth, or our bridges checkpoint), then the one-module checkpoints the chain stages write,
`models/localizer/<id>` and `models/answerer/finetuned_r<round>`. Each module checkpoint must hold exactly the
module it is given as (a swapped --localizer/--answerer is an error, not a silently wrong model), and every load
is reported. `load_chain` + `predict_with` do the same for many videos with one load.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from sevila.data.video import FrameSample
from sevila.errors import BadArgument
from sevila.inference.features import FeatureCache, clip_features
from sevila.model import chain, prompts
from sevila.model.selection import Fusion, Selector
from sevila.weights.load import LavisLayout, assemble, detect_kind
from sevila.weights.ours import CheckpointKind, WeightsReport, read_header


@dataclass(frozen=True)
class Prediction:
    """What SeViLA answered for one video and why: the chosen option and the Localizer's view of every frame.

    `keyframes` are positions among the `n_frames` sampled frames (temporal order); `keyframe_indices` and
    `frame_indices` are frame numbers in the video file; scores are the Localizer's logit of 'yes' per frame."""

    answer: int
    answer_text: str
    letter: str
    option_logits: list[float]
    option_probs: list[float]
    keyframes: list[int]
    keyframe_indices: list[int]
    keyframe_timestamps: list[float]
    frame_indices: list[int]
    frame_timestamps: list[float]
    frame_scores: list[float]
    qa_truncated: bool  # the Answerer prompt was cut at max_text_len (the last options may be unseen)
    loc_truncated: bool
    window_fallback: bool  # the start/end window was unusable; the whole video was sampled

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_arguments(options: Sequence[str], n_frames: int, n_keyframes: int) -> None:
    """Refuse what cannot work before anything is loaded (a 4B-parameter load takes minutes)."""
    if not 1 <= len(options) <= len(prompts.OPTION_LETTERS):
        raise BadArgument(f"give 1 to {len(prompts.OPTION_LETTERS)} options, got {len(options)}")
    if not 1 <= n_keyframes <= n_frames:
        raise BadArgument(f"need 1 <= n_keyframes <= n_frames, got n_keyframes={n_keyframes}, n_frames={n_frames}")


def check_module_dir(path: str | Path, module: str) -> None:
    """`path` is our checkpoint holding exactly `module` ('localizer' or 'answerer'), as the chain stages save."""
    if detect_kind(path) is not CheckpointKind.SEVILA:
        raise BadArgument(f"{path}: a {module} must be a module checkpoint written by the pipeline "
                          f"(models/{module}/...), not a BLIP-2 directory or a .pth")
    parts = read_header(path).parts
    if tuple(parts) != (module,):
        other = " (give it as --answerer)" if parts == ("answerer",) else (
            " (give it as --localizer)" if parts == ("localizer",) else "")
        raise BadArgument(f"{path}: holds {', '.join(parts)}, not the {module} alone{other}")


def load_chain(backbone: str | Path | None = None, localizer: str | Path | None = None,
               answerer: str | Path | None = None, *, weights: str | Path | None = None,
               layout: LavisLayout = LavisLayout.SEVILA, device: str | torch.device | None = None
               ) -> tuple[torch.nn.Module, list[WeightsReport]]:
    """The model SeViLA answers with, assembled as the pipeline's stages assemble it (`sevila.weights.load.assemble`):
    frozen and in eval mode on `device` (default: cuda when available), and a report per load in load order.
    `backbone` or `weights` must be given; without `localizer`/`answerer` the backbone's own Q-Former fills that
    slot (the zero-shot modules of the pipeline's `none`/`zero_shot`)."""
    if backbone is None and weights is None:
        raise BadArgument("give the backbone (a BLIP-2 directory or our checkpoint, e.g. models/backbone)")
    for path, module in ((localizer, "localizer"), (answerer, "answerer")):
        if path is not None:
            check_module_dir(path, module)
    modules = [path for path in (localizer, answerer) if path is not None]
    if weights is None:  # the backbone alone is the base
        return assemble(backbone, None, modules, layout=layout, device=device)
    return assemble(weights, backbone, modules, layout=layout, device=device)


def predict_with(model, video: str | Path, question: str | None, options: Sequence[str], *, n_frames: int = 32,
                 n_keyframes: int = 4, start: float | None = None, end: float | None = None,
                 cache: FeatureCache | None = None, sample: FrameSample | None = None) -> Prediction:
    """SeViLA with a loaded model (`load_chain`): the Localizer scores `n_frames` uniformly sampled frames of
    `video` (inside [start, end] seconds when given), the top `n_keyframes` in temporal order go to the Answerer,
    which picks one of `options`. `question=None` asks VLEP's 'what happens next'."""
    options = list(options)
    check_arguments(options, n_frames, n_keyframes)
    qa_prompt, loc_prompt = prompts.qa_prompts(question, options)
    features, meta = clip_features(model, video, n_frames, start, end, cache=cache, sample=sample)
    model.eval()
    with torch.no_grad():
        res = chain.answer(model, features.unsqueeze(0).to(next(model.t5.parameters()).device), [qa_prompt],
                           [len(options)], selector=Selector.LOCALIZER, fusion=Fusion.CONCAT,
                           n_keyframes=n_keyframes, loc_prompts=[loc_prompt])
    logits = res.option_logits[0, : len(options)].float().cpu()  # [n_options]
    pred = int(res.pred[0])
    keyframes = [int(k) for k in res.frames[0].cpu()]
    return Prediction(
        answer=pred, answer_text=options[pred], letter=prompts.OPTION_LETTERS[pred],
        option_logits=logits.tolist(), option_probs=logits.softmax(0).tolist(), keyframes=keyframes,
        keyframe_indices=[int(meta.indices[k]) for k in keyframes],
        keyframe_timestamps=[float(meta.timestamps[k]) for k in keyframes],
        frame_indices=[int(i) for i in meta.indices], frame_timestamps=[float(t) for t in meta.timestamps],
        frame_scores=[float(s) for s in res.frame_scores[0].float().cpu()],
        qa_truncated=bool(res.qa_truncated[0]), loc_truncated=bool(res.loc_truncated[0]),
        window_fallback=bool(meta.window_fallback))


def predict(video: str | Path, question: str | None, options: Sequence[str], *, backbone: str | Path,
            localizer: str | Path | None = None, answerer: str | Path | None = None, n_frames: int = 32,
            n_keyframes: int = 4, weights: str | Path | None = None, start: float | None = None,
            end: float | None = None, device: str | None = None) -> Prediction:
    """Load the chain (`load_chain`) and answer one question about one video (`predict_with`)."""
    check_arguments(list(options), n_frames, n_keyframes)
    model, _ = load_chain(backbone, localizer, answerer, weights=weights, device=device)
    return predict_with(model, video, question, options, n_frames=n_frames, n_keyframes=n_keyframes,
                        start=start, end=end)
