"""The `sevila` command. Each subcommand lives in the module that owns its work and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int` as the handler.
Modules are imported lazily per command so `sevila convert` never pays for torch or MLflow."""
from __future__ import annotations

import argparse
import importlib
import sys

# command name -> module that registers it
COMMANDS: dict[str, str] = {
    "convert": "sevila.data.convert",
    "synth": "sevila.data.synth",
    "validate": "sevila.validation",
    "eval-moments": "sevila.metrics_cli",
    "model-info": "sevila.model_cli",
    "answer": "sevila.model_cli",
    "localize": "sevila.model_cli",
    "report": "sevila.report",
    "stage": "sevila.stages",
    "repro": "sevila.repro",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sevila", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    seen: set[str] = set()
    for name, module in COMMANDS.items():
        if (only is not None and name != only) or module in seen:
            continue
        seen.add(module)
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(wanted).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
