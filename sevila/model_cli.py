"""Model commands of `sevila`:

- `model-info`: parameter counts of a preset, built on the meta device (no memory, no weights);
- `answer VIDEO --question Q --option A --option B ...`: SeViLA's forward chain on one video (Localizer keyframes ->
  Answerer), printing the answer, the option scores and the keyframe times, and writing a PNG strip of the keyframes
  and a plot of the Localizer score over time (sevila/viz.py);
- `localize VIDEO --query Q`: the Localizer's score for every sampled frame.

`--weights` is our checkpoint directory (`save_sevila`: weights + config + tokenizer), a transformers BLIP-2 Flan-T5
directory, or an official SeViLA/LAVIS `.pth`; `--backbone` (a BLIP-2 directory) supplies the frozen ViT and Flan-T5
when the weights hold only the bridges. Nothing is downloaded. What was loaded from where is printed to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable


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
    p.set_defaults(func=model_info)


def model_info(args: argparse.Namespace) -> int:
    from sevila.model import build_sevila, parameter_counts, sevila_flant5xl, sevila_tiny

    if args.preset == "flant5xl":
        if args.vocab_size is not None or args.tokenizer is not None:
            print("sevila model-info: --vocab-size/--tokenizer apply to --preset tiny only", file=sys.stderr)
            return 2
        config = sevila_flant5xl()
    else:
        vocab = args.vocab_size
        if args.tokenizer is not None:
            from sevila.tokenizer import load_tokenizer

            n = len(load_tokenizer(args.tokenizer))
            if vocab is not None and vocab < n:
                print(f"sevila model-info: --vocab-size {vocab} < tokenizer size {n}", file=sys.stderr)
                return 2
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


def _add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, type=Path,
                   help="our checkpoint directory (weights + config + tokenizer), a transformers BLIP-2 Flan-T5 "
                        "directory, or an official SeViLA/LAVIS .pth")
    p.add_argument("--backbone", type=Path, default=None,
                   help="transformers BLIP-2 directory giving the frozen ViT + Flan-T5 (and tokenizer) when --weights "
                        "holds only the Q-Former bridges")
    p.add_argument("--layout", choices=("sevila", "blip2"), default="sevila",
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
        description="SeViLA's forward chain on one video (paper §3.1): the Localizer scores --frames uniformly "
        "sampled frames, the top --keyframes (in temporal order) go to the Answerer, which picks an option.")
    p.add_argument("video", type=Path)
    p.add_argument("--question", default=None, help="the question (omit for VLEP-style next-event prediction)")
    p.add_argument("--option", action="append", required=True, help="an answer option; repeat, 1 to 5 times")
    p.add_argument("--frames", type=int, default=32, help="frames sampled uniformly (paper: 32)")
    p.add_argument("--keyframes", type=int, default=4, help="keyframes the Answerer reads (paper: 4)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for keyframes.png and localizer_scores.png (default: ./sevila-answer/<video stem>)")
    _add_weights_args(p)
    p.set_defaults(func=answer_command)


def _register_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "localize", help="the Localizer's score for every sampled frame of one video",
        description="Score --frames uniformly sampled frames with the Localizer (logit of 'yes'). Without --option "
        "the query is asked as in QVHighlights pre-training; with options, as a multiple-choice question.")
    p.add_argument("video", type=Path)
    p.add_argument("--query", required=True)
    p.add_argument("--option", action="append", default=None, help="answer options, if the query is a question")
    p.add_argument("--frames", type=int, default=32)
    _add_weights_args(p)
    p.set_defaults(func=localize_command)


def _fail(cmd: str, msg: str, code: int = 1) -> int:
    print(f"sevila {cmd}: {msg}", file=sys.stderr)
    return code


def _load(args: argparse.Namespace):
    """(model on its device, cache or None) from the shared arguments; reports of what was loaded go to stderr."""
    import torch

    from sevila.loading import LavisLayout, load_for_inference
    from sevila.features import FeatureCache

    model, reports = load_for_inference(args.weights, args.backbone, layout=LavisLayout(args.layout))
    for rep in reports:
        print(rep.summary(), file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    cache = FeatureCache(args.cache, model) if args.cache is not None else None
    return model, cache


def answer_command(args: argparse.Namespace) -> int:
    from sevila import prompts, viz
    from sevila.checkpoint_io import CheckpointError
    from sevila.data.video import VideoError, read_frames
    from sevila.features import answer_video

    n_opt = len(args.option)
    if not 1 <= n_opt <= len(prompts.OPTION_LETTERS):
        return _fail("answer", f"give 1 to {len(prompts.OPTION_LETTERS)} --option, got {n_opt}", 2)
    if not 1 <= args.keyframes <= args.frames:
        return _fail("answer", f"need 1 <= --keyframes <= --frames, got {args.keyframes} and {args.frames}", 2)
    try:
        model, cache = _load(args)
        sample = read_frames(args.video, args.frames, args.start, args.end, size=model.config.image_size)
        ans = answer_video(model, args.video, args.question, args.option, n_frames=args.frames,
                           n_keyframes=args.keyframes, start=args.start, end=args.end, cache=cache, sample=sample)
    except (CheckpointError, VideoError, FileNotFoundError, ValueError) as e:
        return _fail("answer", str(e))
    out = args.out if args.out is not None else Path("sevila-answer") / args.video.stem
    letter = prompts.OPTION_LETTERS[ans.pred]
    title = args.question or prompts.VLEP_QUESTION
    strip = viz.keyframe_strip(viz.to_uint8_images(sample.pixels[ans.keyframes]), ans.keyframe_timestamps,
                               out / "keyframes.png", title=f"{title} -> {letter}: {args.option[ans.pred]}")
    plot = viz.score_plot(ans.frame_timestamps, ans.frame_scores, ans.keyframes, out / "localizer_scores.png",
                          title=f"Localizer: {title}")
    if args.json:
        print(json.dumps({"video": str(args.video), "question": args.question, "options": args.option,
                          "answer": ans.pred, "letter": letter, "answer_text": args.option[ans.pred],
                          **ans.to_json(), "files": {"strip": str(strip), "plot": str(plot)}}))
        return 0
    print(f"answer: {letter} ({args.option[ans.pred]})")
    print("option scores (letter logit, probability over the options):")
    for i, (opt, lg, pr) in enumerate(zip(args.option, ans.option_logits, ans.option_probs)):
        mark = "*" if i == ans.pred else " "
        print(f" {mark} {prompts.OPTION_LETTERS[i]}  {lg:9.4f}  {pr:6.3f}  {opt}")
    print("keyframes (s): " + " ".join(f"{t:.2f}" for t in ans.keyframe_timestamps))
    if ans.qa_truncated or ans.loc_truncated:
        print(f"warning: a prompt was cut at {model.config.max_text_len} tokens (the last options may be unseen)")
    if ans.window_fallback:
        print("warning: the --start/--end window was unusable; the whole video was sampled")
    print(f"wrote {strip}")
    print(f"wrote {plot}")
    return 0


def localize_command(args: argparse.Namespace) -> int:
    from sevila.checkpoint_io import CheckpointError
    from sevila.data.video import VideoError
    from sevila.features import score_frames

    if args.frames < 1:
        return _fail("localize", f"--frames must be >= 1, got {args.frames}", 2)
    try:
        model, cache = _load(args)
        scores = score_frames(model, args.video, args.query, args.frames, options=args.option, start=args.start,
                              end=args.end, cache=cache)
    except (CheckpointError, VideoError, FileNotFoundError, ValueError) as e:
        return _fail("localize", str(e))
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
