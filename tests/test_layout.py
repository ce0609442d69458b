"""The layout a newcomer finds (issue 21, docs/design.md §3): sevila/'s root holds only entry points, every package
has its tests folder, no two public definitions share a name with different meanings, and every design citation
resolves inside the repository."""
from __future__ import annotations

import ast
import re
import subprocess
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEVILA = REPO / "sevila"

#: the root's modules: the package, `python -m sevila`, the command line, the one error base class, and atomic
#: writes (a 35-line leaf every package imports; a package of its own would only lengthen every import)
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "errors.py", "atomic.py"}
#: names that are a convention, one per module by design: each stage's `run`, each command's `register`, each
#: module's logger, each reader's `DATASET`, each command's `PARENT_RUN_NAME`, a generic TypeVar
CONVENTIONS = {"run", "register", "log", "DATASET", "PARENT_RUN_NAME", "N_OPTIONS", "R"}


def _public_definitions(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def test_the_root_holds_only_entry_points():
    modules = {p.name for p in SEVILA.glob("*.py")}
    assert modules == ROOT_MODULES, f"move {sorted(modules - ROOT_MODULES)} into the package of its concern"


def test_tests_mirror_the_package_tree():
    packages = {p.parent.relative_to(SEVILA) for p in SEVILA.rglob("__init__.py")} - {Path(".")}
    top = {p.parts[0] for p in packages}
    missing = sorted(t for t in top if not (REPO / "tests" / t).is_dir())
    assert not missing, f"no tests/{missing[0]}/ for sevila/{missing[0]}/"
    root_tests = {f"test_{m[:-3]}.py" for m in ROOT_MODULES} | {"test_dvc_graph.py", "test_layout.py"}
    stray = sorted(p.name for p in (REPO / "tests").glob("test_*.py") if p.name not in root_tests)
    assert not stray, f"{stray}: tests of a package belong in its folder (the root: its modules, dvc.yaml, the layout)"


def test_no_two_public_definitions_share_a_name():
    where = defaultdict(list)
    for path in SEVILA.rglob("*.py"):
        for name in _public_definitions(path) - CONVENTIONS:
            where[name].append(path.relative_to(REPO).as_posix())
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, f"one name, several definitions: {shared}"


def test_every_design_citation_resolves_inside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    cited = re.compile(r"(?<![\w/.])(?:\.\./shared/)?DESIGN\.md")
    offenders = [f for f in tracked if f.endswith((".py", ".md", ".yaml", ".toml", ".sh")) and (REPO / f).is_file()
                 and f != "tests/test_layout.py" and cited.search((REPO / f).read_text(errors="ignore"))]
    assert not offenders, f"{offenders} cite DESIGN.md, which the repository does not have: cite docs/design.md"
    sections = set(re.findall(r"^## (\d+)\. ", (REPO / "docs" / "design.md").read_text(), re.M))
    for f in tracked:
        if f.endswith(".py") and (REPO / f).is_file():
            for section in re.findall(r"docs/design\.md §(\d+)", (REPO / f).read_text()):
                assert section in sections, f"{f} cites docs/design.md §{section}, which does not exist"
