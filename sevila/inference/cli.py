"""Model commands of `sevila`:

- `model-info`: parameter counts of a preset, built on the meta device (no memory, no weights);
- `answer VIDEO --question Q --option A --option B ...`: SeViLA's forward chain on one video (Localizer keyframes ->
  Answerer, `sevila.inference.predictor`), printing the answer, the option scores and the keyframe times, and writing a
  PNG strip
  of the keyframes and a plot of the Localizer score over time (sevila/inference/plots.py);
- `localize VIDEO --query Q`: the Localizer's score for every sampled frame.

The model is assembled as the pipeline assembles it (`sevila.inference.predictor.load_chain`): `--backbone` (a
transformers
BLIP-2 Flan-T5 directory, or our complete checkpoint such as `models/backbone`), optionally `--weights` laid over it
(an official SeViLA/LAVIS `.pth`, or our bridges checkpoint; alone, `--weights` may be any of the three), then the
pipeline's module checkpoints `--localizer models/localizer/<id>` and `--answerer models/answerer/finetuned_r<N>`.
Nothing is downloaded. What was loaded from where is printed to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from sevila.data.video import VideoNotFound, read_frames
from sevila.errors import BadArgument
from sevila.inference import plots as viz
from sevila.inference.features import FeatureCache, score_frames
from sevila.inference.predictor import Prediction, check_arguments, load_chain, predict_with
from sevila.model import prompts
from sevila.model.configuration import sevila_flant5xl, sevila_tiny
from sevila.model.modeling import build_sevila, parameter_counts
from sevila.model.tokenizer import load_tokenizer
from sevila.weights.load import LavisLayout


def _register_model_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model-info",
        help="parameter counts of a model preset (built on the meta device, nothing allocated)",
        description="Count the parameters of a SeViLA preset per part and the trainable share per module "
        "(paper §4.1: 4.1B in all, ~106M trainable per module).",
    )
    p.add_argument("--preset", choices=("flant5xl", "tiny"), default="flant5xl")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="tiny preset: T5 vocabulary size (default: the tokenizer's size, else 512)")
    p.add_argument("--tokenizer", default=None, help="tiny preset: tokenizer directory whose size sets the vocabulary")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=_cli_model_info)


def _cli_model_info(args: argparse.Namespace) -> int:
    if args.preset == "flant5xl":
        if args.vocab_size is not None or args.tokenizer is not None:
            raise BadArgument("--vocab-size/--tokenizer apply to --preset tiny only")
        config = sevila_flant5xl()
    else:
        vocab = args.vocab_size
        if args.tokenizer is not None:
            n = len(load_tokenizer(args.tokenizer))
            if vocab is not None and vocab < n:
                raise BadArgument(f"--vocab-size {vocab} < tokenizer size {n}")
            vocab = vocab or n
        config = sevila_tiny(vocab or 512)
    counts = parameter_counts(build_sevila(config, device="meta"))
    if args.json:
        print(json.dumps(counts.to_json(), sort_keys=False))
        return 0
    width = max(len(k) for k in counts.parts)
    print(f"preset {args.preset}")
    for name, n in counts.parts.items():
        print(f"  {name:<{width}}  {n:>15,}")
    print(f"  {'total':<{width}}  {counts.total:>15,}")
    for name, n in counts.trainable.items():
        print(f"  trainable when training the {name}: {n:,} ({100 * n / counts.total:.2f}%)")
    return 0


# ------------------------------------------------------------------------------------ answer / localize


def _add_model_args(p: argparse.ArgumentParser, *, answerer: bool) -> None:
    p.add_argument("--backbone", type=Path, default=None,
                   help="the model the modules sit on: a transformers BLIP-2 Flan-T5 directory, or our complete "
                        "checkpoint (the pipeline's models/backbone)")
    p.add_argument("--weights", type=Path, default=None,
                   help="laid over --backbone: an official SeViLA/LAVIS .pth or our bridges checkpoint; without "
                        "--backbone: our complete checkpoint, a BLIP-2 directory (one of the two is required)")
    p.add_argument("--localizer", type=Path, default=None,
                   help="a Localizer module checkpoint of the pipeline, e.g. models/localizer/qvh_sr_r1 "
                        "(default: the backbone's Q-Former)")
    if answerer:
        p.add_argument("--answerer", type=Path, default=None,
                       help="an Answerer module checkpoint of the pipeline, e.g. models/answerer/finetuned_r1 "
                            "(default: the backbone's Q-Former, zero-shot)")
    p.add_argument("--layout", choices=[m.value for m in LavisLayout], default=LavisLayout.SEVILA.value,
                   help=".pth only: 'sevila' = un-suffixed keys are the Answerer, *_loc the Localizer; 'blip2' = a "
                        "BLIP-2 checkpoint whose Q-Former initialises both modules")
    p.add_argument("--start", type=float, default=None, help="clip start in seconds (default: whole video)")
    p.add_argument("--end", type=float, default=None, help="clip end in seconds")
    p.add_argument("--cache", type=Path, default=None, help="ViT feature cache directory (reused across calls)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _register_answer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "answer", help="answer a multiple-choice question about one video (Localizer -> Answerer)",
        description="SeViLA's forward chain on one video (paper §3.1): the Localizer scores --n-frames uniformly "
        "sampled frames, the top --n-keyframes (in temporal order) go to the Answerer, which picks an option. "
        "The pipeline's trained SeViLA: --backbone models/backbone --localizer models/localizer/qvh_sr_r1 "
        "--answerer models/answerer/finetuned_r1.")
    p.add_argument("video", type=Path)
    p.add_argument("--question", default=None, help="the question (omit for VLEP-style next-event prediction)")
    p.add_argument("--option", action="append", required=True, help="an answer option; repeat, 1 to 5 times")
    p.add_argument("--n-frames", type=int, default=32, help="frames sampled uniformly (paper: 32)")
    p.add_argument("--n-keyframes", type=int, default=4, help="keyframes the Answerer reads (paper: 4)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for keyframes.png and localizer_scores.png (default: ./sevila-answer/<video stem>)")
    _add_model_args(p, answerer=True)
    p.set_defaults(func=_cli_answer)


def _register_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize", help="the Localizer's score for every sampled frame of one video",
        description="Score --n-frames uniformly sampled frames with the Localizer (logit of 'yes'). Without "
        "--option the query is asked as in QVHighlights pre-training; with options, as a multiple-choice question.")
    p.add_argument("video", type=Path)
    p.add_argument("--query", required=True)
    p.add_argument("--option", action="append", default=None, help="answer options, if the query is a question")
    p.add_argument("--n-frames", type=int, default=32, help="frames sampled uniformly (paper: 32)")
    _add_model_args(p, answerer=False)
    p.set_defaults(func=_cli_localize)


def _load(args: argparse.Namespace, answerer: Path | None = None):
    """(model on its device, feature cache or None); what was loaded from where goes to stderr."""
    model, reports = load_chain(args.backbone, args.localizer, answerer, weights=args.weights,
                                layout=LavisLayout(args.layout), device=args.device)
    for rep in reports:
        print(rep.summary(), file=sys.stderr)
    return model, (FeatureCache(args.cache, model) if args.cache is not None else None)


def _check_video(video: Path) -> None:
    """Before a load that may take minutes: the video must exist (read errors come later, named by the reader)."""
    if not video.is_file():
        raise VideoNotFound(video, "no such file")


def _cli_answer(args: argparse.Namespace) -> int:
    check_arguments(args.option, args.n_frames, args.n_keyframes)
    _check_video(args.video)
    model, cache = _load(args, args.answerer)
    sample = read_frames(args.video, args.n_frames, args.start, args.end, size=model.config.image_size)
    pred = predict_with(model, args.video, args.question, args.option, n_frames=args.n_frames,
                        n_keyframes=args.n_keyframes, start=args.start, end=args.end, cache=cache, sample=sample)
    out = args.out if args.out is not None else Path("sevila-answer") / args.video.stem
    strip, plot = _pictures(pred, sample, args.question, out)
    if args.json:
        print(json.dumps({"video": str(args.video), "question": args.question, "options": args.option,
                          **pred.to_json(), "files": {"strip": str(strip), "plot": str(plot)}}))
        return 0
    print(f"answer: {pred.letter} ({pred.answer_text})")
    print("option scores (letter logit, probability over the options):")
    for i, (opt, lg, pr) in enumerate(zip(args.option, pred.option_logits, pred.option_probs)):
        mark = "*" if i == pred.answer else " "
        print(f" {mark} {prompts.OPTION_LETTERS[i]}  {lg:9.4f}  {pr:6.3f}  {opt}")
    print("keyframes (s): " + " ".join(f"{t:.2f}" for t in pred.keyframe_timestamps))
    if pred.qa_truncated or pred.loc_truncated:
        print(f"warning: a prompt was cut at {model.config.max_text_len} tokens (the last options may be unseen)")
    if pred.window_fallback:
        print("warning: the --start/--end window was unusable; the whole video was sampled")
    print(f"wrote {strip}")
    print(f"wrote {plot}")
    return 0


def _pictures(pred: Prediction, sample, question: str | None, out: Path) -> tuple[Path, Path]:
    """The keyframe strip and the Localizer score plot of one prediction."""
    title = question or prompts.VLEP_QUESTION
    strip = viz.keyframe_strip(viz.to_uint8_images(sample.pixels[pred.keyframes]), pred.keyframe_timestamps,
                               out / "keyframes.png", title=f"{title} -> {pred.letter}: {pred.answer_text}")
    plot = viz.score_plot(pred.frame_timestamps, pred.frame_scores, pred.keyframes, out / "localizer_scores.png",
                          title=f"Localizer: {title}")
    return strip, plot


def _cli_localize(args: argparse.Namespace) -> int:
    if args.n_frames < 1:
        raise BadArgument(f"--n-frames must be >= 1, got {args.n_frames}")
    _check_video(args.video)
    model, cache = _load(args)
    scores = score_frames(model, args.video, args.query, args.n_frames, options=args.option, start=args.start,
                          end=args.end, cache=cache)
    if args.json:
        print(json.dumps({"video": str(args.video), "query": args.query, "n_frames": len(scores),
                          "frames": [{"timestamp": t, "score": s} for t, s in scores]}))
        return 0
    print(f"{'frame':>5}  {'time (s)':>9}  {'score':>9}")
    for i, (t, s) in enumerate(scores):
        print(f"{i:>5}  {t:9.3f}  {s:9.4f}")
    return 0


#: one entry per command this module owns
_REGISTRARS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _register_model_info, _register_answer, _register_localize,
)


def register(sub: argparse._SubParsersAction) -> None:
    for add in _REGISTRARS:
        add(sub)
