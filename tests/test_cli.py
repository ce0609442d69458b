"""The `sevila` command's contract for mistakes in what it is given: one line `sevila CMD: error: ...` naming the
file, line, key or video, exit 2, nothing written; real bugs keep their traceback."""
from __future__ import annotations

import importlib

import pytest

from sevila.config import load_config
from sevila.cli import COMMANDS, build_parser, main
from sevila.stages import STAGES

REPO_PARAMS = "params.yaml"


def _one_error_line(capsys, cmd: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"sevila {cmd}: error: "), err
    return err.removeprefix(f"sevila {cmd}: error: ")


@pytest.mark.parametrize("override, message", [
    ("frames.n_frames=abc", "frames.n_frames: expected an integer, got 'abc'"),
    ("frames.nframes=3", "frames: unknown setting(s) ['nframes']"),
    ("frames.bad_video=maybe", "frames.bad_video: 'maybe' is not one of ['fail', 'skip']"),
    ("frames", "override 'frames' is not of the form key=value"),
    ("frames.n_frames.x=1", "override 'frames.n_frames.x': 'n_frames' is not a section"),
])
def test_stage_setting_errors_are_one_line_naming_the_key(tmp_path, capsys, override, message):
    reports = tmp_path / "reports"
    rc = main(["stage", "evaluate", "-p", REPO_PARAMS, "-o", f"paths.reports={reports}", "-o", override])
    assert rc == 2
    assert _one_error_line(capsys, "stage").startswith(message)
    assert not reports.exists()  # settings are refused before anything is written


def test_stage_settings_file_missing_or_not_yaml(tmp_path, capsys):
    assert main(["stage", "validate", "-p", str(tmp_path / "nope.yaml")]) == 2
    assert _one_error_line(capsys, "stage") == f"{tmp_path / 'nope.yaml'}: No such file or directory"
    bad = tmp_path / "params.yaml"
    bad.write_text("frames:\n  n_frames: [1,\n")
    assert main(["stage", "validate", "-p", str(bad)]) == 2
    # one line (config.load_config does not yet name the file in a YAML error: reported to the core helper)
    assert "line 3, column 1" in _one_error_line(capsys, "stage")


def test_stage_missing_input_file_is_named(tmp_path, capsys):
    processed = tmp_path / "processed"
    assert main(["stage", "validate", "-p", REPO_PARAMS, "-o", f"paths.processed={processed}",
                 "-o", f"paths.reports={tmp_path / 'reports'}"]) == 2
    assert _one_error_line(capsys, "stage") == f"{processed / 'train.jsonl'}: No such file or directory"
    assert not (tmp_path / "reports").exists()


def test_a_bug_keeps_its_traceback(monkeypatch):
    module = importlib.import_module(STAGES["validate"])

    def broken(cfg):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(module, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["stage", "validate", "-p", REPO_PARAMS])


def test_every_command_has_a_handler_named_after_it():
    """One naming style: the handler of `sevila foo-bar` is `_cli_foo_bar`, in the module that registers it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and set(a.choices) == set(COMMANDS))
    for name, p in sub.choices.items():
        func = p.get_default("func")
        assert func.__name__ == f"_cli_{name.replace('-', '_')}", (name, func.__name__)
        assert func.__module__ == COMMANDS[name], (name, func.__module__)


@pytest.mark.parametrize("argv, message", [
    (["synth", "--out", "{tmp}/w", "--videos", "0", "--seed", "0"], "n_videos must be >= 1, got 0"),
    (["synth", "--out", "{tmp}/w", "--videos", "1", "--seed", "0", "--size", "33"], "size must be an even number"),
    (["eval-moments", "{tmp}/gt.jsonl", "{tmp}/pred.jsonl"], "{tmp}/gt.jsonl: No such file or directory"),
    (["convert", "tvqa", "{tmp}/val.jsonl", "--out", "{tmp}/o.jsonl"], "{tmp}/val.jsonl: annotation file not found"),
    (["validate", "{tmp}"], "{tmp}: Is a directory"),
    (["model-info", "--preset", "flant5xl", "--vocab-size", "9"], "--vocab-size/--tokenizer apply to --preset tiny"),
    (["localize", "{tmp}/v.mp4", "--query", "x", "--weights", "{tmp}"], "video '{tmp}/v.mp4': no such file"),
    (["answer", "{tmp}/v.mp4", "--option", "a", "--n-frames", "2", "--n-keyframes", "3", "--weights", "{tmp}"],
     "need 1 <= n_keyframes <= n_frames, got n_keyframes=3, n_frames=2"),
])
def test_each_command_reports_user_errors_as_one_line(tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert _one_error_line(capsys, argv[0]).startswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "w").exists() and not (tmp_path / "o.jsonl").exists()


def test_stage_validate_on_failing_data_is_one_line_naming_the_report(tmp_path, capsys):
    from sevila.data.records import QARecord, write_records

    processed = tmp_path / "processed"
    for split in ("train", "val", "test"):
        write_records(processed / f"{split}.jsonl",
                      [QARecord("nextqa", f"{split}_1", f"a/missing_{split}", "why?", tuple("abcde"), 0, split=split)])
        write_records(processed / f"moments_{split}.jsonl", [])
    reports = tmp_path / "reports"
    assert main(["stage", "validate", "-p", REPO_PARAMS, "-o", f"paths.processed={processed}",
                 "-o", f"paths.world={tmp_path / 'world'}", "-o", f"paths.reports={reports}"]) == 2
    line = _one_error_line(capsys, "stage")
    videos = load_config(REPO_PARAMS, [f"paths.world={tmp_path / 'world'}"]).video_folder("synth") / "a"
    unreadable = ", ".join(str(videos / f"missing_{split}.mp4") for split in ("test", "train", "val"))
    assert line == f"validation failed (video_readable: {unreadable}); see {reports / 'validation.json'}"
