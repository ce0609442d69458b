"""Model commands of `sevila`: `model-info` (parameter counts of a preset, built on the meta device: no memory,
no weights). `answer` and `localize` are added here by `register` as well, each by its own `_register_*`."""
from __future__ import annotations

import argparse
import json
import sys
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


#: one entry per command this module owns; `answer`/`localize` are appended here when they exist
_REGISTRARS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_register_model_info,)


def register(sub: argparse._SubParsersAction) -> None:
    for add in _REGISTRARS:
        add(sub)
