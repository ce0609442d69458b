"""The `sevila` command. Each subcommand lives in the module that owns its work and exposes
`register(sub)`, which adds its parser and sets its handler `_cli_<command>(args) -> int` as `func`.
Modules are imported lazily per command so `sevila convert` never pays for torch or MLflow.

Exit status: 0 success; 1 the command ran and its result is a failure (an expectation failed, a stage reported
`success: false`); 2 a mistake in what was given (an argument, a setting, an input file, a video, a checkpoint),
printed as one line `sevila COMMAND: error: <message>` naming the file, line, key or video. Any other exception
is a bug and keeps its traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from sevila.errors import UserError

# command name -> module that registers it
COMMANDS: dict[str, str] = {
    "convert": "sevila.data.convert",
    "synth": "sevila.synthetic.world",
    "validate": "sevila.data.validation",
    "eval-moments": "sevila.evaluation.cli",
    "model-info": "sevila.inference.cli",
    "answer": "sevila.inference.cli",
    "localize": "sevila.inference.cli",
    "report": "sevila.evaluation.tables",
    "stage": "sevila.stages",
    "repro": "sevila.experiments.repro",
    "seeds": "sevila.experiments.seeds",
    "round": "sevila.experiments.rounds",
    "rehearse": "sevila.experiments.rehearse",
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


#: OS errors about a path the user named (their message names it); other OSErrors stay tracebacks
_PATH_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, IsADirectoryError, NotADirectoryError,
                                             PermissionError)
#: user errors of modules that do not derive them from UserError: (module, class); looked up only in modules
#: already imported, since an exception of a module never imported cannot have been raised (keeps `sevila
#: convert` free of torch)
_FOREIGN_USER_ERRORS: tuple[tuple[str, str], ...] = (("yaml", "YAMLError"),  # a settings file that is not YAML
                                                     ("sevila.stages.validate", "ValidationFailed"))  # bad data


def user_error_types() -> tuple[type[Exception], ...]:
    foreign = tuple(getattr(sys.modules[mod], name) for mod, name in _FOREIGN_USER_ERRORS
                    if hasattr(sys.modules.get(mod), name))
    return (UserError, *_PATH_ERRORS, *foreign)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(wanted).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_error_types() as e:
        print(f"sevila {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(e: BaseException) -> str:
    """The message of `e` on one line (an OSError without its own message names its file)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
