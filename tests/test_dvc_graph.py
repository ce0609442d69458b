"""The DVC graph (dvc.yaml) without running its heavy stages: every stage is there in chain order, each reads
exactly its own params and code, its templated paths are the ones the stage code writes, no two stages share
an output, a setting change invalidates only the stages that read it (real `dvc status` on a copy), the plots
render, and `sevila repro` nests a real `dvc repro`'s stage runs under one MLflow parent run."""
from __future__ import annotations

import ast
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest
import yaml

from sevila.stages import RUNS_AS, STAGES, pipeline

REPO = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
CHAIN = ["prepare", "validate", "bootstrap", "pretrain_localizer", "pseudo_label", "refine_localizer",
         "finetune_answerer", "evaluate", "report"]
# Another helper writes the bootstrap stage; until it lands, checks that need its files or params skip it.
BOOTSTRAP_LANDED = (REPO / "sevila/stages/bootstrap.py").is_file() and "bootstrap" in PARAMS

# Code a stage imports that cannot change what it writes: the command line, atomic file writes, the error classes,
# and the MLflow package (it only says what a run records; the report, which reads MLflow, depends on it).
NOT_CONTENT = {"sevila/__init__.py", "sevila/cli.py", "sevila/errors.py", "sevila/atomic.py", "sevila/tracking"}
CONTENT_FOR = {"report": {"sevila/tracking"}}


@pytest.fixture(scope="module")
def stages() -> dict:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        repo.index.check_graph()  # overlapping or duplicated outputs raise here
        yield {s.addressing: s for s in repo.index.stages}, repo.index.graph


def _family_name(name: str) -> str:
    return name.split("@", 1)[0]


def _family(name: str) -> str:
    name = _family_name(name)
    return RUNS_AS[name][0] if name in RUNS_AS else name


def _code_deps(stage) -> set[str]:
    return {d.def_path for d in stage.deps if d.def_path.startswith("sevila/")}


def _data_deps(stage) -> set[str]:
    return {d.def_path for d in stage.deps if not d.def_path.startswith("sevila/") and d.def_path != "params.yaml"}


def _params(stage) -> list[str]:
    return [k for d in stage.deps if d.def_path == "params.yaml" for k in d.params]


def _outs(stage) -> set[str]:
    return {o.def_path for o in stage.outs}


def _module_file(mod: str) -> Path | None:
    p = REPO / Path(*mod.split("."))
    for f in (p.with_suffix(".py"), p / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported_files(path: Path) -> set[Path]:
    """The sevila modules a file imports (at its top or inside a function), and the package inits they run."""
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sevila"):
            mods |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            mods |= {a.name for a in node.names if a.name.startswith("sevila")}
    files = set()
    for mod in mods:
        parts = mod.split(".")
        files |= {f for i in range(2, len(parts) + 1) if (f := _module_file(".".join(parts[:i]))) is not None}
    return files


def _dep_key(path: Path) -> str:
    """What dvc.yaml names for a file: a stage module or a root module itself, else its package folder."""
    parts = path.relative_to(REPO).parts
    return "/".join(parts) if len(parts) == 2 or parts[1] == "stages" else "/".join(parts[:2])


def _code_closure(stage_file: Path, content: set[str]) -> set[str]:
    seen, todo, keys = set(), [stage_file], set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        key = _dep_key(f)
        if key in NOT_CONTENT - content:
            continue
        keys.add(key)
        todo += _imported_files(f)
    return keys - {"sevila/stages/__init__.py"}


# ---------------------------------------------------------------------------------------------- structure


def test_each_stage_depends_on_exactly_the_code_it_imports(stages):
    """dvc.yaml's code deps are the stage's module and the sevila PACKAGES it reaches through its imports
    (transitively, function-level imports included), so a change anywhere in them reruns the stage and nothing
    else is listed; folders, never hand-kept file lists (issue 21)."""
    by_name, _ = stages
    for name, s in by_name.items():
        family = _family(name)
        want = _code_closure(REPO / "sevila" / "stages" / f"{family}.py", CONTENT_FOR.get(family, set()))
        assert _code_deps(s) == want, f"{name}: missing {sorted(want - _code_deps(s))}, " \
                                      f"not imported {sorted(_code_deps(s) - want)}"
        assert all(dep.startswith("sevila/stages/") or (REPO / dep).is_dir() for dep in _code_deps(s)), name


def test_every_stage_is_in_the_graph_and_evaluate_covers_exactly_the_variants(stages):
    by_name, _ = stages
    assert set(CHAIN) == set(STAGES)  # the registry and this test agree on what the stages are
    assert {_family(n) for n in by_name} == set(STAGES)
    assert sorted(n for n in by_name if n.startswith("evaluate@")) == sorted(
        f"evaluate@{v}" for v in PARAMS["evaluate"]["variants"])
    for v in PARAMS["evaluate"]["variants"]:
        assert by_name[f"evaluate@{v}"].cmd == f"sevila stage evaluate -o evaluate.only=[{v}]"
    for name in set(STAGES) - {"evaluate"}:
        assert by_name[name].cmd == f"sevila stage {name}"
    for name, (stage, overrides) in RUNS_AS.items():
        assert by_name[name].cmd == " ".join(["sevila stage", stage, *(f"-o {o}" for o in overrides)])
    # `pipeline()` (what runs without DVC) is dvc.yaml's stages in its order, evaluate's variants as one step
    assert [n for n, _, _ in pipeline()] == list(dict.fromkeys(_family_name(n) for n in by_name))


def test_stages_chain_in_pipeline_order(stages):
    """Each stage's upstream stages, pinned. The chain is a DAG, not a line: pseudo_label (round 1 labels with
    the zero-shot Answerer) needs no pre-trained Localizer, so DVC may run it beside pretrain_localizer."""
    by_name, graph = stages
    evaluates = {n for n in by_name if n.startswith("evaluate@")}
    data = {"prepare", "validate", "bootstrap"}
    expected = {
        "prepare": set(), "validate": {"prepare"}, "bootstrap": {"prepare", "validate"},
        "pretrain_localizer": data, "pseudo_label": data,
        "refine_localizer": data | {"pretrain_localizer", "pseudo_label"},
        "finetune_answerer": data | {"pretrain_localizer", "pseudo_label", "refine_localizer"},
        "finetune_answerer_uniform": data,  # uniform frames need no Localizer
        "report": data | {"pretrain_localizer", "pseudo_label", "refine_localizer", "finetune_answerer",
                          "finetune_answerer_uniform"} | evaluates,
    }
    expected |= {n: expected["finetune_answerer"] | {"finetune_answerer", "finetune_answerer_uniform"}
                 for n in evaluates}
    # DVC's edges point from a stage to the stages it depends on: descendants = everything upstream
    assert {n: {d.addressing for d in nx.descendants(graph, s)} for n, s in by_name.items()} == expected
    assert list(STAGES) == CHAIN  # STAGES is kept in dvc.yaml's (topological) order


def test_no_two_stages_share_or_nest_an_output(stages):
    by_name, _ = stages
    owner: dict[str, str] = {}
    for name, s in by_name.items():
        for out in _outs(s):
            assert out not in owner, f"{out} is an output of both {owner[out]} and {name}"
            owner[out] = name
    paths = sorted(owner)
    for a in paths:
        for b in paths:
            assert a == b or not b.startswith(a + "/"), f"{b} ({owner[b]}) lies inside {a} ({owner[a]})"


def test_data_and_models_are_dvc_outputs_metrics_and_plot_sources_cached(stages):
    """runs/ and reports/ are git-ignored, so a metrics or plot file another revision can be read from is one
    DVC caches (its hash in that revision's dvc.lock): `cache: false` there makes `dvc metrics diff REV` and
    `dvc exp show` blank for every revision but the workspace (test_metrics_diff_and_exp_show_compare_commits)."""
    by_name, _ = stages
    for name, s in by_name.items():
        for o in s.outs:
            top = o.def_path.split("/")[0]
            assert top in ("data", "models", "runs", "reports"), f"{name}: {o.def_path} would not be git-ignored"
            if o.metric:
                assert o.use_cache and o.def_path.endswith(".json"), f"{name}: metrics {o.def_path} is not cached"
    for name in ("bootstrap", "pretrain_localizer", "pseudo_label", "refine_localizer", "finetune_answerer",
                 "finetune_answerer_uniform"):
        assert any(o.metric for o in by_name[name].outs), f"{name} has no DVC metrics file"
    assert all(any(o.metric for o in s.outs) for n, s in by_name.items() if n.startswith("evaluate@"))
    plot_sources = {o.def_path: o.use_cache for o in by_name["report"].outs}
    assert plot_sources["reports/ablations.json"] and plot_sources["reports/curves"]


# ---------------------------------------------------------------------------------------------- dvc status


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def _placeholder(path: Path) -> None:
    if path.exists():
        return
    if path.suffix in (".json", ".jsonl", ".md", ".py"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("[]\n" if path.suffix != ".py" else "# placeholder\n")
    else:
        path.mkdir(parents=True, exist_ok=True)
        (path / "placeholder").write_text("x\n")


@pytest.fixture(scope="module")
def committed_copy(stages, tmp_path_factory) -> Path:
    """A copy of the project (dvc.yaml, params.yaml, the code) with placeholder outputs, every stage committed
    to dvc.lock as if it had run: `dvc status` there is clean until something changes."""
    by_name, _ = stages
    root = tmp_path_factory.mktemp("dvc-copy")
    shutil.copy(REPO / "dvc.yaml", root)
    params = dict(PARAMS)
    params.setdefault("bootstrap", {})  # until the bootstrap stage lands with its section
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for s in by_name.values():
        for dep in _code_deps(s):
            dst = root / dep
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / dep, dst) if (REPO / dep).is_file() else _placeholder(dst)
    for s in by_name.values():
        for out in _outs(s):
            _placeholder(root / out)
    for s in by_name.values():
        for dep in _data_deps(s):
            _placeholder(root / dep)
    assert _dvc("init", "--no-scm", "-q", cwd=root).returncode == 0
    res = _dvc("commit", "-f", "-q", cwd=root)
    assert res.returncode == 0, res.stderr
    return root


def _status(root: Path) -> dict:
    res = _dvc("status", "--json", cwd=root)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout or "{}")


def test_dvc_status_invalidates_only_the_stages_a_setting_feeds(committed_copy):
    root = committed_copy
    assert _status(root) == {}
    original = (root / "params.yaml").read_text()
    try:
        params = yaml.safe_load(original)
        params["evaluate"]["variants"]["f16k4_qvh_sr"]["n_keyframes"] = 2
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        changed = _status(root)
        assert set(changed) == {"evaluate@f16k4_qvh_sr", "report"}  # report lists the variants' settings
        assert "evaluate.variants.f16k4_qvh_sr" in json.dumps(changed["evaluate@f16k4_qvh_sr"])

        params = yaml.safe_load(original)
        params["frames"]["n_keyframes"] = 2
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # the chain stages that train on k keyframes, and every evaluate stage (a variant's frame_slots may be the
        # k its Answerer was fine-tuned on; they rerun anyway, on that retrained Answerer)
        assert set(_status(root)) == {"pretrain_localizer", "finetune_answerer", "finetune_answerer_uniform"} | {
            f"evaluate@{v}" for v in PARAMS["evaluate"]["variants"]}
    finally:
        (root / "params.yaml").write_text(original)
    assert _status(root) == {}


def test_dvc_plots_render_accuracy_per_variant_and_loss_curves(committed_copy):
    root = committed_copy
    (root / "reports/ablations.json").write_text(json.dumps([{"variant": "a", "accuracy": 50.0},
                                                             {"variant": "b", "accuracy": 62.5}]))
    curves = root / "reports/curves"
    (curves / "placeholder").unlink(missing_ok=True)
    (curves / "pretrain_localizer.json").write_text(json.dumps([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}]))
    res = _dvc("plots", "show", "--json", cwd=root)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)["data"]
    acc = data["accuracy per variant"][0]["content"]
    assert acc["encoding"]["x"]["field"] == "accuracy" and acc["encoding"]["y"]["field"] == "variant"
    assert [(r["variant"], r["accuracy"]) for r in acc["data"]["values"]] == [("a", 50.0), ("b", 62.5)]
    loss = data["reports/curves/pretrain_localizer.json"][0]["content"]
    assert [(r["step"], r["loss"]) for r in loss["data"]["values"]] == [(1, 2.0), (2, 1.0)]


def test_metrics_diff_and_exp_show_compare_commits(committed_copy, tmp_path):
    """A git repo of the project (its .gitignore, dvc.yaml, params.yaml) with two commits that differ in one
    variant's accuracy: `dvc metrics diff HEAD~1` and `dvc exp show` read both revisions' values."""
    root = tmp_path / "repo"
    shutil.copytree(committed_copy, root, ignore=shutil.ignore_patterns(".dvc", "dvc.lock"))
    shutil.copy(REPO / ".gitignore", root)
    for args in (["init", "-q"], ["config", "user.email", "t@example.org"], ["config", "user.name", "t"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    assert _dvc("init", "-q", cwd=root).returncode == 0
    metrics = root / "runs/round1/eval/f8k1_qvh_sr/metrics.json"
    for accuracy, message in ((40.0, "one"), (45.5, "two")):
        metrics.write_text(json.dumps({"accuracy": accuracy}))
        res = _dvc("commit", "-f", "-q", cwd=root)
        assert res.returncode == 0, res.stderr
        subprocess.run(["git", "add", "-A"], cwd=root, check=True)
        subprocess.run(["git", "commit", "-qm", message], cwd=root, check=True)
    assert "runs/round1/eval/f8k1_qvh_sr/metrics.json" not in subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout  # only in DVC's cache
    res = _dvc("metrics", "diff", "HEAD~1", "--json", cwd=root)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["runs/round1/eval/f8k1_qvh_sr/metrics.json"]["accuracy"] == {
        "old": 40.0, "new": 45.5, "diff": 5.5}
    res = _dvc("exp", "show", "--csv", "--all-commits", "--only-changed", cwd=root)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(r["accuracy"] for r in rows if r["rev"] != "workspace") == ["40.0", "45.5"]  # both commits


# ---------------------------------------------------------------------------------------------- sevila repro


PROBE = """\
import sys
from sevila import tracking
with tracking.start_run("synth", tracking.Phase.EVALUATE, sys.argv[1], tracking.RunTags(variant=sys.argv[1])):
    pass
sys.exit(int(sys.argv[2]))
"""


def _probe_project(root: Path, first_exit: int = 0) -> Path:
    """Two chained stages, each logging one MLflow run through sevila.tracking (as `sevila stage` does); the
    first then exits with `first_exit`. `python` is the venv's: sevila repro puts its bin folder first on PATH."""
    root.mkdir()
    (root / "probe.py").write_text(PROBE)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "one": {"cmd": f"python probe.py probe_one {first_exit} && echo x > one.txt", "deps": ["probe.py"],
                "outs": ["one.txt"]},
        "two": {"cmd": "python probe.py probe_two 0 && echo x > two.txt", "deps": ["one.txt"], "outs": ["two.txt"]}}}))
    assert _dvc("init", "--no-scm", "-q", cwd=root).returncode == 0
    return root


def test_sevila_repro_nests_every_stage_run_under_one_parent(tmp_path, monkeypatch):
    from sevila.experiments import repro
    from sevila import tracking

    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    root = _probe_project(tmp_path / "ok")
    assert repro.repro([], root=root) == 0
    runs = tracking.runs_frame()
    parent = runs[(runs["run_name"] == "dvc-repro") & (runs["tags.dvc_args"] == "")]
    assert len(parent) == 1 and parent["status"].iloc[0] == "FINISHED"
    children = runs[runs["parent_run_id"] == parent["run_id"].iloc[0]]
    assert sorted(children["run_name"]) == ["probe_one", "probe_two"]
    assert (children["status"] == "FINISHED").all()
    assert tracking.PARENT_RUN_ENV not in os.environ  # restored after the block


def test_sevila_repro_marks_the_parent_failed_and_returns_dvc_status(tmp_path, monkeypatch):
    from sevila.experiments import repro
    from sevila import tracking

    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    root = _probe_project(tmp_path / "bad", first_exit=3)
    assert repro.repro(["--force"], root=root) != 0
    runs = tracking.runs_frame()
    parent = runs[(runs["run_name"] == "dvc-repro") & (runs["tags.dvc_args"] == "--force")]
    assert list(parent["status"]) == ["FAILED"]
    children = runs[runs["parent_run_id"] == parent["run_id"].iloc[0]]
    assert list(children["run_name"]) == ["probe_one"]  # dvc stopped at the failed stage


def test_sevila_repro_passes_every_argument_to_dvc():
    from sevila.cli import build_parser
    from sevila.experiments.repro import dvc_repro_command

    args = build_parser("repro").parse_args(["repro", "-f", "--dry", "report", "--help"])
    assert args.dvc_args == ["-f", "--dry", "report", "--help"]
    assert dvc_repro_command(["--", "-f"])[1:] == ["-m", "dvc", "repro", "-f"]
